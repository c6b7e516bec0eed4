"""`python -m safecomp.eval`: evaluates the checkpoints of a training workdir, with intervals.

    python -m safecomp.eval --workdir DIR [--checkpoint sft|ppo|both] [--compare OTHER[:sft|ppo]]
        [--sets test,heldout,multiturn,xstest] [--grader oracle|rm|mode] [--n N] [--out OUT]
        [--export-pairs PATH] [--import-ratings FILE[,FILE]] [--key PATH]

The workdir's saved `config.json` rebuilds the run (world, tokenizer, model shapes); the chosen
checkpoints answer the chosen prompt sets and a grader scores every answer. Reported per prompt
intent (benign / dual-use / malicious), each with a standard error and a 95% interval: safety rate,
helpfulness given safe (0-1 and the rubric's 1-4 scale), severity of unsafe outputs, response modes,
refusal and over-refusal (refusals of benign prompts). Two checkpoints (SFT vs PPO, or this workdir
vs `--compare`) are compared on the same prompts: difference of means with a paired-bootstrap
interval and a sign-flip permutation p-value.

Prompt sets:
  test, heldout, multiturn   the testbed's splits (the same prompts as the `eval` stage answered).
  xstest, simplesafetytests  public prompt sets, read from the shared data folder (`--data-dir`,
                             default $SAFECOMP_SHARED_DATA or `../shared/data` beside the repository).
                             Their words are mostly outside a testbed model's vocabulary (they map
                             to <unk>); the harness still runs, and modes come from the real-text
                             classifier.

Graders:
  oracle  the testbed's gold oracle: harm severity of what the output discloses, helpfulness (0-1 and
          1-4), response mode. Prompts outside the testbed are accepted (the oracle flags them); the
          mode of answers to public prompts comes from the mode classifier.
  rm      the workdir's trained reward model (its `rm` stage): severity (argmax of the severity
          head) and helpfulness; modes from the mode classifier. Reported as `proxy_reward` = h x s.
  mode    the response-mode classifier (`safecomp.rewards.mode_classifier`) for modes, refusal and
          over-refusal; it reads no harm, so severity and helpfulness still come from the oracle.

Outputs in `--out` (default `DIR/eval_cli`): `eval.json`, `eval.md` and PNG plots pooled over the
testbed sets (over the public sets when only those are chosen), one report per set in
`by_set/<set>/`, graded completions in `completions/<model>.jsonl`, and `run.json` (what ran).

Human evaluation: `--export-pairs PATH` writes blinded side-by-side pairs of the two compared
checkpoints to the folder PATH (hand it to raters as is) and the un-blinding key to `--key` (default
`PATH.key.json`, outside the folder); `--import-ratings FILE` reads raters' files back and reports
the win rate with its interval (overall and per intent) into `human_eval.{json,md}`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np

from safecomp.config import config_from_json
from safecomp.errors import ConfigError, SafecompError

TESTBED_SETS = ("test", "heldout", "multiturn")
GRADERS = ("oracle", "rm", "mode")
CHECKPOINTS = ("sft", "ppo", "both")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Paired metrics for every comparison; the reward metric is added by grader.
PAIRED = ("safe", "helpfulness_given_safe", "helpfulness_1to4_given_safe", "over_refusal")


@dataclasses.dataclass(frozen=True)
class PublicSet:
  """A public prompt set: its CSV in the shared data folder and its row reader in safecomp.data."""
  folder: str
  filename: str
  columns: tuple[str, ...]
  row_fn: str  # name in safecomp.data.public, returning (uid, {"prompt", "intent", ...})


PUBLIC_SETS = {
    "xstest": PublicSet("xstest", "xstest_prompts.csv",
                        ("id", "prompt", "type", "label", "focus", "note"), "xstest_prompt_row"),
    "simplesafetytests": PublicSet("simplesafetytests", "simplesafetytests.csv",
                                   ("id", "harm_area", "category", "prompts_final"),
                                   "simplesafetytests_row"),
}
SETS = TESTBED_SETS + tuple(PUBLIC_SETS)


class EvalError(SafecompError):
  """A problem with the command line or the workdir that the user can fix."""


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt to answer: id, the set it came from, its intent label and the chat messages."""
  uid: str
  set: str
  intent: str
  messages: tuple
  category: str | None = None
  public: bool = False


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
    from safecomp.training.pipeline import STAGES  # pylint: disable=import-outside-toplevel
    wanted = set(config.stages) | {stage, "sft"} | ({"rm"} if stage == "ppo" and
                                                      config.reward.grader == "rm" else set())
    cmd += f" --config.stages=\"{tuple(s for s in STAGES if s in wanted)}\""
  return cmd


