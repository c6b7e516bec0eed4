"""The compiled rollout: one XLA computation, equal to the step-by-step reference."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp import models
from safecomp.rewards import composite
from safecomp.rewards import reward_model as rm_lib
from safecomp.training import rollout as rollout_lib

CFG = rollout_lib.RolloutConfig(max_new_tokens=8, eos_id=2, pad_id=0, temperature=0.9, top_k=20,
                                reward_kind="product", severity_to_safety=(1.0, 0.6, 0.3, 0.0))


@pytest.fixture(scope="module")
def setup():
  policy = models.Transformer(models.tiny(heads=("lm", "value")))
  reward_model = models.Transformer(models.tiny(heads=("severity", "helpfulness")))
  policy_params = models.init_params(policy.config, jax.random.key(0))
  ref_params = models.init_params(policy.config, jax.random.key(1))
  rm_params = models.init_params(reward_model.config, jax.random.key(2))
  rng = np.random.default_rng(0)
  lengths = np.array([3, 6, 5, 1])
  prompts = np.zeros((4, 6), np.int32)
  mask = np.zeros((4, 6), np.int32)
  for i, n in enumerate(lengths):  # left-padded, as `batching.prompts_to_arrays` writes them
    prompts[i, 6 - n:] = rng.integers(3, 64, n)
    mask[i, 6 - n:] = 1
  arrays = jax.device_put((policy_params, ref_params, rm_params, jnp.asarray(prompts), jnp.asarray(mask),
                           jnp.zeros(4, jnp.int32), jax.random.key(7)))
  return policy, reward_model, arrays


def test_rollout_is_one_computation_without_host_transfers(setup):
  policy, reward_model, arrays = setup
  rollout = jax.jit(rollout_lib.make_rollout(rollout_lib.ActorCritic(policy), reward_model, CFG))
  lowered = rollout.lower(*arrays)
  text = lowered.as_text()
  # Generation is a device-side loop, and nothing calls back to Python.
  assert "while" in text
  assert "callback" not in text.lower() and "outfeed" not in text.lower()
  compiled = lowered.compile()
  with jax.transfer_guard("disallow"):  # any host round-trip inside would raise here
    out = compiled(*arrays)
    jax.block_until_ready(out)
  assert set(out) >= {"sequences", "response_mask", "old_logprobs", "ref_logprobs", "values",
                      "scores", "safety", "helpfulness", "sample_logprobs"}


def test_rollout_equals_step_by_step_reference(setup):
  policy, reward_model, arrays = setup
  policy_params, ref_params, rm_params, prompts, mask, intent, key = arrays
  fused = jax.device_get(jax.jit(rollout_lib.make_rollout(rollout_lib.ActorCritic(policy), reward_model, CFG))(*arrays))

  # Reference: sample, then score each piece with separate, plain forward passes.
  out = models.generate(policy, policy_params, prompts, mask, key, max_new_tokens=CFG.max_new_tokens,
                        temperature=CFG.temperature, top_k=CFG.top_k, eos_id=CFG.eos_id, pad_id=CFG.pad_id)
  np.testing.assert_array_equal(fused["sequences"], out.sequences)
  np.testing.assert_array_equal(fused["response_mask"], out.response_mask)
  response_mask = np.asarray(out.response_mask)
  full_mask = np.concatenate([np.asarray(mask), response_mask], axis=1)
  n, p = CFG.max_new_tokens, prompts.shape[1]
  for params, key_name in ((policy_params, "old_logprobs"), (ref_params, "ref_logprobs")):
    o = policy.apply({"params": params}, out.sequences, attention_mask=full_mask)
    logp = models.token_logprobs(o["logits"][:, p - 1:-1], out.sequences[:, p:], CFG.temperature)
    np.testing.assert_allclose(fused[key_name], np.asarray(logp) * response_mask, atol=1e-5)
    if key_name == "old_logprobs":
      np.testing.assert_allclose(fused["values"], np.asarray(o["values"][:, p - 1:-1]) * response_mask,
                                 atol=1e-5)
      # The sampler's own log-probs are the policy's log-probs under the same forward pass.
      np.testing.assert_allclose(fused["sample_logprobs"], np.asarray(logp) * response_mask, atol=1e-4)
  r = reward_model.apply({"params": rm_params}, out.sequences, attention_mask=full_mask)
  _, safety, helpfulness = rm_lib.reward_from_heads(r["severity_logits"], r["helpfulness_logit"],
                                                    helpfulness_kind="bce",
                                                    severity_to_safety=CFG.severity_to_safety)
  np.testing.assert_allclose(fused["safety"], safety, atol=1e-5)
  np.testing.assert_allclose(fused["helpfulness"], helpfulness, atol=1e-5)
  np.testing.assert_allclose(fused["scores"], composite.composite_reward(safety, helpfulness, "product"),
                             atol=1e-5)
  assert np.all((fused["scores"] >= 0) & (fused["scores"] <= 1))


def test_sampler_matches_rollout_without_rewards(setup):
  policy, reward_model, arrays = setup
  policy_params, ref_params, rm_params, prompts, mask, intent, key = arrays
  full = jax.jit(rollout_lib.make_rollout(rollout_lib.ActorCritic(policy), reward_model, CFG))(*arrays)
  sampled = jax.jit(rollout_lib.make_sampler(rollout_lib.ActorCritic(policy), CFG))(policy_params, ref_params, prompts, mask, key)
  for k in ("sequences", "response_mask", "old_logprobs", "ref_logprobs", "values"):
    np.testing.assert_array_equal(np.asarray(full[k]), np.asarray(sampled[k]))


def test_separate_critic_has_its_own_trunk(setup):
  _, _, arrays = setup
  _, _, _, prompts, mask, _, key = arrays
  policy = models.Transformer(models.tiny(heads=("lm",)))
  critic = models.Transformer(models.tiny(heads=("value",)))
  policy_params = models.init_params(policy.config, jax.random.key(3))
  params = {"policy": policy_params, "critic": models.init_params(critic.config, jax.random.key(4))}
  actor = rollout_lib.ActorCritic(policy, critic)
  out = jax.device_get(jax.jit(rollout_lib.make_sampler(actor, CFG))(params, policy_params, prompts, mask, key))

  alone = models.generate(policy, policy_params, prompts, mask, key, max_new_tokens=CFG.max_new_tokens,
                          temperature=CFG.temperature, top_k=CFG.top_k, eos_id=CFG.eos_id, pad_id=CFG.pad_id)
  np.testing.assert_array_equal(out["sequences"], alone.sequences)  # the critic does not touch sampling
  full_mask = np.concatenate([np.asarray(mask), out["response_mask"]], axis=1)
  n, p = CFG.max_new_tokens, prompts.shape[1]
  values = critic.apply({"params": params["critic"]}, out["sequences"], attention_mask=full_mask)["values"]
  np.testing.assert_allclose(out["values"], np.asarray(values[:, p - 1:-1]) * out["response_mask"], atol=1e-5)
  np.testing.assert_allclose(out["old_logprobs"], out["ref_logprobs"], atol=1e-5)  # reference = start

  # Value-loss gradients reach the critic and never the policy.
  grads = jax.grad(lambda q: jnp.sum(actor.forward(q, out["sequences"], full_mask, n)[1] ** 2))(params)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["policy"]))
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["critic"]))


def test_scoring_in_row_chunks_equals_one_pass(setup):
  """`score_chunk_rows`: policy, critic, reference and reward model score a few rows at a time; the
  results match one pass over the batch and the batch's float32 logits [B, L, V] never exist at once."""
  _, reward_model, arrays = setup
  policy = models.Transformer(models.tiny(heads=("lm",)))
  critic = models.Transformer(models.tiny(heads=("value",)))
  policy_params = models.init_params(policy.config, jax.random.key(3))
  params = {"policy": policy_params, "critic": models.init_params(critic.config, jax.random.key(4))}
  _, ref_params, rm_params, prompts, mask, intent, key = arrays
  actor = rollout_lib.ActorCritic(policy, critic)
  args = (params, ref_params, rm_params, prompts, mask, intent, key)
  b, length, vocab = prompts.shape[0], prompts.shape[1] + CFG.max_new_tokens, policy.config.vocab_size
  full_logits = f"tensor<{b}x{length}x{vocab}xf32>"
  whole = jax.jit(rollout_lib.make_rollout(actor, reward_model, CFG))
  assert full_logits in whole.lower(*args).as_text()
  expected = jax.device_get(whole(*args))
  for rows in (1, 2):
    chunked = jax.jit(rollout_lib.make_rollout(actor, reward_model, dataclasses.replace(CFG, score_chunk_rows=rows)))
    assert full_logits not in chunked.lower(*args).as_text()
    out = jax.device_get(chunked(*args))
    assert set(out) == set(expected)
    for k in ("sequences", "response_mask", "sample_logprobs"):  # sampling is not chunked
      np.testing.assert_array_equal(out[k], expected[k], err_msg=k)
    for k in ("old_logprobs", "ref_logprobs", "values", "scores", "safety", "helpfulness", "severity_probs"):
      np.testing.assert_allclose(out[k], expected[k], rtol=0, atol=1e-6, err_msg=k)
  with pytest.raises(ValueError, match="score_chunk_rows=3"):
    jax.jit(rollout_lib.make_rollout(actor, reward_model, dataclasses.replace(CFG, score_chunk_rows=3)))(*args)


