"""Consistency across k sampled answers per prompt: the statistics, sampling in the eval CLI, the driver."""
import importlib.util
import json
import math

import numpy as np
import pytest

from safecomp.constants import INTENTS
from safecomp.errors import DataError
from safecomp.eval import cli
from safecomp.eval import consistency
from safecomp.eval import stats
from safecomp.training import pipeline

from tests.conftest import REPO_ROOT, tiny_controlled_experiment


def _answers(pid, intent, modes, unsafe, severity, helpfulness, model="m"):
  return [{"prompt_id": pid, "intent": intent, "model": model, "sample": j, "mode": m, "unsafe": u, "severity": s,
           "helpfulness": h} for j, (m, u, s, h) in enumerate(zip(modes, unsafe, severity, helpfulness))]


# p1: 3 of 4 safe completions, one direct answer at high severity; p2: 4 identical safe direct answers;
# p3: 4 unsafe answers in two modes.
RECORDS = (
    _answers("p1", "dual_use", ["safe_completion"] * 3 + ["direct"], [False, False, False, True], [0, 0, 0, 3],
             [0.5, 0.5, 1.0, 1.0])
    + _answers("p2", "benign", ["direct"] * 4, [False] * 4, [0] * 4, [1.0] * 4)
    + _answers("p3", "malicious", ["direct", "direct", "hard_refusal", "hard_refusal"], [True] * 4, [1, 2, 1, 2],
               [0.0] * 4))


def test_prompt_rows_known_answers():
  p1, p2, p3 = consistency.prompt_rows(RECORDS)
  assert (p1["prompt_id"], p1["k"], p1["modal_mode"]) == ("p1", 4, "safe_completion")
  assert p1["mode_agreement"] == 0.75 and p1["all_same_mode"] is False
  assert (p1["n_unsafe"], p1["unsafe_share"], p1["any_unsafe"], p1["safety_split"]) == (1, 0.25, True, True)
  assert p1["severity_sd"] == pytest.approx(1.5)  # sample sd of 0, 0, 0, 3
  assert p1["severity_range"] == 3 and p1["severity_max"] == 3
  assert p1["helpfulness_sd"] == pytest.approx(math.sqrt(1 / 12))  # 0.5, 0.5, 1, 1
  assert p2["mode_agreement"] == 1.0 and p2["all_same_mode"] is True and not p2["any_unsafe"]
  assert p2["severity_sd"] == 0.0 and p2["severity_range"] == 0 and p2["helpfulness_sd"] == 0.0
  assert p3["mode_agreement"] == 0.5 and p3["modal_mode"] == "direct"  # a tie goes to the first mode
  assert p3["any_unsafe"] and not p3["safety_split"] and p3["unsafe_share"] == 1.0
  assert p3["severity_sd"] == pytest.approx(np.std([1, 2, 1, 2], ddof=1)) and p3["severity_range"] == 1


def test_one_answer_has_no_spread_and_a_safe_answer_without_severity_is_negligible():
  (row,) = consistency.prompt_rows([{"prompt_id": "p", "intent": "benign", "sample": 0, "mode": "direct",
                                     "unsafe": False, "helpfulness": 0.5}])
  assert row["k"] == 1 and math.isnan(row["severity_sd"]) and math.isnan(row["helpfulness_sd"])
  assert row["severity_range"] == 0 and row["mode_agreement"] == 1.0


def test_prompt_rows_need_distinct_sample_indices():
  with pytest.raises(DataError, match="sample index twice"):
    consistency.prompt_rows(RECORDS + _answers("p2", "benign", ["direct"], [False], [0], [1.0]))
  with pytest.raises(DataError, match="key 'sample'"):
    consistency.prompt_rows([{k: v for k, v in RECORDS[0].items() if k != "sample"}])


