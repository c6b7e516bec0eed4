"""Low-rank adapters: what they compute, what trains, and what stays frozen.

- A fresh adapter leaves the logits unchanged; `merge` folds a trained one into the kernels exactly.
- LoRA SFT on the testbed lowers the loss with the base frozen; only adapters are in the state's params.
- A LoRA PPO iteration (separate critic, reward model in the rollout) leaves the base bit-identical, moves
  the policy's and the critic's adapters, and keeps one base under policy, critic and reference.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from safecomp import config as config_lib
from safecomp import models, parallel
from safecomp.errors import ConfigError
from safecomp.models import lora, quantize
from safecomp.training import batching
from safecomp.training import loop as loop_lib
from safecomp.training import ppo as ppo_stage
from safecomp.training import rollout as rollout_lib
from safecomp.training import sft as sft_lib
from tests.conftest import REPO_ROOT

DEMO = str(REPO_ROOT / "configs" / "demo.py")
VOCAB, EOS, PAD = 64, 2, 0


def randomized_adapters(params, seed=0, scale=0.1):
  """`params` with every adapter leaf random (a fresh B is zero, which would hide layout mistakes)."""
  flat = traverse_util.flatten_dict(params)
  keys = jax.random.split(jax.random.key(seed), len(flat))
  flat = {k: (scale * jax.random.normal(key, v.shape) if lora.is_adapter(k) else v)
          for key, (k, v) in zip(keys, flat.items())}
  return traverse_util.unflatten_dict(flat)


def test_fresh_adapters_change_nothing_and_merge_is_exact():
  cfg = models.tiny(lora_rank=4, lora_alpha=8.0, lora_targets=("q", "o", "down"))
  params = models.init_params(cfg, jax.random.key(0))
  ids = jnp.asarray([[1, 5, 9, 7, 3, 11]])
  base = models.forward(cfg.replace(lora_rank=0), lora.adapters_off(params), ids)["logits"]
  np.testing.assert_array_equal(models.forward(cfg, params, ids)["logits"], base)

  trained = randomized_adapters(params)
  adapted = models.forward(cfg, trained, ids)["logits"]
  assert float(jnp.max(jnp.abs(adapted - base))) > 1e-2
  merged = lora.merge(trained, cfg.lora_alpha, cfg.lora_rank)
  assert not any(lora.is_adapter(k) for k in traverse_util.flatten_dict(merged))
  np.testing.assert_allclose(models.forward(cfg.replace(lora_rank=0), merged, ids)["logits"], adapted, atol=1e-5)

  frozen, trainable = lora.split(trained)
  assert set(trainable["layers"]["attn"]) == {"q_lora", "o_lora"} and set(trainable["layers"]["mlp"]) == {"down_lora"}
  assert lora.combine(frozen, trainable).keys() == trained.keys()
  n_train, n_frozen = lora.count(trained)
  assert n_train == 2 * (4 * 32 + 4 * 32 + 4 * 32 + 4 * 32 + 64 * 4 + 4 * 32)  # 2 layers of q, o, down adapters
  assert n_frozen == sum(x.size for x in jax.tree.leaves(lora.adapters_off(trained)))


def test_adapters_carry_logical_axes():
  specs = models.param_specs(models.tiny(lora_rank=4))
  assert tuple(specs["layers"]["attn"]["q_lora"]["a"]) == ("layers", "embed", "lora_rank")
  assert tuple(specs["layers"]["attn"]["o_lora"]["a"]) == ("layers", "heads", "head_dim", "lora_rank")
  assert tuple(specs["layers"]["mlp"]["down_lora"]["b"]) == ("layers", "lora_rank", "embed")


@pytest.mark.parametrize("overrides, message", [
    (["lora.rank=-1"], "lora.rank"), (["lora.rank=4", "lora.alpha=0.0"], "lora.alpha"),
    (["lora.rank=4", "lora.targets=q,qkv"], "lora.targets"),
    (["lora.rank=4", "lora.init_from=/nonexistent"], "lora.init_from")])
def test_bad_lora_values_fail_at_start_up_naming_the_key(overrides, message):
  from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(f"{DEMO}:size=tiny", overrides)
  with pytest.raises(ConfigError, match=message):
    pipeline.validate(config)


def test_lora_sft_on_the_testbed_lowers_the_loss_with_the_base_frozen(tmp_path):
  from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(f"{DEMO}:size=tiny", ["lora.rank=8", "lora.alpha=16"])
  p = pipeline.Pipeline(config, tmp_path)
  conversations, _ = p.task.sft_conversations("train")
  arrays = batching.conversations_to_arrays(p.tokenizer, conversations[:16], config.chat_template,
                                            config.max_seq_len, "SFT rows")
  batch = batching.trim_padding(batching.take(arrays, np.arange(16)), config.pad_multiple)
  batch = {k: v for k, v in batch.items() if k != "truncated"}
  model, params = p.init_model(("lm",), seed_offset=1)
  state = loop_lib.new_state(params, optax.adam(3e-2), adapters=True)
  assert all(lora.is_adapter(k) for k in traverse_util.flatten_dict(state.params))
  base = jax.device_get(state.frozen)
  step = jax.jit(sft_lib.sft_step_fn(model))
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  # A fresh testbed model's frozen LM head (init scale 0.02) and final norm bound the logits' range, so
  # adapters alone move the loss slowly from uniform (ln V = 7.1): it must fall, and keep falling.
  assert losses[-1] < losses[0] - 0.05 and min(losses[-5:]) < min(losses[:5]), losses
  for a, b in zip(jax.tree.leaves(jax.device_get(state.frozen)), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)


def test_lora_ppo_iteration_leaves_the_base_bit_identical():
  c = config_lib.load_config(f"{DEMO}:size=tiny", ["lora.rank=4", "ppo.learning_rate=1e-2"])
  assert c.ppo.critic == "separate"
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  actor = ppo_stage.abstract_actor_critic(c, vocab_size=VOCAB)
  assert actor.adapters
  rm_model = models.Transformer(models.model_config_from(c, ("severity", "helpfulness"), vocab_size=VOCAB))
  step = ppo_stage.build_ppo_step(c, actor, rollout_lib.RewardModelScorer(rm_model), mesh, stop_ids=(EOS,),
                                  pad_id=PAD)
  policy = randomized_adapters(jax.device_get(models.init_params(actor.policy_model.config, jax.random.key(0))))
  # The critic starts on the same base (as grafting the reward model's trunk gives), its own adapters.
  critic_init = jax.device_get(models.init_params(actor.critic_model.config, jax.random.key(1)))
  critic = models.graft(critic_init, randomized_adapters(policy, seed=1))
  state = step.init_state({"policy": policy, "critic": critic})
  # One base, held once: the policy's weights without adapters; the critic reads it without the LM head.
  assert set(state.frozen) == {"embed", "layers", "final_norm", "lm_head"}
  assert all(lora.is_adapter(k) for k in traverse_util.flatten_dict(state.params["policy"]))
  assert set(state.params["critic"]) == {"layers", "value_head"}
  ref = parallel.place(actor.reference_part(policy), step.ref_shardings)  # the SFT adapters only
  assert all(lora.is_adapter(k) for k in traverse_util.flatten_dict(ref))
  assert step.scorer_shares_base  # the reward model's adapters and heads run on the policy's base
  rm = parallel.place(step.scorer_part(models.init_params(rm_model.config, jax.random.key(2))), step.scorer_shardings)
  assert set(rm) == {"layers", "severity_head", "helpfulness_head"}

  base = jax.device_get(state.frozen)
  start = jax.device_get(state.params)
  b, width = c.ppo.prompts_per_iteration, c.max_prompt_len
  prompts = np.random.default_rng(0).integers(3, VOCAB, (b, width)).astype(np.int32)
  kl = []
  for it in range(2):
    batch = parallel.put_batch({"prompts": prompts, "prompt_mask": np.ones((b, width), np.int32),
                                "intent": np.zeros(b, np.int32), "step": np.int32(it)}, step.batch_shardings)
    state, metrics = step.fused(state, batch, ref, rm)
    assert not bool(metrics["nonfinite"])
    kl.append(float(metrics["kl_ref"]))
  # The reference is the base with the SFT adapters: before any update the policy is exactly it.
  assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] != 0.0
  for a, b_ in zip(jax.tree.leaves(jax.device_get(state.frozen)), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b_)  # bit-identical
  moved = lambda part: any(np.any(x != y) for x, y in zip(jax.tree.leaves(jax.device_get(state.params[part])),
                                                            jax.tree.leaves(start[part])))
  assert moved("policy") and moved("critic")


# ----------------------------------------------------------------------------------------- QLoRA
# Measured on this tiny random model: the largest logit error relative to the largest logit.
QLORA_BOUNDS = {"int8": 0.01, "nf4": 0.15}


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_qlora_forward_stays_close_to_full_precision(kind):
  cfg = models.tiny(lora_rank=4, lora_alpha=8.0, hidden_size=64, intermediate_size=128, num_heads=4, head_dim=16)
  params = randomized_adapters(models.init_params(cfg, jax.random.key(0)), scale=0.02)
  frozen, trainable = lora.split(params)
  stored = quantize.quantize_tree(frozen, kind)
  kernels = [x for x in jax.tree.leaves(stored, is_leaf=quantize.is_quantized) if quantize.is_quantized(x)]
  assert len(kernels) == 7 and all(k.codes.dtype == (jnp.int8 if kind == "int8" else jnp.uint8) for k in kernels)
  full_bytes = sum(x.nbytes for x in jax.tree.leaves(frozen["layers"]))
  stored_bytes = sum(x.nbytes for x in jax.tree.leaves(stored["layers"]))
  assert stored_bytes < full_bytes / (3 if kind == "int8" else 5)  # codes (+ scales, norms) vs float32
  ids = jnp.asarray([[1, 5, 9, 7, 3, 11, 2, 40]])
  full = models.forward(cfg, params, ids)["logits"]
  qcfg = cfg.replace(base_quantization=kind)
  quantized = models.forward(qcfg, lora.combine(stored, trainable), ids)["logits"]
  error = float(jnp.max(jnp.abs(quantized - full)) / jnp.max(jnp.abs(full)))
  assert 0 < error < QLORA_BOUNDS[kind], error
  # What evaluation and export use: the dequantised base, the same numbers the quantised model computes.
  roundtrip = quantize.stored_like_training(frozen, kind, jnp.float32)
  np.testing.assert_allclose(models.forward(cfg, lora.combine(roundtrip, trainable), ids)["logits"], quantized,
                             atol=1e-5)


def test_qlora_params_export_merged_with_the_quantised_models_logits(tmp_path):
  cfg = models.tiny(lora_rank=4, base_quantization="int8")
  params = randomized_adapters(models.init_params(cfg.replace(base_quantization="none"), jax.random.key(0)))
  frozen, trainable = lora.split(params)
  stored = lora.combine(quantize.quantize_tree(frozen, "int8"), trainable)
  model = models.Transformer(cfg)
  models.export_pretrained(model, stored, tmp_path)
  loaded, loaded_params = models.load_pretrained(tmp_path)
  assert loaded.config.lora_rank == 0 and loaded.config.base_quantization == "none"
  ids = jnp.asarray([[1, 5, 9, 7, 3]])
  np.testing.assert_allclose(models.forward(loaded.config, loaded_params, ids)["logits"],
                             models.forward(cfg, stored, ids)["logits"], atol=1e-5)


def test_qlora_sft_step_trains_the_adapters_on_a_quantised_base():
  cfg = models.tiny(lora_rank=4, base_quantization="nf4")
  model = models.Transformer(cfg)
  params = models.init_params(cfg, jax.random.key(0))
  state = loop_lib.new_state(params, optax.adam(1e-2), adapters=True, quantization="nf4")
  assert any(quantize.is_quantized(x) for x in jax.tree.leaves(state.frozen, is_leaf=quantize.is_quantized))
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 64, (4, 12)), jnp.int32)
  batch = {"tokens": tokens, "attention_mask": jnp.ones_like(tokens), "loss_mask": jnp.ones_like(tokens)}
  step = jax.jit(sft_lib.sft_step_fn(model))
  first = None
  for _ in range(10):
    state, metrics = step(state, batch)
    first = float(metrics["loss"]) if first is None else first
  assert float(metrics["loss"]) < first
