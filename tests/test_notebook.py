"""The quickstart notebook runs headless, start to finish, and shows the eval plots."""
import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"
PLOTS = ("safety_rate.png", "helpfulness_given_safe.png", "severity_of_unsafe.png", "ppo_proxy_vs_gold.png")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """The notebook after running it in a `python3` kernel started in notebooks/, and its workdir."""
  workdir = tmp_path_factory.mktemp("quickstart") / "run"
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("SAFECOMP_QUICKSTART_WORKDIR", str(workdir))  # the kernel inherits the environment
    mp.setenv("JAX_PLATFORMS", "cpu")
    client = NotebookClient(notebook, kernel_name="python3", timeout=300, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
  return notebook, workdir


def test_every_cell_runs_without_error(executed):
  notebook, _ = executed
  code_cells = [c for c in notebook.cells if c.cell_type == "code"]
  assert code_cells and all(c.execution_count for c in code_cells)
  for cell in code_cells:
    assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:200]


def test_the_notebook_shows_completions_table_and_plots(executed):
  notebook, workdir = executed
  text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
  assert text.count("oracle: severity") == 6  # the trained policy and the gold policy, per intent
  for intent in ("benign", "dual_use", "malicious"):
    assert f"[{intent}]" in text and intent in text.split("safety rate", 1)[-1]
  for name in PLOTS:
    assert (workdir / "eval" / name).stat().st_size > 0, name
  images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == len(list((workdir / "eval").glob("*.png"))) >= len(PLOTS)


def test_the_committed_notebook_is_clean():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert notebook.metadata.kernelspec.name == "python3"
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None
