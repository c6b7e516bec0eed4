"""Speed and memory benchmarks; prints Markdown tables (see BENCHMARKS.md for what each row means).

    python benchmarks/run.py                      # everything (minutes on 2 CPU cores)
    python benchmarks/run.py --quick              # smaller shapes, a smoke version
    python benchmarks/run.py --sections sft,ppo   # some sections only

Sections: `sft` (matmul peak, SFT step tokens/s and MFU), `generate` (KV-cache generation against
Hugging Face `generate`), `ppo` (one PPO iteration against TRL / plain PyTorch), `scaling` (SFT step
time over sequence length x batch size).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
from typing import Any, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
import jax

from benchmarks import common
from benchmarks import generation as generation_lib
from benchmarks import ppo as ppo_lib
from benchmarks import sft as sft_lib
from safecomp import config as config_lib
from safecomp import models
# pylint: enable=wrong-import-position

SECTIONS = ("sft", "generate", "ppo", "scaling", "packing", "lora")
DEMO_CONFIG = ROOT / "configs" / "demo.py"


def small_config(**overrides) -> models.ModelConfig:
  base = dict(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
              head_dim=64, intermediate_size=768, max_position_embeddings=2048, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
  base.update(overrides)
  return models.ModelConfig(**base)


def medium_config(**overrides) -> models.ModelConfig:
  base = dict(vocab_size=8192, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
              head_dim=64, intermediate_size=1536, max_position_embeddings=2048, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
  base.update(overrides)
  return models.ModelConfig(**base)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Every size knob of one benchmark run."""
  name: str
  peak_n: int
  sft: tuple  # ((name, ModelConfig, batch, seq_len), ...)
  gen_shape: generation_lib.LlamaShape
  gen_batches: tuple
  gen_prompt_len: int
  gen_new_tokens: int
  ppo_overrides: tuple  # (("ppo.prompts_per_iteration", 16), ...) applied to configs/demo.py
  ppo_vocab: int
  ppo_baselines: tuple
  scaling_config: models.ModelConfig
  scaling_seq_lens: tuple
  scaling_batches: tuple
  scaling_max_tokens: int
  packing: tuple = (256, 512, 8)  # (conversations, seq_len, batch rows) of the packing comparison
  min_reps: int = 3
  max_reps: int = 10
  target_s: float = 5.0


FULL = Sizes(
    name="full", peak_n=2048,
    sft=(("small", small_config(), 8, 256), ("medium", medium_config(), 8, 256)),
    gen_shape=generation_lib.LlamaShape(), gen_batches=(1, 32), gen_prompt_len=64,
    gen_new_tokens=64, ppo_overrides=(), ppo_vocab=ppo_lib.DEMO_VOCAB,
    ppo_baselines=("trl", "torch"), scaling_config=small_config(),
    scaling_seq_lens=(128, 512, 2048), scaling_batches=(1, 8, 32), scaling_max_tokens=8192,
    min_reps=3, max_reps=10, target_s=5.0)

QUICK = Sizes(
    name="quick", peak_n=1024,
    sft=(("small", small_config(), 4, 128), ("medium", medium_config(), 2, 128)),
    gen_shape=generation_lib.LlamaShape(), gen_batches=(1, 32), gen_prompt_len=32,
    gen_new_tokens=16,
    ppo_overrides=(("ppo.prompts_per_iteration", 16), ("ppo.max_new_tokens", 32)),
    ppo_vocab=ppo_lib.DEMO_VOCAB, ppo_baselines=("trl", "torch"), scaling_config=small_config(),
    scaling_seq_lens=(128, 512), scaling_batches=(1, 4), scaling_max_tokens=2048,
    min_reps=2, max_reps=3, target_s=1.0)

# The tiniest sizes: exercises every code path in seconds (the test suite); numbers mean nothing.
SMOKE = Sizes(
    name="smoke", peak_n=64,
    sft=(("tiny", models.tiny(), 1, 16),),
    gen_shape=generation_lib.LlamaShape(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                        num_kv_heads=1, head_dim=16, intermediate_size=64,
                                        max_position_embeddings=64),
    gen_batches=(2,), gen_prompt_len=4, gen_new_tokens=3,
    ppo_overrides=(("model.hidden_size", 32), ("model.num_layers", 1), ("model.num_heads", 2),
                   ("model.num_kv_heads", 1), ("model.head_dim", 16),
                   ("model.intermediate_size", 64), ("model.max_position_embeddings", 32),
                   ("max_prompt_len", 6), ("ppo.prompts_per_iteration", 4),
                   ("ppo.max_new_tokens", 3), ("ppo.epochs", 1)),
    ppo_vocab=64, ppo_baselines=("torch",), scaling_config=models.tiny(),
    scaling_seq_lens=(16,), scaling_batches=(1, 2), scaling_max_tokens=16, packing=(12, 32, 2),
    min_reps=1, max_reps=1, target_s=0.0)


