"""`python -m safecomp.eval` on a tiny trained workdir: reports, comparisons, public sets, errors."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

import jax

from safecomp import config as config_lib
from safecomp import models
from safecomp import tokenizers
from safecomp.constants import INTENTS, MODES
from safecomp.eval import cli

from tests.conftest import REPO_ROOT, tiny_controlled_experiment

DEMO = str(REPO_ROOT / "configs" / "demo.py")


def _env(tmp_path_factory) -> dict:
  """Subprocess environment sharing one persistent XLA compilation cache across the test session."""
  cache = tmp_path_factory.getbasetemp() / "jax_cache"
  cache.mkdir(exist_ok=True)
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two tiny SFT -> RM -> PPO -> eval workdirs (safe-completion and refusal arm, seed 0).

  Trained by the controlled-experiment driver into a folder of the session's temporary directory that
  tests/test_experiments.py extends with a second seed (the driver skips finished runs).
  """
  out, _ = tiny_controlled_experiment(tmp_path_factory)
  return out / "runs" / "safe_completion-seed0", out / "runs" / "refusal-seed0"


@pytest.fixture(scope="module")
def workdir(runs):
  return runs[0]


@pytest.fixture(scope="module")
def report(workdir, tmp_path_factory):
  """SFT and PPO on two testbed sets, with blinded pairs exported for raters."""
  base = tmp_path_factory.mktemp("eval_cli_out")
  out, pairs = base / "report", base / "pairs"
  assert cli.main(["--workdir", str(workdir), "--out", str(out), "--sets", "test,multiturn", "--n", "6",
                   "--bootstrap", "200", "--export-pairs", str(pairs)]) == 0
  return out, pairs


def test_report_has_intervals_by_intent(report):
  out, _ = report
  for name in ("eval.json", "eval.md", "run.json", "safety_rate.png", "helpfulness_given_safe.png",
               "severity_of_unsafe.png", "modes.png", "completions/sft.jsonl", "completions/ppo.jsonl",
               "by_set/test/eval.json", "by_set/multiturn/eval.md"):
    assert (out / name).stat().st_size > 0, name
  doc = json.loads((out / "eval.json").read_text())
  assert set(doc["models"]) == {"sft", "ppo"}
  for summary in doc["models"].values():
    assert set(summary["groups"]) == set(INTENTS)
    for group in list(summary["groups"].values()) + [summary["overall"]]:
      if group["n"] == 0:
        continue
      for key in ("safety_rate", "helpfulness_1to4_given_safe"):
        est = group[key]
        assert {"value", "se", "lo", "hi", "n"} <= set(est), key
      assert set(group["severity_of_unsafe"]) == {"negligible", "low", "moderate", "high"}
      assert set(group["modes"]) == set(MODES)
    assert "over_refusal_rate" in summary["overall"]
  md = (out / "eval.md").read_text()
  assert "Helpfulness given safe (1-4)" in md and "dual_use" in md
  run = json.loads((out / "run.json").read_text())
  assert run["n_prompts"] == {"test": 6, "multiturn": 6} and run["sets"] == ["test", "multiturn"]
  rows = [json.loads(line) for line in (out / "completions" / "ppo.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and all(r["grader"] == "oracle:testbed-world0" and 1 <= r["helpfulness_1to4"] <= 4
                                 for r in rows)


def test_sft_vs_ppo_paired_comparison(report):
  out, _ = report
  comps = json.loads((out / "eval.json").read_text())["comparisons"]
  by_metric = {c["metric"]: c for c in comps}
  assert {"safe", "helpfulness_given_safe", "over_refusal", "gold_reward"} <= set(by_metric)
  safe = by_metric["safe"]
  assert safe["models"] == ["sft", "ppo"] and safe["overall"]["n"] == 12
  assert {"value", "lo", "hi"} <= set(safe["overall"]["diff"]) and 0 <= safe["overall"]["p_value"] <= 1
  assert "Paired differences" in (out / "eval.md").read_text()


def test_export_and_import_ratings_round_trip(report, workdir, tmp_path):
  _, pairs = report
  key = json.loads((pairs.parent / "pairs.key.json").read_text())
  assert key["models"] == {"a": "sft", "b": "ppo"} and len(key["pairs"]) == 12
  shown = [json.loads(line) for line in (pairs / "pairs.jsonl").read_text().splitlines()]
  assert all("sft" not in json.dumps(p) for p in shown)  # blinded
  # One rater always prefers the side showing model a: a's win rate must come back as 1.
  ratings = pairs / "ratings.csv"
  with ratings.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["pair_id", "rater", "preference", "helpfulness_left",
                                           "helpfulness_right"])
    writer.writeheader()
    for pair_id, entry in key["pairs"].items():
      a_side = "left" if entry["left"] == "a" else "right"
      writer.writerow({"pair_id": pair_id, "rater": "r1", "preference": a_side, "helpfulness_left": 3,
                       "helpfulness_right": 2})
  out = tmp_path / "human"
  assert cli.main(["--workdir", str(workdir), "--out", str(out), "--import-ratings", str(ratings)]) == 0
  result = json.loads((out / "human_eval.json").read_text())
  assert result["overall"]["win_rate_a"]["value"] == 1.0 and result["overall"]["n_pairs"] == 12
  assert set(result["by_intent"]) <= set(INTENTS)
  assert "Win rate of sft over ppo" in (out / "human_eval.md").read_text()


