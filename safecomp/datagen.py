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
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import sys
import threading
import time
import zlib
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from safecomp import graders
from safecomp.constants import INTENTS
from safecomp.data import readers
from safecomp.errors import DataError, SafecompError
from safecomp.graders import config as grader_config
from safecomp.graders.client import ChatClient, RequestFailed, messages_key
from safecomp.graders.http import json_object
from safecomp.prompts import Prompt

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


# ---------------------------------------------------------------------------------------------
# Protocols


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


# ---------------------------------------------------------------------------------------------
# Parsing teacher and judge output

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


# ---------------------------------------------------------------------------------------------
# Teachers and judges


@dataclasses.dataclass
class HttpTeacher:
  """A teacher behind an OpenAI-compatible server."""
  client: ChatClient
  temperature: float = 0.7
  max_tokens: int = 2048
  name: str = "http"

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    message = self.client.chat(messages, key=messages_key(messages), temperature=self.temperature,
                               max_tokens=self.max_tokens)
    content = message.get("content") or ""
    # vLLM / SGLang reasoning parsers put the chain of thought in a separate field.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
      return f"<think>{reasoning}</think>{content}"
    return content


@dataclasses.dataclass
class CallableTeacher:
  """Wraps any `messages -> text` function, e.g. sampling from a local safecomp model."""
  fn: Callable[[Sequence[Mapping[str, str]]], str]
  name: str = "local"

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    return self.fn(messages)


