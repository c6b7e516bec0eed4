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
