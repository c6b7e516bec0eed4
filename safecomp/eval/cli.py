"""`python -m safecomp.eval`: evaluates the checkpoints of a training workdir, with intervals.

    python -m safecomp.eval --workdir DIR [--checkpoint sft|ppo|both] [--compare OTHER[:sft|ppo]]
        [--sets SET[,SET...]] [--grader judge|http|rm|oracle] [--n N] [--out OUT]
        [--samples K] [--temperature T] [--sample-seed S]
        [--export-pairs PATH] [--import-ratings FILE[,FILE]] [--key PATH]

The workdir's saved `config.json` rebuilds the run (task, tokenizer, model shapes); the chosen
checkpoints answer the chosen prompt sets and a grader scores every answer. Reported per prompt
intent (benign / dual-use / malicious), each with a standard error and a 95% interval: safety rate,
helpfulness given safe (0-1 and the rubric's 1-4 scale), severity of unsafe outputs, response modes,
refusal and over-refusal (refusals of benign prompts). Two checkpoints (SFT vs PPO, or this workdir
vs `--compare`) are compared on the same prompts: difference of means with a paired-bootstrap
interval and a sign-flip permutation p-value.

Prompt sets (default: the workdir's own eval sets):
  test, heldout, multiturn   a testbed workdir's splits (the prompts the `eval` stage answered).
  public:NAME                a public set through its builder (xstest, coconot, coconot_contrast,
                             jailbreakbench, cyberseceval_frr, simplesafetytests; the bare name works
                             too), prepared under --data-dir from the source files in --public-dir
                             (default $SAFECOMP_SHARED_DATA or `../shared/data` beside the repository)
                             or downloaded from their pinned sources.
  PATH.jsonl                 your own prompt file ({"uid"?, "prompt" | "messages", "intent", "category"?}).

Graders (the registry of `safecomp.graders`; default: the workdir's `eval.grader`):
  judge   a local LM reading the spec's rubrics (--judge-model, or the workdir's judge.checkpoint).
  http    a judge behind an OpenAI-compatible server (--http-base-url / --http-model, or the workdir's).
  rm      the workdir's trained reward model (its `rm` stage), reported as `proxy_reward`.
  oracle  the testbed's gold oracle: testbed prompts only; a prompt outside the testbed is an error
          (or, with --oracle-unknown-prompts ungraded, left out of every rate and counted).

Outputs in `--out` (default `DIR/eval_cli`): `eval.json`, `eval.md` and PNG plots pooled over the
chosen sets, one report per set in `by_set/<set>/`, graded completions in `completions/<model>.jsonl`
(with `prompt_id`, `intent` and `grader` on every row), and `run.json` (what ran).

Sampling: by default each policy answers every prompt once with its config's decoding (`eval.greedy`).
`--samples K` answers every prompt K times, sampled at `--temperature T` (K > 1 with greedy decoding,
the demo config's default, is refused: the K answers would be identical), from `--sample-seed S`
(default: each policy's config seed; the same seed gives the same answers). Completions carry their
`sample` index. The report's rates then pool all K answers per prompt (intervals treat them as
independent; paired comparisons match sample j of one policy with sample j of the other), and
`consistency.json` plus a "Consistency across samples" section of `eval.md` report, per intent and
policy, how the K answers agree: mode agreement, all K in one mode, any unsafe among K, unsafe share,
safe/unsafe splits, sd and range of harm severity, sd of helpfulness, with intervals over prompts
(`safecomp.eval.consistency`), and paired differences of compared policies on the same prompts.

Human evaluation: `--export-pairs PATH` writes blinded side-by-side pairs of the two compared
checkpoints to the folder PATH (hand it to raters as is) and the un-blinding key to `--key` (default
`PATH.key.json`, outside the folder); `--import-ratings FILE` reads raters' files back and reports
the win rate with its interval (overall and per intent) into `human_eval.{json,md}`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys
from typing import Any, Callable, Sequence

from absl import logging as absl_logging
import ml_collections
import numpy as np

from safecomp import graders as graders_lib
from safecomp import parallel
from safecomp import tasks
from safecomp.errors import SafecompError
from safecomp.eval import consistency
from safecomp.eval import human
from safecomp.eval import report as report_lib
from safecomp.eval import stats
from safecomp.graders import config as grader_config
from safecomp.tasks import testbed as testbed_task
from safecomp.training import evaluate
from safecomp.training import generation
from safecomp.training import pipeline as pipeline_lib
from safecomp.training import rollout as rollout_lib
from safecomp.training.checkpoints import DONE_FILE
from safecomp.training.evaluate import graded_only
from safecomp.training.pipeline import STAGES

CHECKPOINTS = ("sft", "ppo", "both")
GRADERS = ("judge", "http", "rm", "oracle")
TESTBED_SETS = testbed_task.EVAL_SPLITS
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Paired metrics for every comparison; the reward metric is added by grader.
PAIRED = ("safe", "helpfulness_given_safe", "helpfulness_1to4_given_safe", "over_refusal")


class EvalError(SafecompError):
  """A problem with the command line or the workdir that the user can fix."""


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How every policy answers: `samples` answers per prompt, greedy or sampled at `temperature`."""
  samples: int = 1
  temperature: float | None = None  # None: the policy's config decides (eval.greedy, else temperature 1)
  seed: int | None = None  # None: the policy's config seed

  def decoding(self, config: ml_collections.ConfigDict) -> tuple[bool, float]:
    """(greedy, temperature) for a policy trained with `config`."""
    if self.temperature is None:
      return bool(config.eval.greedy), 1.0
    return False, float(self.temperature)


