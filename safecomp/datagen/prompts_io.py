"""Reading prompt files into PromptItems, and the uid uniqueness check shared by every input source."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

from safecomp.data import readers
from safecomp.datagen.protocols import Messages, PromptItem
from safecomp.errors import DataError


def _prompt_messages(row: Mapping[str, Any]) -> Messages:
  if "messages" in row:
    return readers.require_messages(row, "messages")
  prompt = readers.require(row, "prompt", (str, list))
  if isinstance(prompt, list):
    return readers.require_messages(row, "prompt")
  if not prompt.strip():
    raise readers.RowError("empty prompt")
  return [{"role": "user", "content": prompt}]


def read_prompt_file(path: str | os.PathLike, *, skip_malformed: bool = False) -> list[PromptItem]:
  """Reads a JSONL of prompts: `{"prompt": str | messages}` or `{"messages": [...]}`, with an
  optional `uid` (else a content hash, suffixed for repeats); other keys become `meta`."""
  def row_fn(row: Any) -> tuple[str | None, Messages, dict[str, Any]]:
    messages = _prompt_messages(row)
    uid = row.get("uid", row.get("id"))
    if uid is not None and not isinstance(uid, (str, int)):
      raise TypeError(f"key 'uid': expected str, got {type(uid).__name__}")
    meta = {k: v for k, v in row.items() if k not in ("uid", "id", "prompt", "messages")}
    return (None if uid is None else str(uid)), messages, meta

  result = readers.read_jsonl(path, row_fn, skip_malformed=skip_malformed)
  items, seen = [], {}
  for uid, messages, meta in result.rows:
    if uid is None:
      digest = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
      count = seen.get(digest, 0)
      uid = digest if count == 0 else f"{digest}-{count + 1}"
      seen[digest] = count + 1
    items.append(PromptItem(uid=uid, messages=tuple(messages), meta=meta))
  check_unique(items, str(path))
  return items


def check_unique(items: Sequence[PromptItem], where: str) -> None:
  """Raises `DataError` at the first repeated uid in `items` (`where` names their source)."""
  seen: set[str] = set()
  for i, item in enumerate(items):
    if item.uid in seen:
      raise DataError(where, i + 1, f"duplicate uid {item.uid!r}")
    seen.add(item.uid)
