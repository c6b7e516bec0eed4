"""`Prompt`: one conversation to answer, with what is known about it (the unit tasks and graders share).

A prompt has a stable `uid`, the chat `messages` ending in the user turn to answer, the `intent`
label of its source (`benign` / `dual_use` / `malicious`, or None where unlabelled), an optional
`category`, the `source` it came from (a testbed split, a file, a public set) and, for testbed
prompts, the testbed `example` with its gold labels.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from typing import Any, Mapping, Sequence

from safecomp.constants import INTENTS

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


@dataclasses.dataclass(frozen=True)
class Prompt:
  uid: str
  messages: tuple[Mapping[str, str], ...]
  intent: str | None = None
  category: str | None = None
  source: str = ""
  example: Any = None  # the testbed `Example`, for testbed prompts

  def __post_init__(self):
    if self.intent is not None and self.intent not in INTENTS:
      raise ValueError(f"prompt {self.uid}: intent must be one of {INTENTS}, got {self.intent!r}")

  @property
  def text(self) -> str:
    """The last user turn."""
    return next((m["content"] for m in reversed(self.messages) if m.get("role") == "user"), "")

  @property
  def message_list(self) -> list[dict[str, str]]:
    return [dict(m) for m in self.messages]


def message_tuple(prompt: Any) -> tuple[dict[str, str], ...]:
  """A prompt string or chat messages as a tuple of {role, content} dicts."""
  if isinstance(prompt, str):
    return ({"role": "user", "content": prompt},)
  if isinstance(prompt, Sequence):
    out = []
    for i, m in enumerate(prompt):
      if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
        raise ValueError(f"message {i}: expected a mapping with string 'role' and 'content', got {m!r}")
      out.append({"role": m["role"], "content": m["content"]})
    if not out:
      raise ValueError("no messages")
    return tuple(out)
  raise TypeError(f"expected a prompt string or a list of messages, got {type(prompt).__name__}")


def content_uid(messages: Sequence[Mapping[str, str]]) -> str:
  """A uid from the conversation's content (for rows that bring none)."""
  blob = json.dumps([dict(m) for m in messages], sort_keys=True, ensure_ascii=False).encode("utf-8")
  return hashlib.sha1(blob).hexdigest()[:16]


def as_prompt(value: Any, *, intent: str | None = None, source: str = "") -> Prompt:
  """`value` as a `Prompt`: a Prompt as is, a testbed example with its labels, or text / messages."""
  if isinstance(value, Prompt):
    return value
  if hasattr(value, "messages") and hasattr(value, "intent") and hasattr(value, "uid"):
    return Prompt(uid=value.uid, messages=message_tuple(value.messages), intent=value.intent,
                  category=getattr(value, "category", None), source=getattr(value, "split", source),
                  example=value)
  messages = message_tuple(value)
  return Prompt(uid=content_uid(messages), messages=messages, intent=intent, source=source)


def normalized_text(messages: Sequence[Mapping[str, str]]) -> str:
  """The user turns in a canonical form (case, accents, punctuation and spacing folded) for
  de-duplication: two prompts that differ only in such details count as the same prompt."""
  users = " ".join(m["content"] for m in messages if m.get("role") == "user")
  text = unicodedata.normalize("NFKD", users).encode("ascii", "ignore").decode("ascii").lower()
  return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()
