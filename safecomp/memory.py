"""Per-device memory plan of a training stage on a mesh, without allocating any weights.

    python -m safecomp.memory --config configs/llama3_8b_v5e_64.py [--mesh data=1,fsdp=16,tensor=4]
        [--stage sft|rm|ppo] [--accelerator v5e] [--no-compile] [--json] [--config.key=value ...]

The PPO stage is planned as `run_ppo` runs it: the step comes from `training.ppo.build_ppo_step`
(policy with a shared value head or a separate critic, as `ppo.critic` says; the reward model inside
the compiled rollout when `reward.grader=rm`, else a sampler and an update with the reward graded on
the host in between). Parameters, optimizer state, frozen models (PPO reference and reward model),
the batch and the rollout KV cache are counted exactly from `jax.eval_shape` and the shardings the
step uses (largest shard per device). With LoRA adapters (`lora.rank` > 0) the state is the one the
stages build (`lora.TrainState`): parameters and optimizer state are the adapters' and fresh heads'
only, and the frozen base is counted once among the frozen weights (PPO: with the reference's SFT
adapters on that same base, and the reward model). Activations come from each compiled step's
`memory_analysis()` when this machine has as many devices as the mesh (on a CPU-only machine the CLI
simulates them, so the numbers are those of XLA:CPU's buffer assignment, which fuses less than
TPU/GPU and so tends to overstate them), and from an analytic estimate otherwise. The steps are
lowered against an `AbstractMesh` of the requested shape first, so shapes and shardings are checked
even when nothing is compiled.
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
from safecomp.models import lora
from safecomp import parallel
from safecomp.config import load_config, require
from safecomp.errors import SafecompError
from safecomp.training import loop as loop_lib
from safecomp.training import ppo as ppo_stage
from safecomp.training import rm as rm_lib
from safecomp.training import rollout as rollout_lib
from safecomp.training import sft as sft_lib

GiB = 1024 ** 3
# Memory per device (HBM) of named accelerators.
ACCELERATORS = {
    "v4": 32 * GiB,
    "v5e": 16 * GiB,
    "v5p": 95 * GiB,
    "h100": 80 * 10 ** 9,
}
STAGES = ("sft", "rm", "ppo")
STAGE_HEADS = {"sft": ("lm",), "rm": ("severity", "helpfulness")}


@dataclasses.dataclass
class StageSetup:
  """Everything needed to trace a supervised stage's step (all abstract)."""
  stage: str
  model_config: models.ModelConfig
  create: Any  # params -> train state
  step_fn: Any  # pure (state, batch) -> (state, metrics)
  batch: dict  # ShapeDtypeStructs
  microbatches: int
  rows: int  # global batch rows
  length: int  # tokens per row
  batch_key: str  # the config key that sets `rows`


def _section_steps(section: Any) -> int:
  return int(section.get("steps", section.get("iterations", 1)))


def stage_setup(config: Any, stage: str, vocab_size: int | None = None) -> StageSetup:
  """The model, state constructor, pure step and abstract batch of the supervised `stage` (sft, rm)."""
  # Imported lazily: the training package pulls in checkpointing and metric writers.

  require(stage in STAGE_HEADS, "stage", f"{stage!r} is not one of {tuple(STAGE_HEADS)}")
  cfg = models.model_config_from(config, STAGE_HEADS[stage], vocab_size=vocab_size)
  model = models.Transformer(cfg)
  length = int(config.max_seq_len)
  tokens = lambda b, t: jax.ShapeDtypeStruct((b, t), jnp.int32)
  section = config[stage]
  b = int(section.batch_size)
  micro = int(section.get("microbatches", 1))
  tx = loop_lib.make_optimizer(section, _section_steps(section))
  # With adapters (`lora.rank`) only the adapters and fresh heads train: the base sits in `state.frozen`.
  create = lambda p: loop_lib.new_state(p, tx, adapters=bool(cfg.lora_rank), quantization=cfg.base_quantization)
  batch = {"tokens": tokens(b, length), "attention_mask": tokens(b, length)}
  if stage == "sft":
    batch["loss_mask"] = tokens(b, length)
    step_fn = sft_lib.sft_step_fn(model, microbatches=micro)
  else:
    batch["severity"] = jax.ShapeDtypeStruct((b,), jnp.int32)
    batch["helpfulness"] = jax.ShapeDtypeStruct((b,), jnp.float32)
    weights = {"severity": section.severity_weight, "helpfulness": section.helpfulness_weight}
    step_fn = rm_lib.rm_step_fn(model, weights, section.helpfulness_loss, microbatches=micro)
  return StageSetup(stage, cfg, create, step_fn, batch, micro, b, length, f"{stage}.batch_size")