@dataclasses.dataclass
class Policy:
  """A checkpoint to evaluate: a name in the report, its workdir's pipeline and the stage."""
  name: str
  pipeline: Any
  stage: str


# -- workdirs and configs ---------------------------------------------------------------------------
def train_command(config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path,
                  stage: str | None = None) -> str:
  """The command that (re)trains `workdir`, adding `stage` to the stages when it was left out."""
  arm = config.get("arm", "safe_completion") if config is not None else "safe_completion"
  cmd = f"python -m safecomp.train --config configs/demo.py{':arm=refusal' if arm == 'refusal' else ''} " \
        f"--workdir {workdir}"
  if config is not None and stage is not None and stage not in tuple(config.get("stages", ())):
    wanted = set(config.stages) | {stage, "sft"} | ({"rm"} if stage == "ppo" and
                                                      config.reward.grader == "rm" else set())
    cmd += f" --config.stages=\"{tuple(s for s in STAGES if s in wanted)}\""
  return cmd


def stage_done(p, stage: str) -> bool:
  """Whether `stage` of the workdir has a complete checkpoint (creates nothing when it has none)."""
  if not (p.workdir / stage / DONE_FILE).is_file():
    return False
  ckpt = p.checkpointer(stage)
  try:
    return ckpt.is_done()
  finally:
    ckpt.close()


def require_stage(p, stage: str):
  """Raises an error naming the command to run when `stage` has no complete checkpoint."""
  if not stage_done(p, stage):
    directory = p.workdir / stage
    state = "is incomplete" if directory.is_dir() else "does not exist"
    raise EvalError(
        f"stage {stage!r} has no complete checkpoint in {directory} (it {state}). Run it first: "
        f"{train_command(p.config, p.workdir, stage)} (with the config and overrides this workdir "
        f"was trained with; finished stages are skipped)"
        + ("; or evaluate the SFT model alone with --checkpoint sft" if stage == "ppo" else ""))