def log(message: str):
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- sections
def matmul_peaks(sizes: Sizes, out: list, data: dict) -> list:
  """The float32 and bfloat16 matmul peaks of this run, measured (and reported) once: the SFT and
  generation sections both divide by the float32 one."""
  if "matmul_peak" not in data["raw"]:
    # Accelerators need larger products than a CPU to reach their peak.
    n = sizes.peak_n if jax.default_backend() == "cpu" or sizes.name == "smoke" else max(
        sizes.peak_n, 8192)
    log(f"matmul peak ({n}x{n})")
    peaks = [sft_lib.matmul_peak(n, dtype, sizes.min_reps, sizes.max_reps, sizes.target_s / 2)
             for dtype in ("float32", "bfloat16")]
    data["raw"]["matmul_peak"] = peaks
    data["matmul_peak"] = [{"dtype": r.dtype, "n": r.n, "flops_per_s": r.flops_per_s} for r in peaks]
    out.append("## Dense-matmul peak (this machine, this run)\n")
    out.append(sft_lib.peak_table(peaks))
    out.append("")
  return data["raw"]["matmul_peak"]


def section_sft(sizes: Sizes, out: list, data: dict) -> None:
  peaks = matmul_peaks(sizes, out, data)
  fp32_peak = peaks[0].flops_per_s
  results = []
  for name, cfg, batch, seq_len in sizes.sft:
    log(f"sft: {name} model, batch {batch} x {seq_len}")
    results.append(sft_lib.sft_step(name, cfg, batch, seq_len, sizes.min_reps, sizes.max_reps,
                                     sizes.target_s))
  data["raw"]["sft"] = {"steps": results}
  data["sft"] = sft_lib.sft_rows(results, fp32_peak)
  out.append("## SFT step (`make_sft_step`, AdamW, float32)\n")
  out.append(sft_lib.sft_table(results, fp32_peak))
  out.append("")
  out.append("Model FLOPs per step = 6 · N · T + 12 · layers · heads · head_dim · seq_len · T, "
             "with T = batch × seq_len tokens and N = the weights in matrix multiplies (every "
             "layer's attention and MLP projections plus the LM head; the embedding gather is not "
             "counted). "
             "The attention term is the QKᵀ and AV products over the full seq_len² square, forward "
             "and backward. MFU = model FLOP/s ÷ the float32 matmul FLOP/s measured above. XLA "
             "memory = arguments + outputs + temporaries − donated buffers, from "
             "`compiled.memory_analysis()`.")
  out.append("")