def ppo_step(config: Any, mesh: Any, vocab_size: int | None = None):
  """The `training.ppo.PPOStep` that `run_ppo` builds for `config` on `mesh`, from the config alone.

  The actor-critic follows `ppo.critic`; `reward.grader=rm` puts a reward model of the policy's size in
  the compiled rollout; `oracle` and `http` grade on the host (a sampler, then the update).
  """

  actor = ppo_stage.abstract_actor_critic(config, vocab_size)
  grader = config.reward.grader
  scorer = None
  if grader == "rm":
    rm_config = models.model_config_from(config, ("severity", "helpfulness"), vocab_size=vocab_size)
    scorer = rollout_lib.RewardModelScorer(models.Transformer(rm_config))
  elif grader == "judge":
    # Its rubric prompts' shapes come from the judge's tokenizer and the training prompts.
    raise SafecompError("config key 'reward.grader': the planner does not plan a judge inside the rollout; "
                        "plan with --config.reward.grader=rm (the judge's parameters and rubric prompts come "
                        "on top)")
  cfg = actor.policy_model.config
  return ppo_stage.build_ppo_step(config, actor, scorer, mesh, stop_ids=tuple(cfg.eos_ids) or (0,),
                                  pad_id=cfg.pad_token_id or 0)


def count_params(cfg: models.ModelConfig) -> int:
  shapes, _ = parallel.abstract_params(cfg)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def tree_size(tree: Any) -> int:
  """Number of parameters (elements) in a tree of (abstract) arrays."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _frozen_base_bytes(abstract_state: Any, shardings: Any) -> int:
  """Per-device bytes of a train state's frozen base weights (`lora.TrainState.frozen`; 0 without adapters)."""
  if getattr(abstract_state, "frozen", None) is None:
    return 0
  return parallel.shard_bytes(abstract_state.frozen, shardings.frozen)


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
  logits = 3 * b * t * vocab * 4 if "lm" in cfg.heads else 0
  return int(cfg.num_layers * saved + full_layer + logits)


@dataclasses.dataclass
class Program:
  """One compiled computation of a stage (a stage runs one, or several one after another)."""
  lowered: Any  # jax.stages.Lowered
  batch_bytes: int  # per device: the batch argument (host batch, or rollout + scores)
  activation_estimate_bytes: int  # analytic: activations, gradients, KV cache


@dataclasses.dataclass
class LoweredStage:
  """A stage's steps lowered against an AbstractMesh, with the shardings they were lowered with."""
  stage: str
  model_config: models.ModelConfig  # the trained model (PPO: the policy)
  mesh: Any  # AbstractMesh
  rules: tuple
  abstract_state: Any
  state_shardings: Any
  # Per device: weights held but not trained: the frozen base under adapters (once), the PPO reference
  # (the SFT adapters on that base, or a whole copy without adapters) and reward model
  # (`details["frozen_parts"]` has each).
  frozen_bytes: int
  kv_cache_bytes: int  # per device: the rollout's KV cache (inside the rollout's activations)
  programs: dict  # name -> Program, in the order a step runs them
  platform: str
  details: dict  # what was planned (critic, grader, rows, ...)

  @property
  def lowered(self) -> Any:
    """The program that updates the parameters (the only one of SFT, RM and fused PPO)."""
    return list(self.programs.values())[-1].lowered


