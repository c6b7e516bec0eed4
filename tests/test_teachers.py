"""Teachers and the judge filter: the data-level version of the paper's controlled comparison."""
import collections
import hashlib
import json

import numpy as np
import pytest

from safecomp import config as config_lib
from safecomp import spec as spec_lib
from safecomp import tasks
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


# --------------------------------------------------------------- specs with clashing rules
@pytest.fixture(scope="module")
def inconsistent():
  return spec_lib.load_spec("safe_completion_inconsistent")


# sha256 of the first 200 SFT rows (and reward-model rows) of the tiny testbed config with
# testbed.n_sft=200, computed before specs could clash: consistent specs must keep these streams.
PINNED_STREAMS = {
    "safe_completion_fine": ("3067ed194882a9a5ddeb1615f966409f72ae140536b7468afaba0bb4036fbd96",
                             "634363421b3eb918978cfbb99bdab184c28c725ce337e053a7a31970c404d3c4"),
    "safe_completion_coarse": ("2a0d325669ad719e6b8e29f7d15f52e7b06f37edab942ec965e8b4589f6249c1",
                               "13195a3fc3679efe1e1b5e385bb1c4d21e92dedf1676738f083764cee10ebc8f"),
}


def _digest(rows) -> str:
  h = hashlib.sha256()
  for row in rows:
    h.update(json.dumps(row, sort_keys=True).encode())
  return h.hexdigest()


@pytest.mark.parametrize("spec_name", sorted(PINNED_STREAMS))
def test_consistent_specs_keep_their_data_streams(spec_name):
  config = config_lib.load_config("configs/demo.py:size=tiny", [f"spec={spec_name}", "testbed.n_sft=200"])
  assert (config.testbed.judge_miss_rate, config.testbed.teacher_caution_rate) == (0.3, 0.6)  # both rng users on
  task = tasks.TestbedTask(config)
  sft = [row for _, row in task.sft_rows("train")][:200]
  assert len(sft) == 200
  assert (_digest(sft), _digest(task.rm_rows("train")[:200])) == PINNED_STREAMS[spec_name]


def _cells(examples, intent, level):
  return [e for e in examples if e.intent == intent and e.requested_level == level and not e.multiturn]


def test_teacher_resolves_clashing_rules_at_random(world, inconsistent, examples):
  """On a clash the teacher follows either rule, citing the one it follows; elsewhere it is the fine teacher."""
  rng = _rng(8)
  cited = collections.Counter()
  for e in _cells(examples, "dual_use", 2) * 5:
    out = teachers.safe_completion_teacher(world, inconsistent, e, rng, error_rate=0.0)
    words = out.reasoning.split()
    rule = words[words.index("rule") + 1]
    cited[rule, out.mode] += 1
    assert out.mode == testbed.grade(e.messages, out.answer, world).mode
    if e.category == "cyber":  # the section's contradicting severity reaches the reasoning
      assert "negligible" in words
  assert set(cited) == {("4", "safe_completion"), ("6", "direct")}
  assert 0.4 < cited["6", "direct"] / sum(cited.values()) < 0.6
  a = [teachers.safe_completion_teacher(world, inconsistent, e, _rng(9), error_rate=0.3) for e in examples[:200]]
  b = [teachers.safe_completion_teacher(world, inconsistent, e, _rng(9), error_rate=0.3) for e in examples[:200]]
  assert a == b
  # Off the clashing cells (and without misreadings, which may land on one) the teacher writes what
  # it writes under the fine spec, from the same stream.
  clashes = {(c.intent, c.hazard, c.level) for c in inconsistent.conflicts()}
  calm = [e for e in examples[:300] if (e.intent, e.is_hazard_category, e.requested_level) not in clashes]
  fine_spec = spec_lib.load_spec("safe_completion_fine")
  rng_a, rng_b = _rng(10), _rng(10)
  assert ([teachers.safe_completion_teacher(world, fine_spec, e, rng_a, error_rate=0.0).answer for e in calm]
          == [teachers.safe_completion_teacher(world, inconsistent, e, rng_b, error_rate=0.0).answer for e in calm])


def test_teacher_and_judge_resolve_clashes_independently(world, inconsistent, examples):
  """Malicious requests for background: rule 5 says refusal_redirect, rule 7 direct; both answers are safe.

  The judge keeps a correct teacher answer only when its own pick matches the teacher's, and its pick
  does not depend on the teacher's: each (teacher mode, kept) pair comes up about a quarter of the time.
  """
  cell = _cells(examples, "malicious", 0)
  assert len(cell) >= 10
  rng = _rng(11)
  table = collections.Counter()
  for e in cell * (800 // len(cell) + 1):
    row = teachers.make_sft_example(world, inconsistent, e, "safe_completion", rng, error_rate=0.0)
    assert not testbed.grade(e.messages, row["answer"], world).unsafe
    assert row["kept"] or row["filter_reason"].startswith("wrong mode")
    table[row["mode"], row["kept"]] += 1
  n = sum(table.values())
  assert set(table) == {(m, k) for m in ("direct", "refusal_redirect") for k in (True, False)}
  for count in table.values():
    assert 0.19 < count / n < 0.31, table
  # The same answer judged repeatedly: the judge alone flips between the two rules.
  refusal = teachers.TeacherOutput("r", testbed.responses.refusal_redirect_answer(world, cell[0].category, 0),
                                   "refusal_redirect")
  judge_rng = _rng(12)
  kept = [teachers.judge_filter(world, inconsistent, cell[0], refusal, rng=judge_rng)[0] for _ in range(400)]
  assert 0.4 < np.mean(kept) < 0.6
  assert teachers.judge_filter(world, inconsistent, cell[0], refusal) == (True, "ok")  # no rng: rule 5
