"""The quickstart notebook runs headless, start to finish, and shows the eval plots."""
import json

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


REAL_NOTEBOOK = REPO_ROOT / "notebooks" / "real_model.ipynb"


@pytest.fixture(scope="module")
def executed_real(tmp_path_factory):
  """notebooks/real_model.ipynb run headless on tiny random checkpoints (the policy, and a judge sharing its
  tokenizer) instead of the Qwen2 downloads."""
  from tests import real_models  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("real_notebook")
  policy = real_models.make_checkpoint(root / "policy", "qwen2", seed=0)
  judge = real_models.make_checkpoint(root / "judge", "qwen2", seed=1, tokenizer_from=policy, hidden_size=32,
                                      num_layers=1)  # small: it reads 2,000-token rubric prompts
  notebook = nbformat.read(REAL_NOTEBOOK, as_version=4)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("SAFECOMP_REAL_MODEL", str(policy))
    mp.setenv("SAFECOMP_REAL_JUDGE", str(judge))
    mp.setenv("SAFECOMP_REAL_WORKDIR", str(root / "work"))
    mp.setenv("JAX_PLATFORMS", "cpu")
    client = NotebookClient(notebook, kernel_name="python3", timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(REAL_NOTEBOOK.parent)}})
    client.execute()
  return notebook, root / "work"


def test_the_real_model_notebook_runs_the_whole_path(executed_real):
  notebook, workdir = executed_real
  code_cells = [c for c in notebook.cells if c.cell_type == "code"]
  assert code_cells and all(c.execution_count for c in code_cells)
  text = "".join(o.get("text", "") for c in code_cells for o in c.outputs)
  assert "datagen summary:" in text and "PPO:" in text
  assert "Qwen2ForCausalLM loaded" in text
  rows = [json.loads(line) for line in (workdir / "run" / "eval" / "ppo_completions.jsonl").read_text().splitlines()]
  assert [r["prompt_id"] for r in rows] == ["e1", "e2", "e3", "e4"] and all(r["grader"].startswith("judge:") for r in rows)


def test_the_committed_real_model_notebook_is_clean():
  notebook = nbformat.read(REAL_NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert notebook.metadata.kernelspec.name == "python3"
  assert all(not c.outputs and c.execution_count is None for c in notebook.cells if c.cell_type == "code")