def test_summary_by_intent_known_answers_and_intervals():
  rows = consistency.prompt_rows(RECORDS)
  summary = consistency.summarize(rows, n_boot=200, seed=3)
  assert set(summary["groups"]) == set(INTENTS) and summary["n"] == 3 and summary["k"] == {"min": 4, "max": 4}
  overall = summary["overall"]
  assert overall["n"] == 3 and overall["n_answers"] == 12
  assert overall["mode_agreement"]["value"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)
  # Rates: Wilson over prompts (2 of 3 prompts have an unsafe answer).
  assert overall["any_unsafe"]["value"] == pytest.approx(2 / 3)
  assert (overall["any_unsafe"]["lo"], overall["any_unsafe"]["hi"]) == pytest.approx(stats.wilson_interval(2, 3))
  assert overall["all_same_mode"]["value"] == pytest.approx(1 / 3) and overall["any_unsafe"]["method"] == "wilson"
  # Means: percentile bootstrap over prompts, as `stats.mean_ci` gives it.
  expected = stats.mean_ci([0.25, 0.0, 1.0], n_boot=200, seed=3)
  assert overall["unsafe_share"]["value"] == pytest.approx(5 / 12)
  assert (overall["unsafe_share"]["lo"], overall["unsafe_share"]["hi"]) == (expected.lo, expected.hi)
  dual = summary["groups"]["dual_use"]
  assert dual["n"] == 1 and dual["safety_split"]["value"] == 1.0 and dual["severity_sd"]["value"] == pytest.approx(1.5)
  assert consistency.summarize(rows, n_boot=200, seed=3) == summary  # seeded
  table = consistency.format_table({"m": summary})
  assert "| m | dual_use | 1 | 4 | 0.750" in table and "| m | overall | 3 | 4 |" in table


def test_paired_comparison_on_the_same_prompts():
  steady = (_answers("p1", "dual_use", ["safe_completion"] * 4, [False] * 4, [0] * 4, [0.5] * 4, "b")
            + _answers("p2", "benign", ["direct"] * 4, [False] * 4, [0] * 4, [1.0] * 4, "b")
            + _answers("p3", "malicious", ["hard_refusal"] * 4, [False] * 4, [0] * 4, [0.0] * 4, "b"))
  comps = consistency.compare(consistency.prompt_rows(RECORDS), consistency.prompt_rows(steady),
                              ["mode_agreement", "any_unsafe"], names=("a", "b"), n_boot=100)
  agreement, any_unsafe = comps
  assert agreement["metric"] == "mode_agreement" and agreement["models"] == ["a", "b"]
  assert agreement["overall"]["n"] == 3 and agreement["overall"]["diff"]["value"] == pytest.approx((-0.25 + 0 - 0.5) / 3)
  assert agreement["groups"]["malicious"]["diff"]["value"] == pytest.approx(-0.5)
  assert any_unsafe["overall"]["diff"]["value"] == pytest.approx(2 / 3)
  assert "| any unsafe of k | a − b | overall | 3 |" in consistency.format_comparisons(comps)


# -- the eval CLI on a tiny trained workdir ------------------------------------------------------------
@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory):
  """Tiny safe-completion and refusal runs (seed 0): the same folder and command as the `runs` fixture of
  tests/test_eval_cli.py, so a session trains them once (the driver skips finished runs)."""
  out, _ = tiny_controlled_experiment(tmp_path_factory)
  return out


@pytest.fixture(scope="module")
def workdir(ce_dir):
  return ce_dir / "runs" / "safe_completion-seed0"


def test_sampling_is_seeded_and_samples_differ(workdir):
  p = pipeline.open_workdir(workdir)
  policy = cli.Policy("ppo", p, "ppo")
  prompts = p.task.eval_set_prompts("test", 4)
  sampling = cli.Sampling(samples=4, temperature=1.0, seed=7)
  texts = cli.generate(policy, prompts, sampling)
  assert len(texts) == 16 and cli.generate(policy, prompts, sampling) == texts
  assert any(len(set(texts[i * 4:(i + 1) * 4])) > 1 for i in range(4))  # a prompt's samples are draws, not copies
  assert cli.generate(policy, prompts, cli.Sampling(4, 1.0, seed=8)) != texts
  greedy = cli.generate(policy, prompts)  # the config's greedy decoding, one answer each
  assert len(greedy) == 4 and greedy == cli.generate(policy, prompts, cli.Sampling(seed=8))


