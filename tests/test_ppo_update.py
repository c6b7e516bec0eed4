"""Tests for the PPO / GRPO / RLOO update on a tiny policy that must learn to emit one token."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from safecomp import models, rl
from safecomp.errors import ConfigError, SafecompError

VOCAB, PROMPT, RESP, TARGET, TEMP = 8, 2, 2, 3, 0.7


class TinyPolicy(nn.Module):
  """Next-token logits and a value from the previous token only."""

  @nn.compact
  def __call__(self, tokens):
    h = nn.tanh(nn.Dense(16)(nn.Embed(VOCAB, 16)(tokens)))
    return nn.Dense(VOCAB)(h), nn.Dense(1)(h)[..., 0]


MODEL = TinyPolicy()


def forward_fn(params, sequences, attention_mask, response_width):
  """Outputs at the positions predicting the response (every prompt row is full width here)."""
  del attention_mask  # every position is valid in this task
  logits, values = MODEL.apply({"params": params}, sequences)
  prompt_len = sequences.shape[1] - response_width
  return logits[:, prompt_len - 1:-1], values[:, prompt_len - 1:-1]


def init_params(seed=0):
  return MODEL.init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"]


@functools.partial(jax.jit, static_argnames=("batch", "group_size"))
def sample(params, key, batch, group_size):
  """Prompts (repeated `group_size` times consecutively) and sampled responses with log-probs."""
  pkey, skey = jax.random.split(key)
  prompts = jax.random.randint(pkey, (batch // group_size, PROMPT), 0, VOCAB)
  prompts = jnp.repeat(prompts, group_size, axis=0)

  def step(last, k):
    logits, _ = MODEL.apply({"params": params}, last[:, None])
    logits = logits[:, 0]
    tok = jax.random.categorical(k, logits / TEMP)
    return tok, (tok, models.token_logprobs(logits, tok, TEMP))

  _, (toks, logps) = jax.lax.scan(step, prompts[:, -1], jax.random.split(skey, RESP))
  return prompts, toks.T, logps.T


@functools.partial(jax.jit, static_argnames=("batch", "group_size"))
def make_rollout(params, ref_params, key, batch, group_size):
  prompts, responses, old_logp = sample(params, key, batch, group_size)
  sequences = jnp.concatenate([prompts, responses], axis=1)
  mask = jnp.ones_like(sequences)
  ref_logits, _ = rl.response_logits_values(forward_fn, ref_params, sequences, mask, RESP, TEMP)
  _, values = rl.response_logits_values(forward_fn, params, sequences, mask, RESP, TEMP)
  return {
      "sequences": sequences, "attention_mask": mask,
      "response_mask": jnp.ones_like(responses), "old_logprobs": old_logp,
      "ref_logprobs": models.token_logprobs(ref_logits, responses),
      "values": values, "scores": jnp.any(responses == TARGET, axis=1).astype(jnp.float32),
  }


@jax.jit
def target_rates(params):
  """Exact (fraction of response tokens that are TARGET, fraction of responses containing it).

  The policy is a Markov chain over the previous token and the last prompt token is uniform, so
  both rates follow from powers of the transition matrix.
  """
  logits, _ = MODEL.apply({"params": params}, jnp.arange(VOCAB)[:, None])
  trans = jax.nn.softmax(logits[:, 0] / TEMP, axis=-1)  # [prev, next]
  miss = trans.at[:, TARGET].set(0.0)  # paths that avoid TARGET

  def step(carry, _):
    dist, avoid = carry[0] @ trans, carry[1] @ miss
    return (dist, avoid), dist[TARGET]

  start = jnp.full((VOCAB,), 1.0 / VOCAB)
  (_, avoid), hits = jax.lax.scan(step, (start, start), None, length=RESP)
  return hits.mean(), 1.0 - avoid.sum()


# One optimizer object: `tx` is static state metadata, so a new one would force a recompile.
TX = optax.adam(3e-2)


def make_state(seed=0):
  state = train_state.TrainState.create(apply_fn=None, params=init_params(seed), tx=TX)
  # An array step keeps the jit cache key identical across fresh and updated states.
  return state.replace(step=jnp.zeros((), jnp.int32))


# At these sizes compiling dominates, so skip XLA's slower backend optimisations.
UPDATE = jax.jit(rl.ppo_update, static_argnames=("forward_fn", "config"),
                 compiler_options={"xla_backend_optimization_level": 0})
BATCH = 32
# Tests share configs and batch shapes so that compiled functions are reused.
CONFIGS = {
    "ppo": rl.PPOConfig(epochs=2, num_minibatches=2, kl_coef=0.01, temperature=TEMP, vf_coef=0.5),
    "grpo": rl.PPOConfig(algorithm="grpo", group_size=4, epochs=2, num_minibatches=2,
                         kl_mode="loss", kl_estimator="k3", kl_coef=0.01, temperature=TEMP),
    "rloo": rl.PPOConfig(algorithm="rloo", group_size=4, epochs=2, num_minibatches=2,
                         kl_coef=0.01, temperature=TEMP),
}
ONE_STEP = rl.PPOConfig(epochs=1, num_minibatches=1, temperature=TEMP)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo"])
def test_update_raises_rewarded_token_rate(algorithm):
  config = CONFIGS[algorithm]
  state = make_state()
  ref_params = state.params
  before, before_any = target_rates(state.params)
  key = jax.random.key(1)
  for _ in range(20):
    key, rkey, ukey = jax.random.split(key, 3)
    rollout = make_rollout(state.params, ref_params, rkey, BATCH, config.group_size)
    state, metrics = UPDATE(state, rollout, forward_fn, config, ukey)
  after, after_any = target_rates(state.params)
  assert before < 0.2 and before_any < 0.3
  # Only containing the token is rewarded, so the token rate saturates near 1/RESP.
  assert after > before + 0.25, (algorithm, before, after)
  assert after_any > 0.85, (algorithm, before_any, after_any)
  assert np.isfinite(float(metrics["policy_loss"]))
  assert float(metrics["kl_ref"]) > 0.0  # the policy moved away from the reference
  if config.kl_mode == "loss":
    assert float(metrics["kl_loss"]) > 0.0
    assert "value_loss" not in metrics


def test_first_step_ratio_is_one_and_approx_kl_zero():
  state = make_state()
  rollout = make_rollout(state.params, state.params, jax.random.key(0), BATCH, 1)
  _, metrics = UPDATE(state, rollout, forward_fn, ONE_STEP, jax.random.key(1))
  np.testing.assert_allclose(metrics["ratio_mean"], 1.0, atol=1e-5)
  np.testing.assert_allclose(metrics["ratio_min"], 1.0, atol=1e-5)
  np.testing.assert_allclose(metrics["ratio_max"], 1.0, atol=1e-5)
  np.testing.assert_allclose(metrics["approx_kl"], 0.0, atol=1e-6)
  np.testing.assert_allclose(metrics["kl_ref"], 0.0, atol=1e-5)
  assert float(metrics["clipfrac"]) == 0.0
  for key in ("value_loss", "entropy", "explained_variance", "score_mean", "response_length",
              "advantage_mean", "advantage_std", "grad_norm", "kl_coef"):
    assert np.isfinite(float(metrics[key])), key
  assert float(metrics["response_length"]) == RESP


def test_recomputed_old_logprobs_match_sampler():
  state = make_state()
  rollout = make_rollout(state.params, state.params, jax.random.key(0), BATCH, 1)
  given, _ = UPDATE(state, rollout, forward_fn, ONE_STEP, jax.random.key(1))
  partial = {k: v for k, v in rollout.items() if k not in ("old_logprobs", "values")}
  recomputed, _ = UPDATE(state, partial, forward_fn, ONE_STEP, jax.random.key(1))
  for a, b in zip(jax.tree.leaves(given.params), jax.tree.leaves(recomputed.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_same_rng_same_result_and_rng_matters():
  config = CONFIGS["ppo"]
  state = make_state()
  rollout = make_rollout(state.params, state.params, jax.random.key(0), BATCH, 1)
  s1, m1 = UPDATE(state, rollout, forward_fn, config, jax.random.key(7))
  s2, m2 = UPDATE(state, rollout, forward_fn, config, jax.random.key(7))
  s3, _ = UPDATE(state, rollout, forward_fn, config, jax.random.key(8))
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(a, b)
  assert m1 == pytest.approx(m2)
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s3.params)))
  assert int(s1.step) == config.epochs * config.num_minibatches


def _toy_rollout(scores, old_logp, ref_logp, mask, values=None, responses=None):
  b, n = mask.shape
  responses = jnp.zeros((b, n), jnp.int32) if responses is None else responses
  return {
      "sequences": jnp.concatenate([jnp.ones((b, 2), jnp.int32), responses], axis=1),
      "attention_mask": jnp.ones((b, n + 2), jnp.int32), "response_mask": mask,
      "old_logprobs": old_logp, "ref_logprobs": ref_logp,
      "values": jnp.zeros((b, n)) if values is None else values, "scores": scores,
  }


def test_prepare_advantages_ppo():
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  logp = jnp.zeros((2, 3))
  rollout = _toy_rollout(jnp.array([1.0, -2.0]), logp, logp, mask)
  config = rl.PPOConfig(gamma=1.0, lam=1.0, whiten_advantages=False)
  adv, ret, rewards = rl.prepare_advantages(rollout, config, kl_coef=0.5)
  # No KL, no values, gamma = lambda = 1: every valid token's advantage is the final score.
  np.testing.assert_allclose(adv, [[1, 1, 1], [-2, -2, 0]])
  np.testing.assert_allclose(ret, adv)
  np.testing.assert_allclose(rewards, [[0, 0, 1], [0, -2, 0]])
  whitened, _, _ = rl.prepare_advantages(rollout, rl.PPOConfig(lam=1.0), kl_coef=0.5)
  np.testing.assert_allclose(whitened, rl.masked_whiten(adv, mask), rtol=1e-6)


def test_prepare_advantages_eos_penalty():
  mask = jnp.ones((2, 3), jnp.int32)
  responses = jnp.array([[4, 2, 0], [4, 4, 4]])
  rollout = _toy_rollout(jnp.array([1.0, 1.0]), jnp.zeros((2, 3)), jnp.zeros((2, 3)), mask,
                         responses=responses)
  config = rl.PPOConfig(lam=1.0, whiten_advantages=False, eos_penalty=1.5, eos_id=2)
  _, ret, _ = rl.prepare_advantages(rollout, config, kl_coef=0.0)
  np.testing.assert_allclose(ret[:, 0], [1.0, -0.5])


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_prepare_advantages_group_baselines_with_kl_in_reward(algorithm):
  mask = jnp.array([[1, 1], [1, 0], [1, 1], [1, 1]])
  old = jnp.full((4, 2), -1.0)
  ref = jnp.full((4, 2), -2.0)  # k1 = 1 per valid token
  scores = jnp.array([1.0, 0.0, 2.0, 2.0])
  config = rl.PPOConfig(algorithm=algorithm, group_size=2, whiten_advantages=False)
  adv, ret, _ = rl.prepare_advantages(_toy_rollout(scores, old, ref, mask), config, kl_coef=0.1)
  seq_return = scores - 0.1 * mask.sum(axis=1)
  np.testing.assert_allclose(ret[:, 0], seq_return, rtol=1e-6)
  expected = (rl.grpo_advantages(seq_return, 2) if algorithm == "grpo"
              else rl.rloo_advantages(seq_return, 2))
  np.testing.assert_allclose(adv, expected[:, None] * mask, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adv[2:], 0.0, atol=1e-6)
  # Whitening only rescales group advantages: the no-signal group stays at 0, signs are kept.
  whitened, _, _ = rl.prepare_advantages(
      _toy_rollout(scores, old, ref, mask), dataclasses.replace(config, whiten_advantages=True),
      0.1)
  np.testing.assert_allclose(whitened[2:], 0.0, atol=1e-6)
  np.testing.assert_allclose(whitened, rl.masked_whiten(adv, mask, shift_mean=False), rtol=1e-5)
  assert float(whitened[0, 0]) > 0 > float(whitened[1, 0])


def test_rl_state_adaptive_kl_and_score_normalisation():
  config = rl.PPOConfig(epochs=1, temperature=TEMP, kl_coef=0.1, kl_target=1e-3, kl_horizon=100,
                        normalize_scores=True)
  params = init_params()
  state = rl.create_rl_state(params, TX, config)
  ref = init_params(seed=1)  # a different reference makes the KL exceed the tiny target
  rollout = make_rollout(params, ref, jax.random.key(0), BATCH, 1)
  new_state, metrics = UPDATE(state, rollout, forward_fn, config, jax.random.key(1))
  assert float(metrics["kl_ref"]) > 1e-3
  np.testing.assert_allclose(new_state.kl_coef, 0.1 * (1 + 0.2 * BATCH / 100), rtol=1e-5)
  np.testing.assert_allclose(new_state.score_moments.mean, rollout["scores"].mean(), rtol=1e-5)
  assert float(new_state.score_moments.count) == BATCH


def test_bad_config_and_rollout_raise():
  with pytest.raises(ConfigError, match="algorithm"):
    rl.PPOConfig(algorithm="dpo")
  with pytest.raises(ConfigError, match="group_size"):
    rl.PPOConfig(algorithm="grpo", group_size=1)
  with pytest.raises(ConfigError, match="eos_id"):
    rl.PPOConfig(eos_penalty=1.0)
  with pytest.raises(ConfigError, match="unknown"):
    rl.PPOConfig.from_dict({"epochs": 2, "epoch": 3})
  assert rl.PPOConfig.from_dict({"epochs": 2}).epochs == 2
  state = make_state()
  rollout = make_rollout(state.params, state.params, jax.random.key(0), BATCH, 1)
  with pytest.raises(ConfigError, match="num_minibatches"):
    rl.ppo_update(state, rollout, forward_fn, rl.PPOConfig(num_minibatches=5), jax.random.key(0))
  with pytest.raises(SafecompError, match="scores"):
    rl.ppo_update(state, {**rollout, "scores": jnp.zeros(5)}, forward_fn, rl.PPOConfig(),
                  jax.random.key(0))


def test_negative_eos_penalty_is_refused():
  # The penalty is subtracted: a negative value would reward responses that never stop.
  with pytest.raises(Exception, match="eos_penalty"):
    rl.PPOConfig(eos_penalty=-1.0, eos_id=2)
