"""The whole pipeline, SFT -> RM -> PPO -> eval, at toy size, and the CLI around it."""
import json
import subprocess
import sys

import pytest

from safecomp import config as config_lib
from safecomp.errors import CheckpointError, ConfigError
from safecomp.training import pipeline
from safecomp.training.metrics import read_metrics

from tests.conftest import REPO_ROOT, demo_config

DEMO = str(REPO_ROOT / "configs" / "demo.py")


def tiny_config(arm: str = "safe_completion", **overrides):
  return demo_config(f"arm={arm},size=tiny", **overrides)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo")
  summaries = pipeline.run(tiny_config(), workdir)
  return workdir, summaries


def test_every_stage_runs_and_reports(demo_run):
  workdir, summaries = demo_run
  assert list(summaries) == ["sft", "rm", "ppo", "eval"]
  assert all(0 <= s["compile_seconds"] <= s["seconds"] for s in summaries.values())
  assert summaries["sft"]["eval_loss"] > 0 and summaries["sft"]["kept"] <= summaries["sft"]["generated"]
  assert 0 <= summaries["rm"]["severity_accuracy"] <= 1
  for name in ("sft", "ppo"):
    assert 0 <= summaries["eval"][f"{name}_gold_reward"] <= 1
  rm_eval = json.loads((workdir / "rm" / "eval.json").read_text())
  assert len(rm_eval["severity_confusion"]) == 4 and "severity_ece" in rm_eval
  assert 0 <= rm_eval["policy_severity_accuracy"] <= 1  # measured on the SFT policy's own samples

  ppo_rows = read_metrics(workdir / "metrics" / "ppo.jsonl")
  assert [r["step"] for r in ppo_rows] == [1, 2, 3]
  for key in ("score_mean", "kl_ref", "entropy", "clipfrac", "approx_kl", "explained_variance",
              "response_length", "proxy_reward", "gold_reward", "proxy_safety", "proxy_helpfulness",
              "gold_mode_direct", "gold_mode_hard_refusal"):
    assert key in ppo_rows[-1], key
  sft_rows = read_metrics(workdir / "metrics" / "sft.jsonl")
  assert any("eval_loss" in r for r in sft_rows) and all("loss" in r for r in sft_rows if "eval_loss" not in r)

  report = json.loads((workdir / "eval" / "eval.json").read_text())
  assert set(report["models"]) == {"sft", "ppo"} and len(report["comparisons"]) == 3
  for png in ("safety_rate.png", "helpfulness_given_safe.png", "severity_of_unsafe.png"):
    assert (workdir / "eval" / png).stat().st_size > 0
  table = (workdir / "eval" / "eval.md").read_text()
  assert "dual_use" in table and "malicious" in table and "benign" in table
  # Eval prompts are disjoint from every training split, and the report says so.
  assert summaries["eval"]["eval_training_overlap"] == 0 == report["data"]["eval_training_overlap"]
  assert report["data"]["eval_prompts"] > 0


def test_rerun_skips_completed_stages(demo_run, capsys):
  workdir, summaries = demo_run
  again = pipeline.run(tiny_config(), workdir)
  out = capsys.readouterr().out
  for stage in ("sft", "rm", "ppo", "eval"):
    assert f"[{stage}] complete" in out
  assert again["eval"]["ppo_gold_reward"] == summaries["eval"]["ppo_gold_reward"]


def test_checkpoint_from_another_model_config_is_refused(demo_run):
  workdir, _ = demo_run
  with pytest.raises(CheckpointError, match="model.hidden_size: trained with 32, this run has 48"):
    pipeline.run(tiny_config(**{"model.hidden_size": 48}), workdir)


@pytest.mark.parametrize("key,old,new", [("reward.kind", "product", "sum"), ("ppo.learning_rate", 1e-4, 3e-4),
                                         ("seed", 0, 1)])
def test_a_rerun_with_another_config_stops_naming_the_key(demo_run, key, old, new):
  """A finished stage is never reused under another config, and the workdir's record stays as it was."""
  workdir, _ = demo_run
  saved = (workdir / "config.json").read_text()
  with pytest.raises(CheckpointError) as info:
    pipeline.run(tiny_config(**{key: new}), workdir)
  message = str(info.value)
  line = f"{key}: trained with {old!r}, this run has {new!r}"
  first = "sft" if key == "seed" else "ppo"
  for stage in pipeline.STAGES:
    listed = pipeline.STAGES.index(stage) >= pipeline.STAGES.index(first)
    assert (f"stage {stage!r} (complete; its config: {workdir / stage / 'config.json'}):" in message) == listed
  assert message.count(line) == len(pipeline.STAGES) - pipeline.STAGES.index(first)
  assert f"--retrain_from={first}" in message
  assert (workdir / "config.json").read_text() == saved


