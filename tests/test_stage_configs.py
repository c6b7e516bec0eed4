"""Each stage records the config it was trained with; a rerun that contradicts it stops at start-up.

One SFT-only run of the tiny demo config is copied into each test's own workdir.
"""
import json
import shutil

import pytest

from safecomp import config as config_lib
from safecomp.errors import CheckpointError, ConfigError
from safecomp.training import pipeline
from safecomp.training.metrics import read_metrics

from tests.conftest import demo_config


def tiny(**overrides):
  return demo_config(**overrides)


def files(workdir):
  """{relative path: bytes} of every file in the workdir."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sft_only")
  pipeline.run(tiny(stages=("sft",)), workdir)
  return workdir


@pytest.fixture
def workdir(sft_run, tmp_path):
  """A copy of the SFT-only workdir."""
  return shutil.copytree(sft_run, tmp_path / "run")


def test_the_stage_records_the_config_it_was_trained_with(sft_run):
  recorded = json.loads((sft_run / "sft" / "config.json").read_text())
  assert recorded == json.loads(config_lib.to_json(tiny(stages=("sft",))))
  assert recorded == json.loads((sft_run / "config.json").read_text())


@pytest.mark.parametrize("key,old,new", [("seed", 0, 1), ("sft.learning_rate", 0.003, 0.01),
                                         ("testbed.teacher_caution_rate", 0.6, 0.0),
                                         ("model.hidden_size", 32, 48)])
def test_a_key_that_can_change_the_stage_stops_the_rerun_before_anything_is_written(workdir, key, old, new):
  before = files(workdir)
  with pytest.raises(CheckpointError) as info:
    pipeline.run(tiny(stages=("sft",), **{key: new}), workdir)
  message = str(info.value)
  assert f"stage 'sft' (complete; its config: {workdir / 'sft' / 'config.json'})" in message
  assert f"{key}: trained with {old!r}, this run has {new!r}" in message
  assert "--retrain_from=sft" in message
  assert files(workdir) == before  # config.json included


def test_keys_that_cannot_change_sft_leave_it_finished(workdir, capsys):
  recorded = (workdir / "sft" / "config.json").read_text()
  done = (workdir / "sft" / "DONE.json").read_text()
  config = tiny(stages=("sft",), **{
      "eval.n_per_split": 4, "eval.bootstrap": 7, "eval.grader": "rm", "eval.splits": ("test",),
      "ppo.learning_rate": 1e-3, "reward.kind": "sum", "rm.steps": 2, "rm.labeler": "judge",
      "testbed.n_rl_prompts": 16, "judge.checkpoint": "/nowhere", "sft.log_every": 3,
      "sft.checkpoint_every": 2, "sft.eval_every": 2, "sft.microbatches": 2, "checkpoint.max_to_keep": 3,
      "mesh.data": 1, "max_consecutive_nonfinite": 2, "arm": "other"})
  summaries = pipeline.run(config, workdir)
  assert "[sft] complete" in capsys.readouterr().out
  assert summaries["sft"]["eval_loss"] > 0
  assert (workdir / "sft" / "config.json").read_text() == recorded  # never overwritten
  assert (workdir / "sft" / "DONE.json").read_text() == done
  assert json.loads((workdir / "config.json").read_text())["eval"]["n_per_split"] == 4


def test_later_stages_train_with_their_new_keys_after_an_sft_only_run(workdir, capsys):
  new = {"ppo.learning_rate": 3e-4, "ppo.kl_coef": 0.1}
  summaries = pipeline.run(tiny(**new), workdir)
  assert list(summaries) == list(pipeline.STAGES)
  assert "[sft] complete" in capsys.readouterr().out
  for stage in ("rm", "ppo", "eval"):
    recorded = json.loads((workdir / stage / "config.json").read_text())
    assert recorded["ppo"]["learning_rate"] == 3e-4 and recorded["ppo"]["kl_coef"] == 0.1
  assert json.loads((workdir / "sft" / "config.json").read_text())["ppo"]["learning_rate"] == 1e-4
  assert json.loads((workdir / "config.json").read_text())["ppo"]["learning_rate"] == 3e-4
  # The same command again skips every stage; the old PPO rate is now refused for PPO and eval only.
  again = pipeline.run(tiny(**new), workdir)
  assert again["eval"] == summaries["eval"] | {"step": 0, "fingerprint": again["eval"]["fingerprint"]}
  with pytest.raises(CheckpointError) as info:
    pipeline.run(tiny(**{"ppo.kl_coef": 0.1}), workdir)
  message = str(info.value)
  assert "stage 'ppo'" in message and "stage 'eval'" in message
  assert "stage 'sft'" not in message and "stage 'rm'" not in message
  assert "ppo.learning_rate: trained with 0.0003, this run has 0.0001" in message
  assert "--retrain_from=ppo" in message


def test_retrain_from_trains_that_stage_again_and_sets_the_old_results_aside(workdir, capsys):
  old_record = (workdir / "sft" / "config.json").read_text()
  pipeline.run(tiny(stages=("sft",), **{"sft.learning_rate": 0.01}), workdir, retrain_from="sft")
  out = capsys.readouterr().out
  assert "[sft] starting" in out and "[retrain_from] the results of sft moved to" in out
  assert json.loads((workdir / "sft" / "config.json").read_text())["sft"]["learning_rate"] == 0.01
  [replaced] = (workdir / "replaced").iterdir()
  assert (replaced / "sft" / "config.json").read_text() == old_record
  assert (replaced / "sft" / "DONE.json").is_file() and (replaced / "metrics" / "sft.jsonl").is_file()
  steps = [r["step"] for r in read_metrics(workdir / "metrics" / "sft.jsonl") if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == 6  # the new run's rows only
  pipeline.run(tiny(stages=("sft",), **{"sft.learning_rate": 0.01}), workdir)  # now the record agrees
  assert "[sft] complete" in capsys.readouterr().out


@pytest.mark.parametrize("retrain_from,match", [("dpo", "unknown stage"), ("rm", "not in config.stages")])
def test_retrain_from_must_name_a_stage_the_run_trains(tmp_path, retrain_from, match):
  with pytest.raises(ConfigError, match=f"--retrain_from={retrain_from}: .*{match}"):
    pipeline.run(tiny(stages=("sft",)), tmp_path / "run", retrain_from=retrain_from)
  assert not (tmp_path / "run").exists()


def test_a_partly_trained_stage_is_checked_too(workdir):
  (workdir / "sft" / "DONE.json").unlink()  # as if killed after its last checkpoint
  with pytest.raises(CheckpointError, match=r"stage 'sft' \(checkpointed up to step 6.*\n.*seed: trained with 0"):
    pipeline.run(tiny(stages=("sft",), seed=1), workdir)


def test_a_stage_without_a_record_is_checked_against_the_workdir_config(workdir, capsys):
  """Workdirs from before stages recorded their config: config.json is the best record there is."""
  (workdir / "sft" / "config.json").unlink()
  with pytest.raises(CheckpointError, match=f"its config: {workdir / 'config.json'}"):
    pipeline.run(tiny(stages=("sft",), seed=1), workdir)
  assert not (workdir / "sft" / "config.json").exists()
  pipeline.run(tiny(stages=("sft",)), workdir)
  assert "[sft] complete" in capsys.readouterr().out
  assert (json.loads((workdir / "sft" / "config.json").read_text())
          == json.loads(config_lib.to_json(tiny(stages=("sft",)))))


def test_an_eval_that_saw_no_ppo_policy_does_not_stand_for_a_run_with_ppo(workdir):
  """The eval stage evaluates PPO only when the run has it; a finished SFT-only eval is not reused."""
  recorded = json.loads((workdir / "sft" / "config.json").read_text())
  (workdir / "eval").mkdir()
  (workdir / "eval" / "config.json").write_text(json.dumps(dict(recorded, stages=["sft", "eval"])))
  (workdir / "eval" / "DONE.json").write_text(json.dumps({"step": 0}))
  with pytest.raises(CheckpointError, match=r"stage 'eval'.*\n.*evaluated no PPO policy") as info:
    pipeline.run(tiny(stages=("sft", "ppo", "eval")), workdir)
  assert "--retrain_from=eval" in str(info.value)


@pytest.mark.parametrize("key,stage", [
    ("seed", "sft"), ("model.hidden_size", "sft"), ("max_seq_len", "sft"), ("spec", "sft"),
    ("sft.learning_rate", "sft"), ("testbed.world_seed", "sft"), ("testbed.n_sft", "sft"),
    ("task.kind", "sft"), ("task.eval_prompts", "sft"),  # SFT rows that repeat an eval prompt are dropped
    ("a_key_added_later", "sft"),
    ("rm.steps", "rm"), ("rm.labeler", "rm"), ("testbed.n_rm", "rm"), ("task.train_prompts", "rm"),
    ("ppo.max_new_tokens", "rm"), ("eval.batch_size", "rm"),  # the SFT policy's samples for the RM
    ("oracle.unknown_prompts", "rm"),  # the demo's RM labeler is the oracle
    ("reward.kind", "ppo"), ("reward.severity_to_safety", "ppo"), ("ppo.learning_rate", "ppo"),
    ("testbed.n_rl_prompts", "ppo"), ("eval.grader", "ppo"),  # PPO's gold monitoring
    ("eval.n_per_split", "eval"), ("eval.bootstrap", "eval"), ("eval.splits", "eval"),
    ("judge.checkpoint", None),  # no stage of the demo grades with a judge
    ("stages", None), ("arm", None), ("mesh.data", None), ("distributed.process_id", None),
    ("checkpoint.max_to_keep", None), ("sft.log_every", None), ("sft.checkpoint_every", None),
    ("sft.eval_every", None), ("sft.microbatches", None), ("ppo.score_chunk_rows", None), ("ppo.gold_every", None),
    ("task.data_dir", None), ("http.cache_dir", None), ("max_consecutive_nonfinite", None)])
def test_the_first_stage_each_key_can_change(key, stage):
  demo = json.loads(config_lib.to_json(tiny()))
  assert pipeline.first_stage(key, [demo]) == stage


def test_grader_sections_count_from_the_first_stage_that_grades_with_them():
  demo = json.loads(config_lib.to_json(tiny()))
  judged = json.loads(config_lib.to_json(tiny(**{"eval.grader": "judge"})))
  http = json.loads(config_lib.to_json(tiny(**{"rm.labeler": "http"})))
  assert pipeline.first_stage("judge.checkpoint", [demo, judged]) == "ppo"
  assert pipeline.first_stage("http.model", [http]) == "rm" and pipeline.first_stage("http.concurrency", [http]) is None
  no_samples = json.loads(config_lib.to_json(tiny(**{"rm.labeler": "http", "rm.policy_samples_per_prompt": 0})))
  assert pipeline.first_stage("http.model", [no_samples]) is None
