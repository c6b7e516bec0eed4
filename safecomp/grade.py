"""Grades completions in a JSONL file: `python -m safecomp.grade --grader NAME --input in.jsonl --output out.jsonl`.

Input rows hold `prompt` (a string or a list of chat messages) and `completion` (a string or a list
of chat messages, whose assistant messages' content is graded). Each output row is the input row
unchanged plus `grades`, with `mode`, `severity`, `safety`, `helpfulness` and `reward` where the
grader provides them.

Graders (`GRADERS`; add one with `@register_grader("name")`):
  oracle   the testbed's gold oracle (prompts outside the testbed get its flagged proxy grade).
  mode     the feature-based response-mode classifier (`safecomp.rewards.mode_classifier`).
  keyword  the refusal-prefix baseline (complies / refused only).
  judge    a frozen LM reading the spec's rubrics (`--judge-model DIR`, `--spec`, `--judge-family`).
  rm       the reward model trained by a `safecomp.train` run (`--rm-workdir DIR`).

Every grader has the same Python interface, `grade_batch(prompts, completions) -> list[dict]`, so
graders that cannot run inside jit (an HTTP judge, a reward-model checkpoint) plug in alike.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Dict, List, Protocol, Sequence

from safecomp.errors import DataError


class Grader(Protocol):
  """Anything that grades aligned lists of prompts (str or messages) and completion texts."""

  def grade_batch(self, prompts: Sequence[Any], completions: Sequence[str]) -> List[Dict[str, Any]]:
    ...


GraderFactory = Callable[[argparse.Namespace], Grader]
GRADERS: Dict[str, GraderFactory] = {}


def register_grader(name: str) -> Callable[[GraderFactory], GraderFactory]:
  """Registers `factory(args) -> Grader` under `name` for `--grader`."""

  def wrap(factory: GraderFactory) -> GraderFactory:
    if name in GRADERS:
      raise ValueError(f"grader {name!r} is already registered")
    GRADERS[name] = factory
    return factory

  return wrap


# ----------------------------------------------------------------------------- graders


class OracleGrader:
  """The testbed gold oracle; the full `OracleGrade.to_dict()` per row."""

  def __init__(self, world_seed: int = 0):
    from safecomp import testbed  # pylint: disable=import-outside-toplevel
    self._testbed = testbed
    self.world = testbed.make_world(world_seed)

  def grade_batch(self, prompts, completions):
    return [self._testbed.grade(p, c, world=self.world).to_dict() for p, c in zip(prompts, completions)]


class ModeGrader:
  """The response-mode classifier: mode, complies and the per-mode scores."""

  def grade_batch(self, prompts, completions):
    from safecomp.rewards import mode_classifier as mc  # pylint: disable=import-outside-toplevel
    out = []
    for p, c in zip(prompts, completions):
      r = mc.classify_mode(mc.last_user_message(p), c)
      out.append({"mode": r.mode, "complies": r.complies, "mode_scores": r.scores})
    return out


class KeywordGrader:
  """The refusal-prefix baseline: it only says whether the completion refuses."""

  def grade_batch(self, prompts, completions):
    from safecomp.rewards import mode_classifier as mc  # pylint: disable=import-outside-toplevel
    del prompts
    return [{"refused": r, "complies": not r} for r in map(mc.keyword_refusal_matcher, completions)]


@register_grader("oracle")
def _oracle(args: argparse.Namespace) -> Grader:
  return OracleGrader(args.world_seed)


@register_grader("mode")
def _mode(args: argparse.Namespace) -> Grader:
  del args
  return ModeGrader()


@register_grader("keyword")
def _keyword(args: argparse.Namespace) -> Grader:
  del args
  return KeywordGrader()


@register_grader("judge")
def _judge(args: argparse.Namespace) -> Grader:
  if not args.judge_model:
    raise SystemExit("--grader judge needs --judge-model DIR (a Hugging Face-style checkpoint directory)")
  from safecomp.rewards.judge import LogitJudge  # pylint: disable=import-outside-toplevel
  return LogitJudge.from_pretrained(args.judge_model, spec=args.spec, family=args.judge_family,
                                    dtype=args.judge_dtype, batch_size=args.batch_size)


class RewardModelGrader:
  """The reward model a `safecomp.train` run trained (its `rm` stage): severity, s, h and r = h x s."""

  def __init__(self, workdir: str, batch_size: int = 32):
    # pylint: disable=import-outside-toplevel
    from safecomp.rewards import composite
    from safecomp.training import batching, pipeline
    from safecomp.training import rm as rm_lib
    self._p = pipeline.open_workdir(workdir)
    self._batching, self._rm_lib, self._composite = batching, rm_lib, composite
    self.model, self.params = self._p.trained_reward_model()
    self.batch_size = batch_size

  def grade_batch(self, prompts, completions):
    from safecomp.constants import SEVERITIES  # pylint: disable=import-outside-toplevel
    from safecomp.testbed.parsing import as_messages  # pylint: disable=import-outside-toplevel
    c = self._p.config
    conversations = [as_messages(p) + [{"role": "assistant", "content": t}] for p, t in zip(prompts, completions)]
    arrays = self._batching.conversations_to_arrays(self._p.tokenizer, conversations, c.chat_template,
                                                    c.max_seq_len, "graded rows")
    pred = self._rm_lib.rm_predict(self.model, self.params, arrays, self.batch_size, c.rm.helpfulness_loss)
    safety = self._composite.safety_from_severity(pred["severity_probs"], tuple(c.reward.severity_to_safety))
    out = []
    for probs, s, h in zip(pred["severity_probs"], safety.tolist(), pred["helpfulness"].tolist()):
      out.append({"severity": int(probs.argmax()), "severity_name": SEVERITIES[int(probs.argmax())],
                  "severity_probs": [float(x) for x in probs], "safety": float(s), "helpfulness": float(h),
                  "reward": float(h) * float(s)})
    return out


@register_grader("rm")
def _reward_model(args: argparse.Namespace) -> Grader:
  if not args.rm_workdir:
    raise SystemExit("--grader rm needs --rm-workdir DIR (a safecomp.train workdir whose rm stage finished)")
  return RewardModelGrader(args.rm_workdir, batch_size=args.batch_size)


# ----------------------------------------------------------------------------- rows


def _text_of(value: Any, key: str) -> str:
  """A completion as text: the string itself, or its assistant messages' content."""
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    parts = []
    for i, m in enumerate(value):
      if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
        raise ValueError(f"key {key!r}[{i}]: expected a message with string 'role' and 'content'")
      if m["role"] == "assistant":
        parts.append(m["content"])
    if not parts:
      raise ValueError(f"key {key!r}: no assistant message")
    return "\n\n".join(parts)
  raise TypeError(f"key {key!r}: expected a string or a list of chat messages, got {type(value).__name__}")