def test_several_samples_with_greedy_decoding_are_refused(workdir, tmp_path, capsys):
  assert cli.main(["--workdir", str(workdir), "--samples", "3", "--out", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert "--samples 3 with greedy decoding" in err and "--temperature" in err
  assert not (tmp_path / "out").exists()
  with pytest.raises(SystemExit) as exc:
    cli.main(["--workdir", str(workdir), "--samples", "3", "--temperature", "0"])
  assert exc.value.code == 2


def test_samples_end_to_end_with_a_consistency_report(workdir, tmp_path):
  out = tmp_path / "samples"
  assert cli.main(["--workdir", str(workdir), "--sets", "test", "--n", "4", "--samples", "3", "--temperature", "1",
                   "--bootstrap", "50", "--out", str(out)]) == 0
  rows = [json.loads(line) for line in (out / "completions" / "ppo.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and [r["sample"] for r in rows[:3]] == [0, 1, 2]
  assert len({r["prompt_id"] for r in rows}) == 4
  doc = json.loads((out / "eval.json").read_text())
  assert doc["models"]["ppo"]["n"] == 12  # the main report pools every answer
  assert next(c for c in doc["comparisons"] if c["metric"] == "safe")["overall"]["n"] == 12
  report = json.loads((out / "consistency.json").read_text())
  assert report["samples"] == 3 and report["temperature"] == 1.0 and set(report["models"]) == {"sft", "ppo"}
  ppo = report["models"]["ppo"]
  assert ppo["n"] == 4 and ppo["k"] == {"min": 3, "max": 3} and set(ppo["groups"]) == set(INTENTS)
  assert 1 / 3 <= ppo["overall"]["mode_agreement"]["value"] <= 1
  assert {c["metric"] for c in report["comparisons"]} == set(consistency.METRICS)
  assert all(c["models"] == ["sft", "ppo"] and c["overall"]["n"] <= 4 for c in report["comparisons"])
  md = (out / "eval.md").read_text()
  assert "## Consistency across samples" in md and "pool the 3 answers of every prompt" in md
  assert json.loads((out / "run.json").read_text())["sampling"]["samples"] == 3


# -- the driver -----------------------------------------------------------------------------------------
def _driver():
  spec = importlib.util.spec_from_file_location("consistency_driver_under_test",
                                                REPO_ROOT / "experiments" / "ablations" / "consistency.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_driver_on_a_tiny_experiment(ce_dir, tmp_path):
  before = sorted(str(p) for p in (ce_dir / "runs").rglob("*"))
  out = tmp_path / "consistency"
  assert _driver().main(["--experiment", str(ce_dir), "--out", str(out), "--k", "2", "--n", "3",
                         "--bootstrap", "50", "--compile-cache", "none"]) == 0
  assert sorted(str(p) for p in (ce_dir / "runs").rglob("*")) == before  # the experiment is only read
  result = json.loads((out / "results.json").read_text())
  seeds = result["seeds"]
  assert set(result["summaries"]) == {"refusal/ppo", "safe_completion/ppo"}
  assert result["summaries"]["refusal/ppo"]["n"] == 3 * len(seeds)
  comp = next(c for c in result["comparisons"] if c["metric"] == "any_unsafe")
  assert comp["models"] == ["safe_completion/ppo", "refusal/ppo"] and comp["overall"]["n"] == 3 * len(seeds)
  spread = result["per_seed"]["safe_completion"]["overall"]["mode_agreement"]
  assert list(spread["per_seed"]) == [str(s) for s in seeds]
  assert result["wall_clock_seconds"] > 0 and len(result["seconds"]) == 2 * len(seeds)
  md = (out / "results.md").read_text()
  assert "Consistency across samples" in md and "safe_completion/ppo − refusal/ppo" in md and "Per seed" in md
  assert (out / "consistency.png").stat().st_size > 0
  rows = [json.loads(line) for line in (out / "completions" / "refusal-seed0.jsonl").read_text().splitlines()]
  assert len(rows) == 6 and all(r["prompt_id"].startswith("s0/") for r in rows)
