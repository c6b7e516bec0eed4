"""XLA compilation: a persistent cache on by default, and the seconds each stage spends compiling.

Reruns, resumed runs, the experiments' seeds and the tests compile the same programs again and again;
with the cache on disk they load them instead (`compile_cache_dir`: "" for the user cache directory,
`$XDG_CACHE_HOME/safecomp/jax` or `~/.cache/safecomp/jax`; "none" turns it off; a cache directory set
through JAX's own `JAX_COMPILATION_CACHE_DIR` is kept). Compiled programs depend only on the program,
the devices and the compiler flags, so a cached one computes exactly what a fresh compile would.
"""
from __future__ import annotations

import os
import pathlib
import threading

import jax
from jax import monitoring

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")
_TOTAL = {"seconds": 0.0}
_LOCK = threading.Lock()


def default_cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "safecomp" / "jax"


def enable_cache(path: str | os.PathLike | None = "") -> pathlib.Path | None:
  """Turns the persistent compilation cache on (see module docstring); returns its directory or None.

  The first directory set in a process stays (JAX reads it once); later calls return it unchanged.
  """
  current = jax.config.jax_compilation_cache_dir
  if current:
    return pathlib.Path(current)
  if str(path).lower() == "none":
    return None
  directory = pathlib.Path(path).expanduser() if path else default_cache_dir()
  directory.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(directory))
  # Every program, however quick to compile: the tiny configs of the tests and notebooks compile many.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return directory


def _listen(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event in _COMPILE_EVENTS:
    with _LOCK:
      _TOTAL["seconds"] += duration


monitoring.register_event_duration_secs_listener(_listen)


def compile_seconds() -> float:
  """Seconds this process has spent lowering and compiling programs so far (cache loads excluded)."""
  return _TOTAL["seconds"]