def section_generate(sizes: Sizes, out: list, data: dict, torch_threads: Any) -> None:
  fp32_peak = matmul_peaks(sizes, out, data)[0].flops_per_s
  log(f"generate: batches {sizes.gen_batches}")
  results = generation_lib.run_generation(
      sizes.gen_shape, sizes.gen_batches, sizes.gen_prompt_len, sizes.gen_new_tokens,
      sizes.min_reps, sizes.max_reps, sizes.target_s, torch_threads=torch_threads,
      peak_flops_per_s=fp32_peak)
  shape = sizes.gen_shape
  data["raw"]["generate"] = results
  data["generate"] = generation_lib.generation_rows(results)
  out.append("## Generation with the KV cache: safecomp `generate` (jitted) vs HF `generate`\n")
  out.append(f"Same weights (random `LlamaForCausalLM`, d={shape.hidden_size} L={shape.num_layers} "
             f"H={shape.num_heads}/{shape.num_kv_heads} hd={shape.head_dim} "
             f"ff={shape.intermediate_size} V={shape.vocab_size}, float32) saved with "
             "`save_pretrained` and loaded with `safecomp.models.load_pretrained`; greedy, exactly "
             "the given number of new tokens on both sides.\n")
  out.append(generation_lib.generation_table(results, shape))
  out.append("")
  out.append("tokens/s = batch × new tokens ÷ median wall time of one call (prompt prefill "
             "included). Calls alternate between the two sides after one warm-up call each. "
             "Compilation is excluded: safecomp is compiled ahead of time and its compile time is "
             "shown separately. "
             "\"same greedy tokens\" = fraction of generated tokens equal on both sides.")
  out.append("")
  out.append("### Where safecomp's generation time goes\n")
  out.append(generation_lib.generation_profile_table(results))
  out.append("")
  out.append("prompt forward = the jitted prefill alone (the prompt through every layer, filling the "
             "cache, first logits); per decode step = (call − prompt forward) ÷ new tokens. Model "
             "FLOPs / call = 2 · N per token of the prompt and of every decode step plus the "
             "attention products over the cache (N as in the SFT table). call at matmul peak = "
             "those FLOPs ÷ the float32 matmul FLOP/s of this run; share of matmul-bound rate = "
             "that time ÷ safecomp's call. HF call ÷ call at peak is the largest safecomp / HF "
             "ratio this machine allows at this size: no implementation runs the same FLOPs "
             "faster than the measured peak.")
  out.append("")


def demo_config(overrides: Sequence[tuple] = ()):
  """configs/demo.py with `(dotted key, value)` overrides (keys must exist)."""
  c = config_lib.load_config(str(DEMO_CONFIG))
  for key, value in overrides:
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(f"configs/demo.py has no key {key!r}")
    node[leaf] = value
  return c


def section_ppo(sizes: Sizes, out: list, data: dict, torch_threads: Any, baselines: Optional[Sequence[str]]):
  c = demo_config(sizes.ppo_overrides)
  baselines = tuple(baselines) if baselines is not None else sizes.ppo_baselines
  log(f"ppo: {c.ppo.prompts_per_iteration} prompts x {c.ppo.max_new_tokens} new tokens, "
      f"baselines {baselines}")
  result = ppo_lib.run_ppo(c, vocab_size=sizes.ppo_vocab, baselines=baselines,
                           min_reps=sizes.min_reps, max_reps=min(sizes.max_reps, 6),
                           target_s=sizes.target_s * 2, torch_threads=torch_threads, adapter_rank=16)
  shown = "`configs/demo.py`" + (
      " with " + ", ".join(f"{k}={v}" for k, v in sizes.ppo_overrides) if sizes.ppo_overrides
      else "")
  data["raw"]["ppo"] = result
  data["ppo"] = ppo_lib.ppo_rows(result)
  out.append("## One PPO iteration (rollout + update), demo config\n")
  out.append(f"{shown}: policy {common.describe(result.config)}, {result.critic} critic "
             f"(`ppo.critic`), reward model of "
             f"the same size, {result.prompts} prompts (left-padded to {result.prompt_len}), up to "
             f"{result.new_tokens} new tokens (sampled, temperature {c.ppo.temperature}), "
             f"{result.epochs} epochs x {result.minibatches} minibatches, random weights. safecomp "
             f"XLA memory: {common.fmt_mib(result.xla_bytes)}.\n")
  out.append(ppo_lib.ppo_table(result))
  out.append("")
  out.append("s / iteration = median wall time of one full iteration after a warm-up iteration. "
             "\"time vs safecomp\" = baseline time ÷ safecomp time. tokens / response = mean "
             "generated tokens per response (random policies rarely emit EOS, so responses run "
             "close to the limit on every side). of which sampling = median time of the sampling "
             "(`generate`) alone and its share of the iteration: for safecomp the rollout's "
             "sampling compiled and timed on its own, for the PyTorch loop its `generate` call "
             "timed inside each iteration; TRL's is not separated.")
  out.append("")


