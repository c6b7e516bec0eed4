"""Per-device memory plan of a training stage on a mesh, without allocating any weights.

    python -m safecomp.memory --config configs/llama3_8b_v5e_64.py [--mesh data=1,fsdp=16,tensor=4]
        [--stage sft|rm|ppo] [--accelerator v5e] [--no-compile] [--json] [--config.key=value ...]

Parameters, optimizer state, frozen models (PPO reference and reward model), the batch and the
rollout KV cache are counted exactly from `jax.eval_shape` and the shardings the step would use
(largest shard per device). Activations come from the compiled step's `memory_analysis()` when this
machine has as many devices as the mesh (on a CPU-only machine the CLI simulates them, so the
numbers are those of XLA:CPU's buffer assignment, which fuses less than TPU/GPU and so tends to
overstate them), and from an analytic estimate otherwise. The step is lowered against an
`AbstractMesh` of the requested shape first, so shapes and shardings are checked even when nothing
is compiled.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from safecomp import models
from safecomp import parallel
from safecomp.config import load_config, require
from safecomp.errors import SafecompError

GiB = 1024 ** 3
# Memory per device (HBM) of named accelerators.
ACCELERATORS = {
    "v4": 32 * GiB,
    "v5e": 16 * GiB,
    "v5p": 95 * GiB,
    "h100": 80 * 10 ** 9,
}
STAGES = ("sft", "rm", "ppo")
STAGE_HEADS = {"sft": ("lm",), "rm": ("severity", "helpfulness"), "ppo": ("lm", "value")}


@dataclasses.dataclass
class StageSetup:
  """Everything needed to trace one stage's step (all abstract)."""
  stage: str
  model_config: models.ModelConfig
  create: Any  # params -> train state
  step_fn: Any  # pure (state, batch) -> (state, metrics)
  batch: dict  # ShapeDtypeStructs
  frozen: tuple  # ModelConfigs of models held but not trained
  kv_cache: tuple | None  # (batch, max_len) of the rollout cache, ppo only
  microbatches: int
  rows: int  # global batch rows
  length: int  # tokens per row
  batch_key: str  # the config key that sets `rows`


def _section_steps(section: Any) -> int:
  return int(section.get("steps", section.get("iterations", 1)))


def stage_setup(config: Any, stage: str, vocab_size: int | None = None) -> StageSetup:
  """The model, state constructor, pure step and abstract batch of `stage` under `config`."""
  # Imported lazily: the training package pulls in checkpointing and metric writers.
  from safecomp.rl import ppo as ppo_lib  # pylint: disable=import-outside-toplevel
  from safecomp.training import loop as loop_lib  # pylint: disable=import-outside-toplevel
  from safecomp.training import rm as rm_lib  # pylint: disable=import-outside-toplevel
  from safecomp.training import ppo as ppo_stage  # pylint: disable=import-outside-toplevel
  from flax.training import train_state  # pylint: disable=import-outside-toplevel

  require(stage in STAGES, "stage", f"{stage!r} is not one of {STAGES}")
  cfg = parallel.model_config_from(config, STAGE_HEADS[stage], vocab_size=vocab_size)
  model = models.Transformer(cfg)
  length = int(config.max_seq_len)
  tokens = lambda b, t: jax.ShapeDtypeStruct((b, t), jnp.int32)
  if stage in ("sft", "rm"):
    section = config[stage]
    b = int(section.batch_size)
    micro = int(section.get("microbatches", 1))
    tx = loop_lib.make_optimizer(section, _section_steps(section))
    create = lambda p: train_state.TrainState.create(apply_fn=None, params=p, tx=tx)
    batch = {"tokens": tokens(b, length), "attention_mask": tokens(b, length)}
    if stage == "sft":
      batch["loss_mask"] = tokens(b, length)
      step_fn = parallel.sft_step_fn(model, microbatches=micro)
    else:
      batch["severity"] = jax.ShapeDtypeStruct((b,), jnp.int32)
      batch["helpfulness"] = jax.ShapeDtypeStruct((b,), jnp.float32)
      weights = {"severity": section.severity_weight, "helpfulness": section.helpfulness_weight}
      step_fn = rm_lib.make_rm_step(model, weights, section.helpfulness_loss)
    return StageSetup(stage, cfg, create, step_fn, batch, (), None, micro, b, length,
                      f"{stage}.batch_size")

  p = config.ppo
  eos = cfg.eos_ids[0] if cfg.eos_ids else 0
  ppo_cfg = ppo_stage.ppo_config(config, eos)
  tx = loop_lib.make_optimizer(p, p.iterations * p.epochs * p.num_minibatches)
  create = lambda params: ppo_lib.create_rl_state(params, tx, ppo_cfg)
  b, n = int(p.prompts_per_iteration), int(p.max_new_tokens)
  width = int(config.max_prompt_len) + n
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  rollout = {"sequences": tokens(b, width), "attention_mask": tokens(b, width),
             "response_mask": tokens(b, n), "old_logprobs": f32(b, n), "ref_logprobs": f32(b, n),
             "values": f32(b, n), "scores": f32(b)}
  batch = {"rollout": rollout, "rng": jax.eval_shape(lambda: jax.random.key(0))}
  step_fn = parallel.ppo_step_fn(parallel.policy_forward(model), ppo_cfg)
  frozen = [cfg.replace(heads=("lm",))]
  if config.reward.get("grader", "rm") == "rm":
    frozen.append(cfg.replace(heads=STAGE_HEADS["rm"]))
  return StageSetup(stage, cfg, create, step_fn, batch, tuple(frozen), (b, width), 1, b, width,
                    "ppo.prompts_per_iteration")