def lower_stage(config: Any, mesh_sizes: dict[str, int], *, stage: str = "sft",
                vocab_size: int | None = None, platform: str | None = None) -> LoweredStage:
  """Lowers `stage`'s sharded steps for an AbstractMesh of `mesh_sizes` on `platform`.

  No weights are allocated and no devices are needed: arguments are ShapeDtypeStructs carrying
  NamedShardings over the abstract mesh. Checks batch sizes against the batch axes first.
  """
  require(stage in STAGES, "stage", f"{stage!r} is not one of {STAGES}")
  mesh = parallel.abstract_mesh(mesh_sizes)
  platform = platform or jax.default_backend()
  tensor = parallel.mesh_sizes(mesh)["tensor"]
  if stage == "ppo":
    step = ppo_step(config, mesh, vocab_size)
    rules, cfg = step.rules, step.actor.policy_model.config
    p = config.ppo
    rows, width = int(p.prompts_per_iteration), int(config.max_prompt_len) + int(p.max_new_tokens)
    local = rows // parallel.batch_divisor(mesh, rules)
    trained = [m.config for m in (step.actor.policy_model, step.actor.critic_model) if m is not None]
    # The update's forward/backward runs one minibatch at a time, through the policy and the critic.
    update = sum(estimate_activation_bytes(m, max(local // int(p.num_minibatches), 1), width, tensor)
                 for m in trained)
    update += parallel.shard_bytes(step.abstract_state.params, step.state_shardings.params)  # gradients
    kv = kv_cache_bytes(cfg, rows, width, mesh, rules)
    chunk = int(p.score_chunk_rows) or rows
    vocab = cfg.vocab_size // tensor if cfg.vocab_size % tensor == 0 else cfg.vocab_size
    # Sampling holds the KV cache; scoring the float32 logits of policy and reference, a chunk at a time.
    rollout = kv + 2 * max(local * chunk // rows, 1) * width * vocab * 4
    # Held but not trained: with adapters the policy's base (once, under policy, critic and reference)
    # and the SFT adapters the reference adds to it; without, a whole copy of the SFT policy. Plus the
    # reward model scoring inside the rollout.
    base = _frozen_base_bytes(step.abstract_state, step.state_shardings)
    frozen_parts = {"base": base} if base else {}
    frozen_parts["reference"] = parallel.shard_bytes(step.abstract_ref, step.ref_shardings)
    if step.scorer is not None:
      frozen_parts["reward_model"] = parallel.shard_bytes(step.abstract_scorer, step.scorer_shardings)
    estimates = {"rollout+update": max(update, rollout), "rollout": rollout, "update": update}
    lowered = step.lower(platform)
    programs = {name: Program(lowered[name], parallel.shard_bytes(args[1], jax.tree.map(
                    lambda x: x.sharding, args[1])), estimates[name])
                for name, (_, args) in step.programs().items()}
    details = {"critic": config.ppo.critic, "grader": config.reward.grader,
               "reward_on_device": step.scorer is not None, "rows": rows, "length": width,
               "batch_key": "ppo.prompts_per_iteration", "score_chunk_rows": int(p.score_chunk_rows),
               "trained_params": tree_size(step.abstract_state.params), "frozen_parts": frozen_parts}
    return LoweredStage(stage, cfg, mesh, rules, step.abstract_state, step.state_shardings,
                        sum(frozen_parts.values()), kv, programs, platform, details)

  rules = parallel.rules_from_config(config)
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
  lowered = step.lower(parallel.with_shardings(abstract_state, ssh),
                       parallel.with_shardings(setup.batch, bsh), platform=platform)
  local = setup.rows // parallel.batch_divisor(mesh, rules) // setup.microbatches
  # Gradients live alongside the activations (sharded like the parameters, in their dtype).
  estimate = (estimate_activation_bytes(setup.model_config, max(local, 1), setup.length, tensor)
              + parallel.shard_bytes(abstract_state.params, ssh.params))
  frozen = _frozen_base_bytes(abstract_state, ssh)
  details = {"rows": setup.rows, "length": setup.length, "batch_key": setup.batch_key,
             "microbatches": setup.microbatches, "trained_params": tree_size(abstract_state.params),
             "frozen_parts": {"base": frozen} if frozen else {}}
  return LoweredStage(stage, setup.model_config, mesh, rules, abstract_state, ssh, frozen, 0,
                      {"step": Program(lowered, parallel.shard_bytes(setup.batch, bsh), estimate)},
                      platform, details)


def plan(config: Any, mesh_sizes: dict[str, int], *, stage: str = "sft", compile_step: bool = True,
         vocab_size: int | None = None, lowering_platform: str | None = None) -> dict:
  """The per-device memory plan of `stage` on a mesh of `mesh_sizes` (see module docstring).

  Args:
    config: experiment ConfigDict.
    mesh_sizes: {data, fsdp, tensor}, fully resolved (no -1).
    stage: "sft", "rm" or "ppo".
    compile_step: compile the lowered steps for `memory_analysis()` when this process has enough
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
  """The memory plan of a lowered stage; compiles it first when `compile_step` (needs devices).

  Each program's peak is what stays resident (parameters, optimizer state, frozen models) plus its
  batch, its temporaries (activations, gradients, the KV cache) and its outputs that do not reuse a
  donated input; the stage's total is the largest peak. Compiled, a program's peak is its
  `memory_analysis()` (arguments + outputs - aliased + temporaries) plus whatever is resident without
  being one of its arguments.
  """
  del config  # everything planned is in `low`
  mesh, cfg = low.mesh, low.model_config
  mesh_sizes = parallel.mesh_sizes(mesh)
  n = math.prod(mesh_sizes.values())
  ssh = low.state_shardings
  out = {
      "stage": low.stage, "mesh": dict(mesh_sizes), "devices": n, "lowered_for": low.platform,
      "model": {"family": cfg.family, "params": count_params(cfg), "layers": cfg.num_layers,
                "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "dtype": cfg.dtype,
                "param_dtype": cfg.param_dtype, "remat": cfg.remat},
      **low.details,
      "params_bytes": parallel.shard_bytes(low.abstract_state.params, ssh.params),
      "optimizer_bytes": parallel.shard_bytes(low.abstract_state.opt_state, ssh.opt_state),
      "frozen_bytes": low.frozen_bytes,
      "kv_cache_bytes": low.kv_cache_bytes,
  }
  if cfg.lora_rank:
    # Global counts: what the optimizer sees (adapters, fresh heads) and the base held once beside it
    # (its parameters, whether or not its kernels are stored quantised).
    base = lora.split(parallel.abstract_params(dataclasses.replace(cfg, base_quantization="none"))[0])[0]
    out["lora"] = {"rank": int(cfg.lora_rank), "alpha": float(cfg.lora_alpha),
                   "targets": ",".join(cfg.lora_targets), "base_quantization": cfg.base_quantization,
                   "trainable_params": tree_size(low.abstract_state.params),
                   "frozen_params": tree_size(base)}
  resident = out["params_bytes"] + out["optimizer_bytes"] + out["frozen_bytes"]
  devices = tuple(jax.devices()[:n]) if compile_step else None
  programs = {}
  for name, program in low.programs.items():
    entry = {"batch_bytes": program.batch_bytes,
             "activation_estimate_bytes": program.activation_estimate_bytes}
    stats = program.lowered.compile(device_assignment=devices).memory_analysis() if compile_step else None
    if stats is not None:
      entry["compiled"] = {"argument_bytes": int(stats.argument_size_in_bytes),
                           "output_bytes": int(stats.output_size_in_bytes),
                           "alias_bytes": int(stats.alias_size_in_bytes),
                           "temp_bytes": int(stats.temp_size_in_bytes),
                           "code_bytes": int(stats.generated_code_size_in_bytes)}
      entry["activation_bytes"] = entry["compiled"]["temp_bytes"]
      entry["activation_source"] = f"compiled for {low.platform}: temp buffers"
      entry["output_bytes"] = entry["compiled"]["output_bytes"] - entry["compiled"]["alias_bytes"]
      # Resident buffers that are not among this program's arguments (e.g. the optimizer state
      # while sampling) are held all the same.
      entry["total_bytes"] = (resident + program.batch_bytes - entry["compiled"]["argument_bytes"]
                              + xla_total(entry["compiled"]))
    else:
      entry["activation_bytes"] = program.activation_estimate_bytes
      entry["activation_source"] = "estimate"
      entry["output_bytes"] = 0
      entry["total_bytes"] = resident + program.batch_bytes + entry["activation_bytes"]
    programs[name] = entry
  peak_name = max(programs, key=lambda k: programs[k]["total_bytes"])
  peak = programs[peak_name]
  out.update(programs=programs, peak_program=peak_name, batch_bytes=peak["batch_bytes"],
             activation_bytes=peak["activation_bytes"], activation_source=peak["activation_source"],
             activation_estimate_bytes=peak["activation_estimate_bytes"], output_bytes=peak["output_bytes"],
             total_bytes=peak["total_bytes"])
  if "compiled" in peak:
    out["compiled"] = peak["compiled"]
  out["fits"] = {name: {"capacity_bytes": cap, "fits": out["total_bytes"] <= cap,
                        "utilisation": out["total_bytes"] / cap}
                 for name, cap in ACCELERATORS.items()}
  return out


def xla_total(compiled: dict) -> int:
  """Bytes XLA reserves for one compiled program: arguments + outputs - aliased + temporaries."""
  return (compiled["argument_bytes"] + compiled["output_bytes"] - compiled["alias_bytes"]
          + compiled["temp_bytes"])


def _size(x: float) -> str:
  for unit, scale in (("GiB", GiB), ("MiB", 1024 ** 2), ("KiB", 1024)):
    if x >= scale:
      return f"{x / scale:8.2f} {unit}"
  return f"{x:8.0f} B  "


def _count(n: int) -> str:
  if n >= 1e9:
    return f"{n / 1e9:.2f}B"
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def format_plan(result: dict, accelerators: Sequence[str] = tuple(ACCELERATORS)) -> str:
  """Human-readable plan (what the CLI prints)."""
  m, mesh = result["model"], result["mesh"]
  count_text = _count(m["params"])
  lines = [
      f"stage {result['stage']} on mesh data={mesh['data']} fsdp={mesh['fsdp']} "
      f"tensor={mesh['tensor']} ({result['devices']} devices), lowered for {result['lowered_for']}",
      f"model: {m['family']}, {count_text} parameters, {m['layers']} layers, hidden "
      f"{m['hidden_size']}, vocab {m['vocab_size']}; compute {m['dtype']}, parameters "
      f"{m['param_dtype']}, remat {m['remat']}",
  ]
  if "lora" in result:
    a = result["lora"]
    quantized = "" if a["base_quantization"] == "none" else f" ({a['base_quantization']} layer kernels)"
    lines.append(f"lora: rank {a['rank']}, alpha {a['alpha']:g}, targets {a['targets']}: "
                 f"{_count(a['trainable_params'])} trainable parameters (adapters, fresh heads) on a frozen "
                 f"base of {_count(a['frozen_params'])}{quantized}, held once; the optimizer state covers the "
                 "adapters only")
  if result["stage"] == "ppo":
    where = "in the compiled rollout" if result["reward_on_device"] else "on the host, between sampler and update"
    lines.append(f"ppo: critic {result['critic']}, reward.grader {result['grader']} ({where}), "
                 f"{result['rows']} rows of {result['length']} tokens, score_chunk_rows "
                 f"{result['score_chunk_rows'] or 'all'}")
  lines += [
      "per device:",
      f"  parameters                {_size(result['params_bytes'])}",
      f"  optimizer state           {_size(result['optimizer_bytes'])}",
  ]
  parts = result.get("frozen_parts") or {}
  if "base" in parts:  # adapters on a frozen base: the base once, then what else is held frozen
    lines.append(f"  frozen base (once)        {_size(parts['base'])}")
    if "reference" in parts:
      lines.append(f"  reference (SFT adapters)  {_size(parts['reference'])}")
    if "reward_model" in parts:
      lines.append(f"  reward model (adapters)   {_size(parts['reward_model'])}")
  elif result["frozen_bytes"]:
    lines.append(f"  frozen models (ref, RM)   {_size(result['frozen_bytes'])}")
  if result["kv_cache_bytes"]:
    lines.append(f"  KV cache (rollout)        {_size(result['kv_cache_bytes'])}  (part of the rollout's activations)")
  for name, program in result["programs"].items():
    note = program["activation_source"]
    if "compiled" in program:
      note += f"; analytic estimate {_size(program['activation_estimate_bytes']).strip()}"
    lines += [f"  step {name}{'  (peak)' if name == result['peak_program'] and len(result['programs']) > 1 else ''}:",
              f"    batch                   {_size(program['batch_bytes'])}",
              f"    activations + gradients {_size(program['activation_bytes'])}  ({note})"]
    if program["output_bytes"]:
      lines.append(f"    outputs (not donated)   {_size(program['output_bytes'])}")
    lines.append(f"    total                   {_size(program['total_bytes'])}")
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