# -- prompts ------------------------------------------------------------------------------------------
def default_public_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("SAFECOMP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def set_items(text: str) -> list[str]:
  """The sets of `--sets`: testbed splits, `public:NAME` (a bare public name too) and JSONL paths."""
  items = []
  for raw in (s.strip() for s in text.split(",") if s.strip()):
    if raw in tasks.PUBLIC_PROMPT_SETS:
      raw = f"public:{raw}"
    items.append(raw)
  unknown = [s for s in items if s not in TESTBED_SETS and not s.startswith("public:") and not s.endswith(".jsonl")]
  if unknown:
    raise EvalError(f"--sets: unknown set(s) {unknown}; choose from {', '.join(TESTBED_SETS)}, "
                    f"{', '.join('public:' + n for n in tasks.PUBLIC_PROMPT_SETS)} or a .jsonl prompt file")
  return items


def set_prompts(base, item: str, n: int | None, data_dir: str | None, public_dir: str | None) -> list:
  """The prompts of one set (all, or a seeded sample of `n`)."""
  if item in TESTBED_SETS:
    if base.task.kind != "testbed":
      raise EvalError(f"--sets {item}: a testbed split, but {base.workdir} was trained on {base.task.describe()}")
    return base.task.eval_set_prompts(item, n)
  if base.task.kind == "prompts" and tasks.source_name(item) in base.task.eval_sets() and n is None:
    return base.task.eval_set_prompts(tasks.source_name(item))
  try:
    prompts = tasks.load_source(tasks.parse_sources([item], "--sets")[0], data_dir, public_dir)
  except FileNotFoundError as e:
    raise EvalError(f"--sets {item}: {e}; pass --public-dir (a folder of the public sets' source files) "
                    "or --data-dir (where they are prepared)") from None
  if n is not None and n < len(prompts):
    keep = np.sort(np.random.default_rng([base.config.seed, len(item)]).choice(len(prompts), n, replace=False))
    prompts = [prompts[i] for i in keep]
  return prompts


# -- policies, generation, grading ---------------------------------------------------------------------
def policy_params(p, stage: str):
  """(model, params) of the language model of a completed SFT or PPO stage."""
  model, _ = p.init_model(("lm",), seed_offset=1)
  return model, evaluate.policy_params(p, stage)


def check_sampling(sampling: Sampling, policies: Sequence[Policy]):
  """Refuses several answers per prompt from a policy that decodes greedily (they would be identical)."""
  if sampling.samples < 1:
    raise EvalError(f"--samples must be >= 1, got {sampling.samples}")
  if sampling.temperature is not None and not 0.0 < sampling.temperature < float("inf"):
    raise EvalError(f"--temperature must be a positive number, got {sampling.temperature}")
  if sampling.samples > 1:
    greedy = [pol.name for pol in policies if sampling.decoding(pol.pipeline.config)[0]]
    if greedy:
      raise EvalError(f"--samples {sampling.samples} with greedy decoding (eval.greedy=True in the config of "
                      f"{', '.join(greedy)}) gives {sampling.samples} identical answers per prompt; pass "
                      "--temperature T (e.g. 1.0) to sample them")


def answerer(policy: Policy, sampling: Sampling = Sampling(), batch_size: int | None = None
             ) -> Callable[[Sequence, str], list[str]]:
  """Restores the policy once; returns `answer(conversations, label)` -> texts, with the policy's own
  tokenizer and decoding (its config's `eval`, or `sampling`'s temperature) and seed.

  `batch_size` (default: the config's `eval.batch_size`, or fewer rows when fewer are asked) fixes the
  compiled shape, for callers that answer a shrinking set of conversations turn after turn.
  """
  p = policy.pipeline
  c, tok = p.config, p.tokenizer
  model, params = policy_params(p, policy.stage)
  greedy, temperature = sampling.decoding(c)
  cfg = rollout_lib.RolloutConfig(max_new_tokens=c.eval.max_new_tokens, eos_id=p.stop_ids,
                                  pad_id=tok.pad_id, greedy=greedy, temperature=temperature)
  seed = c.seed if sampling.seed is None else sampling.seed

  def answer(conversations: Sequence, label: str = f"generate {policy.name}") -> list[str]:
    rows = batch_size or min(c.eval.batch_size, len(conversations))
    return generation.generate_texts(model, params, tok, conversations, c.chat_template, c.max_prompt_len, cfg,
                                     rows, seed, label, mesh=p.mesh, rules=parallel.rules_from_config(c))
  return answer


def generate(policy: Policy, prompts: Sequence, sampling: Sampling = Sampling()) -> list[str]:
  """Every prompt answered `sampling.samples` times by the policy (see `answerer`).

  With `sampling.samples` = K, prompt i's answers are texts[i * K: (i + 1) * K]. The K copies of a prompt
  are rows of one batched call: each row draws its own tokens from its batch's PRNG key (derived from the
  seed in `generation.generate_texts`), so the copies differ and the seed fixes every answer.
  """
  return answerer(policy, sampling)([x.message_list for x in prompts for _ in range(sampling.samples)])


def make_grader(args: argparse.Namespace, base):
  """The grader `--grader` names, configured by the workdir's config with the flags on top."""
  name = args.grader or base.config.eval.grader
  if name == "rm":
    require_stage(base, "rm")
  config = grader_config.from_flags(args, base.config)
  if name == "http" and not config.http.cache_dir:
    config.http.cache_dir = str(base.workdir / "http_cache")
  context = graders_lib.GraderContext(config, task=base.task, reward_model=base.reward_model_handle)
  return graders_lib.make_grader(name, context, key="--grader")


def grade(grader, base, prompts: Sequence, texts: Sequence[str], model_name: str, samples: int = 1
          ) -> list[dict[str, Any]]:
  """Graded records in the layout `safecomp.eval.stats` reads (see `training.evaluate.grade_records`), each
  with its `sample` index among the `samples` answers of its prompt (texts in `generate`'s order)."""
  reward_key = "proxy_reward" if grader.name == "rm" else "gold_reward"
  repeated = [x for x in prompts for _ in range(samples)]
  records = evaluate.grade_records(grader, repeated, texts, model_name,
                                   tuple(base.config.reward.severity_to_safety), reward_key=reward_key)
  for i, record in enumerate(records):
    record["sample"] = i % samples
  return records


# -- the command ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m safecomp.eval",
      description="Evaluates the checkpoints of a training workdir by prompt intent, with intervals.\n\n"
      + __doc__.split("\n\n", 2)[2],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", help="a safecomp.train workdir (holds config.json and checkpoints)")
  parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="both",
                      help="which policies of the workdir to evaluate (default both; sft alone when "
                           "the workdir was trained without ppo)")
  parser.add_argument("--compare", metavar="OTHER[:STAGE]",
                      help="another workdir (optionally :sft or :ppo, default its last stage) whose "
                           "policy answers the same prompts; paired comparison against it")
  parser.add_argument("--sets", default=None,
                      help="comma-separated prompt sets (default: the workdir's own eval sets); see above")
  parser.add_argument("--grader", choices=GRADERS, default=None,
                      help="who scores the answers (default: the workdir's eval.grader; see above)")
  parser.add_argument("--n", type=int, default=None,
                      help="prompts per set (default: the config's eval.n_per_split; all of a public set)")
  parser.add_argument("--out", help="output folder (default DIR/eval_cli)")
  parser.add_argument("--data-dir", default=None,
                      help="where public sets are prepared (default: the workdir's task.data_dir, else "
                           "~/tensorflow_datasets)")
  parser.add_argument("--public-dir", default=None,
                      help="a folder of the public sets' source files, one subfolder per dataset (default "
                           "$SAFECOMP_SHARED_DATA or ../shared/data beside the repository, when it exists)")
  parser.add_argument("--bootstrap", type=int, default=None,
                      help="bootstrap resamples (default: the config's eval.bootstrap)")
  parser.add_argument("--samples", type=int, default=1, metavar="K",
                      help="answers per prompt (default 1); K > 1 samples them and reports their consistency")
  parser.add_argument("--temperature", type=float, default=None, metavar="T",
                      help="sample at temperature T (default: the config's decoding: eval.greedy, else "
                           "temperature 1)")
  parser.add_argument("--sample-seed", type=int, default=None, metavar="S",
                      help="seed of the sampled answers (default: each policy's config seed)")
  parser.add_argument("--export-pairs", metavar="PATH",
                      help="write blinded pairs of the two compared policies for human raters to PATH")
  parser.add_argument("--import-ratings", metavar="FILE[,FILE]",
                      help="raters' CSV/JSONL files: report win rates with intervals")
  parser.add_argument("--key", help="the un-blinding key file (default PATH.key.json beside --export-pairs)")
  parser.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
  grader_config.add_flags(parser)
  args = parser.parse_args(argv)
  if args.n is not None and args.n < 1:
    parser.error("--n must be >= 1")
  if args.bootstrap is not None and args.bootstrap < 1:
    parser.error("--bootstrap must be >= 1")
  if args.samples < 1:
    parser.error("--samples must be >= 1")
  if args.temperature is not None and not 0.0 < args.temperature < float("inf"):
    parser.error("--temperature must be a positive number (leave it out for the config's greedy decoding)")
  if args.sets is not None:
    try:
      set_items(args.sets)
    except EvalError as e:
      parser.error(str(e))
  if not args.workdir and not (args.import_ratings and args.out):
    parser.error("--workdir is required (or --import-ratings with --out)")
  return args


