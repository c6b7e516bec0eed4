"""Dense-matmul peak and the SFT step: tokens/s, model FLOP utilisation, XLA memory, scaling."""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.training import train_state

from benchmarks import common
from safecomp import models
from safecomp.training import batching
from safecomp.training import loop as loop_lib
from safecomp.training import sft as sft_lib


# ------------------------------------------------------------------------------------ matmul peak
@dataclasses.dataclass
class PeakResult:
  dtype: str
  n: int
  flops_per_s: float
  timing: common.Timing


def matmul_peak(n: int, dtype: str, min_reps: int = 3, max_reps: int = 10,
                target_s: float = 2.0) -> PeakResult:
  """FLOP/s of one jitted n x n x n matmul (2 n^3 FLOPs), median over repetitions."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(keys[1], (n, n), jnp.float32).astype(dtype)
  compiled = common.compile_lowered(jax.jit(jnp.matmul).lower(a, b))
  timing = common.measure_adaptive(lambda: compiled(a, b), min_reps, max_reps, target_s)
  return PeakResult(dtype=dtype, n=n, flops_per_s=2.0 * n ** 3 / timing.median, timing=timing)


# --------------------------------------------------------------------------------------- SFT step
# Compiled steps by (config, batch, seq_len, compiler options): a shape measured twice in one run
# (a section and the scaling grid) compiles once; its compile time is the one first measured.
_COMPILED: dict = {}

@dataclasses.dataclass
class SFTResult:
  name: str
  config: models.ModelConfig
  batch: int
  seq_len: int
  n_params: int
  flops_per_step: float
  compile_s: float
  timing: common.Timing
  xla_bytes: Optional[int]
  state_bytes: Optional[dict] = None  # {"trained", "optimizer", "frozen"}: bytes held between steps

  @property
  def tokens_per_s(self) -> float:
    return self.batch * self.seq_len / self.timing.median

  @property
  def flops_per_s(self) -> float:
    return self.flops_per_step / self.timing.median

  def mfu(self, peak: Optional[float]) -> Optional[float]:
    return None if not peak else self.flops_per_s / peak


def sft_batch(config: models.ModelConfig, batch: int, seq_len: int, seed: int = 0) -> dict:
  """Random tokens, full attention, loss on the last three quarters of every row (int32 [B, L])."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, config.vocab_size, (batch, seq_len), dtype=np.int32)
  loss_mask = np.zeros((batch, seq_len), np.int32)
  loss_mask[:, seq_len // 4:] = 1
  return {"tokens": jnp.asarray(tokens), "attention_mask": jnp.ones((batch, seq_len), jnp.int32),
          "loss_mask": jnp.asarray(loss_mask)}


def optimizer_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=10, weight_decay=0.01,
                                        grad_clip=1.0))


def sft_step(name: str, config: models.ModelConfig, batch: int, seq_len: int, min_reps: int = 3,
             max_reps: int = 10, target_s: float = 5.0) -> SFTResult:
  """Times `make_sft_step(model)` (AdamW, guarded update) on one fixed batch; with adapters in `config`
  (`lora_rank`) the state is `loop_lib.new_state(..., adapters=True)`: the base frozen (and stored as
  `base_quantization` says), only the adapters trained."""
  key = (config, batch, seq_len, tuple(sorted(common.current_compiler_options().items())))
  cached = _COMPILED.get(key)
  model = cached["model"] if cached else models.Transformer(config)
  tx = cached["tx"] if cached else loop_lib.make_optimizer(optimizer_section(), 1000)
  params = models.init_params(config, jax.random.key(0))
  state = loop_lib.new_state(params, tx, adapters=bool(config.lora_rank), quantization=config.base_quantization)
  # An int32 array step (not Python 0) keeps the compiled signature fixed across steps.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  data = sft_batch(config, batch, seq_len)
  if cached is None:
    step = sft_lib.make_sft_step(model)
    t0 = time.perf_counter()
    compiled = common.compile_lowered(step.lower(state, data))
    cached = _COMPILED[key] = {"model": model, "tx": tx, "compiled": compiled,
                               "compile_s": time.perf_counter() - t0}
  compiled, compile_s = cached["compiled"], cached["compile_s"]
  holder = {"state": state}

  def call():
    holder["state"], metrics = compiled(holder["state"], data)
    return metrics

  timing = common.measure_adaptive(call, min_reps, max_reps, target_s)
  return SFTResult(name=name, config=config, batch=batch, seq_len=seq_len,
                   n_params=common.total_params(params), state_bytes=state_bytes(state),
                   flops_per_step=common.train_flops(config, batch, seq_len), compile_s=compile_s,
                   timing=timing, xla_bytes=common.xla_bytes(compiled))


def state_bytes(state) -> dict:
  """Bytes a training state holds between steps: trained parameters, optimizer state, frozen base."""
  size = lambda tree: int(sum(x.nbytes for x in jax.tree.leaves(tree)))
  return {"trained": size(state.params), "optimizer": size(state.opt_state),
          "frozen": size(getattr(state, "frozen", None))}


