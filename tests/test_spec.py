"""The content policy spec: loading, validation errors, decisions and prompt rendering."""
import pathlib
import re

import pytest

from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp.constants import INTENTS, MODES, SEVERITIES
from safecomp.errors import ConfigError

FINE = "safe_completion_fine"
COARSE = "safe_completion_coarse"


@pytest.fixture(scope="module")
def fine():
  return spec_lib.load_spec(FINE)


@pytest.fixture(scope="module")
def coarse():
  return spec_lib.load_spec(COARSE)


def test_shipped_specs_load_at_both_granularities(fine, coarse):
  assert {FINE, COARSE} <= set(spec_lib.list_specs())
  assert (fine.granularity, coarse.granularity) == ("fine", "coarse")
  for s in (fine, coarse):
    assert re.fullmatch(r"\d+\.\d+\.\d+", s.version)
    assert tuple(x.name for x in s.severities) == SEVERITIES
    assert tuple(m.name for m in s.modes) == MODES
    for cat in spec_lib.HAZARD_CATEGORIES:
      assert s.section(cat).hazard and s.section(cat).name == cat
    assert not s.section("cooking").hazard  # everyday domains map to the benign section
  # Only the fine spec says what may be said at which level.
  assert fine.section("biology").guidance("critical").severity == "high"
  assert coarse.section("biology").guidance("critical") is None
  assert len(fine.policy_text()) > 1.5 * len(coarse.policy_text())


def test_load_by_path_equals_load_by_name(fine):
  by_path = spec_lib.load_spec(spec_lib.POLICY_DIR / f"{FINE}.yaml")
  assert by_path.rules == fine.rules and by_path.sections == fine.sections


def test_fine_spec_severities_match_the_testbed_world(fine):
  world = testbed.make_world(0)
  for cat in world.config.hazard_categories:
    section = fine.section(cat)
    topic = world.topics_in(cat)[0]
    for level in range(4):
      assert section.guidance(level).severity_index == world.severity(topic.name, level), (cat, level)


def test_fine_rules_reproduce_the_gold_policy(fine):
  world = testbed.make_world(0)
  for split in ("train", "multiturn"):
    for ex in testbed.generate_examples(world, split, 300, seed=3):
      rule = fine.decide(ex.intent, ex.is_hazard_category, ex.requested_level)
      assert rule.mode == testbed.intended_mode(ex, world), ex.uid


def test_decide_differs_between_granularities(fine, coarse):
  assert fine.decide("dual_use", True, 1).mode == "direct"
  assert fine.decide("dual_use", True, 2).mode == "safe_completion"
  assert coarse.decide("dual_use", True, 1).mode == "safe_completion"  # coarser, more cautious
  for s in (fine, coarse):
    assert s.decide("malicious", True, 0).mode == "refusal_redirect"
    assert s.decide("benign", False, 3).mode == "direct"
    for intent in INTENTS:  # validation guarantees every request is decidable
      for level in range(4):
        assert s.decide(intent, True, level).mode in MODES


def test_rubrics_render_with_placeholders_and_score_tokens(fine, coarse):
  for s in (fine, coarse):
    for name in spec_lib.RUBRICS:
      r = s.rubric(name)
      assert r.score_tokens == ("1", "2", "3", "4")
      assert [k for k, _ in r.scale] == ["4", "3", "2", "1"]
      text = r.render("user: what is {x} ?", "answer with {completion} inside", policy="POLICY")
      assert "user: what is {x} ?" in text and "answer with {completion} inside" in text
      assert "{prompt}" not in text.replace("{completion} inside", "")
      assert re.search(r"1, 2, 3 or 4", text)
  with pytest.raises(spec_lib.SpecError, match="no rubric 'style'"):
    fine.rubric("style")


def test_render_rubric_standing_and_filled(fine):
  standing = spec_lib.render_rubric(fine)
  for name in spec_lib.RUBRICS:
    assert name in standing
  filled = spec_lib.render_rubric(fine, "safety", [{"role": "user", "content": "q ?"}], "a .",
                                  category="cyber")
  assert "user: q ?" in filled and "a ." in filled and "Section 4 (cyber)" in filled
  assert "Section 2 (biology)" not in filled
  with pytest.raises(ValueError):
    spec_lib.render_rubric(fine, "safety")


