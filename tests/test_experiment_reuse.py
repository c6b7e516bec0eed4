"""Experiments sharing finished stages (`--reuse`), the over-optimisation analysis and the paper's figures,
on the tiny controlled experiment of tests/test_experiments.py."""
import json

import pytest

from safecomp import config as config_lib

from tests.conftest import tiny_controlled_experiment
from tests.test_experiments import ABLATIONS, _module

common = _module("safecomp_experiments_common", ABLATIONS / "common.py")


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
  return tiny_controlled_experiment(tmp_path_factory, seeds="0,1", bootstrap="100")


def _run(name: str, variant: str, seed: int, workdir):
  config = config_lib.config_from_file(f"{ABLATIONS / name}.py:variant={variant},scale=tiny")
  config.seed = seed
  return common.Run(variant, seed, config, workdir)


def test_reuse_copies_only_the_stages_trained_with_the_same_settings(ce_run, tmp_path):
  out, _ = ce_run
  # A PPO-only change keeps SFT and the reward model of the same seed, and nothing after them.
  sweep = _run("overoptimization", "kl0_lr3e-4", 1, tmp_path / "sweep")
  assert common.reuse_stages(sweep, [out]) == ["sft", "rm"]
  assert json.loads((sweep.workdir / common.REUSED_FILE).read_text()) == {
      s: str((out / "runs" / "safe_completion-seed1").resolve()) for s in ("sft", "rm")}
  assert (sweep.workdir / "tokenizer.json").is_file() and (sweep.workdir / "metrics" / "sft.jsonl").is_file()
  assert not (sweep.workdir / "ppo").exists()
  assert common.reuse_stages(sweep, [out]) == []  # a workdir holding stages is left alone
  # The baseline differs only in a key that cannot change a result (ppo.gold_every): every stage.
  baseline = _run("overoptimization", "kl0.05_lr1e-4", 0, tmp_path / "baseline")
  assert common.reuse_stages(baseline, [out]) == ["sft", "rm", "ppo", "eval"]
  # Another SFT target, or a seed no donor has: nothing.
  assert common.reuse_stages(_run("reasoning", "off", 0, tmp_path / "off"), [out]) == []
  assert common.reuse_stages(_run("reasoning", "on", 7, tmp_path / "seed7"), [out]) == []


def test_reused_run_finishes_without_training(ce_run, tmp_path):
  out, _ = ce_run
  run = _run("reasoning", "on", 0, tmp_path / "on")
  lines = []
  seconds = common.run_grid([run], log=lines.append, reuse_from=[out])
  assert any("copied from" in line for line in lines)
  assert common.finished(run) and set(seconds) == {"on/seed0"}
  donor = out / "runs" / "safe_completion-seed0" / "eval" / "ppo_completions.jsonl"
  assert (run.workdir / "eval" / "ppo_completions.jsonl").read_text() == donor.read_text()


def test_overoptimization_analysis_plots_proxy_and_gold_over_kl(ce_run, tmp_path):
  out, _ = ce_run
  driver = _module("ablation_driver_under_test", ABLATIONS / "run.py")
  runs = [common.Run("kl0.05_lr1e-4", seed, None, out / "runs" / f"safe_completion-seed{seed}") for seed in (0, 1)]
  pooled = common.pool([common.Run(r.name, r.seed, config_lib.config_from_file(
      f"{ABLATIONS / 'overoptimization.py'}:scale=tiny"), r.workdir) for r in runs], ("ppo",))
  text = driver.overoptimization_analysis(runs, pooled, tmp_path, n_boot=50)
  assert (tmp_path / "overoptimization.png").stat().st_size > 0
  assert "| kl0.05_lr1e-4 | 0,1 |" in text and "| gold |" in text and "| proxy |" in text
  points = [p for r in runs for p in driver._gold_points(r)]  # pylint: disable=protected-access
  assert points and all({"step", "kl", "proxy", "gold"} <= set(p) for p in points)


def test_controlled_experiment_draws_the_papers_figures(ce_run):
  out, _ = ce_run
  for name in ("figure4.png", "figure5.png"):
    assert (out / name).stat().st_size > 0, name
