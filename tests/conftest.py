"""Shared pytest fixtures; one persistent XLA compilation cache and cheap compiles for the whole session.

Many tests train the same tiny configs (in this process and in subprocesses, which inherit the
environment); compiling each step once per session instead of once per test keeps the suite short.
The tests' programs are tiny, so XLA:CPU's expensive LLVM passes cost far more compile time than
they save at run time (about a fifth of the suite); they change no results the tests check.
"""
import os
import pathlib
import tempfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set before any test imports JAX
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="safecomp_test_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
FAST_XLA = "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=0"
if FAST_XLA not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA}".strip()


def demo_config(options: str = "size=tiny", **overrides):
  """configs/demo.py with its `options` ("size=tiny", "arm=refusal,size=tiny", ...) and dotted keys set."""
  from safecomp import config as config_lib  # pylint: disable=import-outside-toplevel  (after the env above)
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'demo.py'}:{options}")
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The public datasets folder (`../shared/data` beside the repository, or $SAFECOMP_SHARED_DATA)."""
  path = pathlib.Path(os.environ.get("SAFECOMP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    pytest.fail(f"public data folder not found at {path}; set SAFECOMP_SHARED_DATA")
  return path


def tiny_controlled_experiment(tmp_path_factory, seeds: str = "0", bootstrap: str = "50"):
  """The tiny controlled experiment (both arms, `seeds`) in the session's `ce_tiny` folder, trained by
  its driver; every module that needs trained tiny runs shares it (the driver skips finished runs, so a
  session trains each seed once). Returns (folder, the driver's completed process)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.getbasetemp() / "ce_tiny"
  cache = tmp_path_factory.getbasetemp() / "jax_cache"
  proc = subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "ce_refusal_vs_safecomplete" / "run.py"),
                         "--out", str(out), "--seeds", seeds, "--scale", "tiny", "--bootstrap", bootstrap,
                         "--compile-cache", str(cache)],
                        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True,
                        text=True, timeout=1800, check=False)  # minutes when idle; generous on a busy machine
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return out, proc
