"""Shared pieces of the benchmarks: timing, machine description, FLOP counts, Markdown tables."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax

from safecomp.models import ModelConfig

MIB = 1024.0 * 1024.0


# ------------------------------------------------------------------------------------------ timing
@dataclasses.dataclass
class Timing:
  """Wall-clock seconds of repeated calls; `first` is the warm-up call (compilation included)."""
  times: list
  first: float

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def spread(self) -> float:
    """(max - min) / median of the timed repetitions."""
    return (max(self.times) - min(self.times)) / self.median if self.median > 0 else 0.0


def block(value: Any) -> Any:
  """Waits for JAX arrays inside `value`, and for queued CUDA work when torch uses a GPU."""
  leaves = [x for x in jax.tree.leaves(value) if isinstance(x, jax.Array)]
  if leaves:
    jax.block_until_ready(leaves)
  torch = sys.modules.get("torch")
  if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
    torch.cuda.synchronize()
  return value


def measure(fn: Callable[[], Any], reps: int, warmup: int = 1) -> Timing:
  """Calls `fn` `warmup` times (the first one timed separately), then `reps` timed times."""
  t0 = time.perf_counter()
  block(fn())
  first = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    block(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return Timing(times=times, first=first)


def measure_adaptive(fn: Callable[[], Any], min_reps: int, max_reps: int,
                     target_s: float) -> Timing:
  """Like `measure`, with as many repetitions as fit in about `target_s` (clamped to the bounds)."""
  t0 = time.perf_counter()
  block(fn())
  first = time.perf_counter() - t0
  times = []
  while True:
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
    if len(times) >= max_reps:
      break
    if len(times) >= min_reps and sum(times) >= target_s:
      break
  return Timing(times=times, first=first)


def measure_interleaved(fns: dict, min_reps: int, max_reps: int, target_s: float) -> dict:
  """`measure_adaptive` for several functions at once, alternating A B A B ... after one warm-up
  call each, so that a change in machine load during the run hits every side alike."""
  first = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    block(fn())
    first[name] = time.perf_counter() - t0
  times = {name: [] for name in fns}
  while True:
    for name, fn in fns.items():
      t0 = time.perf_counter()
      block(fn())
      times[name].append(time.perf_counter() - t0)
    done = len(times[next(iter(fns))])
    if done >= max_reps:
      break
    if done >= min_reps and sum(sum(t) for t in times.values()) >= target_s:
      break
  return {name: Timing(times=times[name], first=first[name]) for name in fns}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  """(result, seconds) of one call, waiting for JAX results."""
  t0 = time.perf_counter()
  out = block(fn())
  return out, time.perf_counter() - t0


# --------------------------------------------------------------------------------- torch device
def torch_device() -> str:
  """Where the PyTorch sides run: the first CUDA device when there is one, else the CPU."""
  import torch  # pylint: disable=import-outside-toplevel
  return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------- torch threads
_TORCH_DEFAULT_THREADS: list = []


def torch_default_threads() -> int:
  """torch's intra-op thread count as it was before any benchmark changed it."""
  import torch  # pylint: disable=import-outside-toplevel
  if not _TORCH_DEFAULT_THREADS:
    _TORCH_DEFAULT_THREADS.append(torch.get_num_threads())
  return _TORCH_DEFAULT_THREADS[0]


def set_torch_threads(setting: Any, probe: Optional[Callable[[], Any]] = None) -> int:
  """Sets torch's intra-op threads and returns the number used.

  `setting` is an int, or "auto": time `probe` under torch's default thread count and under one
  thread, and keep the faster. On a CPU shared with other processes, torch's OpenMP threads wait for
  each other at every small operator, so one thread can be many times faster than two; "auto" gives
  the PyTorch baselines their better setting. The probe is warmed up once per setting.
  """
  import torch  # pylint: disable=import-outside-toplevel
  default = torch_default_threads()
  if setting != "auto":
    torch.set_num_threads(int(setting))
    return int(setting)
  if probe is None:
    torch.set_num_threads(default)
    return default
  best, best_t = default, float("inf")
  for n in sorted({default, 1}, reverse=True):
    torch.set_num_threads(n)
    probe()
    _, t = timed(probe)
    if t < best_t:
      best, best_t = n, t
  torch.set_num_threads(best)
  return best


# ------------------------------------------------------------------------------------- compiling
# XLA options for every ahead-of-time compile; the smoke sizes trade run time for compile time.
_COMPILER_OPTIONS: dict = {}
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True,
                        "xla_cpu_use_fusion_emitters": False}


def set_compiler_options(options: Optional[dict]) -> None:
  _COMPILER_OPTIONS.clear()
  _COMPILER_OPTIONS.update(options or {})


