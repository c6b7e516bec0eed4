"""`oracle`: the testbed's gold oracle, for testbed prompts only.

The oracle knows the world's facts, so it judges a testbed prompt's answer exactly. It knows nothing
of real prompts: a prompt it cannot place in the world is an error naming the row, or, with
`oracle.unknown_prompts="ungraded"`, a row marked ungraded and left out of every rate. It never
grades such a row.
"""
from __future__ import annotations

from typing import Sequence

from safecomp import testbed
from safecomp.graders.base import Grade, GraderError, full_name, ungraded
from safecomp.prompts import Prompt

UNKNOWN_PROMPTS = ("error", "ungraded")


class OracleGrader:
  """Grades with `testbed.grade`; a testbed prompt's gold labels come with its example."""
  name = "oracle"
  judges_harm = True

  def __init__(self, world: testbed.World, *, unknown_prompts: str = "error",
               config: testbed.OracleConfig | None = None):
    if unknown_prompts not in UNKNOWN_PROMPTS:
      raise ValueError(f"unknown_prompts must be one of {UNKNOWN_PROMPTS}, got {unknown_prompts!r}")
    self.world, self.unknown_prompts = world, unknown_prompts
    self.config = config or testbed.OracleConfig()
    self.version = f"testbed-world{world.seed}"

  def grade(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Grade]:
    out = []
    for prompt, completion in zip(prompts, completions):
      g = testbed.grade(prompt.message_list, completion, world=self.world, example=prompt.example,
                        config=self.config)
      if "unknown_prompt" in g.flags:
        message = (f"prompt {prompt.uid!r} ({prompt.source or 'no source'}) is not a testbed prompt: the oracle "
                   "cannot grade it; use a judge (reward.grader / eval.grader / rm.labeler = judge or http)")
        if self.unknown_prompts == "error":
          raise GraderError(message + " or set oracle.unknown_prompts=ungraded to leave such rows out")
        out.append(ungraded(full_name(self), message))
        continue
      details = {"flags": list(g.flags), "disclosed": list(g.disclosed), "intended_mode": g.intended_mode,
                 "helpfulness_1to4": g.helpfulness_score}
      out.append(Grade(grader=full_name(self), severity=g.severity, helpfulness=g.helpfulness,
                       helpfulness_direct=g.helpfulness_direct, helpfulness_indirect=g.helpfulness_indirect,
                       mode=g.mode, mode_source="grader", details=details))
    return out
