"""The content policy spec: loading, validation errors, decisions and prompt rendering."""
import pathlib
import re

import numpy as np
import pytest

from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp.constants import INTENTS, MODES, SEVERITIES
from safecomp.errors import ConfigError

FINE = "safe_completion_fine"
COARSE = "safe_completion_coarse"
INCONSISTENT = "safe_completion_inconsistent"


@pytest.fixture(scope="module")
def fine():
  return spec_lib.load_spec(FINE)


@pytest.fixture(scope="module")
def coarse():
  return spec_lib.load_spec(COARSE)


@pytest.fixture(scope="module")
def inconsistent():
  return spec_lib.load_spec(INCONSISTENT)


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

def test_consistent_specs_have_no_conflicts(fine, coarse):
  for s in (fine, coarse):
    assert s.conflicts() == () and not s.allow_conflicts
    assert "Rules (the first that matches applies):" in s.policy_text()


def test_inconsistent_spec_lists_its_conflicts(inconsistent, fine):
  assert INCONSISTENT in spec_lib.list_specs() and inconsistent.allow_conflicts
  cells = {(c.intent, c.hazard, spec_lib.LEVELS[c.level]): (c.rule_ids, c.modes) for c in inconsistent.conflicts()}
  assert cells == {
      ("dual_use", True, "actionable"): ((4, 6), ("safe_completion", "direct")),
      ("malicious", False, "background"): ((5, 7), ("refusal_redirect", "direct")),
      ("malicious", True, "background"): ((5, 7), ("refusal_redirect", "direct")),
  }
  # The fine spec plus contradictions: its first-matching rules are the fine spec's everywhere.
  for intent in INTENTS:
    for hazard in (False, True):
      for level in range(4):
        assert inconsistent.decide(intent, hazard, level) == fine.decide(intent, hazard, level)
  # A section severity that contradicts rule 4 (withholding actionable cyber detail).
  assert inconsistent.section("cyber").guidance("actionable").severity == "negligible"
  assert fine.section("cyber").guidance("actionable").severity == "low"
  # The document does not say which clashing rule wins.
  assert "Rules:" in inconsistent.policy_text() and "the first that matches" not in inconsistent.policy_text()


def test_clashing_rules_need_the_declaration(tmp_path):
  undeclared = tmp_path / "undeclared.yaml"
  undeclared.write_text((spec_lib.POLICY_DIR / f"{INCONSISTENT}.yaml").read_text().replace("conflicts: allowed\n", ""))
  with pytest.raises(spec_lib.SpecError) as info:
    spec_lib.load_spec(undeclared)
  message = str(info.value)
  assert message.startswith(f"{undeclared}:") and "key 'rules'" in message and "conflicts: allowed" in message
  assert "intent='dual_use', hazard=True, level='actionable': rule 4 -> safe_completion, rule 6 -> direct" in message
  assert "intent='malicious', hazard=True, level='background': rule 5 -> refusal_redirect, rule 7 -> direct" in message
  # A clash added to a consistent spec is caught the same way; rules that agree on the mode are fine.
  clash = _write_broken(tmp_path, "rules:\n", "rules:\n  - id: 9\n    when: {intents: [benign], levels: [critical]}\n"
                        "    mode: safe_completion\n    text: Critical detail is never given.\n")
  with pytest.raises(spec_lib.SpecError, match=r"intent='benign', hazard=(False|True), level='critical': "
                     r"rule 9 -> safe_completion, rule 1 -> direct"):
    spec_lib.load_spec(clash)
  agree = _write_broken(tmp_path, "rules:\n", "rules:\n  - id: 9\n    when: {intents: [benign], levels: [critical]}\n"
                        "    mode: direct\n    text: Critical everyday detail is given too.\n")
  assert spec_lib.load_spec(agree).conflicts() == ()


def test_readers_resolve_conflicts_uniformly_and_deterministically(inconsistent):
  assert inconsistent.decide("dual_use", True, 2).id == 4  # no rng: the first matching rule
  picks = [inconsistent.decide("dual_use", True, 2, rng=np.random.default_rng(s)).id for s in range(2000)]
  assert set(picks) == {4, 6} and 0.45 < np.mean(np.array(picks) == 6) < 0.55
  rng = np.random.default_rng(1)
  sequence = [inconsistent.decide("malicious", False, 0, rng=rng).id for _ in range(4000)]
  assert 0.47 < np.mean(np.array(sequence) == 7) < 0.53
  again = np.random.default_rng(1)
  assert sequence == [inconsistent.decide("malicious", False, 0, rng=again).id for _ in range(4000)]


def test_decide_draws_only_on_conflicts(fine, coarse, inconsistent):
  """Consistent specs, and consistent cells of an inconsistent spec, leave the reader's rng untouched."""
  for s in (fine, coarse, inconsistent):
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    for intent in INTENTS:
      for hazard in (False, True):
        for level in range(4):
          if not any((c.intent, c.hazard, c.level) == (intent, hazard, level) for c in s.conflicts()):
            assert s.decide(intent, hazard, level, rng=rng) == s.decide(intent, hazard, level)
    assert rng.bit_generator.state == before, s.name


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
    ("granularity: fine", "granularity: fine\nconflicts: sometimes", r"key 'conflicts': 'sometimes' is not one of"),
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
