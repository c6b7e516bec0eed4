"""One PPO / GRPO / RLOO update over a rollout batch, compiled as a single computation.

The model is reached only through `forward_fn(params, sequences [B, L] int32, attention_mask [B, L],
response_width N) -> (logits [B, N, V], values [B, N] or None)`, the outputs at the positions that
predict the N response tokens. Prompts are padded to width P, so `sequences = concat(prompt,
response)`, L = P + N, and the logits that predict response token i sit at position P - 1 + i (for
i = 0: at the last real prompt token, which is P - 1 when prompts are left-padded; see
`safecomp.models.response_outputs`). `safecomp.models.response_forward` computes them with the heads
on those N positions only.
"""
import dataclasses
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from safecomp.errors import ConfigError, SafecompError
from safecomp.models import lora, token_logprobs
from safecomp.rl import advantages as adv_lib
from safecomp.rl import kl as kl_lib
from safecomp.rl import losses
from safecomp.rl.gae import compute_gae

ForwardFn = Callable[[Any, jax.Array, jax.Array, int], tuple[jax.Array, jax.Array | None]]

ALGORITHMS = ("ppo", "grpo", "rloo")
KL_MODES = ("reward", "loss")
REQUIRED_KEYS = ("sequences", "attention_mask", "response_mask", "ref_logprobs", "scores")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """Hyper-parameters of the update; hashable, so it can be a static jit argument.

  Attributes:
    algorithm: "ppo" (critic + GAE), "grpo" (group-normalised scores) or "rloo" (leave-one-out).
    epochs: passes over the rollout batch.
    num_minibatches: minibatches per epoch; the batch size must be a multiple of it.
    clip_eps: policy ratio clip range.
    vf_coef: value loss weight (ppo only).
    vf_clip: value clip range around the rollout values; None for an unclipped value loss.
    ent_coef: entropy bonus weight.
    gamma, lam: GAE discount and lambda (ppo only).
    kl_coef: initial (or fixed) KL coefficient.
    kl_estimator: "k1", "k2" or "k3" (see safecomp.rl.kl).
    kl_mode: "reward" folds -kl_coef * KL into the per-token rewards (ppo) or subtracts the
      sequence-summed KL from the score (grpo/rloo); "loss" adds kl_coef * mean KL of the current
      policy to the loss instead (GRPO style, usually with "k3").
    kl_target: target sequence KL of the adaptive controller; None keeps kl_coef fixed.
    kl_horizon: horizon (in episodes) of the adaptive controller.
    whiten_advantages: whiten advantages over the batch's valid tokens after they are computed
      (grpo/rloo: scaled only, not re-centred, so a group with equal scores keeps advantage 0).
    temperature: sampling temperature; logits are divided by it before log_softmax.
    eos_penalty: subtracted from the score of responses that never emit `eos_id` (0 disables).
    eos_id: the end-of-sequence token id (needed when eos_penalty != 0).
    group_size: samples per prompt for grpo/rloo (prompts repeated consecutively).
    grpo_normalize_std: divide GRPO advantages by the group std.
    normalize_scores: scale scores by running statistics kept in `RLTrainState.score_moments`.
    normalize_scores_shift: also centre on the running mean when normalising scores.
  """
  algorithm: str = "ppo"
  epochs: int = 4
  num_minibatches: int = 1
  clip_eps: float = 0.2
  vf_coef: float = 0.1
  vf_clip: float | None = 0.2
  ent_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  kl_coef: float = 0.05
  kl_estimator: str = "k1"
  kl_mode: str = "reward"
  kl_target: float | None = None
  kl_horizon: float = 10000.0
  whiten_advantages: bool = True
  temperature: float = 0.7
  eos_penalty: float = 0.0
  eos_id: int | tuple[int, ...] | None = None  # several ids: any of them ends a response
  group_size: int = 1
  grpo_normalize_std: bool = True
  normalize_scores: bool = False
  normalize_scores_shift: bool = True

  def __post_init__(self):
    def bad(key, why):
      raise ConfigError(f"PPOConfig.{key}={getattr(self, key)!r}: {why}")
    if self.algorithm not in ALGORITHMS:
      bad("algorithm", f"expected one of {ALGORITHMS}")
    if self.kl_estimator not in kl_lib.KL_ESTIMATORS:
      bad("kl_estimator", f"expected one of {kl_lib.KL_ESTIMATORS}")
    if self.kl_mode not in KL_MODES:
      bad("kl_mode", f"expected one of {KL_MODES}")
    for key in ("epochs", "num_minibatches"):
      if getattr(self, key) < 1:
        bad(key, "must be >= 1")
    for key in ("clip_eps", "temperature", "kl_horizon"):
      if getattr(self, key) <= 0:
        bad(key, "must be > 0")
    if self.vf_clip is not None and self.vf_clip <= 0:
      bad("vf_clip", "must be > 0 or None")
    if self.kl_coef < 0:
      bad("kl_coef", "must be >= 0")
    if self.kl_target is not None and self.kl_target <= 0:
      bad("kl_target", "must be > 0 or None")
    if not 0.0 < self.gamma <= 1.0:
      bad("gamma", "must be in (0, 1]")
    if not 0.0 <= self.lam <= 1.0:
      bad("lam", "must be in [0, 1]")
    if self.algorithm != "ppo" and self.group_size < 2:
      bad("group_size", f"{self.algorithm} needs at least 2 samples per prompt")
    if self.eos_penalty < 0:  # a negative penalty would pay the policy for never stopping
      bad("eos_penalty", f"is subtracted from the score, so it must be >= 0 (got {self.eos_penalty})")
    if self.eos_penalty and self.eos_id is None:
      bad("eos_id", "needed when eos_penalty != 0")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "PPOConfig":
    """A config from a mapping (e.g. an ml_collections.ConfigDict); unknown keys are rejected."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(f"unknown PPOConfig key(s) {unknown}; known: {sorted(known)}")
    return cls(**dict(values))


class RLTrainState(lora.TrainState):
  """TrainState plus the controller state carried between updates (and, with adapters, the frozen base:
  see `lora.TrainState`)."""
  kl_coef: jax.Array = None  # set by create_rl_state (defaults only because the base class has some)
  score_moments: adv_lib.RunningMoments = None


def create_rl_state(
    params: Any, tx: optax.GradientTransformation, config: PPOConfig, *, adapters: bool = False,
    split_fn: Callable | None = None, join_fn: Callable | None = None, quantization: str = "none") -> RLTrainState:
  """A fresh RLTrainState with the config's initial KL coefficient and empty score statistics.

  With `adapters`, `params` (the model's whole tree) is cut by `split_fn` into the frozen base and the
  trainable part (adapters, value head); `join_fn` puts them back together, and the base is stored as
  `quantization` says (`lora.create_state`).
  """
  state = lora.create_state(
      params, tx, adapters=adapters, split_fn=split_fn, join_fn=join_fn, quantization=quantization,
      state_class=RLTrainState,
      kl_coef=jnp.asarray(config.kl_coef, jnp.float32), score_moments=adv_lib.init_running_moments())
  # An int32 array step (not Python 0) keeps the jitted update from recompiling after step 0.
  return state.replace(step=jnp.zeros((), jnp.int32))


def _check_rollout(rollout: Mapping[str, jax.Array], config: PPOConfig) -> tuple[int, int, int]:
  """Validates keys and shapes; returns (B, P, N)."""
  for key in REQUIRED_KEYS:
    if key not in rollout:
      raise SafecompError(f"rollout[{key!r}] is missing; rollout has {sorted(rollout)}")
  b, length = rollout["sequences"].shape
  n = rollout["response_mask"].shape[1]
  expected = {"attention_mask": (b, length), "response_mask": (b, n), "ref_logprobs": (b, n),
              "old_logprobs": (b, n), "values": (b, n), "scores": (b,)}
  for key, shape in expected.items():
    if key in rollout and tuple(rollout[key].shape) != shape:
      raise SafecompError(
          f"rollout[{key!r}] has shape {tuple(rollout[key].shape)}, expected {shape}")
  if n >= length:
    raise SafecompError(f"response width {n} leaves no prompt in sequences of length {length}")
  if b % config.num_minibatches:
    raise ConfigError(
        f"PPOConfig.num_minibatches={config.num_minibatches} does not divide the batch size {b}")
  if config.algorithm != "ppo" and b % config.group_size:
    raise ConfigError(
        f"PPOConfig.group_size={config.group_size} does not divide the batch size {b}")
  return b, length - n, n


def response_logits_values(
    forward_fn: ForwardFn, params: Any, sequences: jax.Array, attention_mask: jax.Array,
    response_width: int, temperature: float) -> tuple[jax.Array, jax.Array | None]:
  """Temperature-scaled logits [B, N, V] (float32) and values [B, N] for the response tokens.

  `forward_fn` reads them at the positions that predict the response tokens (`models.response_outputs`:
  the last real prompt token, then the response's own slots), so left- and right-padded prompts work.
  """
  logits, values = forward_fn(params, sequences, attention_mask, response_width)
  b = sequences.shape[0]
  chex.assert_shape(logits, (b, response_width, None))
  logits = logits.astype(jnp.float32) / temperature
  if values is not None:
    chex.assert_shape(values, (b, response_width))
    values = values.astype(jnp.float32)
  return logits, values


def shaped_scores(rollout: Mapping[str, jax.Array], config: PPOConfig) -> jax.Array:
  """Rollout scores with the missing-EOS penalty applied."""
  scores = rollout["scores"].astype(jnp.float32)
  if config.eos_penalty:
    n = rollout["response_mask"].shape[1]
    scores = adv_lib.eos_penalty(
        scores, rollout["sequences"][:, -n:], rollout["response_mask"], config.eos_id,
        config.eos_penalty)
  return scores


def _raw_advantages(rollout, config, kl_coef):
  """(advantages before whitening, returns, token_rewards), all [B, N]."""
  mask = rollout["response_mask"]
  old_logp = rollout["old_logprobs"].astype(jnp.float32)
  ref_logp = rollout["ref_logprobs"].astype(jnp.float32)
  scores = shaped_scores(rollout, config)
  coef_in_reward = kl_coef if config.kl_mode == "reward" else 0.0
  rewards = adv_lib.token_rewards(scores, old_logp, ref_logp, mask, coef_in_reward,
                                  config.kl_estimator)
  if config.algorithm == "ppo":
    advantages, returns = compute_gae(rewards, rollout["values"], mask, config.gamma, config.lam)
    return advantages, returns, rewards
  # Without a critic the sequence return is the score minus the summed KL penalty.
  seq_return = jnp.sum(rewards, axis=1)
  if config.algorithm == "grpo":
    advantages = adv_lib.grpo_advantages(
        seq_return, config.group_size, config.grpo_normalize_std, mask=mask)
  else:
    advantages = adv_lib.rloo_advantages(seq_return, config.group_size, mask=mask)
  return advantages, adv_lib.broadcast_to_tokens(seq_return, mask), rewards


def prepare_advantages(
    rollout: Mapping[str, jax.Array], config: PPOConfig, kl_coef: jax.Array | float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Advantages, returns and per-token rewards for a rollout, each [B, N] and 0 at masked tokens.

  ppo: GAE over the per-token rewards with the rollout `values`; returns = advantages + values.
  grpo / rloo: the sequence return (score minus summed KL penalty) turned into a group-relative
  advantage and copied to every valid token; returns is the sequence return on every valid token.
  Advantages are whitened over valid tokens when `config.whiten_advantages`.
  """
  advantages, returns, rewards = _raw_advantages(rollout, config, kl_coef)
  return _whiten(advantages, rollout["response_mask"], config), returns, rewards


def _whiten(advantages: jax.Array, mask: jax.Array, config: PPOConfig) -> jax.Array:
  if not config.whiten_advantages:
    return advantages
  # Group baselines are already centred per prompt; a batch-wide shift would give no-signal groups
  # a nonzero advantage.
  return adv_lib.masked_whiten(advantages, mask, shift_mean=config.algorithm == "ppo")


def _reduce_metrics(stacked: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Averages per-minibatch metrics, except extremes which keep their extreme."""
  reducers = {"ratio_min": jnp.min, "ratio_max": jnp.max}
  return {k: reducers.get(k, jnp.mean)(v) for k, v in stacked.items()}


def ppo_update(
    state: train_state.TrainState,
    rollout: Mapping[str, jax.Array],
    forward_fn: ForwardFn,
    config: PPOConfig,
    rng: jax.Array,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """All epochs x minibatches of one policy update; jit with `forward_fn` and `config` static.

  Args:
    state: a TrainState (params, tx, opt_state). An `RLTrainState` also carries the adaptive KL
      coefficient and the running score statistics, both updated here; with a plain TrainState the
      coefficient is `config.kl_coef` and `metrics["kl_coef_next"]` is for the caller to keep.
    rollout: dict of arrays:
      sequences [B, L] int32 (left-padded prompt + response), attention_mask [B, L],
      response_mask [B, N] (1 up to and including EOS), ref_logprobs [B, N], scores [B];
      old_logprobs [B, N] (rollout policy, same temperature; recomputed with the state's params when
      absent) and values [B, N] (critic values at rollout; zeros without a critic, recomputed for
      ppo when absent).
    forward_fn: (params, sequences, attention_mask, N) -> (logits [B, N, V], values [B, N] or None)
      at the positions predicting the response (see the module docstring).
    config: the update's hyper-parameters.
    rng: PRNG key for the minibatch permutations.

  Returns:
    (new state, metrics) where metrics are float32 scalars.
  """
  b, _, n = _check_rollout(rollout, config)
  rollout = dict(rollout)
  mask = rollout["response_mask"].astype(jnp.float32)
  responses = rollout["sequences"][:, -n:]

  needs_values = config.algorithm == "ppo" and "values" not in rollout
  if "old_logprobs" not in rollout or needs_values:
    logits, values = response_logits_values(
        forward_fn, lora.model_params(state, state.params), rollout["sequences"], rollout["attention_mask"], n,
        config.temperature)
    rollout.setdefault("old_logprobs", jax.lax.stop_gradient(token_logprobs(logits, responses)))
    if needs_values:
      if values is None:
        raise SafecompError("algorithm 'ppo' needs values: forward_fn returned None and the "
                            "rollout has no 'values'")
      rollout["values"] = jax.lax.stop_gradient(values)
  if "values" not in rollout:
    rollout["values"] = jnp.zeros((b, n), jnp.float32)

  has_rl_state = isinstance(state, RLTrainState)
  kl_coef = state.kl_coef if has_rl_state else jnp.asarray(config.kl_coef, jnp.float32)
  raw_scores = rollout["scores"].astype(jnp.float32)
  moments = state.score_moments if has_rl_state else None
  if config.normalize_scores:
    if not has_rl_state:
      raise ConfigError("PPOConfig.normalize_scores needs an RLTrainState (see create_rl_state)")
    moments = adv_lib.update_running_moments(moments, raw_scores)
    rollout["scores"] = adv_lib.normalize_scores(raw_scores, moments, config.normalize_scores_shift)

  raw_adv, returns, rewards = _raw_advantages(rollout, config, kl_coef)
  advantages = _whiten(raw_adv, mask, config)

  data = {
      "sequences": rollout["sequences"], "attention_mask": rollout["attention_mask"],
      "response_mask": mask, "old_logprobs": rollout["old_logprobs"].astype(jnp.float32),
      "ref_logprobs": rollout["ref_logprobs"].astype(jnp.float32),
      "values": rollout["values"].astype(jnp.float32), "advantages": advantages,
      "returns": returns,
  }

  def loss_fn(params, mb, state):
    # `params` is what trains (the whole model, or adapters and heads on the frozen base).
    logits, values = response_logits_values(
        forward_fn, lora.model_params(state, params), mb["sequences"], mb["attention_mask"], n,
        config.temperature)
    mb_mask = mb["response_mask"]
    logp = token_logprobs(logits, mb["sequences"][:, -n:])
    pg_loss, metrics = losses.policy_loss(
        logp, mb["old_logprobs"], mb["advantages"], mb_mask, config.clip_eps)
    if config.ent_coef:
      ent = losses.entropy(logits, mb_mask)
      loss = pg_loss - config.ent_coef * ent
    else:  # logged only: no backward pass through the full-vocabulary entropy
      ent = losses.entropy(jax.lax.stop_gradient(logits), mb_mask)
      loss = pg_loss
    metrics.update(policy_loss=pg_loss, entropy=ent)
    if config.algorithm == "ppo":
      if values is None:
        raise SafecompError("algorithm 'ppo' needs a value head: forward_fn returned values=None")
      vf_loss, vf_metrics = losses.value_loss(
          values, mb["values"], mb["returns"], mb_mask, config.vf_clip)
      loss = loss + config.vf_coef * vf_loss
      metrics.update(value_loss=vf_loss, **vf_metrics)
    if config.kl_mode == "loss":
      kl_loss = adv_lib.masked_mean(
          kl_lib.kl_estimate(logp, mb["ref_logprobs"], config.kl_estimator), mb_mask)
      loss = loss + kl_coef * kl_loss
      metrics.update(kl_loss=kl_loss)
    metrics.update(loss=loss)
    return loss, metrics

  grad_fn = jax.grad(loss_fn, has_aux=True)
  mb_size = b // config.num_minibatches

  def minibatch_step(state, idx):
    mb = jax.tree.map(lambda x: x[idx], data)
    grads, metrics = grad_fn(state.params, mb, state)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  def epoch_step(state, key):
    perm = jax.random.permutation(key, b).reshape(config.num_minibatches, mb_size)
    return jax.lax.scan(minibatch_step, state, perm)

  state, stacked = jax.lax.scan(epoch_step, state, jax.random.split(rng, config.epochs))
  metrics = _reduce_metrics(stacked)

  seq_kl = adv_lib.sequence_kl(data["old_logprobs"], data["ref_logprobs"], mask, "k1")
  kl_ref = jnp.mean(seq_kl)
  kl_next = kl_lib.update_kl_coef(kl_coef, kl_ref, b, config.kl_target, config.kl_horizon)
  final_scores = shaped_scores(rollout, config)
  metrics.update(
      kl_ref=kl_ref,
      kl_coef=kl_coef,
      kl_coef_next=kl_next,
      score_mean=jnp.mean(raw_scores),
      score_std=jnp.std(raw_scores),
      shaped_score_mean=jnp.mean(final_scores),
      response_length=jnp.mean(jnp.sum(mask, axis=1)),
      advantage_mean=adv_lib.masked_mean(raw_adv, mask),
      advantage_std=jnp.sqrt(adv_lib.masked_var(raw_adv, mask)),
      return_mean=adv_lib.masked_mean(returns, mask),
      kl_penalty=jnp.mean(final_scores) - jnp.mean(jnp.sum(rewards, axis=1)),
  )
  if config.algorithm == "ppo":
    metrics["explained_variance"] = losses.explained_variance(data["values"], returns, mask)
  if config.eos_id is not None:
    metrics["eos_rate"] = jnp.mean(
        adv_lib.contains_eos(responses, mask, config.eos_id).astype(jnp.float32))
  if has_rl_state:
    state = state.replace(kl_coef=kl_next, score_moments=moments)
  return state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
