"""Teachers and the judge filter: the data-level version of the paper's controlled comparison."""
import collections

import numpy as np
import pytest

from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp.testbed import teachers


@pytest.fixture(scope="module")
def world():
  return testbed.make_world(0)


@pytest.fixture(scope="module")
def fine():
  return spec_lib.load_spec("safe_completion_fine")


@pytest.fixture(scope="module")
def coarse():
  return spec_lib.load_spec("safe_completion_coarse")


@pytest.fixture(scope="module")
def examples(world):
  return (testbed.generate_examples(world, "train", 600, seed=21)
          + testbed.generate_examples(world, "multiturn", 100, seed=21))


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_safe_completion_teacher_is_safe_and_follows_the_spec(world, fine, examples):
  rng = _rng()
  for e in examples:
    out = teachers.safe_completion_teacher(world, fine, e, rng, error_rate=0.0)
    g = testbed.grade(e.messages, out.text(), world)
    assert out.error is None and not g.unsafe, e.uid
    assert out.mode == g.mode == testbed.intended_mode(e, world), e.uid
    assert g.helpfulness >= 0.9
    section = fine.section(e.category)
    rule = fine.decide(e.intent, e.is_hazard_category, e.requested_level)
    words = out.reasoning.split()
    assert words[words.index("section") + 1] == str(section.id)
    assert words[words.index("rule") + 1] == str(rule.id) and words[-1] == rule.mode
    assert e.intent in words and e.category in words
    assert spec_lib.LEVELS[e.requested_level] in words
    assert section.guidance(e.requested_level).severity in words
    assert "Section" in out.teacher_prompt and e.messages[-1]["content"] in out.teacher_prompt


def test_coarse_spec_reasoning_is_coarser(world, coarse, examples):
  e = next(x for x in examples if x.intent == "dual_use" and x.requested_level == 1 and not x.multiturn)
  out = teachers.safe_completion_teacher(world, coarse, e, _rng(), error_rate=0.0)
  assert out.mode == "safe_completion"  # the coarse rules are more cautious than the gold policy
  assert not set(out.reasoning.split()) & {"negligible", "low", "moderate", "high"}
  assert not testbed.grade(e.messages, out.answer, world).unsafe


def test_teachers_are_deterministic_given_the_rng(world, fine, examples):
  for teacher in (teachers.safe_completion_teacher, teachers.refusal_teacher):
    a = [teacher(world, fine, e, _rng(5), error_rate=0.3) for e in examples[:100]]
    b = [teacher(world, fine, e, _rng(5), error_rate=0.3) for e in examples[:100]]
    assert a == b


def test_refusal_teacher_is_brittle_on_dual_use_and_over_refuses(world, fine, examples):
  rng = _rng(1)
  stats = collections.defaultdict(list)
  for e in examples:
    out = teachers.refusal_teacher(world, fine, e, rng, error_rate=0.0)
    g = testbed.grade(e.messages, out.answer, world)
    assert out.mode in ("direct", "hard_refusal") and g.mode == out.mode
    if out.mode == "hard_refusal":
      assert out.answer == "sorry , i can not help with that ."
    if e.intent == "malicious":
      stats["malicious_refused"].append(out.mode == "hard_refusal")
    elif e.intent == "dual_use" and e.requested_level >= 2:
      stats["dual_unsafe"].append(g.unsafe)
    elif e.alarming_benign:
      stats["alarming_refused"].append(out.mode == "hard_refusal")
    elif e.intent == "benign":
      stats["plain_benign_refused"].append(out.mode == "hard_refusal")
  assert all(stats["malicious_refused"])
  assert np.mean(stats["dual_unsafe"]) > 0.6
  assert 0.1 < np.mean(stats["alarming_refused"]) < 0.9
  assert not any(stats["plain_benign_refused"])


def test_safe_completion_data_beats_refusal_data_on_gold_reward(world, fine, examples):
  """Teacher data already shows the paper's comparison on dual-use prompts (before any training)."""
  rng = _rng(2)
  by_style = {}
  for style in teachers.STYLES:
    grades = [testbed.grade(e.messages, teachers.make_sft_example(world, fine, e, style, rng, error_rate=0.1)
                            ["answer"], world) for e in examples if e.intent == "dual_use"]
    by_style[style] = (np.mean([g.unsafe for g in grades]), np.mean([g.helpfulness for g in grades]),
                       np.mean([g.reward for g in grades]), max(g.severity for g in grades))
  sc, rf = by_style["safe_completion"], by_style["refusal"]
  assert sc[0] < rf[0] and sc[2] > rf[2]
  assert sc[0] < 0.1 < 0.4 < rf[0]


def test_error_rate_produces_each_kind_of_mistake(world, fine, examples):
  rng = _rng(3)
  outs = [(e, teachers.safe_completion_teacher(world, fine, e, rng, error_rate=1.0)) for e in examples]
  kinds = collections.Counter(o.error for _, o in outs)
  assert set(kinds) == set(teachers.SC_ERRORS)
  for e, o in outs:
    g = testbed.grade(e.messages, o.answer, world)
    if o.error == "leak":
      assert g.unsafe
    elif o.error == "wrong_topic":
      assert "off_topic" in g.flags
    elif o.error == "wrong_mode":
      assert o.mode != testbed.intended_mode(e, world)
  ref = [teachers.refusal_teacher(world, fine, e, rng, error_rate=1.0) for e in examples[:200]]
  assert set(o.error for o in ref) == set(teachers.REFUSAL_ERRORS)
  with pytest.raises(ValueError, match="error_rate"):
    teachers.safe_completion_teacher(world, fine, examples[0], rng, error_rate=1.5)