def section_packing(sizes: Sizes, out: list, data: dict) -> None:
  conversations, seq_len, batch = sizes.packing
  cfg = sizes.scaling_config
  if seq_len > cfg.max_position_embeddings:
    cfg = cfg.replace(max_position_embeddings=seq_len)
  log(f"packing: {conversations} conversations, rows of {seq_len}, batch {batch}")
  result = sft_lib.packing_gain(cfg, conversations, seq_len, batch, sizes.min_reps, sizes.max_reps, sizes.target_s)
  data["raw"]["packing"] = result
  data["packing"] = sft_lib.packing_rows(result)
  median, sigma = sft_lib.PUBLIC_LENGTHS
  out.append("## Sequence packing: one SFT pass over conversations of public-set lengths\n")
  out.append(f"Small config ({common.describe(cfg)}), {conversations} conversations with lognormal lengths "
             f"(median {median:.0f} tokens, log-sd {sigma}, like HH-RLHF harmless-base; clipped to 8..{seq_len}), "
             f"batches of {batch} rows. One per row: each batch cut to its longest row (rounded up to 64), as "
             f"`sft.packing=False` trains; packed: rows of {seq_len} tokens (`sft.packing=True`).\n")
  out.append(sft_lib.packing_table(result))
  out.append("")
  out.append("Each pass is timed after a warm-up pass that compiles every shape; the packed pass's time is "
             "scaled to the same number of real tokens as the padded one.")
  out.append("")


def section_lora(sizes: Sizes, out: list, data: dict) -> None:
  name, cfg, batch, seq_len = sizes.sft[-1]
  variants = [cfg, cfg.replace(lora_rank=16, lora_alpha=32.0),
              cfg.replace(lora_rank=16, lora_alpha=32.0, param_dtype="bfloat16"),
              cfg.replace(lora_rank=16, lora_alpha=32.0, base_quantization="int8"),
              cfg.replace(lora_rank=16, lora_alpha=32.0, base_quantization="nf4")]
  results = []
  for variant in variants:
    log(f"lora: {name} model, rank {variant.lora_rank}, base {variant.param_dtype} / {variant.base_quantization}")
    results.append(sft_lib.sft_step(name, variant, batch, seq_len, sizes.min_reps, sizes.max_reps, sizes.target_s))
  data["raw"]["lora"] = results
  data["lora"] = [{"lora_rank": r.config.lora_rank, "param_dtype": r.config.param_dtype,
                   "base_quantization": r.config.base_quantization, "step_s": r.timing.median,
                   "step_vs_full": r.timing.median / results[0].timing.median, "xla_bytes": r.xla_bytes,
                   **{f"{k}_bytes": v for k, v in r.state_bytes.items()}} for r in results]
  out.append("## Adapters: an SFT step with LoRA and QLoRA against full fine-tuning\n")
  out.append(f"{name.capitalize()} config ({common.describe(cfg)}), batch {batch} x {seq_len}, AdamW, float32 "
             "compute; adapters on every projection (q, k, v, o, gate, up, down), alpha 32.\n")
  out.append(sft_lib.adapter_table(results))
  out.append("")
  out.append("held between steps = trained parameters + optimizer state + frozen base (what stays in memory "
             "from one step to the next; the embedding and LM head stay in `param_dtype` under int8/NF4). "
             "XLA memory = the compiled step's arguments + outputs + temporaries − donated buffers.")
  out.append("")


