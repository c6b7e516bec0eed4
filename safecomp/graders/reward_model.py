"""`rm`: the reward model a run trained (its `rm` stage), as a host grader.

Inside PPO the reward model runs in the compiled rollout; this grader is the same model scoring text
on the host (the eval stage's proxy reward, `safecomp.eval --grader rm`, `safecomp.grade --grader rm`).
The training layer builds the scoring function (tokenisation and the jitted forward) and hands it in,
so this module needs no training code.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from safecomp.graders.base import Grade, full_name, judged
from safecomp.prompts import Prompt

# conversations (prompt messages + assistant answer) -> (severity probabilities [N, 4], helpfulness [N])
ScoreFn = Callable[[Sequence[list[dict]]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class RewardModelHandle:
  score: ScoreFn
  version: str  # e.g. "<workdir>/rm@step400"


class RewardModelGrader:
  """Severity distribution and helpfulness from the reward-model heads; mode from the classifier."""
  name = "rm"
  judges_harm = True

  def __init__(self, handle: RewardModelHandle):
    self.handle = handle
    self.version = handle.version

  def grade(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Grade]:
    conversations = [p.message_list + [{"role": "assistant", "content": c}] for p, c in zip(prompts, completions)]
    probs, helpfulness = self.handle.score(conversations)
    return [judged(full_name(self), prompt=prompt, completion=completion, mode=None, severity_probs=p,
                   helpfulness=float(h))
            for prompt, completion, p, h in zip(prompts, completions, probs, helpfulness)]
