"""Testbed datasets: built from a tiny run config, they hold exactly the testbed task's data."""
import pathlib

import pytest

from safecomp import config as config_lib
from safecomp import tasks
from safecomp import testbed
from safecomp.data import readers
from safecomp.errors import ConfigError
from safecomp.tasks import testbed_datasets as tbd

SIZES = ("testbed.n_sft=16", "testbed.n_sft_eval=6", "testbed.n_rm=8", "testbed.n_rm_eval=4",
         "testbed.n_rl_prompts=8", "eval.n_per_split=4")


def _config(*overrides):
  return config_lib.load_config("configs/demo.py:size=tiny", SIZES + overrides)


@pytest.fixture(scope="module")
def config():
  return _config()


@pytest.fixture(scope="module")
def task(config):
  return tasks.TestbedTask(config)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def built(config, data_dir):
  return tbd.build_testbed_datasets(config, data_dir)


def _rows(builder, split):
  return list(readers.load_split(builder.data_dir, split))


def _messages(messages):
  return [dict(m) for m in messages]


def test_sft_rows_are_the_tasks(built, task, config):
  builder = built["testbed_sft"]
  assert tbd.split_sizes(builder) == {"train": 16, "eval": 6}
  for split in ("train", "eval"):
    rows = _rows(builder, split)
    conversations, stats = task.sft_conversations(split)
    assert [r["messages"] for r in rows if r["kept"]] == conversations
    assert builder.info.metadata["stats"][split] == stats
    for row, (ex, teacher) in zip(rows, task.sft_rows(split), strict=True):
      assert tbd.example_from_record(row["example"]) == ex  # Round trip to the Example.
      assert row["prompt"] == _messages(ex.messages) and row["messages"][:-1] == row["prompt"]
      for key in ("uid", "messages", "reasoning", "answer", "mode", "kept", "filter_reason", "style",
                  "spec", "spec_version"):
        assert row[key] == teacher[key], key
      assert row["teacher_error"] == (teacher["error"] or "")
  assert not all(r["kept"] for r in _rows(builder, "train"))  # Dropped rows are in the data too.
  assert builder.info.metadata["config"] == tbd.data_sections(config)


def test_rm_rows_are_the_tasks(built, task):
  builder = built["testbed_rm"]
  per_prompt = task.config.testbed.rm_candidates_per_prompt
  for split in ("train", "eval"):
    rows = _rows(builder, split)
    assert [{k: r[k] for k in ("messages", "severity", "helpfulness")} for r in rows] == task.rm_rows(split)
    prompts = task.rm_prompts(split)
    assert [r["prompt_uid"] for r in rows] == [p.uid for p in prompts for _ in range(per_prompt)]
    for row in rows:
      assert row["completion"] == row["messages"][-1]["content"]
      assert row["prompt"] == row["messages"][:-1]
      assert tbd.example_from_record(row["example"]).messages == row["prompt"]
  assert len({r["uid"] for r in _rows(builder, "train")}) == 8 * per_prompt


def _check_prompts(rows, prompts, world):
  assert [r["uid"] for r in rows] == [p.uid for p in prompts]
  for row, p in zip(rows, prompts):
    assert row["prompt"] == _messages(p.messages)
    assert (row["intent"], row["category"]) == (p.intent, p.category)
    assert tbd.example_from_record(row["example"]) == p.example
    assert row["intended_mode"] == testbed.intended_mode(p.example, world)
    assert row["ideal_response"] == testbed.ideal_response(world, p.example)


def test_rl_and_eval_prompts_are_the_tasks(built, task):
  _check_prompts(_rows(built["testbed_rl"], "train"), task.train_prompts(), task.world)
  ev = built["testbed_eval"]
  assert tbd.split_sizes(ev) == {split: 4 for split in task.eval_sets()}
  for split in task.eval_sets():
    _check_prompts(_rows(ev, split), task.eval_set_prompts(split), task.world)


def test_rebuild_is_deterministic_and_reuses_the_directory(built, config, data_dir, tmp_path):
  info = pathlib.Path(built["testbed_sft"].data_dir) / "dataset_info.json"
  written = info.stat().st_mtime_ns
  again = tbd.build_testbed("testbed_sft", data_dir, config=_config())
  assert again.data_dir == built["testbed_sft"].data_dir and info.stat().st_mtime_ns == written
  assert again.info.metadata["stats"] == built["testbed_sft"].info.metadata["stats"]
  elsewhere = tbd.build_testbed("testbed_sft", tmp_path, config=config)
  for split in ("train", "eval"):
    assert _rows(elsewhere, split) == _rows(built["testbed_sft"], split)
  # Keys outside the data sections (training hyperparameters) do not change the data.
  assert tbd.config_name(_config("ppo.learning_rate=0.5")) == tbd.config_name(config)


def test_a_different_config_gets_a_different_directory(built, config, data_dir):
  other = _config("seed=1")
  assert tbd.config_name(other) != tbd.config_name(config)
  builder = tbd.build_testbed("testbed_rl", data_dir, config=other)
  assert builder.data_dir != built["testbed_rl"].data_dir
  assert _rows(builder, "train") != _rows(built["testbed_rl"], "train")
  assert builder.info.metadata["config"]["seed"] == 1
  for key in ("sft_style=refusal", "testbed.teacher_error_rate=0.5", "eval.n_per_split=5",
              "reward.severity_to_safety=(1.0,0.8,0.4,0.0)"):
    assert tbd.config_name(_config(key)) != tbd.config_name(config), key


def test_bad_requests_raise_config_errors(config, tmp_path):
  with pytest.raises(ConfigError, match="unknown testbed dataset 'testbed_nope'"):
    tbd.build_testbed("testbed_nope", tmp_path, config=config)
  with pytest.raises(ConfigError, match="sft.train_file"):
    tbd.build_testbed("testbed_sft", tmp_path, config=_config("sft.train_file=/tmp/sft.jsonl"))
  with pytest.raises(ConfigError, match="task.kind"):
    tbd.build_testbed("testbed_rl", tmp_path, config=_config("task.kind=prompts"))
