"""The run: teacher + judge for each input not yet in the output, in parallel, appended as each
finishes; resumes from an existing output file."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from safecomp.data import readers
from safecomp.datagen.parsing import ParseError, parse_teacher_output
from safecomp.datagen.prompts_io import check_unique
from safecomp.datagen.protocols import Judge, PromptItem, Teacher, TeacherPromptFn, Verdict
from safecomp.datagen.writer import JsonlAppender
from safecomp.errors import DataError
from safecomp.graders.client import RequestFailed

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Summary:
  """Counts for one run; `ok` when every input uid has a row."""
  total: int = 0
  already_done: int = 0
  written: int = 0
  kept: int = 0
  rejected: int = 0
  unparseable: int = 0
  failed: int = 0
  torn_bytes: int = 0
  seconds: float = 0.0

  @property
  def ok(self) -> bool:
    return self.failed == 0

  def line(self) -> str:
    return "datagen summary: " + json.dumps(dataclasses.asdict(self))


def generate_row(item: PromptItem, teacher: Teacher, judge: Judge,
                 teacher_prompt: TeacherPromptFn,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Teacher + judge for one input; returns the output row (raises `RequestFailed`)."""
  raw = teacher.complete(teacher_prompt(item))
  row: dict[str, Any] = {"uid": item.uid, "prompt": [dict(m) for m in item.messages],
                         "meta": dict(item.meta), "teacher": getattr(teacher, "name", "teacher"),
                         **(extra or {})}
  try:
    reasoning, answer = parse_teacher_output(raw)
  except ParseError as exc:
    verdict = Verdict(score=0.0, kept=False, raw=raw, error=f"teacher output: {exc}")
    return {**row, "reasoning": "", "answer": "", "raw": raw,
            "judge": {**verdict.to_dict(), "name": "parse"}, "kept": False}
  verdict = judge.judge(item, reasoning, answer)
  return {**row, "reasoning": reasoning, "answer": answer,
          "judge": {**verdict.to_dict(), "name": getattr(judge, "name", "judge")},
          "kept": bool(verdict.kept)}


def run(items: Sequence[PromptItem], teacher: Teacher, judge: Judge,
        out_path: str | os.PathLike, *, teacher_prompt: TeacherPromptFn | None = None,
        workers: int = 8, fsync: bool = False, progress: bool = True,
        extra: Mapping[str, Any] | None = None) -> Summary:
  """Generates one row per item not yet in `out_path`, appending as each finishes.

  `extra` is copied into every row (e.g. the spec name and style).
  """
  start = time.monotonic()
  check_unique(items, "inputs")
  teacher_prompt = teacher_prompt or (lambda item: [dict(m) for m in item.messages])
  repair = readers.repair_jsonl_tail(out_path)
  if repair.truncated_bytes:
    print(f"datagen: truncated a torn last line ({repair.truncated_bytes} bytes) in {out_path}; "
          "that row will be generated again", file=sys.stderr)
  done: set[str] = set()
  for i, row in enumerate(repair.rows):
    uid = row.get("uid")
    if not isinstance(uid, str):
      raise DataError(out_path, i + 1, "output row without a string 'uid'")
    if uid in done:
      raise DataError(out_path, i + 1, f"duplicate uid {uid!r} in existing output")
    done.add(uid)
  todo = [item for item in items if item.uid not in done]
  summary = Summary(total=len(items), already_done=len(items) - len(todo),
                    torn_bytes=repair.truncated_bytes)

  bar = tqdm(total=len(items), initial=summary.already_done, disable=not progress,
             desc="datagen", unit="row", dynamic_ncols=True)
  with JsonlAppender(out_path, fsync=fsync) as out, \
      concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
    futures = {pool.submit(generate_row, item, teacher, judge, teacher_prompt, extra): item
               for item in todo}
    try:
      for future in concurrent.futures.as_completed(futures):
        item = futures[future]
        try:
          row = future.result()
        except RequestFailed as exc:
          summary.failed += 1
          logger.warning("uid %s failed: %s", item.uid, exc)
          bar.update(1)
          continue
        out.append(row)  # Only this thread writes: rows never interleave.
        summary.written += 1
        if row["kept"]:
          summary.kept += 1
        elif row["judge"].get("name") == "parse" or row["judge"].get("error"):
          summary.unparseable += 1
        else:
          summary.rejected += 1
        bar.update(1)
        bar.set_postfix(kept=summary.kept, failed=summary.failed, refresh=False)
    except BaseException:
      for f in futures:
        f.cancel()
      raise
  bar.close()
  summary.seconds = round(time.monotonic() - start, 3)
  return summary