def adapter_table(results: Sequence[SFTResult]) -> str:
  """Full fine-tuning against adapters on the same model and batch, as ratios to the first row."""
  first = results[0]
  rows = []
  for r in results:
    b = r.state_bytes
    held = b["trained"] + b["optimizer"] + b["frozen"]
    first_held = sum(first.state_bytes.values())
    cfg = r.config
    base = cfg.base_quantization if cfg.base_quantization != "none" else cfg.param_dtype
    how = "all weights" if not cfg.lora_rank else f"LoRA r={cfg.lora_rank}, {base} base"
    rows.append((how, f"{b['trained'] // 4:,}", common.fmt_mib(b["trained"]), common.fmt_mib(b["optimizer"]),
                 common.fmt_mib(b["frozen"]), common.fmt_mib(held), f"{held / first_held:.2f}x",
                 common.fmt_s(r.timing.median), f"{r.timing.median / first.timing.median:.2f}x",
                 common.fmt_mib(r.xla_bytes), f"{len(r.timing.times)} ({r.timing.spread:.0%})"))
  return common.markdown_table(
      ["trains", "trained params", "trained (float32)", "optimizer state", "frozen base", "held between steps",
       "held vs first", "step (median)", "step vs first", "XLA memory", "reps (spread)"], rows)


def scaling(config: models.ModelConfig, seq_lens: Sequence[int], batches: Sequence[int],
            max_tokens: int, min_reps: int = 2, max_reps: int = 5,
            target_s: float = 3.0) -> list[tuple[int, int, Optional[SFTResult]]]:
  """The SFT step over a (seq_len x batch) grid; cells above `max_tokens` per step are skipped."""
  out = []
  for seq_len in seq_lens:
    cfg = config
    if seq_len > cfg.max_position_embeddings:
      cfg = cfg.replace(max_position_embeddings=seq_len)
    for batch in batches:
      if batch * seq_len > max_tokens:
        out.append((seq_len, batch, None))
        continue
      out.append((seq_len, batch, sft_step("scaling", cfg, batch, seq_len, min_reps, max_reps,
                                           target_s)))
  return out


# ------------------------------------------------------------------------------------------ packing
# Conversation lengths like the public sets': HH-RLHF harmless-base test conversations are lognormal
# with median ~110 tokens (words x 1.3) and log-sd 0.85 (p10 32, p90 322, p99 625 tokens).
PUBLIC_LENGTHS = (110.0, 0.85)


@dataclasses.dataclass
class PackingResult:
  conversations: int
  seq_len: int
  batch: int
  real_tokens: int
  padded: common.Timing  # one pass over the conversations, one per row (rows cut to the batch's longest)
  packed: common.Timing  # one pass over the same conversations packed into seq_len rows
  padded_rows: int
  packed_rows: int

  @property
  def gain(self) -> float:
    return self.padded.median / self.packed.median


