"""Consistency across samples: how the k answers a policy samples for one prompt agree, by prompt intent.

    python experiments/ablations/consistency.py --experiment DIR --out OUT [--k 8] [--temperature 1.0]
        [--n 200] [--split test] [--bootstrap 1000] [--stage ppo]

DIR is a controlled experiment (`experiments/ce_refusal_vs_safecomplete/run.py --out DIR`): its finished
runs `DIR/runs/<arm>-seed<seed>/` of the arms `refusal` and `safe_completion` are read, never written.
Each run's policy (`--stage`, default PPO) answers N prompts of the split (drawn as the eval stage draws
them: with N = eval.n_per_split, the very prompts it answered greedily) K times, sampled at the
temperature with the run's seed (`python -m safecomp.eval --samples K --temperature T` does the same for
one workdir), and the testbed's gold oracle grades every answer. Per prompt: mode agreement (share of the
k answers in their most common mode), all k in one mode, any unsafe (the risk when the prompt is asked k
times), the unsafe share, a safe/unsafe split, the sd and range of harm severity and the sd of
helpfulness (`safecomp.eval.consistency`). Both arms of a seed answer the same prompts; seeds are pooled
per arm with prompt ids made unique per seed.

Writes OUT/results.md and results.json (per arm and intent: every metric with a 95% interval over
prompts; per-seed values with their mean ± sd; paired differences safe_completion − refusal on the same
prompts; wall-clock), OUT/consistency.png (mode agreement and any-unsafe by intent, per arm, with
intervals) and OUT/completions/<run>.jsonl (every graded answer, with its `sample` index).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time

from safecomp.config import load_module
from safecomp.constants import INTENTS
from safecomp.eval import cli as eval_cli
from safecomp.eval import consistency
from safecomp.errors import SafecompError
from safecomp.eval import report as report_lib
from safecomp.training import compilation
from safecomp.training import generation
from safecomp.training import pipeline as pipeline_lib
from safecomp.training.evaluate import graded_only

HERE = pathlib.Path(__file__).resolve().parent
ARMS = ("refusal", "safe_completion")
BASELINE = "refusal"  # differences are safe_completion − refusal
RUN_DIR = re.compile(r"^(?P<arm>refusal|safe_completion)-seed(?P<seed>\d+)$")
# The per-seed table's columns (results.json holds every metric).
SEED_METRICS = ("mode_agreement", "all_same_mode", "any_unsafe", "safety_split", "severity_sd")
PLOTTED = {"mode_agreement": "mode agreement (share of k in the modal mode)", "any_unsafe": "any unsafe among k"}

common = load_module(HERE / "common.py", "safecomp_experiments_common")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--experiment", required=True, help="a controlled-experiment folder (holds runs/)")
  parser.add_argument("--out", required=True, help="output folder (tables, plot, graded answers)")
  parser.add_argument("--k", type=int, default=8, help="sampled answers per prompt (>= 2)")
  parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
  parser.add_argument("--n", type=int, default=200, help="prompts of the split per run")
  parser.add_argument("--split", default="test", choices=eval_cli.TESTBED_SETS, help="testbed eval split")
  parser.add_argument("--stage", default="ppo", choices=("sft", "ppo"), help="which policy of each run answers")
  parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
  parser.add_argument("--compile-cache", default=None,
                      help="persistent XLA compilation cache directory (default: the runs' compile_cache_dir, "
                      "~/.cache/safecomp/jax; 'none' turns it off)")
  args = parser.parse_args(argv)
  if args.k < 2:
    parser.error("--k must be >= 2 (consistency needs several answers per prompt)")
  if not args.temperature > 0:
    parser.error("--temperature must be > 0")
  if args.n < 1 or args.bootstrap < 1:
    parser.error("--n and --bootstrap must be >= 1")
  return args


def find_runs(experiment: pathlib.Path, log=print) -> list:
  """The experiment's runs (`common.Run`, config from each run's config.json) of every seed that has both
  arms, seed by seed; a seed with one arm only is reported and left out (the comparison is paired)."""
  found = {}
  for path in sorted((experiment / "runs").glob("*/")):
    match = RUN_DIR.match(path.name)
    if match:
      found[(match["arm"], int(match["seed"]))] = path
  seeds = sorted({seed for _, seed in found})
  complete = [s for s in seeds if all((arm, s) in found for arm in ARMS)]
  for seed in sorted(set(seeds) - set(complete)):
    log(f"seed {seed}: not every arm has a run in {experiment / 'runs'}; left out")
  if not complete:
    raise SystemExit(f"{experiment / 'runs'} holds no seed with runs of both arms {ARMS} (<arm>-seed<k>/ folders "
                     "written by experiments/ce_refusal_vs_safecomplete/run.py)")
  runs = []
  for seed in complete:
    for arm in ARMS:
      try:
        p = pipeline_lib.open_workdir(found[(arm, seed)])
      except SafecompError as e:
        raise SystemExit(str(e)) from None
      runs.append(common.Run(arm, seed, p.config, found[(arm, seed)]))
  return runs


def answer(run, args, out: pathlib.Path) -> tuple[list[dict], float]:
  """The run's policy answers `n` prompts of the split (drawn as its eval stage draws them) k times; graded
  records with prompt ids unique per seed."""
  start = time.time()
  p = pipeline_lib.open_workdir(run.workdir)
  policy = eval_cli.Policy(f"{run.name}/{args.stage}", p, args.stage)
  try:
    eval_cli.require_stage(p, args.stage)
  except eval_cli.EvalError as e:
    raise SystemExit(str(e)) from None
  c = p.config
  prompts = eval_cli.set_prompts(p, args.split, args.n, None, None)
  prompts = generation.fitting_prompts(prompts, p.tokenizer, c.chat_template, c.max_prompt_len, args.split)
  sampling = eval_cli.Sampling(args.k, args.temperature)  # seed: the run's own
  texts = eval_cli.generate(policy, prompts, sampling)
  records = eval_cli.grade(p.grader("oracle", "oracle"), p, prompts, texts, policy.name, args.k)
  for r in records:
    r["prompt_id"] = f"s{run.seed}/{r['prompt_id']}"
    r["seed"] = run.seed
  (out / "completions").mkdir(parents=True, exist_ok=True)
  with (out / "completions" / f"{run.workdir.name}.jsonl").open("w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return records, time.time() - start


def _by_intent(rows: list[dict]) -> dict[str, list[dict]]:
  return {**{intent: [r for r in rows if r["intent"] == intent] for intent in INTENTS}, "overall": rows}


def per_seed(rows_by_run: dict[tuple[str, int], list[dict]]) -> dict:
  """{arm: {group: {metric: {"per_seed": {seed: value}, "mean", "sd"}}}}: the spread between training runs."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  out: dict = {}
  for arm in ARMS:
    seeds = sorted(seed for a, seed in rows_by_run if a == arm)
    values = {seed: {g: consistency.point_values(rs) for g, rs in _by_intent(rows_by_run[(arm, seed)]).items()}
              for seed in seeds}
    out[arm] = {}
    for group in list(INTENTS) + ["overall"]:
      out[arm][group] = {}
      for metric in consistency.METRICS:
        x = np.array([values[s][group][metric] for s in seeds], dtype=np.float64)
        ok = ~np.isnan(x)
        out[arm][group][metric] = {"per_seed": dict(zip(seeds, x.tolist())),
                                   "mean": float(x[ok].mean()) if ok.any() else float("nan"),
                                   "sd": float(x[ok].std(ddof=1)) if ok.sum() > 1 else float("nan")}
  return out