def test_refusal_arm_runs_with_the_oracle_grader(tmp_path):
  config = tiny_config("refusal", stages=("sft", "ppo"))
  summaries = pipeline.run(config, tmp_path)
  assert summaries["ppo"]["iterations"] == 3
  rows = read_metrics(tmp_path / "metrics" / "ppo.jsonl")
  assert "gold_reward" in rows[-1] and "proxy_reward" not in rows[-1]


def test_refusal_reward_needs_the_oracle_grader(tmp_path):
  with pytest.raises(ConfigError, match="reward.grader"):
    pipeline.run(tiny_config("refusal", **{"reward.grader": "rm"}), tmp_path)


@pytest.mark.parametrize("key", ["teacher_error_rate", "teacher_caution_rate", "judge_miss_rate"])
def test_testbed_rates_must_be_probabilities(tmp_path, key):
  with pytest.raises(ConfigError, match=f"testbed.{key}"):
    pipeline.run(tiny_config(**{f"testbed.{key}": 1.5}), tmp_path)


def _cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "safecomp.train", *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300)


def test_cli_unknown_key_names_the_closest(tmp_path):
  result = _cli("--config", f"{DEMO}:size=tiny", "--workdir", str(tmp_path), "--config.sft.stepz=3",
                cwd=REPO_ROOT)
  assert result.returncode != 0
  assert "sft.stepz" in result.stderr and "sft.steps" in result.stderr


def test_cli_out_of_range_value(tmp_path):
  result = _cli("--config", f"{DEMO}:size=tiny", "--workdir", str(tmp_path), "--config.sft.learning_rate=-1",
                cwd=REPO_ROOT)
  assert result.returncode != 0 and "sft.learning_rate" in result.stderr


def test_cli_retrain_from_is_checked_at_start_up(tmp_path):
  result = _cli("--config", f"{DEMO}:size=tiny", "--workdir", str(tmp_path / "run"), "--retrain_from=dpo",
                cwd=REPO_ROOT)
  assert result.returncode == 1 and "--retrain_from=dpo: unknown stage" in result.stderr
  assert not (tmp_path / "run").exists()


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_sft_and_rm_train_on_user_jsonl(tmp_path):
  from safecomp import spec as spec_lib
  from safecomp import testbed
  import numpy as np
  world, spec = testbed.make_world(0), spec_lib.load_spec("safe_completion_fine")
  rng = np.random.default_rng(0)
  examples = testbed.generate_examples(world, "train", 40, seed=5)
  sft_rows = [testbed.make_sft_example(world, spec, e, "safe_completion", rng) for e in examples]
  rm_rows = []
  for e in examples:
    answer = testbed.ideal_response(world, e)
    g = testbed.grade(e.messages, answer, world=world, example=e)
    rm_rows.append({"prompt": e.messages, "completion": answer, "severity": ["negligible", "low", "moderate",
                                                                             "high"][g.severity],
                    "helpfulness": g.helpfulness})
  config = tiny_config(stages=("sft", "rm"))
  config.sft.train_file = _write_jsonl(tmp_path / "sft.jsonl", sft_rows)
  config.rm.train_file = _write_jsonl(tmp_path / "rm.jsonl", rm_rows)
  config.rm.policy_samples_per_prompt = 0  # the oracle can only label testbed prompts
  summaries = pipeline.run(config, tmp_path / "run")
  assert summaries["sft"]["generated"] == 40 and summaries["sft"]["kept"] == sum(r["kept"] for r in sft_rows)
  assert 0 <= summaries["rm"]["severity_accuracy"] <= 1


def test_reward_model_without_a_finished_sft_stage_is_an_error(tmp_path):
  """The reward model starts from the SFT trunk and labels the SFT policy's samples: never untrained ones."""
  with pytest.raises(ConfigError, match="stage 'sft' has no complete checkpoint"):
    pipeline.run(tiny_config(stages=("rm",)), tmp_path / "run")


def test_policy_rm_rows_are_oracle_labelled_samples(demo_run):
  from safecomp import testbed
  from safecomp.training import rm as rm_stage
  workdir, _ = demo_run
  p = pipeline.open_workdir(workdir)
  p.config.rm.policy_samples_per_prompt = 2
  p.config.testbed.n_rm_eval = 5
  model, params = p.sft_policy()
  rows, ungraded = rm_stage.policy_rm_rows(p, "eval", model, params, p.grader("oracle"))
  assert len(rows) == 10 and ungraded == 0 and all(r["policy_sample"] for r in rows)
  prompts = p.task.rm_prompts("eval") * 2
  assert [r["messages"][:-1] for r in rows] == [x.message_list for x in prompts]
  for row, prompt in zip(rows, prompts):
    grade = testbed.grade(prompt.messages, row["messages"][-1]["content"], world=p.task.world, example=prompt.example)
    assert (row["severity"], row["helpfulness"]) == (grade.severity, grade.helpfulness)
  assert len({r["messages"][-1]["content"] for r in rows}) > 1  # sampled, not one fixed answer