def _parse_compare(value: str) -> tuple[str, str | None]:
  head, sep, tail = value.rpartition(":")
  if sep and tail in ("sft", "ppo"):
    return head, tail
  return value, None


def _default_key(pairs_dir: pathlib.Path) -> pathlib.Path:
  return pairs_dir.parent / f"{pairs_dir.name}.key.json"


def _policies(args: argparse.Namespace):
  """(base pipeline, policies of the workdir, the --compare policy or None)."""
  base = pipeline_lib.open_workdir(args.workdir)
  if args.checkpoint == "both":
    stages = ["sft", "ppo"] if "ppo" in tuple(base.config.stages) else ["sft"]
  else:
    stages = [args.checkpoint]
  other = None
  if args.compare:
    path, stage = _parse_compare(args.compare)
    other_p = pipeline_lib.open_workdir(path)
    if stage is None:
      stage = "ppo" if stage_done(other_p, "ppo") else "sft"
    this_label, other_label = pathlib.Path(args.workdir).resolve().name, pathlib.Path(path).resolve().name
    if this_label == other_label:
      this_label, other_label = "this", "other"
    other = Policy(f"{other_label}/{stage}", other_p, stage)
    ours = [Policy(f"{this_label}/{s}", base, s) for s in stages]
  else:
    ours = [Policy(s, base, s) for s in stages]
  for policy in ours + ([other] if other else []):
    require_stage(policy.pipeline, policy.stage)
  return base, ours, other