class LocalTeacher:
  """A local Hugging Face checkpoint as the teacher, no server needed: safecomp's KV-cache sampler over
  the checkpoint's chat format (e.g. an instruct model that reads the spec in its system turn).

  Sampling is seeded by `seed` and the request's content, so reruns and resumed runs draw the same text.
  """

  def __init__(self, path: str | os.PathLike, family: str, *, max_new_tokens: int = 512,
               temperature: float = 0.7, seed: int = 0, dtype: str = "float32"):
    # pylint: disable=import-outside-toplevel
    import jax
    from safecomp import models, tokenizers
    from safecomp.training import generation
    self.tokenizer = tokenizers.load_tokenizer(path)
    self.model, self.params = models.load_pretrained(path, dtype=dtype, tokenizer=self.tokenizer)
    self.family, self.seed = family, seed
    self.stop = generation.stop_ids(self.tokenizer, family)
    self.name = f"local:{pathlib.Path(path).name}"
    self._lock = threading.Lock()
    pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.stop[0]
    self._pad = int(pad)
    self._generate = jax.jit(lambda params, ids, mask, rng: models.generate(
        self.model, params, ids, mask, rng, max_new_tokens=max_new_tokens, temperature=temperature,
        eos_id=self.stop, pad_id=self._pad))

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    # pylint: disable=import-outside-toplevel
    import jax
    from safecomp.tokenizers import encode_prompt
    from safecomp.training import generation
    ids = encode_prompt(self.tokenizer, list(messages), self.family)
    width = -(-len(ids) // 128) * 128  # few prompt lengths, few compilations
    tokens = np.full((1, width), self._pad, np.int32)
    mask = np.zeros((1, width), np.int32)
    tokens[0, width - len(ids):], mask[0, width - len(ids):] = ids, 1
    rng = jax.random.key(zlib.crc32(f"{self.seed}:{messages_key(messages)}".encode()))
    with self._lock:  # one generation at a time on the device
      out = jax.device_get(self._generate(self.params, tokens, mask, rng))
    return generation.decode_responses(self.tokenizer, out.response_tokens, out.response_mask, self.stop)[0]


@dataclasses.dataclass
class GraderJudge:
  """Any grader of the registry (`safecomp.graders`) as the filter: a row is kept when its reward
  r = h x s, on the spec's own scales, reaches `threshold`. Rows the grader cannot judge are rejected
  with the reason, never scored."""
  grader: Any
  threshold: float = 0.7
  name: str = ""

  def __post_init__(self):
    self.name = self.name or graders.full_name(self.grader)

  def judge(self, item: PromptItem, reasoning: str, answer: str) -> Verdict:
    del reasoning  # The judge sees the answer only, as a user would.
    intent = item.meta.get("intent")
    prompt = Prompt(uid=item.uid, messages=tuple(dict(m) for m in item.messages),
                    intent=intent if intent in INTENTS else None, example=item.example)
    grade = self.grader.grade([prompt], [answer])[0]
    if not grade.graded:
      return Verdict(score=0.0, kept=False, error=grade.error, raw=json.dumps(grade.to_dict()))
    reward = float(graders.rewards_of([grade], [prompt])["reward"][0])
    rationale = str(grade.details.get("rationale", ""))
    return Verdict(score=reward, kept=reward >= self.threshold, rationale=rationale,
                   raw=json.dumps(grade.to_dict()))


@dataclasses.dataclass
class KeepAllJudge:
  """No filtering: every parsed answer is kept (score 1)."""
  name: str = "none"

  def judge(self, item: PromptItem, reasoning: str, answer: str) -> Verdict:
    del item, reasoning, answer
    return Verdict(score=1.0, kept=True, rationale="no judge")


# ---------------------------------------------------------------------------------------------
# Inputs


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
  _check_unique(items, str(path))
  return items


def _check_unique(items: Sequence[PromptItem], where: str) -> None:
  seen: set[str] = set()
  for i, item in enumerate(items):
    if item.uid in seen:
      raise DataError(where, i + 1, f"duplicate uid {item.uid!r}")
    seen.add(item.uid)


def testbed_items(split: str, n: int, seed: int, world_seed: int = 0) -> list[PromptItem]:
  """Prompts from the procedurally generated testbed world."""
  from safecomp import testbed  # pylint: disable=g-import-not-at-top

  world = testbed.make_world(world_seed, testbed.WorldConfig())
  examples = testbed.generate_examples(world, split, n, seed)
  items = []
  for ex in examples:
    meta = {k: v for k, v in ex.to_dict().items() if k not in ("uid", "messages")}
    items.append(PromptItem(uid=ex.uid, messages=tuple(dict(m) for m in ex.messages), meta=meta,
                            example=ex))
  _check_unique(items, f"testbed:{split}")
  return items


# ---------------------------------------------------------------------------------------------
# Resumable output


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


# ---------------------------------------------------------------------------------------------
# The run


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


TeacherPromptFn = Callable[[PromptItem], Messages]


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
  _check_unique(items, "inputs")
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

  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

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


# ---------------------------------------------------------------------------------------------
# Spec-dependent pieces and the command line


DEFAULT_SPEC = "safe_completion_fine"
JUDGE_GRADERS = ("http", "judge")  # the registry's graders that can filter teacher output


def spec_teacher_prompt(spec_name: str, style: str | None = None) -> TeacherPromptFn:
  """The spec-augmented chat for the teacher: the policy and task as a system turn (only the
  item's category section when its `meta` names one), then the conversation."""
  from safecomp import spec as spec_lib  # pylint: disable=g-import-not-at-top

  spec = spec_lib.load_spec(spec_name)

  def render(item: PromptItem) -> Messages:
    category = item.meta.get("category")
    try:
      if category is not None:
        spec.section(category)
    except spec_lib.SpecError:
      category = None  # A category the spec does not know: show the whole policy.
    return spec_lib.render_teacher_messages(spec, list(item.messages), category=category,
                                            style=style)

  return render


class TestbedTeacher:
  """The testbed's procedural teacher (`safecomp.testbed.teachers`) behind the Teacher protocol.

  It answers the testbed examples it was given, found by their conversation; randomness comes
  from `seed` and the example uid, so results do not depend on thread scheduling.
  """

  def __init__(self, world: Any, examples: Iterable[Any], *, spec_name: str = DEFAULT_SPEC,
               style: str | None = None, seed: int = 0, error_rate: float = 0.1,
               over_refusal_rate: float = 0.5):
    from safecomp import spec as spec_lib  # pylint: disable=g-import-not-at-top

    self.world, self.seed = world, seed
    self.spec = spec_lib.load_spec(spec_name)
    self.style = style or self.spec.style
    self.error_rate, self.over_refusal_rate = error_rate, over_refusal_rate
    self.name = f"testbed_{self.style}"
    self._by_key = {}
    for ex in examples:
      self._by_key.setdefault(messages_key(ex.messages), ex)

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    from safecomp.testbed import teachers  # pylint: disable=g-import-not-at-top

    example = self._by_key.get(messages_key(messages))
    if example is None:
      raise RequestFailed("the testbed teacher only answers the testbed examples it was given")
    rng = np.random.default_rng([self.seed, zlib.crc32(example.uid.encode("utf-8"))])
    if self.style == "safe_completion":
      out = teachers.safe_completion_teacher(self.world, self.spec, example, rng,
                                             error_rate=self.error_rate)
    else:
      out = teachers.refusal_teacher(self.world, self.spec, example, rng,
                                     error_rate=self.error_rate,
                                     over_refusal_rate=self.over_refusal_rate)
    return out.text(with_reasoning=True)


class TestbedJudge:
  """The testbed's judge filter (`judge_filter`) plus the gold oracle's reward as the score."""

  def __init__(self, world: Any, *, spec_name: str = DEFAULT_SPEC, style: str | None = None):
    from safecomp import spec as spec_lib  # pylint: disable=g-import-not-at-top

    self.world = world
    self.spec = spec_lib.load_spec(spec_name)
    self.style = style or self.spec.style
    self.name = f"testbed_{self.style}"

  def judge(self, item: PromptItem, reasoning: str, answer: str) -> Verdict:
    del reasoning
    from safecomp import testbed  # pylint: disable=g-import-not-at-top

    if item.example is None:
      raise RequestFailed("the testbed judge needs testbed examples as inputs")
    kept, reason = testbed.judge_filter(self.world, self.spec, item.example, answer,
                                        style=self.style)
    grade = testbed.grade(item.example.messages, answer, self.world, example=item.example)
    return Verdict(score=float(grade.reward), kept=bool(kept), rationale=reason)


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
    from safecomp import testbed  # pylint: disable=g-import-not-at-top
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
    from safecomp import spec as spec_lib  # pylint: disable=g-import-not-at-top
    style = spec_lib.load_spec(args.spec).style
  extra = {"spec": args.spec if uses_spec else None, "style": style}
  summary = run(items, teacher, judge, args.out, teacher_prompt=prompt_fn, workers=args.workers,
                fsync=args.fsync, progress=not args.no_progress, extra=extra)
  if isinstance(judge, GraderJudge) and hasattr(judge.grader, "report"):
    print(judge.grader.report(), flush=True)
  print(summary.line(), flush=True)  # the last line: scripts read it
  return 0 if summary.ok else 1


if __name__ == "__main__":
  try:
    sys.exit(main())
  except (SafecompError, OSError) as exc:
    print(f"datagen: error: {exc}", file=sys.stderr)
    sys.exit(2)