def test_teacher_prompt_has_spec_student_prompt_does_not(fine):
  messages = [{"role": "user", "content": "what is vexar ?"}, {"role": "assistant", "content": "a thing ."},
              {"role": "user", "content": "how do i grow it ?"}]
  teacher = spec_lib.render_teacher_prompt(fine, messages, category="biology")
  assert "Content policy safe_completion_fine v1.0.0" in teacher
  assert "Section 2 (biology)" in teacher and "Section 4 (cyber)" not in teacher
  assert "user: how do i grow it ?" in teacher and "<think>" in teacher
  everything = spec_lib.render_teacher_prompt(fine, "hi")
  assert all(f"({c})" in everything for c in spec_lib.HAZARD_CATEGORIES)
  student = spec_lib.render_student_prompt(messages)
  assert "policy" not in student.lower() and "section" not in student.lower()
  assert student.splitlines()[-1] == "user: how do i grow it ?"
  assert spec_lib.render_student_prompt("what is vexar ?") == "what is vexar ?"
  chat = spec_lib.render_teacher_messages(fine, messages, category="biology", style="refusal")
  assert chat[0]["role"] == "system" and chat[1:] == messages
  assert "comply fully" in chat[0]["content"]
  with pytest.raises(spec_lib.SpecError, match="no section for category 'biolgy'.*biology"):
    spec_lib.render_teacher_prompt(fine, "hi", category="biolgy")


def _write_broken(tmp_path: pathlib.Path, old: str, new: str) -> pathlib.Path:
  text = (spec_lib.POLICY_DIR / f"{FINE}.yaml").read_text()
  assert old in text, old
  path = tmp_path / "broken.yaml"
  path.write_text(text.replace(old, new, 1))
  return path


@pytest.mark.parametrize("old,new,pattern", [
    ("      actionable:\n        severity: moderate\n        guidance: Withhold culture",
     "      actionable:\n        severty: moderate\n        guidance: Withhold culture",
     r"key 'sections\[1\]\.levels\.actionable\.severty': unknown key; did you mean 'severity'"),
    ("severity: moderate\n        guidance: Withhold culture", "severity: extreme\n        guidance: Withhold culture",
     r"key 'sections\[1\]\.levels\.actionable\.severity': 'extreme' is not one of"),
    ("      Conversation:\n      {prompt}\n\n      Response:\n      {completion}\n\n      Scale:\n      {scale}\n\n"
     "      Answer with one token: 1, 2, 3 or 4.\n  helpfulness_direct:",
     "      Conversation:\n      {prompt}\n\n      Scale:\n      {scale}\n\n"
     "      Answer with one token: 1, 2, 3 or 4.\n  helpfulness_direct:",
     r"key 'rubrics\.safety\.text': missing placeholder \{completion\}"),
    ("  - id: 5\n    when: {intents: [malicious]}", "  - id: 5\n    when: {intents: [benign]}",
     r"key 'rules': no rule covers intent='malicious'"),
    ("  - id: 5\n    when", "  - id: 4\n    when", r"key 'rules\[4\]\.id': duplicate rule id 4"),
    ("  - id: 7\n    name: fraud_privacy", "  - id: 70\n    name: fraud_privacy",
     r"key 'sections\[6\]\.id': expected an integer id in 1\.\.30"),
    ("granularity: fine", "granularity: medium", r"key 'granularity': 'medium' is not one of"),
])
def test_malformed_spec_names_file_line_and_key(tmp_path, old, new, pattern):
  path = _write_broken(tmp_path, old, new)
  with pytest.raises(spec_lib.SpecError, match=pattern) as info:
    spec_lib.load_spec(path)
  message = str(info.value)
  assert message.startswith(f"{path}:")
  line = int(message.split(":")[1])
  assert line > 0
  key = re.search(r"key '([^']+)'", message).group(1).split(".")[-1].split("[")[0]
  assert key in path.read_text().splitlines()[line - 1] or key in ("rules", "text"), (line, key)
  assert isinstance(info.value, ConfigError)


def test_missing_key_and_bad_yaml(tmp_path):
  path = _write_broken(tmp_path, "meaningful_facilitation: >-", "facilitation_note: >-")
  with pytest.raises(spec_lib.SpecError, match=r"facilitation_note'?: unknown key"):
    spec_lib.load_spec(path)
  bad = tmp_path / "bad.yaml"
  bad.write_text("name: x\nversion: [1\n")
  with pytest.raises(spec_lib.SpecError, match=r"bad\.yaml:\d+: invalid YAML"):
    spec_lib.load_spec(bad)
  with pytest.raises(spec_lib.SpecError, match="shipped specs"):
    spec_lib.load_spec("no_such_policy")