def current_compiler_options() -> dict:
  return dict(_COMPILER_OPTIONS)


def compile_lowered(lowered: Any) -> Any:
  """`lowered.compile()` with the current compiler options."""
  if _COMPILER_OPTIONS:
    return lowered.compile(compiler_options=dict(_COMPILER_OPTIONS))
  return lowered.compile()


# ------------------------------------------------------------------------------------------ memory
def xla_bytes(compiled: Any) -> Optional[int]:
  """Bytes XLA reserves for a compiled computation: arguments + outputs + temporaries - aliased.

  From `compiled.memory_analysis()`; None where the backend does not report it.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def max_rss_bytes() -> int:
  """Peak resident set size of this process so far."""
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def fmt_mib(n: Optional[float]) -> str:
  return "n/a" if n is None else f"{n / MIB:,.1f} MiB"


# ------------------------------------------------------------------------------------------- FLOPs
def matmul_params(config: ModelConfig) -> int:
  """Weights that take part in matrix multiplies: every layer's projections plus the LM head.

  The embedding table is a gather, not a matmul, so it is left out unless it is tied to the head
  (then it is counted once, as the head). Norm scales and biases are negligible and left out.
  """
  d, q = config.hidden_size, config.head_dim
  attn = d * config.num_heads * q + 2 * d * config.num_kv_heads * q + config.num_heads * q * d
  mlp = 3 * d * config.intermediate_size
  return config.num_layers * (attn + mlp) + d * config.vocab_size


def total_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def attention_flops_per_token(config: ModelConfig, seq_len: int) -> int:
  """Forward FLOPs per token of the attention score and value products (QK^T and AV).

  2 * 2 * layers * heads * head_dim * seq_len: the full seq_len x seq_len square is counted, as the
  implementation computes it (the causal mask is applied, not skipped).
  """
  return 4 * config.num_layers * config.num_heads * config.head_dim * seq_len


def train_flops(config: ModelConfig, batch: int, seq_len: int) -> float:
  """Model FLOPs of one training step: 6 * N * tokens + 3 * attention (forward + backward)."""
  tokens = batch * seq_len
  attention = 3.0 * attention_flops_per_token(config, seq_len) * tokens
  return 6.0 * matmul_params(config) * tokens + attention


# ---------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
  name, family, model = None, None, None
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and name is None:
          name = value
        elif key == "cpu family" and family is None:
          family = value
        elif key == "model" and model is None:
          model = value
  except OSError:
    pass
  name = name or platform.processor() or platform.machine()
  if family is not None and model is not None:
    name += f" (family {family}, model {model})"
  return name


def _cpu_features() -> str:
  wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve")
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          flags = set(line.partition(":")[2].split())
          return ", ".join(w for w in wanted if w in flags) or "-"
  except OSError:
    pass
  return "-"


def version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def machine_info() -> dict:
  """What the numbers were measured on."""
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  info = {
      "cpu": _cpu_model(),
      "cpu features": _cpu_features(),
      "cores (usable / total)": f"{usable} / {os.cpu_count()}",
      "python": platform.python_version(),
      "jax / jaxlib": f"{jax.__version__} / {version('jaxlib')}",
      "flax / optax": f"{version('flax')} / {version('optax')}",
      "torch / transformers": f"{version('torch')} / {version('transformers')}",
      "trl": version("trl"),
      "jax devices": ", ".join(f"{d.platform}:{d.device_kind}" for d in jax.devices()),
  }
  try:
    import torch  # pylint: disable=import-outside-toplevel
    info["torch threads (default)"] = str(torch_default_threads())
    info["torch device"] = (f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
                            else "cpu")
  except ImportError:
    pass
  if hasattr(os, "getloadavg"):
    info["load average at start (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
  return info


def load_average() -> str:
  return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


# ------------------------------------------------------------------------------------------ tables
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [[str(c) for c in row] for row in rows]
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in cells]
  return "\n".join(lines)


def fmt_rate(x: Optional[float], unit: str = "") -> str:
  if x is None:
    return "n/a"
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.2f} {prefix}{unit}"
  return f"{x:.1f} {unit}".rstrip()


def fmt_s(x: Optional[float]) -> str:
  if x is None:
    return "n/a"
  if x < 1e-3:
    return f"{x * 1e6:.0f} µs"
  if x < 1:
    return f"{x * 1e3:.1f} ms"
  return f"{x:.2f} s"


def fmt_ratio(x: Optional[float]) -> str:
  return "n/a" if x is None else f"{x:.2f}x"


def describe(config: ModelConfig) -> str:
  return (f"d={config.hidden_size} L={config.num_layers} "
          f"H={config.num_heads}/{config.num_kv_heads} hd={config.head_dim} "
          f"ff={config.intermediate_size} V={config.vocab_size}")