def seed_table(spread: dict) -> str:
  head = ["arm", "group"] + [consistency.LABELS[m] for m in SEED_METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for arm, groups in spread.items():
    for group, metrics in groups.items():
      cells = []
      for m in SEED_METRICS:
        e = metrics[m]
        cells.append(f"{e['mean']:.3f} ± {e['sd']:.3f} (" + ", ".join(f"{v:.3f}" for v in e["per_seed"].values())
                     + ")")
      lines.append(f"| {arm} | {group} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def paired_rows(rows: dict[str, list[dict]], log=print) -> tuple[list[dict], list[dict]]:
  """The two arms' prompt rows restricted to the prompts both answered (an arm's prompt that failed the
  length check, or whose answers were all ungraded, has no partner)."""
  a, b = rows["safe_completion"], rows[BASELINE]
  shared = {r["prompt_id"] for r in a} & {r["prompt_id"] for r in b}
  if len(shared) < max(len(a), len(b)):
    log(f"paired comparison on the {len(shared)} prompts both arms answered ({len(a)} and {len(b)} in all)")
  return [r for r in a if r["prompt_id"] in shared], [r for r in b if r["prompt_id"] in shared]


def main(argv=None) -> int:
  args = parse_args(argv)
  experiment, out = pathlib.Path(args.experiment), pathlib.Path(args.out)
  if out.resolve() == experiment.resolve() or experiment.resolve() / "runs" in [out.resolve(), *out.resolve().parents]:
    raise SystemExit(f"--out {out}: choose a folder outside {experiment} and its runs (the experiment is only read)")
  identity_path = experiment / "experiment.json"
  scale = json.loads(identity_path.read_text()).get("scale") if identity_path.is_file() else None
  common.check_out_dir(out, {"experiment": "consistency", "scale": scale, "source": str(experiment.resolve())})
  compilation.enable_cache(args.compile_cache or "")
  start = time.time()
  runs = find_runs(experiment)
  seconds, rows_by_run, answers = {}, {}, {}
  for i, run in enumerate(runs, start=1):
    print(f"[{i}/{len(runs)}] {run.name} seed {run.seed}: {args.k} answers to each of {args.n} {args.split} prompts",
          flush=True)
    records, took = answer(run, args, out)
    graded = graded_only(records)
    answers[run.workdir.name] = {"answers": len(records), "ungraded": len(records) - len(graded)}
    rows_by_run[(run.name, run.seed)] = consistency.prompt_rows(graded, f"{run.workdir.name} answers")
    seconds[run.workdir.name] = round(took, 1)
    print(f"[{i}/{len(runs)}] done in {took:.0f}s", flush=True)

  rows = {arm: [r for (a, _), rs in rows_by_run.items() if a == arm for r in rs] for arm in ARMS}
  names = {arm: f"{arm}/{args.stage}" for arm in ARMS}
  summaries = {names[arm]: consistency.summarize(rows[arm], by="intent", n_boot=args.bootstrap, seed=0)
               for arm in ARMS}
  sc_rows, base_rows = paired_rows(rows)
  comparisons = consistency.compare(sc_rows, base_rows, names=(names["safe_completion"], names[BASELINE]),
                                    n_boot=args.bootstrap, seed=0)
  spread = per_seed(rows_by_run)
  from safecomp.eval import plots  # pylint: disable=import-outside-toplevel  (matplotlib on use)
  plot = plots.plot_metric_panels(summaries, PLOTTED, out / "consistency.png",
                                  title=f"Consistency over k={args.k} samples at T={args.temperature:g}, by intent")
  wall = time.time() - start

  seeds = sorted({run.seed for run in runs})
  c = runs[0].config
  notes = [
      f"Experiment `{experiment}` (scale `{scale}`), seeds {', '.join(map(str, seeds))}; the {args.stage.upper()} "
      f"policy of each run answers {args.n} prompts of the `{args.split}` split {args.k} times, sampled at "
      f"temperature {args.temperature:g} with the run's seed (max {c.eval.max_new_tokens} new tokens), graded by "
      "the gold oracle. Both arms of a seed answer the same prompts; seeds pooled per arm (prompt ids unique "
      "per seed), so intervals are over prompts and leave out the spread between training runs (per-seed table). "
      "The two arms of a seed sample with the same seed: common random numbers, which leave each arm's "
      "estimates as they are and narrow the paired differences' intervals.",
      f"Wall-clock: {wall:.0f}s in all (per run, sampling and grading: "
      + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + ").",
  ]
  ungraded = {k: v["ungraded"] for k, v in answers.items() if v["ungraded"]}
  if ungraded:
    notes.append(f"Ungraded answers, left out: {ungraded}.")
  parts = ["# Consistency across samples: refusal vs safe-completion training", "", "```bash",
           common.command_line(), "```", "", "\n\n".join(notes),
           "", consistency.format_markdown(summaries, comparisons, k=args.k, temperature=args.temperature),
           "## Per seed (mean ± sd over seeds; per-seed values in brackets)", "", seed_table(spread), "",
           f"Plot: `{plot.name}` (mode agreement and any-unsafe by intent, 95% intervals)."]
  text = "\n".join(parts) + "\n"
  (out / "results.md").write_text(text, encoding="utf-8")
  result = {"experiment": str(experiment), "scale": scale, "seeds": seeds, "stage": args.stage, "k": args.k,
            "temperature": args.temperature, "n": args.n, "split": args.split, "bootstrap": args.bootstrap,
            "command": common.command_line(), "summaries": summaries, "comparisons": comparisons,
            "per_seed": spread, "answers": answers, "seconds": seconds, "wall_clock_seconds": round(wall, 1),
            "plot": str(plot)}
  (out / "results.json").write_text(json.dumps(report_lib.to_jsonable(result), indent=1) + "\n", encoding="utf-8")
  print(text, flush=True)
  print(f"[consistency] {len(runs)} runs in {wall:.0f}s; tables in {out / 'results.md'}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