def _check_prompt(value: Any) -> Any:
  if isinstance(value, str):
    return value
  if isinstance(value, list) and value:
    for i, m in enumerate(value):
      if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
        raise ValueError(f"key 'prompt'[{i}]: expected a message with string 'role' and 'content'")
    if not any(m["role"] == "user" for m in value):
      raise ValueError("key 'prompt': no user message")
    return value
  raise TypeError(f"key 'prompt': expected a string or a non-empty list of chat messages, "
                  f"got {type(value).__name__}")


def parse_row(raw: Any) -> tuple:
  """(row, prompt, completion_text) of one input row; raises on a malformed one."""
  if not isinstance(raw, dict):
    raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
  for key in ("prompt", "completion"):
    if key not in raw:
      raise KeyError(key)
  return raw, _check_prompt(raw["prompt"]), _text_of(raw["completion"], "completion")


def read_rows(path: str, skip_malformed: bool = False):
  """Parsed rows of a JSONL file (`safecomp.data.readers.ReadResult`); bad rows raise DataError
  naming file and line, or are counted in `.errors` with `skip_malformed`."""
  from safecomp.data.readers import read_jsonl  # pylint: disable=import-outside-toplevel
  return read_jsonl(path, parse_row, skip_malformed=skip_malformed)


def grade_rows(grader: Grader, rows: Sequence[tuple], batch_size: int = 32, progress: bool = True
               ) -> List[Dict[str, Any]]:
  """Input rows plus `grades`, graded batch by batch."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  out = []
  with tqdm(total=len(rows), disable=not progress, desc="grading", unit="row", file=sys.stderr) as bar:
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      grades = grader.grade_batch([r[1] for r in chunk], [r[2] for r in chunk])
      if len(grades) != len(chunk):
        raise RuntimeError(f"grader returned {len(grades)} grades for {len(chunk)} rows")
      out.extend({**r[0], "grades": g} for r, g in zip(chunk, grades))
      bar.update(len(chunk))
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m safecomp.grade", description=__doc__.split("\n\n")[0])
  p.add_argument("--grader", required=True, choices=sorted(GRADERS))
  p.add_argument("--input", required=True, help="JSONL with `prompt` and `completion` per row")
  p.add_argument("--output", required=True, help="JSONL to write (input rows plus `grades`)")
  p.add_argument("--skip-malformed", action="store_true", help="skip bad rows (counted) instead of failing")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--world-seed", type=int, default=0, help="oracle: seed of the testbed world")
  p.add_argument("--judge-model", help="judge: checkpoint directory (config.json, safetensors, tokenizer)")
  p.add_argument("--judge-family", help="judge: chat family (llama3, qwen2, ...); default the tokenizer's template")
  p.add_argument("--judge-dtype", default="float32")
  p.add_argument("--spec", default="safe_completion_fine", help="judge: policy spec name or YAML path")
  p.add_argument("--rm-workdir", help="rm: a safecomp.train workdir whose rm stage is complete")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.batch_size <= 0:
    raise SystemExit("--batch-size must be positive")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    result = read_rows(args.input, args.skip_malformed)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  grader = GRADERS[args.grader](args)
  graded = grade_rows(grader, result.rows, args.batch_size, progress=not args.no_progress)
  with open(args.output, "w", encoding="utf-8") as f:
    for row in graded:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  msg = f"graded {len(graded)} rows with {args.grader!r} into {args.output}"
  if result.skipped:
    msg += f"; skipped {result.skipped} malformed row(s), first: {result.errors[0]}"
  print(msg, file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
