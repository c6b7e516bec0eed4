"""The testbed behind datagen's interfaces: its procedural prompts as inputs, its teacher as a
Teacher, its judge filter (scored by the gold oracle) as a Judge."""
from __future__ import annotations

import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp.datagen.prompts_io import check_unique
from safecomp.datagen.protocols import DEFAULT_SPEC, PromptItem, Verdict
from safecomp.graders.client import RequestFailed, messages_key
from safecomp.testbed import teachers as testbed_teachers


def testbed_items(split: str, n: int, seed: int, world_seed: int = 0) -> list[PromptItem]:
  """Prompts from the procedurally generated testbed world."""
  world = testbed.make_world(world_seed, testbed.WorldConfig())
  examples = testbed.generate_examples(world, split, n, seed)
  items = []
  for ex in examples:
    meta = {k: v for k, v in ex.to_dict().items() if k not in ("uid", "messages")}
    items.append(PromptItem(uid=ex.uid, messages=tuple(dict(m) for m in ex.messages), meta=meta,
                            example=ex))
  check_unique(items, f"testbed:{split}")
  return items


class TestbedTeacher:
  """The testbed's procedural teacher (`safecomp.testbed.teachers`) behind the Teacher protocol.

  It answers the testbed examples it was given, found by their conversation; randomness comes
  from `seed` and the example uid, so results do not depend on thread scheduling.
  """

  def __init__(self, world: Any, examples: Iterable[Any], *, spec_name: str = DEFAULT_SPEC,
               style: str | None = None, seed: int = 0, error_rate: float = 0.1,
               over_refusal_rate: float = 0.5):
    self.world, self.seed = world, seed
    self.spec = spec_lib.load_spec(spec_name)
    self.style = style or self.spec.style
    self.error_rate, self.over_refusal_rate = error_rate, over_refusal_rate
    self.name = f"testbed_{self.style}"
    self._by_key = {}
    for ex in examples:
      self._by_key.setdefault(messages_key(ex.messages), ex)

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    example = self._by_key.get(messages_key(messages))
    if example is None:
      raise RequestFailed("the testbed teacher only answers the testbed examples it was given")
    rng = np.random.default_rng([self.seed, zlib.crc32(example.uid.encode("utf-8"))])
    if self.style == "safe_completion":
      out = testbed_teachers.safe_completion_teacher(self.world, self.spec, example, rng,
                                                     error_rate=self.error_rate)
    else:
      out = testbed_teachers.refusal_teacher(self.world, self.spec, example, rng,
                                             error_rate=self.error_rate,
                                             over_refusal_rate=self.over_refusal_rate)
    return out.text(with_reasoning=True)


class TestbedJudge:
  """The testbed's judge filter (`judge_filter`) plus the gold oracle's reward as the score."""

  def __init__(self, world: Any, *, spec_name: str = DEFAULT_SPEC, style: str | None = None):
    self.world = world
    self.spec = spec_lib.load_spec(spec_name)
    self.style = style or self.spec.style
    self.name = f"testbed_{self.style}"

  def judge(self, item: PromptItem, reasoning: str, answer: str) -> Verdict:
    del reasoning
    if item.example is None:
      raise RequestFailed("the testbed judge needs testbed examples as inputs")
    kept, reason = testbed.judge_filter(self.world, self.spec, item.example, answer,
                                        style=self.style)
    grade = testbed.grade(item.example.messages, answer, self.world, example=item.example)
    return Verdict(score=float(grade.reward), kept=bool(kept), rationale=reason)
