"""Grades completions in a JSONL file: `python -m safecomp.grade --grader NAME --input in.jsonl --output out.jsonl`.

Input rows hold `prompt` (a string or a list of chat messages) and `completion` (a string or a list
of chat messages, whose assistant messages' content is graded); `intent` (benign / dual_use /
malicious), where a row has it, tells the graders whether direct help counts. Each output row is the
input row unchanged plus `grades`: the grader's name and version, and `severity`, `helpfulness`,
`mode`, `safety` and `reward` (r = h x s) where the grader gives them, or `ungraded` with the reason.
The output is a valid reward-model file (`--config.rm.train_file=out.jsonl`).

Graders (the registry of `safecomp.graders`, shared with training, eval and datagen):
  judge    a local LM reading the spec's rubrics (--judge-model DIR, --judge-family, --spec).
  http     a judge behind an OpenAI-compatible server (--http-base-url, --http-model, ...).
  rm       the reward model a `safecomp.train` run trained (--rm-workdir DIR).
  oracle   the testbed's gold oracle: testbed prompts only (a real prompt is an error naming the row,
           or ungraded with --oracle-unknown-prompts ungraded).
  mode     the response-mode classifier (modes only).
  keyword  the refusal-prefix baseline (refused or not).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Dict, List, Sequence

from tqdm import tqdm

from safecomp import graders as graders_lib
from safecomp.constants import INTENTS
from safecomp.data import readers
from safecomp.errors import SafecompError
from safecomp.graders import config as grader_config
from safecomp.prompts import Prompt, content_uid, message_tuple
from safecomp.rewards import composite
from safecomp.tasks.files import completion_text

GRADERS = graders_lib.GRADERS
register_grader = graders_lib.register_grader


def parse_row(raw: Any) -> tuple:
  """(row, prompt, completion_text) of one input row; raises on a malformed one."""
  if not isinstance(raw, dict):
    raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
  for key in ("prompt", "completion"):
    if key not in raw:
      raise KeyError(key)
  try:
    messages = message_tuple(raw["prompt"])
  except (TypeError, ValueError) as e:
    raise ValueError(f"key 'prompt': {e}") from None
  if not any(m["role"] == "user" for m in messages):
    raise ValueError("key 'prompt': no user message")
  intent = raw.get("intent")
  if intent is not None and intent not in INTENTS:
    raise ValueError(f"key 'intent': expected one of {INTENTS}, got {intent!r}")
  uid = str(raw.get("uid", raw.get("id", content_uid(messages))))
  return raw, Prompt(uid=uid, messages=messages, intent=intent), completion_text(raw["completion"])


def read_rows(path: str, skip_malformed: bool = False) -> readers.ReadResult:
  """Parsed rows of a JSONL file; bad rows raise DataError naming file and line, or are counted in
  `.errors` with `skip_malformed`."""
  return readers.read_jsonl(path, parse_row, skip_malformed=skip_malformed)


def grade_rows(grader, rows: Sequence[tuple], batch_size: int = 32, progress: bool = True,
               severity_to_safety: Sequence[float] | None = None) -> List[Dict[str, Any]]:
  """Input rows plus `grades`, graded batch by batch (with s and r = h x s where the grader judges harm)."""
  table = tuple(severity_to_safety or composite.DEFAULT_SEVERITY_TO_SAFETY)
  out = []
  with tqdm(total=len(rows), disable=not progress, desc="grading", unit="row", file=sys.stderr) as bar:
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      prompts = [r[1] for r in chunk]
      grades = graders_lib.grade_texts(grader, prompts, [r[2] for r in chunk])
      scored = graders_lib.rewards_of(grades, prompts, severity_to_safety=table) if grader.judges_harm else None
      for i, (row, g) in enumerate(zip(chunk, grades)):
        record = g.to_dict()
        if scored is not None and g.graded:
          record.update(safety=float(scored["safety"][i]), reward=float(scored["reward"][i]))
        out.append({**row[0], "grades": record})
      bar.update(len(chunk))
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m safecomp.grade", description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--grader", required=True, choices=sorted(GRADERS))
  p.add_argument("--input", required=True, help="JSONL with `prompt` and `completion` per row")
  p.add_argument("--output", required=True, help="JSONL to write (input rows plus `grades`)")
  p.add_argument("--skip-malformed", action="store_true", help="skip bad rows (counted) instead of failing")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--rm-workdir", help="rm: a safecomp.train workdir whose rm stage is complete")
  grader_config.add_flags(p)
  return p


def make_grader(args: argparse.Namespace):
  """The grader `args` name, with its options from the flags (and the workdir's config for rm)."""
  if args.grader == "rm":
    if not args.rm_workdir:
      raise SystemExit("--grader rm needs --rm-workdir DIR (a safecomp.train workdir whose rm stage finished)")
    # Only the rm grader needs the training stack (and JAX); the other graders stay light.
    from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
    p = pipeline.open_workdir(args.rm_workdir)
    return p.grader("rm", "--grader"), tuple(p.config.reward.severity_to_safety)
  if args.grader == "judge" and not args.judge_model:
    raise SystemExit("--grader judge needs --judge-model DIR (a Hugging Face-style checkpoint directory)")
  if args.grader == "http" and not (args.http_base_url and args.http_model):
    raise SystemExit("--grader http needs --http-base-url URL and --http-model NAME")
  config = grader_config.from_flags(args)
  context = graders_lib.GraderContext(config)
  return graders_lib.make_grader(args.grader, context, key="--grader"), tuple(config.reward.severity_to_safety)


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.batch_size <= 0:
    raise SystemExit("--batch-size must be positive")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    result = read_rows(args.input, args.skip_malformed)
    grader, table = make_grader(args)
    graded = grade_rows(grader, result.rows, args.batch_size, progress=not args.no_progress,
                        severity_to_safety=table)
  except SafecompError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with open(args.output, "w", encoding="utf-8") as f:
    for row in graded:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  ungraded = sum(bool(r["grades"].get("ungraded")) for r in graded)
  msg = f"graded {len(graded) - ungraded} rows with {graders_lib.full_name(grader)} into {args.output}"
  if ungraded:
    msg += f"; {ungraded} row(s) ungraded (see their `grades.error`)"
  if result.skipped:
    msg += f"; skipped {result.skipped} malformed row(s), first: {result.errors[0]}"
  if hasattr(grader, "report"):
    msg += f"\n{grader.report()}"
  print(msg, file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
