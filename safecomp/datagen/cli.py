"""SFT data generation with judge filtering against a real teacher, resumable.

  python -m safecomp.datagen --prompts prompts.jsonl --teacher http --base-url http://localhost:8000 \
      --model my-teacher --judge http --out /data/sft_rows.jsonl
  python -m safecomp.train ... --config.sft.train_file=/data/sft_rows.jsonl   # trains on it as it is

The teacher is any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp server,
`transformers serve`, hosted APIs: POST {base_url}/v1/chat/completions with a Bearer key read from an
env var), the testbed's procedural teacher (`--teacher testbed`), or any object with
`complete(messages)` (e.g. a local safecomp model wrapped in `CallableTeacher`). It sees the
spec-augmented prompt and returns reasoning + answer (`<think>...</think>answer`, a JSON object, or a
separate `reasoning_content` field).

The judge is a grader of `safecomp.graders` (`--judge http`: a judge server asked for a verdict on the
spec's own scales; `--judge judge --judge-model DIR`: a local checkpoint reading the spec's rubrics)
or the testbed's judge; a row is kept when its reward r = h x s reaches `--threshold`.

Each finished row is appended to the output JSONL in one write with its unique uid. On restart
the file is re-read (a torn last line left by a kill is truncated and reported), done uids are
skipped, and the run finishes without duplicates or lost rows. Judge-rejected rows are kept with
`kept: false`. Rows whose requests still fail after all retries are not written (so that a
rerun retries them) and are counted as `failed` in the summary line.
"""
from __future__ import annotations

import argparse
import logging
from typing import Sequence

from safecomp import graders
from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp.datagen.judges import GraderJudge, KeepAllJudge
from safecomp.datagen.prompts_io import read_prompt_file
from safecomp.datagen.protocols import DEFAULT_SPEC
from safecomp.datagen.runner import run
from safecomp.datagen.teachers import HttpTeacher, spec_teacher_prompt
from safecomp.datagen.testbed import TestbedJudge, TestbedTeacher, testbed_items
from safecomp.graders import config as grader_config
from safecomp.graders.client import ChatClient

JUDGE_GRADERS = ("http", "judge")  # the registry's graders that can filter teacher output


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m safecomp.datagen", description=__doc__.split("\n")[0])
  src = p.add_argument_group("inputs (one of)")
  src.add_argument("--prompts", help="JSONL of prompts ({prompt|messages, uid?, intent?, category?, ...})")
  src.add_argument("--testbed-split", choices=("train", "test", "heldout", "multiturn"))
  src.add_argument("--n", type=int, default=1000, help="testbed examples to generate")
  src.add_argument("--seed", type=int, default=0, help="testbed example seed; retry jitter seed")
  p.add_argument("--out", required=True, help="output JSONL (appended to; resumable)")
  p.add_argument("--teacher", choices=("http", "testbed"), default="http")
  p.add_argument("--judge", choices=("none", "testbed") + JUDGE_GRADERS, default="none",
                 help="the filter: none, the testbed judge, or a grader of safecomp.graders (http: a judge "
                      "server asked for JSON verdicts; judge: a local checkpoint read with the rubrics)")
  p.add_argument("--base-url", help="teacher server, e.g. http://localhost:8000 (also the http judge's default)")
  p.add_argument("--model", default="default", help="teacher model name (also the http judge's default)")
  p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the key")
  p.add_argument("--threshold", type=float, default=0.7,
                 help="keep rows whose reward r = h x s (on the spec's scales) is >= this")
  p.add_argument("--style", choices=("safe_completion", "refusal"),
                 help="teacher style (default: the spec's)")
  p.add_argument("--error-rate", type=float, default=0.1, help="testbed teacher mistakes")
  p.add_argument("--no-spec", action="store_true", help="send the plain prompt to the teacher")
  p.add_argument("--temperature", type=float, default=0.7)
  p.add_argument("--max-tokens", type=int, default=2048)
  p.add_argument("--workers", type=int, default=8)
  p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
  p.add_argument("--max-retries", type=int, default=5)
  p.add_argument("--backoff", type=float, default=1.0, help="first retry wait, seconds")
  p.add_argument("--max-backoff", type=float, default=60.0)
  p.add_argument("--skip-malformed", action="store_true", help="skip bad prompt rows (counted)")
  p.add_argument("--fsync", action="store_true", help="fsync after every row")
  p.add_argument("--no-progress", action="store_true")
  grader_config.add_flags(p)
  args = p.parse_args(argv)
  args.spec = args.spec or DEFAULT_SPEC
  args.world_seed = args.world_seed or 0
  if bool(args.prompts) == bool(args.testbed_split):
    p.error("give exactly one of --prompts and --testbed-split")
  if args.teacher == "http" and not args.base_url:
    p.error("--base-url is required for --teacher http")
  if args.judge == "http" and not (args.http_base_url or args.base_url):
    p.error("--judge http needs a server: --http-base-url (or the teacher's --base-url)")
  if args.judge == "judge" and not args.judge_model:
    p.error("--judge judge needs --judge-model DIR (a local Hugging Face checkpoint)")
  if "testbed" in (args.teacher, args.judge) and not args.testbed_split:
    p.error("--teacher/--judge testbed need testbed inputs (--testbed-split)")
  return args