def packing_gain(config: models.ModelConfig, conversations: int, seq_len: int, batch: int, min_reps: int = 2,
                 max_reps: int = 5, target_s: float = 5.0, pad_multiple: int = 64, seed: int = 0) -> PackingResult:
  """Real tokens per second of one SFT pass over conversations of public-set-like lengths, one per row
  (each batch cut to its longest row, rounded up to `pad_multiple`, as `sft.packing=False` trains)
  versus packed into `seq_len` rows (`sft.packing=True`); every compiled shape is warmed up first."""
  rng = np.random.default_rng(seed)
  median, sigma = PUBLIC_LENGTHS
  lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, conversations)), 8, seq_len).astype(int)
  tokens = rng.integers(3, config.vocab_size, (conversations, seq_len), dtype=np.int32)
  attention = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
  loss = attention * (np.arange(seq_len)[None, :] >= lengths[:, None] // 3)
  arrays = {"tokens": tokens * attention, "attention_mask": attention, "loss_mask": loss}
  padded = [batching.trim_padding({k: v[i:i + batch] for k, v in arrays.items()}, pad_multiple)
            for i in range(0, conversations - batch + 1, batch)]
  packed_arrays = batching.pack_rows(arrays, np.arange(conversations))
  n_rows = len(packed_arrays["tokens"]) // batch * batch
  packed = [{k: v[i:i + batch] for k, v in packed_arrays.items()} for i in range(0, n_rows, batch)]
  model = models.Transformer(config)
  tx = loop_lib.make_optimizer(optimizer_section(), 1000)
  step = sft_lib.make_sft_step(model)

  def epoch(batches):
    def run():
      # The step donates its state: each pass starts from a fresh copy of the same weights.
      state = train_state.TrainState.create(apply_fn=model.apply, params=jax.tree.map(jnp.copy, params), tx=tx)
      state = state.replace(step=jnp.zeros((), jnp.int32))
      for b in batches:
        state, metrics = step(state, b)
      return metrics
    return run

  params = models.init_params(config, jax.random.key(0))
  padded_tokens = sum(int(b["attention_mask"].sum()) for b in padded)
  packed_tokens = sum(int(b["attention_mask"].sum()) for b in packed)
  times = common.measure_interleaved({"padded": epoch(padded), "packed": epoch(packed)}, min_reps, max_reps,
                                     target_s)
  # Per real token: each side's time scaled to the same number of real tokens.
  scale = padded_tokens / max(packed_tokens, 1)
  packed_timing = common.Timing(times=[t * scale for t in times["packed"].times], first=times["packed"].first)
  return PackingResult(conversations=conversations, seq_len=seq_len, batch=batch, real_tokens=padded_tokens,
                       padded=times["padded"], packed=packed_timing, padded_rows=len(padded) * batch,
                       packed_rows=n_rows)


def packing_table(r: PackingResult) -> str:
  rows = [("one conversation per row", r.padded_rows, common.fmt_s(r.padded.median),
           common.fmt_rate(r.real_tokens / r.padded.median, "tok/s"), "1.00x"),
          ("packed (`sft.packing`)", r.packed_rows, common.fmt_s(r.packed.median),
           common.fmt_rate(r.real_tokens / r.packed.median, "tok/s"), f"{r.gain:.2f}x")]
  return common.markdown_table(["layout", "rows", "pass over the real tokens (median)", "real tokens/s",
                                "speed-up"], rows)


def packing_rows(r: PackingResult) -> list[dict]:
  return [{"layout": "padded", "rows": r.padded_rows, "real_tokens_per_s": r.real_tokens / r.padded.median},
          {"layout": "packed", "rows": r.packed_rows, "real_tokens_per_s": r.real_tokens / r.packed.median,
           "gain_vs_padded": r.gain}]


# ----------------------------------------------------------------------------------------- tables
def peak_table(peaks: Sequence[PeakResult]) -> str:
  rows = [(f"{p.dtype} {p.n}x{p.n} @ {p.n}x{p.n}", common.fmt_rate(p.flops_per_s, "FLOP/s"),
           common.fmt_s(p.timing.median), f"{len(p.timing.times)}", f"{p.timing.spread:.0%}")
          for p in peaks]
  return common.markdown_table(
      ["jitted matmul", "measured FLOP/s", "median time", "reps", "spread"], rows)


def sft_rows(results: Sequence[SFTResult], peak: Optional[float]) -> list[dict]:
  """The SFT table as JSON rows; `mfu` = model FLOP/s over the measured float32 matmul peak."""
  return [{"model": r.name, "n_params": r.n_params, "batch": r.batch, "seq_len": r.seq_len,
           "step_s": r.timing.median, "tokens_per_s": r.tokens_per_s, "flops_per_s": r.flops_per_s,
           "mfu": r.mfu(peak), "compile_s": r.compile_s, "xla_bytes": r.xla_bytes,
           "reps": len(r.timing.times), "spread": r.timing.spread} for r in results]


def sft_table(results: Sequence[SFTResult], peak: Optional[float]) -> str:
  rows = []
  for r in results:
    mfu = r.mfu(peak)
    rows.append((r.name, common.describe(r.config), f"{r.n_params / 1e6:.2f} M",
                 f"{r.batch} x {r.seq_len}", common.fmt_s(r.timing.median),
                 common.fmt_rate(r.tokens_per_s, "tok/s"), common.fmt_rate(r.flops_per_s, "FLOP/s"),
                 "n/a" if mfu is None else f"{mfu:.1%}", common.fmt_s(r.compile_s),
                 common.fmt_mib(r.xla_bytes), f"{len(r.timing.times)} ({r.timing.spread:.0%})"))
  return common.markdown_table(
      ["model", "shape", "params", "batch x seq", "step (median)", "tokens/s", "model FLOP/s",
       "MFU", "compile", "XLA memory", "reps (spread)"], rows)


def scaling_table(cells: Sequence[tuple[int, int, Optional[SFTResult]]]) -> str:
  base = next((r for _, _, r in cells if r is not None), None)
  rows = []
  for seq_len, batch, r in cells:
    if r is None:
      rows.append((seq_len, batch, batch * seq_len, "skipped (token cap)", "", "", "", ""))
      continue
    per_token = r.timing.median / (batch * seq_len)
    base_per_token = base.timing.median / (base.batch * base.seq_len)
    rows.append((seq_len, batch, batch * seq_len, common.fmt_s(r.timing.median),
                 common.fmt_rate(r.tokens_per_s, "tok/s"),
                 f"{r.timing.median / base.timing.median:.1f}x",
                 f"{per_token / base_per_token:.2f}x", common.fmt_mib(r.xla_bytes)))
  return common.markdown_table(
      ["seq len", "batch", "tokens/step", "step (median)", "tokens/s", "step time vs first",
       "time per token vs first", "XLA memory"], rows)
