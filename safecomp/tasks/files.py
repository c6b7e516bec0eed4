"""The JSONL files a user brings: prompt sets, SFT conversations and labelled reward-model rows.

Every reader checks each row and raises `DataError` naming the file and line of the first bad one.

- Prompt files: `{"uid"?, "prompt": str | messages, "intent", "category"?, "meta"?}` or `"messages"`
  instead of `"prompt"`; the conversation ends with the user turn to answer.
- SFT files: `safecomp.datagen` output as it is (`prompt`, `answer`, `reasoning`, `kept`), or
  `{"messages": [..., assistant turn], "kept"?}`. Rows the judge rejected (`kept: false`) are counted
  and not trained on.
- Reward-model files: `{"prompt", "completion", "severity", "helpfulness"}`, or `safecomp.grade`
  output as it is (`prompt`, `completion`, `grades` with `severity` and `helpfulness`). Rows a grader
  left ungraded are counted and not trained on.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from safecomp import config as config_lib
from safecomp.constants import INTENTS, SEVERITY_INDEX
from safecomp.data import readers
from safecomp.errors import DataError
from safecomp.prompts import Prompt, message_tuple

PROMPT_KEYS = ("uid", "id", "prompt", "messages", "intent", "category", "meta")


def _messages(value: Any, key: str) -> list[dict[str, str]]:
  try:
    return [dict(m) for m in message_tuple(value)]
  except (TypeError, ValueError) as e:
    raise readers.RowError(f"key {key!r}: {e}") from None


def _conversation(row: Mapping[str, Any]) -> list[dict[str, str]]:
  if "messages" in row:
    messages = _messages(row["messages"], "messages")
  else:
    prompt = readers.require(row, "prompt", (str, list))
    if isinstance(prompt, str) and not prompt.strip():
      raise readers.RowError("empty prompt")
    messages = _messages(prompt, "prompt")
  if messages[-1]["role"] != "user":
    raise readers.RowError("the conversation must end with the user turn to answer")
  return messages


def read_prompts(path: str | pathlib.Path, source: str) -> list[Prompt]:
  """The prompts of a JSONL prompt file (uids from the rows, else `<source>:<line>`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(path, 0, "prompt file not found")

  def row_fn(row: Any):
    if not isinstance(row, dict):
      raise readers.RowError(f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(PROMPT_KEYS))
    if unknown:
      raise readers.RowError(f"unknown key(s) {unknown}; a prompt row has {list(PROMPT_KEYS)}")
    if ("prompt" in row) == ("messages" in row):
      raise readers.RowError("give exactly one of 'prompt' and 'messages'")
    intent = readers.require_choice(row, "intent", INTENTS)
    uid = row.get("uid", row.get("id"))
    if uid is not None and (isinstance(uid, bool) or not isinstance(uid, (str, int))):
      raise readers.RowError(f"key 'uid': expected a string, got {uid!r}")
    category = row.get("category")
    if category is not None and not isinstance(category, str):
      raise readers.RowError(f"key 'category': expected a string, got {category!r}")
    return (None if uid is None else str(uid)), _conversation(row), intent, category

  result = readers.read_jsonl(path, row_fn)
  prompts, seen = [], {}
  for line, (uid, messages, intent, category) in zip(result.lines, result.rows):
    uid = uid if uid is not None else f"{source}:{line}"
    if uid in seen:
      raise DataError(path, line, f"duplicate uid {uid!r} (first on line {seen[uid]})")
    seen[uid] = line
    prompts.append(Prompt(uid=uid, messages=tuple(messages), intent=intent, category=category, source=source))
  if not prompts:
    raise DataError(path, 0, "no prompts")
  return prompts


def sft_row(raw: Mapping[str, Any], reasoning: bool = True) -> tuple[list[dict] | None, bool]:
  """(conversation to train on, or None when the judge rejected it; whether it was kept).

  Reasoning (`reasoning` in datagen rows, or on the assistant message) is kept when `reasoning`.
  """
  if not isinstance(raw, dict):
    raise readers.RowError(f"expected a JSON object, got {type(raw).__name__}")
  kept = raw.get("kept", True)
  if not isinstance(kept, bool):
    raise readers.RowError(f"key 'kept': expected true or false, got {kept!r}")
  if "messages" in raw:
    messages = readers.require_messages(raw, "messages")
    if messages[-1]["role"] != "assistant":
      raise readers.RowError("the last message must be the assistant turn to train on")
    last = raw["messages"][-1]
    thought = last.get("reasoning") if isinstance(last, dict) else None
  else:  # safecomp.datagen output
    prompt = _conversation(raw)
    answer = readers.require(raw, "answer", str)
    if kept and not answer.strip():
      raise readers.RowError("key 'answer': empty answer in a kept row")
    thought = raw.get("reasoning") or None
    messages = prompt + [{"role": "assistant", "content": answer}]
  if thought is not None and not isinstance(thought, str):
    raise readers.RowError(f"key 'reasoning': expected a string, got {type(thought).__name__}")
  messages = [dict(m) for m in messages]
  messages[-1] = {"role": "assistant", "content": messages[-1]["content"]}
  if thought and reasoning:
    messages[-1]["reasoning"] = thought
  return (messages if kept else None), kept


def read_sft_file(path: str | pathlib.Path, reasoning: bool = True) -> tuple[list[list[dict]], dict[str, int]]:
  """Conversations to train on and counts {"generated", "kept"} of an SFT JSONL file."""
  result = readers.read_jsonl(path, lambda raw: sft_row(raw, reasoning))
  conversations = [messages for messages, kept in result.rows if kept]
  if not conversations:
    raise DataError(path, 0, "no rows with kept=true to train on")
  return conversations, {"generated": len(result.rows), "kept": len(conversations)}


def completion_text(value: Any, key: str = "completion") -> str:
  """A completion as text: the string itself, or its assistant messages' content."""
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    parts = []
    for i, m in enumerate(value):
      if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
        raise readers.RowError(f"key {key!r}[{i}]: expected a message with string 'role' and 'content'")
      if m["role"] == "assistant":
        parts.append(m["content"])
    if not parts:
      raise readers.RowError(f"key {key!r}: no assistant message")
    return "\n\n".join(parts)
  raise readers.RowError(f"key {key!r}: expected a string or a list of chat messages, got {type(value).__name__}")


def rm_row(raw: Mapping[str, Any]) -> dict | None:
  """A labelled reward-model row, or None for a row its grader left ungraded."""
  if not isinstance(raw, dict):
    raise readers.RowError(f"expected a JSON object, got {type(raw).__name__}")
  labels = raw
  if "grades" in raw:
    labels = readers.require(raw, "grades", dict)
    if labels.get("ungraded") or labels.get("error"):
      return None
  prompt = readers.require(raw, "prompt", (str, list))
  messages = _messages(prompt, "prompt")
  completion = completion_text(readers.require(raw, "completion", (str, list)))
  severity = readers.require(labels, "severity", (int, str))
  severity = SEVERITY_INDEX.get(severity, severity) if isinstance(severity, str) else severity
  if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 3:
    raise readers.RowError(f"key 'severity': must be 0..3 or one of {list(SEVERITY_INDEX)}, "
                           f"got {labels['severity']!r}")
  helpfulness = readers.require(labels, "helpfulness", (int, float))
  if isinstance(helpfulness, bool) or not 0.0 <= float(helpfulness) <= 1.0:
    raise readers.RowError(f"key 'helpfulness': must lie in [0, 1], got {helpfulness!r}")
  return {"messages": messages + [{"role": "assistant", "content": completion}],
          "severity": severity, "helpfulness": float(helpfulness)}


def read_rm_file(path: str | pathlib.Path) -> tuple[list[dict], int]:
  """Labelled rows of a reward-model JSONL file, and how many ungraded rows were left out."""
  result = readers.read_jsonl(path, rm_row)
  rows = [r for r in result.rows if r is not None]
  if not rows:
    raise DataError(path, 0, "no labelled rows")
  return rows, len(result.rows) - len(rows)


def split_holdout(rows: Sequence, fraction: float, seed: int) -> tuple[list, list]:
  """(train, held-out) by a seeded permutation."""
  order = np.random.default_rng(seed).permutation(len(rows))
  n_held = max(1, int(round(fraction * len(rows))))
  return [rows[i] for i in order[n_held:]], [rows[i] for i in order[:n_held]]


def config_sft_conversations(config, split: str) -> tuple[list[list[dict]], dict]:
  """`sft.train_file`'s kept conversations, `sft.holdout_fraction` of them held out for the eval loss."""
  path = config.sft.train_file
  config_lib.require(pathlib.Path(path).is_file(), "sft.train_file", f"{path} not found")
  conversations, stats = read_sft_file(path, reasoning=config.reasoning)
  train, held = split_holdout(conversations, config.sft.holdout_fraction, config.seed)
  return (train if split == "train" else held), stats


def config_rm_rows(config, split: str) -> list[dict]:
  """`rm.train_file`'s labelled rows, `rm.holdout_fraction` of them held out."""
  path = config.rm.train_file
  config_lib.require(pathlib.Path(path).is_file(), "rm.train_file", f"{path} not found")
  rows, left_out = read_rm_file(path)
  if left_out and split == "train":
    print(f"[rm] {path}: {left_out} ungraded row(s) left out", flush=True)
  train, held = split_holdout(rows, config.rm.holdout_fraction, config.seed)
  return train if split == "train" else held
