"""Shared pytest fixtures."""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The public datasets folder (`../shared/data` beside the repository, or $SAFECOMP_SHARED_DATA)."""
  path = pathlib.Path(os.environ.get("SAFECOMP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    pytest.fail(f"public data folder not found at {path}; set SAFECOMP_SHARED_DATA")
  return path
