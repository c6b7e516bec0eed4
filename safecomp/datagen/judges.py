"""Judges: any grader of `safecomp.graders` as the filter, or no filter."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from safecomp import graders
from safecomp.constants import INTENTS
from safecomp.datagen.protocols import PromptItem, Verdict
from safecomp.prompts import Prompt


@dataclasses.dataclass
class GraderJudge:
  """Any grader of the registry (`safecomp.graders`) as the filter: a row is kept when its reward
  r = h x s, on the spec's own scales, reaches `threshold`. Rows the grader cannot judge are rejected
  with the reason, never scored."""
  grader: Any
  threshold: float = 0.7
  name: str = ""

  def __post_init__(self):
    self.name = self.name or graders.full_name(self.grader)

  def judge(self, item: PromptItem, reasoning: str, answer: str) -> Verdict:
    del reasoning  # The judge sees the answer only, as a user would.
    intent = item.meta.get("intent")
    prompt = Prompt(uid=item.uid, messages=tuple(dict(m) for m in item.messages),
                    intent=intent if intent in INTENTS else None, example=item.example)
    grade = self.grader.grade([prompt], [answer])[0]
    if not grade.graded:
      return Verdict(score=0.0, kept=False, error=grade.error, raw=json.dumps(grade.to_dict()))
    reward = float(graders.rewards_of([grade], [prompt])["reward"][0])
    rationale = str(grade.details.get("rationale", ""))
    return Verdict(score=reward, kept=reward >= self.threshold, rationale=rationale,
                   raw=json.dumps(grade.to_dict()))


@dataclasses.dataclass
class KeepAllJudge:
  """No filtering: every parsed answer is kept (score 1)."""
  name: str = "none"

  def judge(self, item: PromptItem, reasoning: str, answer: str) -> Verdict:
    del item, reasoning, answer
    return Verdict(score=1.0, kept=True, rationale="no judge")