def _client(args: argparse.Namespace) -> ChatClient:
  return ChatClient(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                    timeout_s=args.timeout, max_retries=args.max_retries, backoff_s=args.backoff,
                    max_backoff_s=args.max_backoff, seed=args.seed)


def grader_judge(args: argparse.Namespace) -> GraderJudge:
  """The `--judge` grader from the registry, configured by the shared grader flags."""
  config = grader_config.from_flags(args)
  config.seed = args.seed
  if args.judge == "http":
    config.http.base_url = config.http.base_url or args.base_url
    config.http.model = config.http.model or args.model
    config.http.api_key_env = args.http_api_key_env or args.api_key_env
    config.http.timeout_s, config.http.max_retries = args.timeout, args.max_retries
    config.http.concurrency = args.http_concurrency or 1  # datagen's workers already run in parallel
  grader = graders.make_grader(args.judge, graders.GraderContext(config), key="--judge")
  return GraderJudge(grader, threshold=args.threshold)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if args.prompts:
    items = read_prompt_file(args.prompts, skip_malformed=args.skip_malformed)
  else:
    items = testbed_items(args.testbed_split, args.n, args.seed, args.world_seed)

  if args.teacher == "testbed" or args.judge == "testbed":
    world = testbed.make_world(args.world_seed, testbed.WorldConfig())
  if args.teacher == "testbed":
    teacher = TestbedTeacher(world, [item.example for item in items], spec_name=args.spec,
                             style=args.style, seed=args.seed, error_rate=args.error_rate)
  else:
    teacher = HttpTeacher(_client(args), temperature=args.temperature, max_tokens=args.max_tokens)
  if args.judge in JUDGE_GRADERS:
    judge = grader_judge(args)
  elif args.judge == "testbed":
    judge = TestbedJudge(world, spec_name=args.spec, style=args.style)
  else:
    judge = KeepAllJudge()
  prompt_fn = None
  if not args.no_spec and args.teacher == "http":
    prompt_fn = spec_teacher_prompt(args.spec, args.style)

  uses_spec = prompt_fn is not None or args.judge != "none" or args.teacher == "testbed"
  style = args.style
  if uses_spec and style is None:
    style = spec_lib.load_spec(args.spec).style
  extra = {"spec": args.spec if uses_spec else None, "style": style}
  summary = run(items, teacher, judge, args.out, teacher_prompt=prompt_fn, workers=args.workers,
                fsync=args.fsync, progress=not args.no_progress, extra=extra)
  if isinstance(judge, GraderJudge) and hasattr(judge.grader, "report"):
    print(judge.grader.report(), flush=True)
  print(summary.line(), flush=True)  # the last line: scripts read it
  return 0 if summary.ok else 1