def test_malformed_rm_row_names_file_and_line(tmp_path):
  rows = [{"prompt": "hi", "completion": "hello", "severity": 0, "helpfulness": 0.5},
          {"prompt": "hi", "completion": "hello", "severity": "catastrophic", "helpfulness": 0.5}]
  config = tiny_config(stages=("rm",))
  config.rm.train_file = _write_jsonl(tmp_path / "rm.jsonl", rows)
  config.rm.policy_samples_per_prompt = 0
  from safecomp.errors import DataError
  with pytest.raises(DataError, match=r"rm\.jsonl.*2.*severity"):  # at start-up, before any stage
    pipeline.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_grade_cli_with_the_trained_reward_model(demo_run, tmp_path):
  from safecomp import grade
  from safecomp import testbed
  workdir, _ = demo_run
  world = testbed.make_world(0)
  rows = [{"prompt": e.messages, "completion": testbed.ideal_response(world, e)}
          for e in testbed.generate_examples(world, "test", 3, seed=1)]
  rows.append({"prompt": "plain text prompt", "completion": "plain answer"})
  src = _write_jsonl(tmp_path / "in.jsonl", rows)
  assert grade.main(["--grader", "rm", "--rm-workdir", str(workdir), "--input", src,
                     "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
  out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert len(out) == 4
  for row in out:
    g = row["grades"]
    assert 0 <= g["safety"] <= 1 and 0 <= g["helpfulness"] <= 1 and g["severity"] in range(4)
    assert abs(g["reward"] - g["safety"] * g["helpfulness"]) < 1e-6


def test_nonfinite_ppo_style_update_is_dropped():
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax.training import train_state
  from safecomp.training import loop as loop_lib
  old = train_state.TrainState.create(apply_fn=None, params={"w": jnp.ones(3)}, tx=optax.adam(1e-3))
  bad = old.replace(params={"w": jnp.array([1.0, jnp.nan, 1.0])})
  state, nonfinite = loop_lib.keep_if_finite(old, bad, jnp.float32(0.5))
  assert bool(nonfinite) and np.array_equal(state.params["w"], old.params["w"])
  good = old.replace(params={"w": jnp.full(3, 2.0)})
  state, nonfinite = loop_lib.keep_if_finite(old, good, jnp.float32(0.5))
  assert not bool(nonfinite) and np.array_equal(state.params["w"], good.params["w"])
  _, nonfinite = loop_lib.keep_if_finite(old, good, jnp.float32(jnp.inf))
  assert bool(nonfinite)


@pytest.mark.parametrize("override,key", [
    ("reward.kind=prodct", "reward.kind"), ("ppo.algorithm=dpo", "ppo.algorithm"),
    ("ppo.kl_estimator=k9", "ppo.kl_estimator"), ("rm.helpfulness_loss=mse", "rm.helpfulness_loss"),
    ("eval.splits=('tset',)", "eval.splits"), ("spec=safe_completion_finer", "spec"),
    ("chat_template=llama9", "chat_template"), ("ppo.vf_clip='big'", "ppo.vf_clip")])
def test_enumerated_keys_fail_at_start_up_naming_the_key(override, key, tmp_path):
  config = config_lib.load_config(f"{DEMO}:size=tiny", [override])
  with pytest.raises(ConfigError, match=f"config key '{key}'"):
    pipeline.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # before any stage, before the workdir


def test_unclipped_value_loss_is_settable():
  config = config_lib.load_config(f"{DEMO}:size=tiny", ["ppo.vf_clip=None"])
  pipeline.validate(config)
  from safecomp.training import ppo as ppo_stage
  assert ppo_stage.ppo_config(config, eos_id=2).vf_clip is None


def test_batches_that_the_mesh_does_not_divide_fail_at_start_up():
  from safecomp import parallel
  mesh = parallel.abstract_mesh({"data": 4, "fsdp": 1, "tensor": 1}, 4)
  pipeline.check_batches(tiny_config(), mesh)  # 8-row batches split 4 ways
  with pytest.raises(ConfigError, match="'sft.batch_size': 6 is not a multiple of 4"):
    pipeline.check_batches(tiny_config(**{"sft.batch_size": 6}), mesh)
  with pytest.raises(ConfigError, match="'rm.microbatches': 4 is not a multiple of 4|'rm.microbatches'"):
    pipeline.check_batches(tiny_config(**{"rm.microbatches": 4}), mesh)
  with pytest.raises(ConfigError, match="'ppo.prompts_per_iteration'"):
    pipeline.check_batches(tiny_config(**{"ppo.prompts_per_iteration": 10, "ppo.group_size": 1}), mesh)