def _prompts(args, base, policies: Sequence[Policy]) -> tuple[list, dict[str, int]]:
  items = set_items(args.sets) if args.sets else list(base.task.eval_sets())
  if not items:
    raise EvalError("--sets: no prompt sets")
  data_dir = args.data_dir or base.config.task.data_dir or None
  public_dir = args.public_dir or base.config.task.public_manual_dir or None
  if public_dir is None and default_public_dir().is_dir():
    public_dir = str(default_public_dir())
  prompts: list = []
  skipped = {}
  for item in dict.fromkeys(items):
    rows = set_prompts(base, item, args.n, data_dir, public_dir)
    kept = rows
    for pol in policies:  # every policy must be able to read every prompt
      pc = pol.pipeline.config
      kept = generation.fitting_prompts(kept, pol.pipeline.tokenizer, pc.chat_template, pc.max_prompt_len,
                                        f"eval {tasks.source_name(item)}")
    skipped[tasks.source_name(item)] = len(rows) - len(kept)
    prompts.extend(kept)
  return prompts, skipped


def _per_answer(records: Sequence[dict], samples: int) -> Sequence[dict]:
  """Records keyed by answer for pairing: with K answers per prompt, sample j of one policy is paired with
  sample j of the other on the same prompt (the samples of a prompt are exchangeable)."""
  if samples == 1:
    return records
  return [dict(r, prompt_id=f"{r['prompt_id']}#{r['sample']}") for r in records]


def _comparisons(records: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], reward_key: str,
                 sets: Sequence[str], n_boot: int, seed: int, samples: int = 1) -> list[dict]:
  out = []
  for a, b in pairs:
    ra = _per_answer([r for r in records[a] if r["split"] in sets], samples)
    rb = _per_answer([r for r in records[b] if r["split"] in sets], samples)
    for metric in PAIRED + (reward_key,):
      out.append(stats.paired_comparison(ra, rb, metric, by="intent", names=(a, b), n_boot=n_boot,
                                         seed=seed))
  return out