def count_params(cfg: models.ModelConfig) -> int:
  shapes, _ = parallel.abstract_params(cfg)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def kv_cache_bytes(cfg: models.ModelConfig, batch: int, max_len: int, mesh: Any,
                   rules: Sequence = parallel.DEFAULT_RULES) -> int:
  """Per-device bytes of the sampler's KV cache (k and v, batch split, KV heads over `tensor`)."""
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  kv_axis = dict(rules).get("kv_heads")
  spec = parallel.fit_spec(P(None, parallel.batch_spec(rules)[0], None, kv_axis, None), shape, mesh)
  per = math.prod(NamedSharding(mesh, spec).shard_shape(shape))
  return 2 * per * cfg.compute_dtype.itemsize


def estimate_activation_bytes(cfg: models.ModelConfig, local_batch: int, length: int,
                              tensor: int) -> int:
  """Rough per-device bytes of saved activations, one layer's backward workspace and the logits.

  Counts what the backward pass keeps under `cfg.remat` (layer inputs only for "full" /
  "nothing_saveable", matmul outputs for the dots policies, everything otherwise), the live
  working set of one layer, and float32 logits with their gradient. A guide, not a bound.
  """
  b, t, d = local_batch, length, cfg.hidden_size
  dt = cfg.compute_dtype.itemsize
  heads = max(cfg.num_heads // tensor, 1)
  kv = max(cfg.num_kv_heads // tensor, 1) if cfg.num_kv_heads % tensor == 0 else cfg.num_kv_heads
  ff = cfg.intermediate_size
  ff = ff // tensor if ff % tensor == 0 else ff
  vocab = cfg.vocab_size // tensor if cfg.vocab_size % tensor == 0 else cfg.vocab_size
  qkvo = b * t * (2 * heads + 2 * kv) * cfg.head_dim * dt
  scores = b * heads * t * t * 4 * 2  # float32 logits and probabilities
  mlp = 3 * b * t * ff * dt
  norms_residual = 4 * b * t * d * 4
  full_layer = qkvo + scores + mlp + norms_residual
  if cfg.remat in ("full", "nothing_saveable"):
    saved = b * t * d * dt
  elif cfg.remat in ("dots_saveable", "checkpoint_dots", "dots_with_no_batch_dims_saveable",
                     "checkpoint_dots_with_no_batch_dims"):
    saved = b * t * d * dt + qkvo + 2 * b * t * ff * dt
  else:
    saved = full_layer
  logits = 3 * b * t * vocab * 4
  return int(cfg.num_layers * saved + full_layer + logits)


@dataclasses.dataclass
class LoweredStage:
  """A stage's step lowered against an AbstractMesh, with the shardings it was lowered with."""
  setup: StageSetup
  mesh: Any  # AbstractMesh
  rules: tuple
  abstract_state: Any
  state_shardings: Any
  batch_shardings: Any
  lowered: Any  # jax.stages.Lowered
  platform: str


def lower_stage(config: Any, mesh_sizes: dict[str, int], *, stage: str = "sft",
                vocab_size: int | None = None, platform: str | None = None) -> LoweredStage:
  """Lowers `stage`'s sharded step for an AbstractMesh of `mesh_sizes` on `platform`.

  No weights are allocated and no devices are needed: arguments are ShapeDtypeStructs carrying
  NamedShardings over the abstract mesh. Checks batch sizes against the batch axes first.
  """
  mesh = parallel.abstract_mesh(mesh_sizes)
  rules = parallel.axis_rules(dict(config.mesh.get("rules", {})) if "mesh" in config else None)
  setup = stage_setup(config, stage, vocab_size)
  parallel.check_batch_size(setup.rows, mesh, setup.batch_key, rules)
  if setup.microbatches > 1:
    require(setup.rows % setup.microbatches == 0, f"{stage}.microbatches",
            f"{setup.microbatches} does not divide {setup.batch_key}={setup.rows}")
    parallel.check_batch_size(setup.rows // setup.microbatches, mesh, f"{stage}.microbatches",
                              rules)
  shapes, _ = parallel.abstract_params(setup.model_config)
  psh = parallel.param_shardings(setup.model_config, mesh, rules)
  abstract_state = jax.eval_shape(setup.create, shapes)
  ssh = parallel.state_shardings(abstract_state, psh, mesh)
  bsh = parallel.batch_shardings(setup.batch, mesh, rules)
  step = parallel.shard_step(setup.step_fn, mesh, rules, ssh, bsh)
  platform = platform or jax.default_backend()
  lowered = step.lower(parallel.with_shardings(abstract_state, ssh),
                       parallel.with_shardings(setup.batch, bsh), platform=platform)
  return LoweredStage(setup, mesh, rules, abstract_state, ssh, bsh, lowered, platform)


def plan(config: Any, mesh_sizes: dict[str, int], *, stage: str = "sft", compile_step: bool = True,
         vocab_size: int | None = None, lowering_platform: str | None = None) -> dict:
  """The per-device memory plan of `stage` on a mesh of `mesh_sizes` (see module docstring).

  Args:
    config: experiment ConfigDict.
    mesh_sizes: {data, fsdp, tensor}, fully resolved (no -1).
    stage: "sft", "rm" or "ppo".
    compile_step: compile the lowered step for `memory_analysis()` when this process has enough
      devices of the default backend; otherwise activations are estimated.
    vocab_size: the vocabulary size of a model with no checkpoint and no `model.vocab_size`.
    lowering_platform: platform to lower for when not compiling ("tpu", "cuda"; default: the
      default backend).

  Returns:
    dict of byte counts per device and descriptions (JSON-serialisable).
  """
  n = math.prod(mesh_sizes.values())
  can_compile = compile_step and len(jax.devices()) >= n
  platform = jax.default_backend() if can_compile else lowering_platform
  low = lower_stage(config, mesh_sizes, stage=stage, vocab_size=vocab_size, platform=platform)
  return summarize(config, low, compile_step=can_compile)


def summarize(config: Any, low: LoweredStage, *, compile_step: bool = False) -> dict:
  """The memory plan of a lowered stage; compiles it first when `compile_step` (needs devices)."""
  setup, mesh, rules, cfg = low.setup, low.mesh, low.rules, low.setup.model_config
  mesh_sizes = parallel.mesh_sizes(mesh)
  n = math.prod(mesh_sizes.values())
  ssh = low.state_shardings
  out = {
      "stage": setup.stage, "mesh": dict(mesh_sizes), "devices": n, "lowered_for": low.platform,
      "model": {"family": cfg.family, "params": count_params(cfg), "layers": cfg.num_layers,
                "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "dtype": cfg.dtype,
                "param_dtype": cfg.param_dtype, "remat": cfg.remat},
      "params_bytes": parallel.shard_bytes(low.abstract_state.params, ssh.params),
      "optimizer_bytes": parallel.shard_bytes(low.abstract_state.opt_state, ssh.opt_state),
      "frozen_bytes": sum(parallel.shard_bytes(parallel.abstract_params(f)[0],
                                               parallel.param_shardings(f, mesh, rules))
                          for f in setup.frozen),
      "batch_bytes": parallel.shard_bytes(setup.batch, low.batch_shardings),
      "kv_cache_bytes": (kv_cache_bytes(cfg, *setup.kv_cache, mesh, rules)
                         if setup.kv_cache else 0),
  }
  local_rows = setup.rows // parallel.batch_divisor(mesh, rules) // setup.microbatches
  if setup.stage == "ppo":  # the update's forward/backward runs one minibatch at a time
    local_rows //= int(config.ppo.num_minibatches)
  estimate = estimate_activation_bytes(cfg, max(local_rows, 1), setup.length,
                                       mesh_sizes["tensor"])
  # Gradients live alongside the activations (sharded like the parameters, in their dtype).
  out["activation_estimate_bytes"] = estimate + out["params_bytes"]
  stats = None
  if compile_step:
    devices = tuple(jax.devices()[:n])
    stats = low.lowered.compile(device_assignment=devices).memory_analysis()
  if stats is not None:
    out["activation_bytes"] = int(stats.temp_size_in_bytes)
    out["activation_source"] = f"compiled for {low.platform}: temp buffers"
    out["compiled"] = {"argument_bytes": int(stats.argument_size_in_bytes),
                       "output_bytes": int(stats.output_size_in_bytes),
                       "alias_bytes": int(stats.alias_size_in_bytes),
                       "temp_bytes": int(stats.temp_size_in_bytes),
                       "code_bytes": int(stats.generated_code_size_in_bytes)}
  else:
    out["activation_bytes"] = out["activation_estimate_bytes"]
    out["activation_source"] = "estimate"
  resident = (out["params_bytes"] + out["optimizer_bytes"] + out["frozen_bytes"] +
              out["batch_bytes"])
  # The rollout (KV cache) and the update (activations) do not overlap in time.
  out["total_bytes"] = resident + max(out["activation_bytes"], out["kv_cache_bytes"])
  out["fits"] = {name: {"capacity_bytes": cap, "fits": out["total_bytes"] <= cap,
                        "utilisation": out["total_bytes"] / cap}
                 for name, cap in ACCELERATORS.items()}
  return out


def _size(x: float) -> str:
  for unit, scale in (("GiB", GiB), ("MiB", 1024 ** 2), ("KiB", 1024)):
    if x >= scale:
      return f"{x / scale:8.2f} {unit}"
  return f"{x:8.0f} B  "


def format_plan(result: dict, accelerators: Sequence[str] = tuple(ACCELERATORS)) -> str:
  """Human-readable plan (what the CLI prints)."""
  m, mesh = result["model"], result["mesh"]
  count = m["params"]
  count_text = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"
  lines = [
      f"stage {result['stage']} on mesh data={mesh['data']} fsdp={mesh['fsdp']} "
      f"tensor={mesh['tensor']} ({result['devices']} devices), lowered for {result['lowered_for']}",
      f"model: {m['family']}, {count_text} parameters, {m['layers']} layers, hidden "
      f"{m['hidden_size']}, vocab {m['vocab_size']}; compute {m['dtype']}, parameters "
      f"{m['param_dtype']}, remat {m['remat']}",
      "per device:",
      f"  parameters                {_size(result['params_bytes'])}",
      f"  optimizer state           {_size(result['optimizer_bytes'])}",
  ]
  if result["frozen_bytes"]:
    lines.append(f"  frozen models (ref, RM)   {_size(result['frozen_bytes'])}")
  lines.append(f"  batch                     {_size(result['batch_bytes'])}")
  note = result["activation_source"]
  if "compiled" in result:
    note += f"; analytic estimate {_size(result['activation_estimate_bytes']).strip()}"
  lines.append(f"  activations + gradients   {_size(result['activation_bytes'])}  ({note})")
  if result["kv_cache_bytes"]:
    lines.append(f"  KV cache (rollout)        {_size(result['kv_cache_bytes'])}")
  lines.append(f"  total                     {_size(result['total_bytes'])}")
  for name in accelerators:
    fit = result["fits"][name]
    verdict = "fits" if fit["fits"] else "does NOT fit"
    lines.append(f"  {name:5s} ({fit['capacity_bytes'] / GiB:5.1f} GiB per device): {verdict} "
                 f"({100 * fit['utilisation']:.0f}% used)")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m safecomp.memory",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="experiment config file (path[:arg])")
  parser.add_argument("--mesh", default=None,
                      help="data=..,fsdp=..,tensor=.. (default: config.mesh)")
  parser.add_argument("--devices", type=int, default=None, help="device count, when an axis is -1")
  parser.add_argument("--stage", default="sft", choices=STAGES)
  parser.add_argument("--accelerator", default=None, choices=sorted(ACCELERATORS))
  parser.add_argument("--no-compile", dest="compile", action="store_false",
                      help="lower only; estimate activations")
  parser.add_argument("--vocab_size", type=int, default=None)
  parser.add_argument("--json", action="store_true", help="print the plan as JSON")
  args, rest = parser.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments {bad} (config overrides look like --config.key=value)")
  try:
    config = load_config(args.config, rest)
    section = parallel.parse_mesh(args.mesh) if args.mesh else (
        config.get("mesh") if "mesh" in config else None)
    sizes = parallel.mesh_shape(section, args.devices)
    n = math.prod(sizes.values())
    if args.compile:
      _simulate_cpu_devices(n)
    result = plan(config, sizes, stage=args.stage, compile_step=args.compile,
                  vocab_size=args.vocab_size)
  except SafecompError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(result, indent=2))
  else:
    print(format_plan(result, [args.accelerator] if args.accelerator else tuple(ACCELERATORS)))
  if args.accelerator:
    return 0 if result["fits"][args.accelerator]["fits"] else 3
  return 0


def _simulate_cpu_devices(n: int):
  """Gives the CPU backend `n` devices, so a CPU-only machine can compile for the mesh.

  Only takes effect before JAX creates its backends (true when run as `python -m safecomp.memory`);
  on a machine with accelerators the default backend (and its devices) is used as it is.
  """
  try:
    jax.config.update("jax_num_cpu_devices", max(n, 1))
  except RuntimeError:  # backends already exist: keep them
    pass


if __name__ == "__main__":
  sys.exit(main())