def test_score_policy_follows_right_padded_prompts(setup):
  """The rollout scores where the sampler sampled: with right-padded prompts the first response token
  is predicted at the last real prompt token (not slot P - 1), for log-probs and values alike."""
  policy, _, arrays = setup
  policy_params, ref_params, _, prompts, mask, _, key = arrays
  lengths = np.asarray(mask).sum(1)
  right_prompts = np.zeros_like(np.asarray(prompts))
  right_mask = np.zeros_like(np.asarray(mask))
  for i, n in enumerate(lengths):
    right_prompts[i, :n] = np.asarray(prompts)[i, -n:]
    right_mask[i, :n] = 1
  actor = rollout_lib.ActorCritic(policy)
  out = jax.device_get(jax.jit(rollout_lib.make_sampler(actor, CFG))(
      policy_params, ref_params, jnp.asarray(right_prompts), jnp.asarray(right_mask), key))
  response_mask = out["response_mask"]
  assert 0 < response_mask.sum() and np.any(lengths < right_prompts.shape[1])
  np.testing.assert_allclose(out["old_logprobs"], out["sample_logprobs"] * response_mask, atol=1e-4)
  assert np.all(np.isfinite(out["ref_logprobs"])) and np.all(out["ref_logprobs"][response_mask == 0] == 0)
  full_mask = np.concatenate([right_mask, response_mask], axis=1)
  values = np.asarray(policy.apply({"params": policy_params}, out["sequences"], attention_mask=full_mask)["values"])
  p, rows = right_prompts.shape[1], np.arange(len(lengths))
  expected = np.concatenate([values[rows, lengths - 1][:, None], values[:, p:-1]], axis=1) * response_mask
  np.testing.assert_allclose(out["values"], expected, atol=1e-5)