def open_workdir(workdir: str | pathlib.Path):
  """The `Pipeline` of a trained workdir, from the `config.json` its run saved."""
  from safecomp.training import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise EvalError(f"workdir {workdir} does not exist; train it first: {train_command(None, workdir)}")
  path = workdir / "config.json"
  if not path.is_file():
    raise EvalError(f"{path} not found: {workdir} is not a safecomp workdir; train it first: "
                    f"{train_command(None, workdir)}")
  config = config_from_json(path)
  try:
    pipeline_lib.validate(config)
  except (KeyError, AttributeError) as e:
    raise ConfigError(f"{path}: missing config key {e} (saved by an older version?)") from None
  return pipeline_lib.Pipeline(config, workdir)


def stage_done(p, stage: str) -> bool:
  """Whether `stage` of the workdir has a complete checkpoint (creates nothing when it has none)."""
  from safecomp.training.checkpoints import DONE_FILE  # pylint: disable=import-outside-toplevel
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
def default_data_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("SAFECOMP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def public_prompts(name: str, data_dir: str | pathlib.Path, n: int | None, seed: int) -> list[Prompt]:
  """Prompts of a public set (all, or a seeded sample of `n`), with their intent labels."""
  from safecomp.data import public as public_lib  # pylint: disable=import-outside-toplevel
  from safecomp.data import readers  # pylint: disable=import-outside-toplevel
  spec = PUBLIC_SETS[name]
  path = pathlib.Path(data_dir) / spec.folder / spec.filename
  if not path.is_file():
    raise EvalError(f"--sets {name}: {path} not found; pass --data-dir (the shared public data "
                    f"folder) or set $SAFECOMP_SHARED_DATA")
  rows = readers.read_csv(path, getattr(public_lib, spec.row_fn), required_columns=spec.columns).rows
  if n is not None and n < len(rows):
    keep = np.sort(np.random.default_rng([seed, len(name)]).choice(len(rows), size=n, replace=False))
    rows = [rows[i] for i in keep]
  return [Prompt(uid=str(uid), set=name, intent=row["intent"],
                 messages=({"role": "user", "content": row["prompt"]},),
                 category=row.get("type") or row.get("harm_area"), public=True) for uid, row in rows]


def testbed_prompts(p, split: str, n: int | None) -> list[Prompt]:
  """The testbed prompts of `split` that the eval stage answers (same seeds)."""
  c = p.config
  splits = tuple(c.eval.splits)
  offset = 20 + (splits.index(split) if split in splits else TESTBED_SETS.index(split))
  examples = p.examples(split, c.eval.n_per_split if n is None else n, seed_offset=offset)
  return [Prompt(uid=e.uid, set=split, intent=e.intent, messages=tuple(e.messages), category=e.category)
            for e in examples]


def fits(p, prompt: Prompt) -> bool:
  from safecomp.tokenizers import encode_prompt  # pylint: disable=import-outside-toplevel
  ids = encode_prompt(p.tokenizer, list(prompt.messages), p.config.chat_template)
  return len(ids) <= p.config.max_prompt_len


# -- policies, generation, grading ---------------------------------------------------------------------
def policy_params(p, stage: str):
  """(model, params) of the language model of a completed SFT or PPO stage."""
  model, init = p.init_model(("lm",), seed_offset=1)
  if stage == "sft":
    return model, p.trained_params("sft", init, "sft")
  from safecomp.training import ppo as ppo_lib  # pylint: disable=import-outside-toplevel
  return model, ppo_lib.final_policy_params(p)


def generate(policy: Policy, prompts: Sequence[Prompt]) -> list[str]:
  """Each policy answers with its own tokenizer and sampling settings (its config's `eval`)."""
  # pylint: disable=import-outside-toplevel
  from safecomp.training import evaluate
  from safecomp.training import rollout as rollout_lib
  p = policy.pipeline
  c, tok = p.config, p.tokenizer
  model, params = policy_params(p, policy.stage)
  cfg = rollout_lib.RolloutConfig(max_new_tokens=c.eval.max_new_tokens, eos_id=tok.eos_id,
                                  pad_id=tok.pad_id, greedy=c.eval.greedy, temperature=1.0)
  batch_size = min(c.eval.batch_size, len(prompts))
  return evaluate.generate_texts(model, params, tok, [list(x.messages) for x in prompts], c.chat_template,
                                 c.max_prompt_len, cfg, batch_size, c.seed, f"generate {policy.name}")


class RewardModelScorer:
  """Severity and helpfulness from the reward-model heads of a workdir's `rm` stage."""

  def __init__(self, p):
    # pylint: disable=import-outside-toplevel
    from safecomp.training import rm as rm_lib
    require_stage(p, "rm")
    self.p, self.rm_lib = p, rm_lib
    self.model, self.params = p.trained_reward_model()

  def __call__(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    from safecomp.training import batching  # pylint: disable=import-outside-toplevel
    c = self.p.config
    conversations = [list(x.messages) + [{"role": "assistant", "content": t}] for x, t in zip(prompts, texts)]
    arrays = batching.conversations_to_arrays(self.p.tokenizer, conversations, c.chat_template, c.max_seq_len,
                                              "graded completions")
    pred = self.rm_lib.rm_predict(self.model, self.params, arrays, c.eval.batch_size, c.rm.helpfulness_loss)
    return pred["severity_probs"].argmax(-1), pred["helpfulness"]


def _score4(h: float) -> int:
  """Helpfulness in [0, 1] on the rubric's 1-4 scale (as the oracle's `helpfulness_score`)."""
  return 1 + int(round(3 * min(1.0, max(0.0, float(h)))))


def grade(grader: str, base, prompts: Sequence[Prompt], texts: Sequence[str], model_name: str,
          rm_scorer: RewardModelScorer | None = None) -> list[dict[str, Any]]:
  """Graded records in the layout `safecomp.eval.stats` reads (plus prompt, completion, set)."""
  # pylint: disable=import-outside-toplevel
  from safecomp import testbed
  from safecomp.rewards import mode_classifier
  from safecomp.training.metrics import progress
  to_safety = tuple(base.config.reward.severity_to_safety)
  rm_grades = rm_scorer(prompts, texts) if grader == "rm" else None
  records = []
  bar = progress(len(prompts), f"grade {model_name} ({grader})")
  for i, (prompt, text) in enumerate(zip(prompts, texts)):
    classifier_mode = None
    if grader != "oracle" or prompt.public:
      classifier_mode = mode_classifier.classify_mode(
          mode_classifier.last_user_message(list(prompt.messages)), text).mode
    record = {"prompt_id": prompt.uid, "set": prompt.set, "split": prompt.set, "intent": prompt.intent,
              "category": prompt.category, "model": model_name, "grader": grader}
    if grader == "rm":
      severity, helpfulness = int(rm_grades[0][i]), float(rm_grades[1][i])
      record.update(mode=classifier_mode, proxy_reward=helpfulness * to_safety[severity])
    else:
      g = testbed.grade(list(prompt.messages), text, world=base.world)
      severity, helpfulness = int(g.severity), float(g.helpfulness)
      record.update(mode=classifier_mode or g.mode, oracle_mode=g.mode, flags=list(g.flags),
                    gold_reward=helpfulness * to_safety[severity])
    record.update(unsafe=severity >= 1, severity=severity, helpfulness=helpfulness,
                  helpfulness_1to4=_score4(helpfulness), prompt=list(prompt.messages), completion=text)
    records.append(record)
    bar.update(1)
  bar.close()
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
                      help=f"comma-separated prompt sets from {', '.join(SETS)} "
                           "(default: the workdir's eval.splits)")
  parser.add_argument("--grader", choices=GRADERS, default="oracle",
                      help="who scores the answers (default oracle; see above)")
  parser.add_argument("--n", type=int, default=None,
                      help="prompts per set (default: the config's eval.n_per_split; all of a public set)")
  parser.add_argument("--out", help="output folder (default DIR/eval_cli)")
  parser.add_argument("--data-dir", default=None, help="the shared public data folder (for xstest, ...)")
  parser.add_argument("--bootstrap", type=int, default=None,
                      help="bootstrap resamples (default: the config's eval.bootstrap)")
  parser.add_argument("--export-pairs", metavar="PATH",
                      help="write blinded pairs of the two compared policies for human raters to PATH")
  parser.add_argument("--import-ratings", metavar="FILE[,FILE]",
                      help="raters' CSV/JSONL files: report win rates with intervals")
  parser.add_argument("--key", help="the un-blinding key file (default PATH.key.json beside --export-pairs)")
  args = parser.parse_args(argv)
  if args.n is not None and args.n < 1:
    parser.error("--n must be >= 1")
  if args.bootstrap is not None and args.bootstrap < 1:
    parser.error("--bootstrap must be >= 1")
  if args.sets is not None:
    unknown = [s for s in args.sets.split(",") if s.strip() not in SETS]
    if unknown:
      parser.error(f"--sets: unknown set(s) {unknown}; choose from {', '.join(SETS)}")
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
  base = open_workdir(args.workdir)
  if args.checkpoint == "both":
    stages = ["sft", "ppo"] if "ppo" in tuple(base.config.stages) else ["sft"]
  else:
    stages = [args.checkpoint]
  other = None
  if args.compare:
    path, stage = _parse_compare(args.compare)
    other_p = open_workdir(path)
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


def _prompts(args, base, policies: Sequence[Policy]) -> tuple[list[Prompt], dict[str, int]]:
  sets = [s.strip() for s in (args.sets or ",".join(base.config.eval.splits)).split(",") if s.strip()]
  unknown = [s for s in sets if s not in SETS]
  if unknown or not sets:
    raise EvalError(f"--sets: unknown set(s) {unknown}; choose from {', '.join(SETS)}")
  prompts: list[Prompt] = []
  skipped = {}
  data_dir = args.data_dir or default_data_dir()
  for name in dict.fromkeys(sets):
    rows = (testbed_prompts(base, name, args.n) if name in TESTBED_SETS
            else public_prompts(name, data_dir, args.n, base.config.seed))
    kept = [x for x in rows if all(fits(pol.pipeline, x) for pol in policies)]
    skipped[name] = len(rows) - len(kept)
    if skipped[name]:
      print(f"[eval] {name}: {skipped[name]} of {len(rows)} prompts are longer than max_prompt_len "
            f"and were left out", flush=True)
    prompts.extend(kept)
  if not prompts:
    raise EvalError(f"no prompts to answer in sets {sets}")
  return prompts, skipped


def _comparisons(records: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], grader: str,
                 sets: Sequence[str], n_boot: int, seed: int) -> list[dict]:
  from safecomp.eval import stats  # pylint: disable=import-outside-toplevel
  metrics = PAIRED + (("proxy_reward",) if grader == "rm" else ("gold_reward",))
  out = []
  for a, b in pairs:
    ra = [r for r in records[a] if r["set"] in sets]
    rb = [r for r in records[b] if r["set"] in sets]
    for metric in metrics:
      out.append(stats.paired_comparison(ra, rb, metric, by="intent", names=(a, b), n_boot=n_boot,
                                         seed=seed))
  return out


