"""Testbed builders: tiny builds, checked against the testbed's own generators and oracle."""
import collections

import numpy as np
import pytest

from safecomp import testbed
from safecomp.data import readers
from safecomp.data import testbed_builders as tbb
from safecomp.errors import ConfigError
from safecomp.spec import load_spec

SFT_SIZES = {"train": 24, "test": 8}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def world():
  return testbed.make_world(0, testbed.WorldConfig())


@pytest.fixture(scope="module")
def sft(data_dir):
  return {style: tbb.build_testbed("testbed_sft", data_dir, config=style, sizes=SFT_SIZES)
          for style in ("safe_completion", "refusal")}


def _rows(builder, split):
  return list(readers.load_split(builder.data_dir, split))


def test_sft_sizes_and_conversations(sft, world):
  spec = load_spec(tbb.DEFAULT_SPEC)
  for style, builder in sft.items():
    assert tbb.split_sizes(builder) == SFT_SIZES
    for split, n in SFT_SIZES.items():
      rows = _rows(builder, split)
      expected = testbed.generate_examples(world, split, n, 0)
      assert [r["uid"] for r in rows] == [e.uid for e in expected]
      for row, ex in zip(rows, expected):
        assert tbb.example_from_record(row["example"]) == ex  # Round trip to the Example.
        assert row["prompt"] == ex.messages and row["messages"][:-1] == ex.messages
        turn = row["messages"][-1]
        assert turn["role"] == "assistant"
        assert turn["content"] == f"<think> {row['reasoning']} </think> {row['answer']}"
        assert row["style"] == style and row["spec"] == spec.name
        # The stored verdict is the judge's verdict on the stored answer.
        kept, reason = testbed.judge_filter(world, spec, ex, row["answer"], style=style)
        assert (row["kept"], row["filter_reason"]) == (kept, reason)
      assert builder.info.metadata["kept"][split] == sum(r["kept"] for r in rows)
  sc = _rows(sft["safe_completion"], "train")
  ref = _rows(sft["refusal"], "train")
  assert {r["mode"] for r in ref} <= {"direct", "hard_refusal"}
  assert "safe_completion" in {r["mode"] for r in sc} or "refusal_redirect" in {r["mode"]
                                                                                 for r in sc}


def test_builds_are_deterministic_and_seeded(sft, tmp_path):
  again = tbb.build_testbed("testbed_sft", tmp_path / "a", config="safe_completion",
                            sizes=SFT_SIZES)
  assert _rows(again, "train") == _rows(sft["safe_completion"], "train")
  other = tbb.build_testbed("testbed_sft", tmp_path / "b", config="safe_completion",
                            sizes=SFT_SIZES, seed=5)
  assert [r["uid"] for r in _rows(other, "train")] != [r["uid"] for r in
                                                       _rows(again, "train")]


def test_no_reasoning_config(data_dir):
  builder = tbb.build_testbed("testbed_sft", data_dir, config="safe_completion_no_reasoning",
                              sizes={"train": 6})
  for row in _rows(builder, "train"):
    assert row["reasoning"] == "" and row["messages"][-1]["content"] == row["answer"]


