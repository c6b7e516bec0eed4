"""The resumable output: a crash-safe JSONL appender."""
from __future__ import annotations

import json
import os
import pathlib
import threading
from typing import Any, Mapping


class JsonlAppender:
  """Appends one JSON row per line; each row goes out in a single `write` on an O_APPEND fd,
  so a killed process leaves at most one torn last line (repaired on the next start)."""

  def __init__(self, path: str | os.PathLike, fsync: bool = False):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    self._fsync = fsync
    self._lock = threading.Lock()

  def append(self, row: Mapping[str, Any]) -> None:
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    with self._lock:
      view = memoryview(data)
      while view:
        written = os.write(self._fd, view)
        view = view[written:]
      if self._fsync:
        os.fsync(self._fd)

  def close(self) -> None:
    os.close(self._fd)

  def __enter__(self) -> "JsonlAppender":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
