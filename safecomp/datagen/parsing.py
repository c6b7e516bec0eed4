"""Parsing teacher output into (reasoning, answer)."""
from __future__ import annotations

import re

from safecomp.graders.http import json_object

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


class ParseError(ValueError):
  """Teacher or judge output that cannot be parsed."""


def parse_teacher_output(text: str, reasoning_field: str | None = None) -> tuple[str, str]:
  """Splits a teacher completion into (reasoning, answer).

  Accepts, in order: a separate reasoning field from the server (`reasoning_content`), a
  `<think>...</think>` block (or only the closing tag, as some chat templates open it in the
  prompt), or a JSON object with `answer` and `reasoning`/`thinking`. Anything else is an
  answer without reasoning. Raises `ParseError` on an empty answer.
  """
  text = text or ""
  if reasoning_field:
    reasoning, answer = reasoning_field.strip(), _THINK.sub("", text).strip()
  elif _THINK.search(text):
    reasoning = "\n".join(m.strip() for m in _THINK.findall(text))
    answer = _THINK.sub("", text).strip()
  elif "</think>" in text:
    reasoning, answer = (part.strip() for part in text.split("</think>", 1))
  else:
    obj = json_object(text) if text.lstrip().startswith(("{", "```")) else None
    if obj is not None and isinstance(obj.get("answer"), str):
      thought = obj.get("reasoning", obj.get("thinking", ""))
      reasoning, answer = str(thought).strip(), obj["answer"].strip()
    else:
      reasoning, answer = "", text.strip()
  if not answer:
    raise ParseError(f"empty answer in teacher output {text[:120]!r}")
  return reasoning, answer