def test_rm_gold_labels_match_the_oracle(data_dir, world):
  builder = tbb.build_testbed("testbed_rm", data_dir, sizes={"train": 16, "test": 4},
                              candidates_per_prompt=len(tbb.CANDIDATE_SOURCES))
  assert tbb.split_sizes(builder) == {"train": 16 * len(tbb.CANDIDATE_SOURCES),
                                      "test": 4 * len(tbb.CANDIDATE_SOURCES)}
  rows = _rows(builder, "train")
  by_prompt = collections.defaultdict(dict)
  for row in rows:
    ex = tbb.example_from_record(row["example"])
    grade = testbed.grade(ex.messages, row["completion"], world, example=ex).to_dict()
    for key, value in row["gold"].items():
      if isinstance(value, float):
        assert value == pytest.approx(grade[key], abs=1e-6), key
      else:
        assert value == grade[key], key
    assert row["intent"] == ex.intent and row["prompt"] == ex.messages
    by_prompt[row["prompt_uid"]][row["source"]] = row
  for cands in by_prompt.values():
    assert set(cands) == set(tbb.CANDIDATE_SOURCES)
    assert cands["ideal"]["completion"] == testbed.ideal_response(
        world, tbb.example_from_record(cands["ideal"]["example"]))
    # The gold policy's answer is never beaten under the gold reward.
    best = max(c["gold"]["reward"] for c in cands.values())
    assert cands["ideal"]["gold"]["reward"] == pytest.approx(best)
    assert "repetitive" in cands["degraded_repetitive"]["gold"]["flags"]
    assert "grader_addressed" in cands["degraded_grader_addressed"]["gold"]["flags"]
    if cands["ideal"]["example"]["is_hazard_category"]:
      assert cands["degraded_leak"]["gold"]["severity"] >= 1
  # Labels vary, so a reward model has something to learn.
  assert len({r["gold"]["mode"] for r in rows}) >= 3
  assert 0 < np.mean([r["gold"]["unsafe"] for r in rows]) < 0.5


def test_rm_samples_candidate_subsets(data_dir):
  builder = tbb.build_testbed("testbed_rm", data_dir, sizes={"train": 12}, candidates_per_prompt=3)
  rows = _rows(builder, "train")
  per_prompt = collections.Counter(r["prompt_uid"] for r in rows)
  assert set(per_prompt.values()) == {3}
  assert len({r["source"] for r in rows}) > 3  # Different prompts draw different sources.


def test_rl_and_eval_prompts(data_dir, world):
  rl = tbb.build_testbed("testbed_rl", data_dir, sizes={"train": 12})
  ev = tbb.build_testbed("testbed_eval", data_dir,
                         sizes={"test": 6, "heldout": 6, "multiturn": 4})
  assert tbb.split_sizes(ev) == {"test": 6, "heldout": 6, "multiturn": 4}
  for builder in (rl, ev):
    seed = builder.builder_config.seed
    for split in tbb.split_sizes(builder):
      rows = _rows(builder, split)
      expected = testbed.generate_examples(world, split, len(rows), seed)
      assert [tbb.example_from_record(r["example"]) for r in rows] == expected
      for row, ex in zip(rows, expected):
        assert row["intended_mode"] == testbed.intended_mode(ex, world)
        assert row["ideal_response"] == testbed.ideal_response(world, ex)
  assert all(r["example"]["multiturn"] for r in _rows(ev, "multiturn"))
  assert {r["example"]["split"] for r in _rows(ev, "heldout")} == {"heldout"}
  # RL prompts are drawn apart from the SFT prompts (another seed).
  sft_uids = {e.uid for e in testbed.generate_examples(world, "train", 12, 0)}
  assert not sft_uids & {r["uid"] for r in _rows(rl, "train")}


@pytest.mark.parametrize("overrides,match", [
    ({"sizes": {"validation": 3}}, "unknown split 'validation'"),
    ({"sizes": {"train": 0}}, "needs a size >= 1"),
    ({"style": "polite"}, "unknown style 'polite'"),
    ({"error_rate": 1.5}, "error_rate: must lie in"),
    ({"candidates_per_prompt": 99}, "candidates_per_prompt"),
    ({"size": 3}, "has no field"),
])
def test_bad_config_names_the_key(tmp_path, overrides, match):
  with pytest.raises(ConfigError, match=match):
    tbb.build_testbed("testbed_sft", tmp_path, **overrides)


def test_unknown_builder_or_config(tmp_path):
  with pytest.raises(ConfigError, match="unknown testbed dataset"):
    tbb.build_testbed("testbed_nope", tmp_path)
  with pytest.raises(ConfigError, match="unknown config 'polite'"):
    tbb.build_testbed("testbed_sft", tmp_path, config="polite")
