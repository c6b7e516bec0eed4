"""Shared pytest fixtures, and one persistent XLA compilation cache for the whole session.

Many tests train the same tiny configs (in this process and in subprocesses, which inherit the
environment); compiling each step once per session instead of once per test keeps the suite short.
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


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The public datasets folder (`../shared/data` beside the repository, or $SAFECOMP_SHARED_DATA)."""
  path = pathlib.Path(os.environ.get("SAFECOMP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    pytest.fail(f"public data folder not found at {path}; set SAFECOMP_SHARED_DATA")
  return path
