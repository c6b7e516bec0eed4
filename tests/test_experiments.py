"""The experiment drivers at tiny scale, and every experiment config."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from safecomp import config as config_lib
from safecomp.errors import ConfigError
from safecomp.training import pipeline

from tests.conftest import REPO_ROOT, tiny_controlled_experiment

EXPERIMENTS = REPO_ROOT / "experiments"
CE = EXPERIMENTS / "ce_refusal_vs_safecomplete"
ABLATIONS = EXPERIMENTS / "ablations"
ABLATION_NAMES = ("reward_form", "spec_granularity", "reasoning", "multiturn", "long_training", "overoptimization")


def _module(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def _driver(tmp_path_factory, script, *args, timeout=900):
  cache = tmp_path_factory.getbasetemp() / "jax_cache"  # shared with the other modules of the session
  proc = subprocess.run([sys.executable, str(script), *args, "--compile-cache", str(cache)], cwd=REPO_ROOT,
                        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True,
                        timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
  # Shared with tests/test_eval_cli.py, which trains seed 0 of both arms here when it runs first.
  return tiny_controlled_experiment(tmp_path_factory, seeds="0,1", bootstrap="100")


def test_controlled_experiment_writes_its_table(ce_run):
  out, proc = ce_run
  assert sorted(p.name for p in (out / "runs").iterdir()) == [
      "refusal-seed0", "refusal-seed1", "safe_completion-seed0", "safe_completion-seed1"]
  assert not (out / "runs" / "refusal-seed0" / "rm" / "DONE.json").exists()  # no reward model is trained
  md = (out / "results.md").read_text()
  assert "safe_completion/ppo − refusal/ppo" in md and "Per seed" in md and "By eval split" in md
  assert "| refusal/ppo | malicious |" in md
  result = json.loads((out / "results.json").read_text())
  assert set(result["summaries"]) == {"refusal/sft", "refusal/ppo", "safe_completion/sft", "safe_completion/ppo"}
  n_prompts = result["summaries"]["refusal/ppo"]["n"]
  assert n_prompts == 2 * 3 * 8  # seeds x splits x prompts per split (tiny)
  safe = next(c for c in result["comparisons"] if c["metric"] == "safe" and c["models"][1] == "refusal/ppo")
  assert safe["models"] == ["safe_completion/ppo", "refusal/ppo"] and safe["overall"]["n"] == n_prompts
  assert {"lo", "hi"} <= set(safe["overall"]["diff"]) and safe["overall"]["p_value"] is not None
  ests = result["summaries"]["safe_completion/ppo"]["groups"]["dual_use"]
  assert {"value", "se", "lo", "hi"} <= set(ests["safety_rate"])
  for png in ("safety_rate.png", "helpfulness_given_safe.png", "severity_of_unsafe.png"):
    assert (out / "report" / png).stat().st_size > 0
  # Trained here or by an earlier module sharing the folder (the driver then skips it).
  assert "refusal seed 1: done" in proc.stdout or "refusal seed 1: finished" in proc.stdout


def test_controlled_experiment_resumes(ce_run, tmp_path_factory):
  out, _ = ce_run
  proc = _driver(tmp_path_factory, CE / "run.py", "--out", str(out), "--seeds", "0,1", "--scale", "tiny",
                 "--bootstrap", "100")
  assert proc.stdout.count("skipping") == 4 and "(0 trained now)" in proc.stdout


def test_out_dir_of_another_scale_is_refused(ce_run, tmp_path_factory):
  out, _ = ce_run
  proc = subprocess.run([sys.executable, str(CE / "run.py"), "--out", str(out), "--scale", "default"],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0 and "use another --out" in proc.stderr


def test_ablation_driver_compares_variants(tmp_path_factory):
  out = tmp_path_factory.mktemp("ablation") / "out"
  _driver(tmp_path_factory, ABLATIONS / "run.py", "--ablation", "multiturn", "--out", str(out), "--seeds", "0",
          "--scale", "tiny", "--bootstrap", "100")
  md = (out / "results.md").read_text()
  assert "refusal/ppo − safe_completion/ppo" in md
  assert "Multi-turn attacks vs single-turn prompts" in md and "| refusal | malicious |" in md
  result = json.loads((out / "results.json").read_text())
  assert set(result["summaries"]) == {"safe_completion/ppo", "refusal/ppo"}
  assert json.loads((out / "runs.json").read_text())["variants"] == ["safe_completion", "refusal"]


def test_long_training_curves_from_ppo_metrics(ce_run, tmp_path):
  out, _ = ce_run
  common = _module("safecomp_experiments_common", ABLATIONS / "common.py")
  driver = _module("ablation_driver_under_test", ABLATIONS / "run.py")
  runs = [common.Run(arm, seed, None, out / "runs" / f"{arm}-seed{seed}")
          for seed in (0, 1) for arm in ("safe_completion", "refusal")]
  text = driver.curves_analysis(runs, tmp_path)
  for name in ("response_length.png", "benign.png", "modes_safe_completion.png", "modes_refusal.png"):
    assert (tmp_path / "curves" / name).stat().st_size > 0, name
  assert "| refusal | gold_helpfulness_benign |" in text and "| safe_completion | response_length |" in text


@pytest.mark.parametrize("name", ABLATION_NAMES)
def test_ablation_configs_load_and_validate(name):
  module = _module(f"ablation_config_{name}", ABLATIONS / f"{name}.py")
  assert module.BASELINE in module.VARIANTS
  seen = []
  for variant in module.VARIANTS:
    for scale in ("default", "tiny", "large"):
      config = config_lib.load_config(f"{ABLATIONS / name}.py:variant={variant},scale={scale}")
      pipeline.validate(config)
      seen.append(config.to_dict())
  assert config_lib.load_config(f"{ABLATIONS / name}.py").to_dict() == seen[0]  # default: baseline, default scale
  with pytest.raises(ConfigError, match="unknown variant"):
    config_lib.config_from_file(f"{ABLATIONS / name}.py:variant=nope")


def test_ablation_variants_change_what_they_claim():
  get = lambda name, arg: config_lib.config_from_file(f"{ABLATIONS / name}.py:{arg}")
  assert get("reward_form", "variant=min").reward.kind == "min"
  assert get("spec_granularity", "variant=coarse").spec == "safe_completion_coarse"
  assert get("spec_granularity", "variant=inconsistent").spec == "safe_completion_inconsistent"
  assert get("reasoning", "variant=off").reasoning is False
  refusal = get("multiturn", "variant=refusal")
  assert refusal.reward.kind == "refusal" and refusal.sft_style == "refusal" and "rm" not in refusal.stages
  assert get("long_training", "scale=default").ppo.iterations == 5 * get("reasoning", "").ppo.iterations


def test_controlled_experiment_config_arms():
  for arm in ("refusal", "safe_completion"):
    for scale in ("default", "tiny", "large"):
      config = config_lib.load_config(f"{CE / 'config.py'}:arm={arm},scale={scale}")
      pipeline.validate(config)
      assert config.arm == arm and config.sft_style == arm
  with pytest.raises(ConfigError, match="unknown scale"):
    config_lib.config_from_file(f"{CE / 'config.py'}:scale=huge")


def test_oracle_red_team_hill_climbing_finds_no_exploit(tmp_path):
  """A short search (the full run, with PPO on the oracle, is in experiments/oracle_redteam.py)."""
  redteam = _module("oracle_redteam_under_test", EXPERIMENTS / "oracle_redteam.py")
  assert redteam.main(["--skip_ppo", "--prompts", "3", "--steps", "120", "--out", str(tmp_path)]) == 0
  report = json.loads((tmp_path / "report.json").read_text())
  (attack,) = report["attacks"]
  assert attack["attack"] == "hill_climbing" and attack["texts"] > 300 and attack["exploits"] == 0
  assert attack["best_surplus"]["surplus"] <= 1e-6 and attack["best_over_ideal"]["over_ideal"] <= 1e-6
  assert (tmp_path / "report.md").read_text().startswith("# Oracle red team")
  # The scorer sees what the oracle's old blind spots rewarded as an exploit.
  world = redteam.testbed.make_world(0)
  example = redteam.testbed.generate_examples(world, "test", 30, seed=1)[0]
  scorer = redteam.Scorer(world, example)
  finding, _ = scorer.finding("check", _markers(world, example) + " <unk> <unk>")
  assert finding.reward == 0.0 and not finding.exploit


def _markers(world, example):
  return " ".join(m for f in world.topic(example.topic).facts[:example.requested_level + 1] for m in f.markers)


# -- grader agreement (experiments/ablations/grader_agreement.py) -----------------------------------------
def _agreement_module():
  return _module("grader_agreement_under_test", ABLATIONS / "grader_agreement.py")


def _verdict_table(oracle, other, seed=0, help_x=None, help_y=None):
  import numpy as np  # pylint: disable=import-outside-toplevel
  n = len(oracle)
  hx = np.linspace(0, 1, n) if help_x is None else help_x
  return {"oracle_unsafe": np.asarray(oracle, float), "rm_unsafe": np.asarray(other, float),
          "judge_unsafe": np.asarray(other, float), "oracle_acceptable": 1 - np.asarray(oracle, float),
          "judge_acceptable": 1 - np.asarray(other, float), "oracle_helpfulness": hx,
          "rm_helpfulness": hx if help_y is None else help_y, "seed": np.full(n, seed),
          "key": np.array([f"{seed:06d}/p{i:04d}" for i in range(n)], dtype=object),
          "intent": np.array(["dual_use"] * n, dtype=object)}


def test_grader_agreement_statistics_on_hand_made_verdicts():
  import numpy as np  # pylint: disable=import-outside-toplevel
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  ga = _agreement_module()
  # 50 items: both unsafe 20, only the oracle 5, only the other 10, neither 15.
  # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, so kappa = 0.4.
  oracle = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
  other = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
  assert ga.cohen_kappa(oracle, other) == pytest.approx(0.4)
  assert ga.cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
  assert np.isnan(ga.cohen_kappa([0, 0, 0], [0, 0, 0]))  # no variation: undefined, not perfect
  rng = np.random.default_rng(0)
  x = rng.random(60)
  y = x + 0.3 * rng.standard_normal(60)
  table = _verdict_table(oracle + oracle[:10], other + other[:10], help_x=x, help_y=y)
  stats_by_name = {s.name: s for s in ga.statistics_list()}
  kappa = ga.estimate(table, stats_by_name["unsafe oracle~rm kappa"], n_boot=500)
  expected = ga.cohen_kappa(table["oracle_unsafe"], table["rm_unsafe"])
  assert kappa["value"] == pytest.approx(expected) and kappa["n"] == 60
  assert kappa["lo"] < expected < kappa["hi"] and kappa["hi"] - kappa["lo"] < 0.6
  agree = ga.estimate(table, stats_by_name["acceptable oracle~judge agreement"], n_boot=500)
  assert agree["value"] == pytest.approx(np.mean(table["oracle_unsafe"] == table["rm_unsafe"]))
  pearson = ga.estimate(table, stats_by_name["helpfulness rm~oracle pearson"], n_boot=500)
  spearman = ga.estimate(table, stats_by_name["helpfulness rm~oracle spearman"], n_boot=500)
  assert pearson["value"] == pytest.approx(scipy_stats.pearsonr(y, x)[0])
  assert spearman["value"] == pytest.approx(scipy_stats.spearmanr(y, x)[0])
  # Paired resamples: perfect agreement with variation gives kappa 1 in every draw, and a table
  # minus itself is exactly 0.
  perfect = ga.estimate(_verdict_table(oracle, oracle), stats_by_name["unsafe oracle~judge kappa"], n_boot=200)
  assert perfect["value"] == perfect["lo"] == perfect["hi"] == 1.0
  diff = ga.difference(table, table, stats_by_name["unsafe oracle~rm kappa"], n_boot=200)
  assert diff["paired"] and diff["value"] == diff["lo"] == diff["hi"] == 0.0
  worse = _verdict_table(oracle + oracle[:10], [1 - v for v in other] + other[:10], help_x=x, help_y=y)
  diff = ga.difference(worse, table, stats_by_name["unsafe oracle~rm kappa"], n_boot=500)
  assert diff["value"] < 0 and diff["hi"] < 0
  # Per seed: kappa 0.4 in seed 0 and -1 in seed 1; mean and sd over the two seeds.
  two = ga.concat([_verdict_table(oracle, other, seed=0), _verdict_table([1, 0, 1, 0], [0, 1, 0, 1], seed=1)])
  spread = ga.per_seed(two, stats_by_name["unsafe oracle~rm kappa"])
  assert spread["per_seed"] == {0: pytest.approx(0.4), 1: pytest.approx(-1.0)}
  assert spread["mean"] == pytest.approx(-0.3) and spread["sd"] == pytest.approx(np.std([0.4, -1.0], ddof=1))


def test_grader_agreement_end_to_end(ce_run, tmp_path):
  """The driver on the controlled experiment's safe-completion runs (the fine spec), seen as variants
  `fine` and `same` (the same runs again): every grader runs, and `same` - `fine` is exactly 0."""
  ce_out, _ = ce_run
  ablation_dir, out = tmp_path / "ablation", tmp_path / "agreement"
  (ablation_dir / "runs").mkdir(parents=True)
  for variant in ("fine", "same"):
    for seed in (0, 1):
      (ablation_dir / "runs" / f"{variant}-seed{seed}").symlink_to(ce_out / "runs" / f"safe_completion-seed{seed}")
  proc = subprocess.run([sys.executable, str(ABLATIONS / "grader_agreement.py"), "--ablation-dir", str(ablation_dir),
                         "--out", str(out), "--bootstrap", "100"], cwd=REPO_ROOT,
                        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  result = json.loads((out / "results.json").read_text())
  assert list(result["variants"]) == ["fine", "same"] and result["baseline"] == "fine"
  fine = result["variants"]["fine"]
  assert fine["n"] == 2 * 3 * 8 and fine["seeds"] == [0, 1]  # seeds x splits x prompts per split (tiny)
  for name, diff in result["variants"]["same"]["minus_baseline"].items():
    assert diff["paired"], name
    if diff["value"] is not None:
      assert diff["value"] == diff["lo"] == diff["hi"] == 0.0, name
  records = [json.loads(line) for line in (ce_out / "runs" / "safe_completion-seed0" / "eval" /
                                           "ppo_completions.jsonl").read_text().splitlines()]
  verdicts = [json.loads(line) for line in (out / "verdicts" / "fine-seed0.jsonl").read_text().splitlines()]
  assert [v["oracle_unsafe"] for v in verdicts] == [r["unsafe"] for r in records]
  assert {v["spec"] for v in verdicts} == {"safe_completion_fine"}
  assert all(v["judge_miss_rate"] == 0.3 for v in verdicts)
  # The judge drops as unsafe only what the oracle finds unsafe (its safety check is the oracle's).
  assert all(v["oracle_unsafe"] for v in verdicts if v["judge_unsafe"])
  md = (out / "results.md").read_text()
  assert "| acceptable oracle~judge kappa |" in md and "same − fine" in md and "Per seed" in md
