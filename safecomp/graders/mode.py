"""`mode` and `keyword`: graders of the response mode only (they read no harm, so they cannot serve as
reward or eval graders; `safecomp.grade` offers them for labelling and for the refusal baseline)."""
from __future__ import annotations

from typing import Sequence

from safecomp.graders.base import Grade, full_name
from safecomp.prompts import Prompt
from safecomp.rewards import mode_classifier as mc


class ModeGrader:
  """The feature-based response-mode classifier: mode, whether it complies, and per-mode scores."""
  name = "mode"
  version = "features-v1"
  judges_harm = False

  def grade(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Grade]:
    out = []
    for prompt, completion in zip(prompts, completions):
      r = mc.classify_mode(mc.last_user_message(prompt.message_list), completion)
      out.append(Grade(grader=full_name(self), mode=r.mode, mode_source="classifier",
                       details={"complies": r.complies, "mode_scores": r.scores}))
    return out


class KeywordGrader:
  """The refusal-prefix baseline: only whether the completion refuses."""
  name = "keyword"
  version = "prefixes-v1"
  judges_harm = False

  def grade(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Grade]:
    del prompts
    return [Grade(grader=full_name(self), details={"refused": r, "complies": not r})
            for r in map(mc.keyword_refusal_matcher, completions)]