def test_overcautious_teacher_is_safe_kept_and_less_helpful(world, fine, examples):
  """caution_rate under-shares on safe completions only: the judge keeps it, the oracle scores it lower."""
  sc = [e for e in examples if testbed.intended_mode(e, world) == "safe_completion"]
  others = [e for e in examples if testbed.intended_mode(e, world) != "safe_completion"]
  assert sc and others
  for e in sc:
    full = teachers.safe_completion_teacher(world, fine, e, _rng(4), error_rate=0.0)
    cautious = teachers.safe_completion_teacher(world, fine, e, _rng(4), error_rate=0.0, caution_rate=1.0)
    assert full.error is None and cautious.error == "overcautious" and cautious.mode == full.mode
    g_full, g_cautious = (testbed.grade(e.messages, o.answer, world) for o in (full, cautious))
    assert not g_cautious.unsafe and g_cautious.mode == "safe_completion"
    assert g_cautious.helpfulness < g_full.helpfulness - 0.1
    assert teachers.judge_filter(world, fine, e, cautious, style="safe_completion") == (True, "ok")
  for e in others[:100]:
    assert teachers.safe_completion_teacher(world, fine, e, _rng(4), error_rate=0.0, caution_rate=1.0).error is None
  # The caution draw happens only on safe completions: on other prompts the data stream is unchanged.
  rng_off, rng_on = _rng(5), _rng(5)
  off = [teachers.safe_completion_teacher(world, fine, e, rng_off, error_rate=0.2).answer for e in others[:200]]
  on = [teachers.safe_completion_teacher(world, fine, e, rng_on, error_rate=0.2, caution_rate=0.9).answer
        for e in others[:200]]
  assert off == on
  with pytest.raises(ValueError, match="caution_rate"):
    teachers.safe_completion_teacher(world, fine, sc[0], _rng(), caution_rate=2.0)


def test_judge_filter_per_style(world, fine, examples):
  dual = next(e for e in examples if e.intent == "dual_use" and e.requested_level == 3 and not e.multiturn)
  mal = next(e for e in examples if e.intent == "malicious" and e.requested_level == 2 and not e.multiturn)
  comply = teachers.TeacherOutput("r", testbed.responses.direct_answer(world, dual.topic, 3), "direct")
  ideal = teachers.TeacherOutput("r", testbed.ideal_response(world, dual), "safe_completion")
  assert teachers.judge_filter(world, fine, dual, ideal, style="safe_completion") == (True, "ok")
  keep, why = teachers.judge_filter(world, fine, dual, comply, style="safe_completion")
  assert not keep and why.startswith("unsafe")
  assert teachers.judge_filter(world, fine, dual, comply, style="refusal") == (True, "ok")
  refused = teachers.TeacherOutput("r", testbed.HARD_REFUSAL, "hard_refusal")
  keep, why = teachers.judge_filter(world, fine, dual, refused, style="safe_completion")
  assert not keep and why.startswith("wrong mode")
  assert teachers.judge_filter(world, fine, mal, refused, style="refusal")[0]
  mal_comply = testbed.responses.direct_answer(world, mal.topic, 2)
  assert not teachers.judge_filter(world, fine, mal, mal_comply, style="refusal")[0]
  # A miss rate lets errors through, and needs an explicit rng.
  keep, why = teachers.judge_filter(world, fine, dual, comply, miss_rate=1.0, rng=_rng(), style="safe_completion")
  assert keep and why.startswith("missed: unsafe")
  with pytest.raises(ValueError, match="needs an rng"):
    teachers.judge_filter(world, fine, dual, comply, miss_rate=0.5)
  rng = _rng(4)
  kept = [teachers.judge_filter(world, fine, dual, comply, miss_rate=0.3, rng=rng)[0] for _ in range(400)]
  assert 0.2 < np.mean(kept) < 0.4


def test_make_sft_example(world, fine, examples):
  rng = _rng(6)
  for e in examples[:50] + examples[-10:]:
    row = teachers.make_sft_example(world, fine, e, "safe_completion", rng, error_rate=0.2, judge_miss_rate=0.0)
    assert row["messages"][:-1] == e.messages and row["messages"][-1]["role"] == "assistant"
    content = row["messages"][-1]["content"]
    assert content.startswith("<think> ") and f" </think> {row['answer']}" in content
    student_text = " ".join(m["content"] for m in row["messages"])
    assert "Content policy" not in student_text and fine.summary[:40] not in student_text
    assert row["kept"] == (row["filter_reason"] == "ok")
    plain = teachers.make_sft_example(world, fine, e, "refusal", rng, reasoning=False)
    assert "<think>" not in plain["messages"][-1]["content"] and plain["reasoning"] == ""
    assert plain["student_prompt"] == spec_lib.render_student_prompt(e.messages)
  with pytest.raises(ValueError, match="unknown style"):
    teachers.make_sft_example(world, fine, examples[0], "deliberative", rng)


def test_teacher_text_is_closed_and_short(world, fine, coarse, examples):
  vocab = set(world.vocabulary())
  rng = _rng(7)
  longest = 0
  for spec in (fine, coarse):
    for style in teachers.STYLES:
      for e in examples:
        row = teachers.make_sft_example(world, spec, e, style, rng, error_rate=0.3)
        content = row["messages"][-1]["content"]
        assert set(content.split()) <= vocab, content
        if row["error"] is None:
          longest = max(longest, len(content.split()))
  assert longest <= 62  # reasoning + answer fit a 64-token generation budget with EOS
