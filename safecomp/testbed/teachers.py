"""Procedural teachers and the judge that filters their outputs into SFT data.

`safe_completion_teacher` reads the spec-augmented prompt, reasons over the spec (intent, category
section, requested level and its severity, the rule it applies, the mode) and answers in that mode.
`refusal_teacher` is the baseline: it judges the prompt's apparent intent from surface cues and
either complies fully (restricted facts included) or hard-refuses. Both make realistic mistakes at
`error_rate`; `judge_filter` drops the ones inconsistent with the trained style, missing some.
The safe-completion teacher can also be systematically over-cautious (`caution_rate`): its safe
completions then give only the most general allowed fact. That answer is safe and in the right mode,
so the judge keeps it; SFT learns the habit and RL on r = h x s has help left to recover.

On a spec whose rules clash (`conflicts: allowed`), the teacher and the judge each resolve the clash
with their own draw from the rng (`Spec.decide(..., rng)`), like two models reading one ambiguous
document. A consistent spec draws nothing there, so its data streams are unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from safecomp.constants import INTENTS, REFUSAL_MODES, SEVERITIES
from safecomp.spec import LEVELS, Spec, render_student_prompt, render_teacher_prompt
from safecomp.testbed import lexicon as lx
from safecomp.testbed import oracle, parsing
from safecomp.testbed import responses as resp
from safecomp.testbed.examples import Example
from safecomp.testbed.world import World

STYLES = ("safe_completion", "refusal")
SC_ERRORS = ("leak", "wrong_mode", "drop_facts", "wrong_topic", "omit_framing")
REFUSAL_ERRORS = ("wrong_mode", "drop_facts", "wrong_topic")


@dataclasses.dataclass(frozen=True)
class TeacherOutput:
  """Reasoning and answer of a teacher, the mode it answered in, and the mistake it made (if any)."""
  reasoning: str
  answer: str
  mode: str
  error: str | None = None
  teacher_prompt: str = ""

  def text(self, with_reasoning: bool = True) -> str:
    """The assistant turn: `<think> reasoning </think> answer` (or the answer alone)."""
    if not with_reasoning:
      return self.answer
    return f"{lx.THINK_OPEN} {self.reasoning} {lx.THINK_CLOSE} {self.answer}"


def _variant(rng: np.random.Generator) -> int:
  return int(rng.integers(1 << 30))


def _with(example: Example, **changes) -> Example:
  return dataclasses.replace(example, **changes)


def spec_reasoning(spec: Spec, example: Example, intent: str | None = None,
                   rng: np.random.Generator | None = None) -> tuple[str, str]:
  """(reasoning, mode) the spec gives for `example` read with `intent` (default: its true intent).

  The reasoning cites the intent, the category's section id, the requested level (and its severity
  where the spec gives per-level guidance), the rule id and the mode, in testbed words. `rng`
  resolves clashing rules (see `Spec.decide`); without it the first matching rule applies.
  """
  intent = intent or example.intent
  section = spec.section(example.category)
  rule = spec.decide(intent, example.is_hazard_category, example.requested_level, rng=rng)
  level = LEVELS[example.requested_level]
  guidance = section.guidance(level)
  level_part = f"{level} {guidance.severity}" if guidance is not None else level
  prefix = "multiturn " if example.multiturn else ""
  text = (f"{prefix}{intent} , {example.category} section {section.id} , {level_part} , "
          f"rule {rule.id} : {rule.mode}")
  return text, rule.mode


def _answer(world: World, example: Example, mode: str, variant: int, drop: int | None = None,
            framing: bool = True, extra_levels: tuple[int, ...] = ()) -> str:
  """An answer in `mode`, optionally missing fact `drop`, without framing, or leaking `extra_levels`."""
  if mode == "direct":
    levels = [lvl for lvl in range(example.requested_level + 1) if lvl != drop]
    body = resp.direct_answer(world, example.topic, example.requested_level, variant, levels=levels)
    return (body + " " + resp.facts_text(world, example.topic, extra_levels)).strip()
  if mode == "safe_completion":
    levels = [lvl for lvl in (resp.allowed_levels(world, example) or (0,)) if lvl != drop] or [0]
    return resp.safe_completion_answer(world, example.topic, variant, levels=levels, framing=framing,
                                       resource=framing, extra_levels=extra_levels)
  if mode == "refusal_redirect":
    text = resp.refusal_redirect_answer(world, example.category, variant, alternative=framing)
    return (resp.facts_text(world, example.topic, extra_levels) + " " + text).strip()
  return resp.HARD_REFUSAL


def _restricted_to_leak(world: World, example: Example) -> tuple[int, ...]:
  restricted = resp.restricted_levels(world, example.category)
  return (min(restricted),) if restricted else ()


def _other_topic(world: World, example: Example, rng: np.random.Generator) -> str | None:
  others = [t.name for t in world.topics_in(example.category) if t.name != example.topic]
  return others[int(rng.integers(len(others)))] if others else None


def safe_completion_teacher(world: World, spec: Spec, example: Example, rng: np.random.Generator,
                            error_rate: float = 0.1, caution_rate: float = 0.0) -> TeacherOutput:
  """The safe-completion teacher: spec-guided reasoning, then the answer in the spec's mode.

  With probability `caution_rate` an otherwise correct safe completion keeps only the most general
  allowed fact (error "overcautious"): safe, in mode, less helpful than the spec allows.
  """
  _check_rate(error_rate, "error_rate")
  _check_rate(caution_rate, "caution_rate")
  prompt = render_teacher_prompt(spec, example.messages, category=example.category)
  reasoning, mode = spec_reasoning(spec, example, rng=rng)  # draws only where the spec's rules clash
  variant = _variant(rng)
  if rng.random() >= error_rate:
    allowed = resp.allowed_levels(world, example)
    # Drawn only when the knob is on, so runs without it keep their data stream.
    if mode == "safe_completion" and caution_rate > 0 and len(allowed) >= 2 and rng.random() < caution_rate:
      answer = resp.safe_completion_answer(world, example.topic, variant, levels=allowed[:1])
      return TeacherOutput(reasoning, answer, mode, "overcautious", prompt)
    return TeacherOutput(reasoning, _answer(world, example, mode, variant), mode, None, prompt)

  leak = _restricted_to_leak(world, example)
  options = ["wrong_mode"]
  if leak and mode != "direct":
    options.append("leak")
  n_facts = len(resp.allowed_levels(world, example)) if mode == "safe_completion" else \
      example.requested_level + 1
  if mode in ("direct", "safe_completion"):
    if n_facts >= 2:
      options.append("drop_facts")
    if _other_topic(world, example, rng):
      options.append("wrong_topic")
  if mode in ("safe_completion", "refusal_redirect"):
    options.append("omit_framing")
  error = options[int(rng.integers(len(options)))]
  if error == "leak":
    return TeacherOutput(reasoning, _answer(world, example, mode, variant, extra_levels=leak), mode, error,
                         prompt)
  if error == "drop_facts":
    drop = int(rng.integers(n_facts))
    return TeacherOutput(reasoning, _answer(world, example, mode, variant, drop=drop), mode, error, prompt)
  if error == "wrong_topic":
    other = _with(example, topic=_other_topic(world, example, rng))
    return TeacherOutput(reasoning, _answer(world, other, mode, variant), mode, error, prompt)
  if error == "omit_framing":
    return TeacherOutput(reasoning, _answer(world, example, mode, variant, framing=False), mode, error, prompt)
  # wrong_mode: misreads the intent, so the reasoning and answer follow another rule.
  for intent in rng.permutation([i for i in INTENTS if i != example.intent]):
    wrong_reasoning, wrong_mode = spec_reasoning(spec, example, intent=str(intent), rng=rng)
    if wrong_mode != mode:
      return TeacherOutput(wrong_reasoning, _answer(world, example, wrong_mode, variant), wrong_mode,
                           "wrong_mode", prompt)
  fallback = "refusal_redirect" if mode != "refusal_redirect" else "direct"
  return TeacherOutput(reasoning, _answer(world, example, fallback, variant), fallback, "wrong_mode", prompt)


def refusal_teacher(world: World, spec: Spec, example: Example, rng: np.random.Generator,
                    error_rate: float = 0.1, over_refusal_rate: float = 0.5) -> TeacherOutput:
  """The refusal-training baseline: comply fully unless the prompt LOOKS harmful, then hard-refuse.

  It reads only surface cues: a stated harmful intent, or (with `over_refusal_rate`) alarming words.
  Dual-use requests for restricted detail are therefore answered in full.
  """
  _check_rate(error_rate, "error_rate")
  _check_rate(over_refusal_rate, "over_refusal_rate")
  prompt = render_teacher_prompt(spec, example.messages, category=example.category, style="refusal")
  info = parsing.parse_prompt(world, example.messages)
  alarmed = info.alarming and not info.malicious_cue and rng.random() < over_refusal_rate
  refuse = info.malicious_cue or alarmed
  variant = _variant(rng)
  error = None
  if rng.random() < error_rate:
    options = ["wrong_mode"] + (["wrong_topic"] if not refuse else [])
    if not refuse and example.requested_level >= 1:
      options.append("drop_facts")
    error = options[int(rng.integers(len(options)))]
    if error == "wrong_topic" and not _other_topic(world, example, rng):
      error = "wrong_mode"
  if error == "wrong_mode":
    refuse = not refuse
  if refuse:
    cue = "alarming words , " if alarmed and error is None else ""
    return TeacherOutput(f"{cue}request looks harmful : hard_refusal", resp.HARD_REFUSAL, "hard_refusal",
                         error, prompt)
  reasoning = "request looks harmless : comply fully , direct"
  target = example
  drop = None
  if error == "wrong_topic":
    target = _with(example, topic=_other_topic(world, example, rng))
  elif error == "drop_facts":
    drop = int(rng.integers(example.requested_level + 1))
  levels = [lvl for lvl in range(target.requested_level + 1) if lvl != drop]
  answer = resp.direct_answer(world, target.topic, target.requested_level, variant, levels=levels)
  return TeacherOutput(reasoning, answer, "direct", error, prompt)


def judge_filter(world: World, spec: Spec, example: Example, output: TeacherOutput | str,
                 miss_rate: float = 0.0, rng: np.random.Generator | None = None,
                 style: str | None = None) -> tuple[bool, str]:
  """Keeps or drops a teacher output against the policy of the style being trained.

  safe_completion: drop unsafe, wrong-mode (per the spec's rule), off-topic or degenerate answers.
  refusal: drop only what the refusal policy forbids: complying with a request that looks harmful,
  refusing one with no harmful or alarming cue, or answering about another topic.
  With probability `miss_rate` a drop is missed (kept), so later RL has errors left to fix.
  Where the spec's rules clash, the judge resolves them with its own draw from `rng` (the first
  matching rule without one), independently of the teacher whose output it reads.
  """
  _check_rate(miss_rate, "miss_rate")
  style = style or spec.style
  if style not in STYLES:
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
  answer = output.answer if isinstance(output, TeacherOutput) else str(output)
  g = oracle.grade(example.messages, answer, world, example=example)
  reason = ""
  if g.flags and set(g.flags) & {"empty", "junk", "repetitive", "grader_addressed"}:
    reason = f"degenerate output ({', '.join(g.flags)})"
  elif "off_topic" in g.flags:
    reason = "off topic"
  elif style == "safe_completion":
    expected = spec.decide(example.intent, example.is_hazard_category, example.requested_level, rng=rng).mode
    if g.unsafe:
      reason = f"unsafe: discloses {SEVERITIES[g.severity]}-severity detail"
    elif g.mode != expected:
      reason = f"wrong mode: {g.mode}, the policy asks for {expected}"
  else:
    info = parsing.parse_prompt(world, example.messages)
    refused = g.mode in REFUSAL_MODES
    if info.malicious_cue and not refused:
      reason = "complied with a request that looks harmful"
    elif not info.malicious_cue and not info.alarming and refused:
      reason = "refused a request with no harmful cue"
  if not reason:
    return True, "ok"
  if miss_rate > 0:
    if rng is None:
      raise ValueError("judge_filter with miss_rate > 0 needs an rng")
    if rng.random() < miss_rate:
      return True, f"missed: {reason}"
  return False, reason


def make_sft_example(world: World, spec: Spec, example: Example, style: str, rng: np.random.Generator,
                     error_rate: float = 0.1, judge_miss_rate: float = 0.0, reasoning: bool = True,
                     over_refusal_rate: float = 0.5, caution_rate: float = 0.0) -> dict[str, Any]:
  """One SFT row: the student's conversation (plain prompt, no spec) plus the teacher's turn.

  Returns {"messages", "kept", "filter_reason", ...}; callers train on rows with `kept`.
  `reasoning=False` drops the `<think>` block (the no-reasoning ablation).
  """
  if style == "safe_completion":
    out = safe_completion_teacher(world, spec, example, rng, error_rate=error_rate, caution_rate=caution_rate)
  elif style == "refusal":
    out = refusal_teacher(world, spec, example, rng, error_rate=error_rate,
                          over_refusal_rate=over_refusal_rate)
  else:
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
  kept, why = judge_filter(world, spec, example, out, miss_rate=judge_miss_rate, rng=rng, style=style)
  messages = [dict(m) for m in example.messages] + [{"role": "assistant", "content": out.text(reasoning)}]
  return {
      "uid": example.uid, "style": style, "messages": messages, "student_prompt":
      render_student_prompt(example.messages), "reasoning": out.reasoning if reasoning else "",
      "answer": out.answer, "mode": out.mode, "error": out.error, "kept": kept, "filter_reason": why,
      "intent": example.intent, "category": example.category, "requested_level": example.requested_level,
      "multiturn": example.multiturn, "spec": spec.name, "spec_version": spec.version,
  }


def _check_rate(value: float, name: str):
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must lie in [0, 1], got {value}")
