"""What datagen's pieces agree on: the Teacher and Judge protocols, a judge's Verdict, one input
(PromptItem), and the shared type aliases and defaults."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

Messages = list[dict[str, str]]

DEFAULT_SPEC = "safe_completion_fine"


class Teacher(Protocol):
  """Anything that answers a chat: returns the raw completion text (reasoning + answer)."""
  name: str

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    ...


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A judge's decision on one answer; `score` is in [0, 1]."""
  score: float
  kept: bool
  rationale: str = ""
  raw: str = ""
  error: str | None = None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class Judge(Protocol):
  """Scores an answer to a prompt; `threshold` decides `kept`."""
  name: str

  def judge(self, item: "PromptItem", reasoning: str, answer: str) -> Verdict:
    ...


@dataclasses.dataclass(frozen=True)
class PromptItem:
  """One input: the student-visible conversation and what is known about it."""
  uid: str
  messages: tuple[Mapping[str, str], ...]
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  example: Any = None  # The testbed Example, when the input comes from the testbed.


TeacherPromptFn = Callable[[PromptItem], Messages]
