"""Runs the SFT step and a PPO update on several meshes of 8 CPU devices and on one device.

Started by tests/test_sharding.py in fresh processes (the device count must be fixed before JAX
creates its backend): `python tests/parallel_helpers/sharded_equivalence.py [sft] [ppo]` (both by
default). Prints one JSON object on the last line of stdout.
"""
import json
import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
from flax.training import train_state  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from safecomp import models, parallel, rl  # pylint: disable=wrong-import-position
from safecomp.training import sft as sft_lib  # pylint: disable=wrong-import-position

MESHES = ({"data": 8, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 4, "tensor": 1},
          {"data": 2, "fsdp": 2, "tensor": 2})
B, T = 16, 24
PROMPT, RESP = 10, 8
# Parameters whose per-device shape is reported (path inside the params tree).
WATCH = (("embed", "embedding"), ("layers", "attn", "q", "kernel"),
         ("layers", "mlp", "down", "kernel"))


def optimizer():
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.01))


def sft_batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 64, (B, T)).astype(np.int32)
  attention = np.ones((B, T), np.int32)
  attention[::2, -5:] = 0  # ragged rows: the token-weighted loss must still agree
  loss_mask = attention.copy()
  loss_mask[:, :8] = 0
  return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}


def ppo_rollout():
  rng = np.random.default_rng(1)
  prompt_mask = np.ones((B, PROMPT), np.int32)
  prompt_mask[1::3, :3] = 0  # left padding
  response_mask = np.ones((B, RESP), np.int32)
  response_mask[::4, 5:] = 0
  sequences = rng.integers(3, 64, (B, PROMPT + RESP)).astype(np.int32)
  return {
      "sequences": sequences,
      "attention_mask": np.concatenate([prompt_mask, response_mask], 1),
      "response_mask": response_mask,
      "ref_logprobs": (-rng.uniform(2.0, 6.0, (B, RESP)) * response_mask).astype(np.float32),
      "old_logprobs": (-rng.uniform(2.0, 6.0, (B, RESP)) * response_mask).astype(np.float32),
      "values": (rng.normal(0.0, 0.5, (B, RESP)) * response_mask).astype(np.float32),
      "scores": rng.uniform(0.0, 1.0, (B,)).astype(np.float32),
  }


def get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def max_diff(a, b):
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                       jax.device_get(a), jax.device_get(b))
  return max(jax.tree.leaves(diffs))


def fresh(tree):
  return jax.tree.map(lambda x: np.array(x), jax.device_get(tree))


def run_sft(results):
  cfg = models.tiny()
  model = models.Transformer(cfg)
  params = fresh(models.init_params(cfg, jax.random.key(0)))
  tx = optimizer()
  create = lambda p: train_state.TrainState.create(apply_fn=None, params=p, tx=tx)
  batch = sft_batch()

  ref_state, ref_metrics = sft_lib.make_sft_step(model)(create(fresh(params)), batch)
  ref_params = jax.device_get(ref_state.params)
  out = {"loss_single": float(ref_metrics["loss"])}
  for sizes in MESHES:
    name = "x".join(str(sizes[a]) for a in parallel.MESH_AXES)
    mesh = parallel.make_mesh(sizes)
    psh = parallel.param_shardings(cfg, mesh)
    state, ssh = parallel.init_sharded_state(create, fresh(params), psh, mesh)
    bsh = parallel.batch_shardings(batch, mesh)
    # On the 3-axis mesh the step also accumulates gradients over 2 strided micro-batches.
    micro = 2 if sizes["tensor"] == 2 else 1
    step = parallel.shard_step(sft_lib.sft_step_fn(model, microbatches=micro), mesh,
                               parallel.DEFAULT_RULES, ssh, bsh, donate=False)
    new_state, metrics = step(state, batch)
    out[f"{name}/loss"] = float(metrics["loss"])
    out[f"{name}/microbatches"] = micro
    out[f"{name}/param_diff"] = max_diff(new_state.params, ref_params)
    out[f"{name}/nonfinite"] = bool(metrics["nonfinite"])
    embedding = new_state.params["embed"]["embedding"]
    out[f"{name}/devices_per_param"] = len(embedding.addressable_shards)
    for path in WATCH:
      leaf = get(new_state.params, path)
      out[f"{name}/shard/{'/'.join(path)}"] = list(leaf.addressable_shards[0].data.shape)
      out[f"{name}/spec/{'/'.join(path)}"] = str(leaf.sharding.spec)
    mu = new_state.opt_state[1][0].mu  # chain(clip, adamw): adamw's ScaleByAdamState
    out[f"{name}/opt_mu_spec_matches"] = all(
        get(mu, path).sharding == get(new_state.params, path).sharding for path in WATCH)
    out[f"{name}/batch_shard"] = list(step.batch_sharding["tokens"].shard_shape((B, T)))
  results["sft"] = out


def run_ppo(results):
  cfg = models.tiny(heads=("lm", "value"))
  model = models.Transformer(cfg)
  params = fresh(models.init_params(cfg, jax.random.key(3)))
  config = rl.PPOConfig(epochs=1, num_minibatches=2, temperature=1.0, vf_coef=0.5)
  tx = optimizer()
  create = lambda p: rl.create_rl_state(p, tx, config)
  rollout = ppo_rollout()
  step_fn = parallel.ppo_step_fn(parallel.policy_forward(model), config)
  batch = {"rollout": rollout, "rng": jax.random.key(7)}

  ref_state, ref_metrics = jax.jit(step_fn)(create(fresh(params)), batch)
  ref_params = jax.device_get(ref_state.params)
  out = {"loss_single": float(ref_metrics["loss"])}
  for sizes in MESHES:
    name = "x".join(str(sizes[a]) for a in parallel.MESH_AXES)
    mesh = parallel.make_mesh(sizes)
    psh = parallel.param_shardings(cfg, mesh)
    state, ssh = parallel.init_sharded_state(create, fresh(params), psh, mesh)
    bsh = parallel.batch_shardings(batch, mesh)
    step = parallel.shard_step(step_fn, mesh, parallel.DEFAULT_RULES, ssh, bsh)
    new_state, metrics = step(state, batch)
    out[f"{name}/loss"] = float(metrics["loss"])
    out[f"{name}/value_loss_diff"] = abs(float(metrics["value_loss"]) -
                                         float(ref_metrics["value_loss"]))
    out[f"{name}/kl_ref_diff"] = abs(float(metrics["kl_ref"]) - float(ref_metrics["kl_ref"]))
    out[f"{name}/param_diff"] = max_diff(new_state.params, ref_params)
    q = new_state.params["layers"]["attn"]["q"]["kernel"]
    out[f"{name}/shard/q"] = list(q.addressable_shards[0].data.shape)
    out[f"{name}/state_donated"] = state.params["embed"]["embedding"].is_deleted()
  results["ppo"] = out


def main():
  parts = sys.argv[1:] or ["sft", "ppo"]
  results = {"devices": jax.device_count()}
  for part in parts:
    {"sft": run_sft, "ppo": run_ppo}[part](results)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