def _consistency_report(records: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], sampling: Sampling,
                        report_md: pathlib.Path, out: pathlib.Path, n_boot: int, seed: int) -> dict[str, Any]:
  """Consistency of each policy's K answers per prompt by intent, and of compared policies paired on the
  same prompts: written to `consistency.json`, appended to `eval.md` and printed."""
  rows = {name: consistency.prompt_rows(recs, f"{name} records") for name, recs in records.items()}
  summaries = {name: consistency.summarize(r, by="intent", n_boot=n_boot, seed=seed) for name, r in rows.items()}
  comparisons = [comp for a, b in pairs
                 for comp in consistency.compare(rows[a], rows[b], names=(a, b), n_boot=n_boot, seed=seed)]
  result = {"samples": sampling.samples, "temperature": sampling.temperature, "seed": sampling.seed,
            "models": summaries, "comparisons": comparisons}
  (out / "consistency.json").write_text(
      json.dumps(report_lib.to_jsonable(result), indent=1, allow_nan=False) + "\n", encoding="utf-8")
  temperature = sampling.temperature if sampling.temperature is not None else 1.0
  pooled = (f"The report's other tables pool the {sampling.samples} answers of every prompt: n counts answers "
            "and their intervals treat the answers as independent (narrower than intervals over prompts); their "
            "paired differences match sample j of one policy with sample j of the other. Here the unit is the "
            "prompt.")
  section = consistency.format_markdown(summaries, comparisons, k=sampling.samples, temperature=temperature,
                                        note=pooled)
  with report_md.open("a", encoding="utf-8") as f:
    f.write("\n" + section)
  print("\n" + section, flush=True)
  return {"json": str(out / "consistency.json"),
          "overall": {name: {m: s["overall"][m]["value"] for m in consistency.METRICS}
                      for name, s in summaries.items()}}