def import_ratings(args, out: pathlib.Path) -> dict:
  from safecomp.eval import human  # pylint: disable=import-outside-toplevel
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
  from safecomp.eval.report import to_jsonable  # pylint: disable=import-outside-toplevel
  (out / "human_eval.json").write_text(json.dumps(to_jsonable(result), indent=1) + "\n", encoding="utf-8")
  text = human.format_win_rates(result)
  (out / "human_eval.md").write_text("# Human evaluation\n\n" + text, encoding="utf-8")
  print(text, flush=True)
  return result


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Generates, grades and reports (see module docstring); returns what `run.json` holds."""
  # pylint: disable=import-outside-toplevel
  from safecomp.eval import human
  from safecomp.eval import report as report_lib
  from safecomp.eval import stats
  out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "eval_cli"
  result: dict[str, Any] = {"out": str(out)}
  if args.import_ratings and not args.export_pairs:
    result["human_eval"] = import_ratings(args, out)
    return result

  base, ours, other = _policies(args)
  policies = ours + ([other] if other else [])
  prompts, skipped = _prompts(args, base, policies)
  sets = list(dict.fromkeys(x.set for x in prompts))
  pooled = [s for s in sets if s in TESTBED_SETS] or sets
  c = base.config
  n_boot = args.bootstrap or c.eval.bootstrap
  rm_scorer = RewardModelScorer(base) if args.grader == "rm" else None

  records: dict[str, list[dict]] = {}
  (out / "completions").mkdir(parents=True, exist_ok=True)
  for policy in policies:
    texts = generate(policy, prompts)
    records[policy.name] = grade(args.grader, base, prompts, texts, policy.name, rm_scorer)
    with (out / "completions" / f"{policy.name.replace('/', '_')}.jsonl").open("w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records[policy.name])

  pairs = []
  if len(ours) == 2:
    pairs.append((ours[0].name, ours[1].name))
  if other is not None:
    pairs.extend((pol.name, other.name) for pol in ours)

  def summaries_for(selected: Sequence[str]) -> dict[str, dict]:
    return {name: stats.summarize([r for r in recs if r["set"] in selected], by="intent", n_boot=n_boot,
                                  seed=c.seed, source=f"{name} records") for name, recs in records.items()}

  summaries = summaries_for(pooled)
  comparisons = _comparisons(records, pairs, args.grader, pooled, n_boot, c.seed)
  title = f"Evaluation of {args.workdir} ({', '.join(pooled)}; grader: {args.grader})"
  paths = report_lib.write_report(summaries, out, comparisons=comparisons, title=title)
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
                            comparisons=_comparisons(records, pairs, args.grader, [name], n_boot, c.seed),
                            plots=False, title=f"Evaluation on {name} (grader: {args.grader})")
    by_set[name] = {m: {"n": s["n"], "safety_rate": s["overall"]["safety_rate"]["value"]}
                    for m, s in set_summaries.items()}
    if len(sets) > 1:
      print(f"\n[{name}]\n" + report_lib.format_table(set_summaries), flush=True)

  result.update(
      workdir=str(args.workdir), grader=args.grader, sets=sets, pooled_sets=pooled,
      models={pol.name: {"workdir": str(pol.pipeline.workdir), "stage": pol.stage} for pol in policies},
      n_prompts={s: sum(x.set == s for x in prompts) for s in sets}, skipped_prompts=skipped,
      pairs=pairs, report={k: str(v) for k, v in paths.items() if k != "plots"},
      plots=[str(x) for x in paths["plots"]], by_set=by_set)

  if args.export_pairs:
    if not pairs:
      raise EvalError("--export-pairs needs two policies: --checkpoint both, or --compare OTHER")
    a, b = pairs[-1]
    pairs_dir = pathlib.Path(args.export_pairs)
    key = pathlib.Path(args.key) if args.key else _default_key(pairs_dir)
    written = human.export_pairs(records[a], records[b], pairs_dir, key, model_a=a, model_b=b, seed=c.seed,
                                 prompt_key="prompt", response_key="completion")
    print(f"[eval] {len(records[a])} blinded pairs ({a} vs {b}) for raters in {pairs_dir} "
          f"(fill in {written['template'].name}); un-blinding key: {key}", flush=True)
    result["export"] = {k: str(v) for k, v in written.items()}
  if args.import_ratings:
    result["human_eval"] = import_ratings(args, out)
  (out / "run.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
  print(f"[eval] report: {paths['md']} (JSON {paths['json']}, {len(paths['plots'])} plots)", flush=True)
  return result


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  # Library INFO chatter (orbax, jax) drowns the progress bars.
  import logging  # pylint: disable=import-outside-toplevel
  logging.getLogger().setLevel(logging.WARNING)
  try:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:  # pragma: no cover
    pass
  try:
    run(args)
  except SafecompError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