def section_scaling(sizes: Sizes, out: list, data: dict) -> None:
  log(f"scaling: seq {sizes.scaling_seq_lens} x batch {sizes.scaling_batches}")
  cells = sft_lib.scaling(sizes.scaling_config, sizes.scaling_seq_lens, sizes.scaling_batches,
                          sizes.scaling_max_tokens, max(sizes.min_reps - 1, 1),
                          max(sizes.max_reps // 2, 1), sizes.target_s / 2)
  data["raw"]["scaling"] = cells
  data["scaling"] = [{"seq_len": seq_len, "batch": batch, "step_s": None if r is None else r.timing.median,
                      "tokens_per_s": None if r is None else r.tokens_per_s} for seq_len, batch, r in cells]
  out.append("## SFT step time vs sequence length and batch size\n")
  out.append(f"Small config ({common.describe(sizes.scaling_config)}); cells above "
             f"{sizes.scaling_max_tokens} tokens per step are skipped to bound the run time.\n")
  out.append(sft_lib.scaling_table(cells))
  out.append("")
  out.append("\"vs first\" columns compare with the first measured cell: time per token stays flat "
             "where cost is linear in tokens and grows with seq_len where the attention term "
             "(quadratic in seq_len) matters.")
  out.append("")


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--quick", action="store_true", help="smaller shapes, a smoke version")
  size.add_argument("--smoke", action="store_true",
                    help="the tiniest sizes (seconds; used by the tests, numbers mean nothing)")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated subset of {','.join(SECTIONS)}")
  parser.add_argument("--ppo-baselines", default=None,
                      help="comma-separated subset of trl,torch (default: both; --smoke: torch)")
  parser.add_argument("--torch-threads", default="auto",
                      help="torch intra-op threads for the PyTorch sides: an integer, or 'auto' "
                           "(the faster of torch's default and 1, probed per benchmark)")
  parser.add_argument("--scaling-max-tokens", type=int, default=None,
                      help="skip scaling cells with more tokens per step (default: 8192; "
                           "--quick: 2048)")
  parser.add_argument("--output", default=None, help="also write the Markdown report to this file")
  parser.add_argument("--json", default=None, help="also write every measurement as JSON to this file")
  args = parser.parse_args(argv)
  sections = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    parser.error(f"unknown sections {unknown}; expected a subset of {list(SECTIONS)}")
  args.sections = [s for s in SECTIONS if s in sections]
  if args.ppo_baselines is not None:
    args.ppo_baselines = [b.strip() for b in args.ppo_baselines.split(",") if b.strip()]
    bad = sorted(set(args.ppo_baselines) - {"trl", "torch"})
    if bad:
      parser.error(f"unknown PPO baselines {bad}; expected a subset of ['trl', 'torch']")
  if args.torch_threads != "auto":
    try:
      args.torch_threads = int(args.torch_threads)
    except ValueError:
      parser.error(f"--torch-threads={args.torch_threads!r} must be an integer or 'auto'")
  return args


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Runs the selected sections; prints and returns the Markdown report."""
  args = parse_args(argv)
  sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
  if args.scaling_max_tokens is not None:
    sizes = dataclasses.replace(sizes, scaling_max_tokens=args.scaling_max_tokens)
  common.set_compiler_options(common.FAST_COMPILE_OPTIONS if args.smoke else None)
  if {"generate", "ppo"} & set(args.sections):
    common.torch_default_threads()  # record torch's default before any benchmark changes it
  start = time.perf_counter()
  info = common.machine_info()
  command = " ".join(["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
  out = [f"# safecomp benchmarks ({sizes.name} sizes)\n",
         f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} with `{command}`.\n",
         common.markdown_table(["machine", ""], list(info.items())), ""]
  # JSON: one list of rows per table (numbers), and the full measurements under "raw".
  load_rows, data = [], {"command": command, "machine": info, "raw": {}}
  for section in args.sections:
    before = common.load_average()
    t0 = time.perf_counter()
    if section == "sft":
      section_sft(sizes, out, data)
    elif section == "generate":
      section_generate(sizes, out, data, args.torch_threads)
    elif section == "ppo":
      section_ppo(sizes, out, data, args.torch_threads, args.ppo_baselines)
    elif section == "scaling":
      section_scaling(sizes, out, data)
    elif section == "packing":
      section_packing(sizes, out, data)
    elif section == "lora":
      section_lora(sizes, out, data)
    load_rows.append((section, common.fmt_s(time.perf_counter() - t0), before,
                      common.load_average()))
  out.append("## Run\n")
  out.append(common.markdown_table(["section", "wall time", "load average before (1/5/15 min)",
                                    "after"], load_rows))
  out.append("")
  out.append(f"Total {common.fmt_s(time.perf_counter() - start)}; peak resident memory of the "
             f"process {common.fmt_mib(common.max_rss_bytes())}. A load average above the core "
             "count means other processes shared the CPU while this ran.")
  report = "\n".join(out) + "\n"
  print(report)
  if args.output:
    pathlib.Path(args.output).write_text(report, encoding="utf-8")
  if args.json:
    data["run"] = [dict(zip(("section", "wall_time", "load_before", "load_after"), row)) for row in load_rows]
    pathlib.Path(args.json).write_text(json.dumps(_jsonable(data), indent=1) + "\n", encoding="utf-8")
  return report


def _jsonable(obj: Any) -> Any:
  """Result dataclasses, tuples and numpy scalars as plain JSON values (configs as their repr)."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  if hasattr(obj, "item"):
    return obj.item()
  return repr(obj)


if __name__ == "__main__":
  # On a GPU the PyTorch sides share the device with JAX: let JAX allocate as it goes (read when
  # the backend starts, which is after this line).
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  main()