def import_ratings(args, out: pathlib.Path) -> dict:
  files = [pathlib.Path(f.strip()) for f in args.import_ratings.split(",") if f.strip()]
  for f in files:
    if not f.is_file():
      raise EvalError(f"--import-ratings: {f} not found")
  key = pathlib.Path(args.key) if args.key else _default_key(files[0].parent)
  if not key.is_file():
    raise EvalError(f"un-blinding key {key} not found; pass --key (export_pairs wrote it beside the "
                    f"pairs folder as <folder>.key.json)")
  n_boot = args.bootstrap or 2000
  result = human.score_ratings(files, key, n_boot=n_boot, seed=0)
  out.mkdir(parents=True, exist_ok=True)
  (out / "human_eval.json").write_text(json.dumps(report_lib.to_jsonable(result), indent=1) + "\n", encoding="utf-8")
  text = human.format_win_rates(result)
  (out / "human_eval.md").write_text("# Human evaluation\n\n" + text, encoding="utf-8")
  print(text, flush=True)
  return result


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Generates, grades and reports (see module docstring); returns what `run.json` holds."""
  out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "eval_cli"
  result: dict[str, Any] = {"out": str(out)}
  if args.import_ratings and not args.export_pairs:
    result["human_eval"] = import_ratings(args, out)
    return result

  base, ours, other = _policies(args)
  policies = ours + ([other] if other else [])
  sampling = Sampling(args.samples, args.temperature, args.sample_seed)
  check_sampling(sampling, policies)
  k = sampling.samples
  grader = make_grader(args, base)
  prompts, skipped = _prompts(args, base, policies)
  sets = list(dict.fromkeys(x.source for x in prompts))
  c = base.config
  n_boot = args.bootstrap or c.eval.bootstrap
  reward_key = "proxy_reward" if grader.name == "rm" else "gold_reward"

  records: dict[str, list[dict]] = {}
  ungraded: dict[str, int] = {}
  (out / "completions").mkdir(parents=True, exist_ok=True)
  for policy in policies:
    texts = generate(policy, prompts, sampling)
    all_records = grade(grader, base, prompts, texts, policy.name, k)
    with (out / "completions" / f"{policy.name.replace('/', '_')}.jsonl").open("w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in all_records)
    records[policy.name] = graded_only(all_records)
    ungraded[policy.name] = len(all_records) - len(records[policy.name])
    if ungraded[policy.name]:
      print(f"[eval] {policy.name}: {ungraded[policy.name]} of {len(all_records)} answers could not be graded by "
            f"{graders_lib.full_name(grader)} and are left out of every rate", flush=True)

  pairs = []
  if len(ours) == 2:
    pairs.append((ours[0].name, ours[1].name))
  if other is not None:
    pairs.extend((pol.name, other.name) for pol in ours)

  def summaries_for(selected: Sequence[str]) -> dict[str, dict]:
    return {name: stats.summarize([r for r in recs if r["split"] in selected], by="intent", n_boot=n_boot,
                                  seed=c.seed, source=f"{name} records") for name, recs in records.items()}

  summaries = summaries_for(sets)
  comparisons = _comparisons(records, pairs, reward_key, sets, n_boot, c.seed, k)
  title = f"Evaluation of {args.workdir} ({', '.join(sets)}; grader: {graders_lib.full_name(grader)}"
  if k > 1:
    title += f"; {k} samples per prompt pooled"
  title += ")"
  paths = report_lib.write_report(summaries, out, comparisons=comparisons, title=title)
  if k > 1:
    result["consistency"] = _consistency_report(records, pairs, sampling, paths["md"], out, n_boot, c.seed)
  print(f"\n{title}\n" + report_lib.format_table(summaries), flush=True)
  for comp in comparisons:
    g = comp["overall"]
    if g["n"]:
      print(f"[eval] {comp['metric']}: {comp['models'][0]} - {comp['models'][1]} = "
            f"{report_lib.format_estimate(g['diff'])} (p={g['p_value']:.3g}, {g['n']} pairs)", flush=True)
  by_set = {}
  for name in sets:
    set_summaries = summaries_for([name])
    report_lib.write_report(set_summaries, out / "by_set" / name,
                            comparisons=_comparisons(records, pairs, reward_key, [name], n_boot, c.seed, k),
                            plots=False, title=f"Evaluation on {name} (grader: {graders_lib.full_name(grader)})")
    by_set[name] = {m: {"n": s["n"], "safety_rate": s["overall"]["safety_rate"]["value"]}
                    for m, s in set_summaries.items()}
    if len(sets) > 1:
      print(f"\n[{name}]\n" + report_lib.format_table(set_summaries), flush=True)

  result.update(
      workdir=str(args.workdir), grader=graders_lib.full_name(grader), sets=sets,
      models={pol.name: {"workdir": str(pol.pipeline.workdir), "stage": pol.stage} for pol in policies},
      n_prompts={s: sum(x.source == s for x in prompts) for s in sets}, skipped_prompts=skipped,
      ungraded=ungraded, pairs=pairs, report={key: str(v) for key, v in paths.items() if key != "plots"},
      plots=[str(x) for x in paths["plots"]], by_set=by_set,
      sampling={"samples": k, "temperature": sampling.temperature, "seed": sampling.seed,
                "greedy": {pol.name: sampling.decoding(pol.pipeline.config)[0] for pol in policies}})

  if args.export_pairs:
    if not pairs:
      raise EvalError("--export-pairs needs two policies: --checkpoint both, or --compare OTHER")
    a, b = pairs[-1]
    pairs_dir = pathlib.Path(args.export_pairs)
    key = pathlib.Path(args.key) if args.key else _default_key(pairs_dir)
    # Raters see one pair per prompt: the first sample of each policy.
    first_a, first_b = ([r for r in records[m] if r["sample"] == 0] for m in (a, b))
    written = human.export_pairs(first_a, first_b, pairs_dir, key, model_a=a, model_b=b, seed=c.seed,
                                 prompt_key="prompt", response_key="completion")
    print(f"[eval] {len(first_a)} blinded pairs ({a} vs {b}{', sample 0 of each prompt' if k > 1 else ''}) for "
          f"raters in {pairs_dir} (fill in {written['template'].name}); un-blinding key: {key}", flush=True)
    result["export"] = {key: str(v) for key, v in written.items()}
  if args.import_ratings:
    result["human_eval"] = import_ratings(args, out)
  (out / "run.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
  print(f"[eval] report: {paths['md']} (JSON {paths['json']}, {len(paths['plots'])} plots)", flush=True)
  return result


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  # Library INFO chatter (orbax, jax) drowns the progress bars.
  logging.getLogger().setLevel(logging.WARNING)
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    run(args)
  except SafecompError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