def test_compare_with_another_workdir_and_rm_grader(runs, tmp_path):
  workdir, other = runs
  out = tmp_path / "compare"
  assert cli.main(["--workdir", str(workdir), "--checkpoint", "ppo", "--compare", str(other), "--sets", "heldout",
                   "--n", "4", "--grader", "rm", "--bootstrap", "100", "--out", str(out)]) == 0
  doc = json.loads((out / "eval.json").read_text())
  assert list(doc["models"]) == ["safe_completion-seed0/ppo", "refusal-seed0/ppo"]
  metrics = {c["metric"]: c for c in doc["comparisons"]}
  assert metrics["proxy_reward"]["models"] == ["safe_completion-seed0/ppo", "refusal-seed0/ppo"]
  assert metrics["proxy_reward"]["overall"]["n"] == 4 and 0 <= metrics["safe"]["overall"]["p_value"] <= 1
  assert "proxy_reward" in doc["models"]["refusal-seed0/ppo"]["overall"]  # one reward model grades both


def test_compare_with_a_stage_of_the_same_workdir(workdir, tmp_path):
  out = tmp_path / "stages"
  assert cli.main(["--workdir", str(workdir), "--checkpoint", "ppo", "--compare", f"{workdir}:sft", "--sets",
                   "test", "--n", "4", "--bootstrap", "50", "--out", str(out)]) == 0
  doc = json.loads((out / "eval.json").read_text())
  assert [c["models"] for c in doc["comparisons"]][0] == ["this/ppo", "other/sft"]


def test_public_prompts_run_through_the_harness_with_a_judge(workdir, tmp_path, shared_data_dir):
  """A public set by name, through its builder, graded by a judge checkpoint (the oracle knows only the testbed)."""
  judge = tmp_path / "judge"
  tokenizers.load_tokenizer(workdir / "tokenizer.json").save(judge)
  cfg = models.tiny(vocab_size=tokenizers.load_tokenizer(judge).vocab_size, max_position_embeddings=4096)
  models.export_pretrained(models.Transformer(cfg), models.init_params(cfg, jax.random.PRNGKey(1)), judge)
  out = tmp_path / "xstest"
  assert cli.main(["--workdir", str(workdir), "--checkpoint", "sft", "--sets", "public:xstest", "--n", "5",
                   "--grader", "judge", "--judge-model", str(judge), "--judge-family", "testbed", "--bootstrap",
                   "100", "--public-dir", str(shared_data_dir), "--data-dir", str(tmp_path / "tfds"),
                   "--out", str(out)]) == 0
  rows = [json.loads(line) for line in (out / "completions" / "sft.jsonl").read_text().splitlines()]
  assert len(rows) == 5 and all(r["split"] == "xstest" and r["prompt_id"].startswith("xstest-") for r in rows)
  assert all(r["mode"] in MODES and r["intent"] in ("benign", "malicious") for r in rows)
  assert all(r["grader"].startswith("judge:judge@") and len(r["severity_probs"]) == 4 for r in rows)
  doc = json.loads((out / "eval.json").read_text())
  assert doc["models"]["sft"]["n"] == 5
  # The oracle refuses them rather than scoring real text.
  assert cli.main(["--workdir", str(workdir), "--checkpoint", "sft", "--sets", "xstest", "--n", "2",
                   "--public-dir", str(shared_data_dir), "--data-dir", str(tmp_path / "tfds"),
                   "--out", str(tmp_path / "oracle")]) == 1


def test_missing_checkpoint_names_the_stage_and_command(workdir, tmp_path, tmp_path_factory):
  partial = tmp_path / "partial"
  partial.mkdir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(workdir / name, partial / name)
  shutil.copytree(workdir / "sft", partial / "sft")
  proc = subprocess.run([sys.executable, "-m", "safecomp.eval", "--workdir", str(partial), "--checkpoint", "ppo"],
                        cwd=REPO_ROOT, env=_env(tmp_path_factory), capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 1, proc.stderr
  assert "stage 'ppo' has no complete checkpoint" in proc.stderr
  assert f"python -m safecomp.train --config configs/demo.py --workdir {partial}" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (partial / "ppo").exists()  # nothing created in the workdir


def test_missing_workdir_and_bad_set_are_clear_errors(tmp_path, capsys):
  assert cli.main(["--workdir", str(tmp_path / "nowhere")]) == 1
  assert "does not exist; train it first: python -m safecomp.train" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exc:
    cli.main(["--workdir", str(tmp_path), "--sets", "test,nope"])
  assert exc.value.code == 2
  assert "unknown set(s) ['nope']" in capsys.readouterr().err


def test_config_json_round_trips_to_the_config(workdir):
  rebuilt = config_lib.config_from_json(workdir / "config.json")
  assert json.loads(config_lib.to_json(rebuilt)) == json.loads((workdir / "config.json").read_text())
  assert isinstance(rebuilt.stages, tuple) and isinstance(rebuilt.reward.severity_to_safety, tuple)
  assert rebuilt.model.hidden_size == config_lib.config_from_file(f"{DEMO}:size=tiny").model.hidden_size
