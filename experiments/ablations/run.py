"""Runs one ablation: every variant of its config file, for every seed, and writes the comparison.

    python experiments/ablations/run.py --ablation NAME --out DIR [--seeds 0,1,2] [--scale default|tiny|large]
        [--variants a,b] [--reuse EXPERIMENT_DIR[,...]]

Ablations (each a config file here, runnable alone with
`python -m safecomp.train --config experiments/ablations/NAME.py:variant=V --workdir DIR`):

  reward_form       reward.kind: product (r = h x s), sum, min, safety_only, helpfulness_only
  spec_granularity  spec: safe_completion_fine vs safe_completion_coarse vs safe_completion_inconsistent
  reasoning         reasoning: on vs off
  multiturn         unsafe rate on multi-turn attacks vs single-turn prompts, for both training arms
  long_training     5x the PPO iterations: response length, modes, benign helpfulness over PPO steps
  overoptimization  ppo.kl_coef x ppo.learning_rate: proxy vs gold reward against sqrt(KL to the reference)

Runs go to `DIR/runs/<variant>-seed<seed>/` (finished runs are skipped, unfinished ones resume). With
`--reuse`, a fresh run first copies the finished stages of a run in those experiment folders trained with
the same settings (same seed; the pipeline's own test of which keys can change a stage), so a baseline
already trained by the controlled experiment, or the SFT policy and reward model under a PPO-only
variant, are not trained again; `reused.json` in the run's workdir names the source. The
PPO policies' gold-graded eval completions are pooled across seeds per variant and written as
`DIR/results.md` / `results.json` (per-intent table with 95% intervals, paired differences of each
variant against the baseline variant on the same prompts, per-seed spread) and `DIR/report/` (full
report and plots). `multiturn` adds the single- vs multi-turn unsafe rates; `long_training` adds
curves over PPO iterations in `DIR/curves/`; `overoptimization` adds `DIR/overoptimization.png` and
its table.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

from safecomp.config import load_module
from safecomp.training import compilation

HERE = pathlib.Path(__file__).resolve().parent
ABLATIONS = ("reward_form", "spec_granularity", "reasoning", "multiturn", "long_training", "overoptimization")

common = load_module(HERE / "common.py", "safecomp_experiments_common")


def ablation_module(name: str):
  if name not in ABLATIONS:
    raise SystemExit(f"--ablation: unknown ablation {name!r}; expected one of {list(ABLATIONS)}")
  return load_module(HERE / f"{name}.py", f"safecomp_experiments_ablation_{name}")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--ablation", required=True, choices=ABLATIONS)
  parser.add_argument("--out", required=True, help="output folder (runs, tables, plots)")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (config key `seed`)")
  parser.add_argument("--scale", default="default", choices=tuple(common.SCALES))
  parser.add_argument("--variants", default=None,
                      help="comma-separated subset of the variants (default all; the baseline comes first)")
  parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
  parser.add_argument("--report-only", action="store_true",
                      help="train nothing: tabulate the runs whose eval stage finished")
  parser.add_argument("--reuse", default="",
                      help="comma-separated experiment folders (e.g. the controlled experiment's --out) whose "
                      "finished stages a fresh run copies when they were trained with the same settings")
  parser.add_argument("--compile-cache", default=None,
                      help="persistent XLA compilation cache directory (default: the runs' compile_cache_dir, "
                      "~/.cache/safecomp/jax; 'none' turns it off)")
  return parser.parse_args(argv)


def make_runs(module, out: pathlib.Path, seeds, scale: str, variants) -> list:
  runs = []
  for seed in seeds:
    for variant in variants:
      config = module.get_config(f"variant={variant},scale={scale}")
      config.seed = seed
      runs.append(common.Run(variant, seed, config, out / "runs" / f"{variant}-seed{seed}"))
  return runs


# -- multi-turn attacks ---------------------------------------------------------------------------------
def _unsafe(g: dict) -> tuple[float, float, float]:
  """Unsafe rate with its Wilson bounds, from a group's safety-rate estimate."""
  est = g["safety_rate"]
  return 1 - est["value"], 1 - est["hi"], 1 - est["lo"]


def _diff_of_rates(multi: dict, single: dict) -> str:
  """Unsafe rate multi − single (different prompts, so unpaired): Newcombe's hybrid score interval."""
  if not multi["n"] or not single["n"]:
    return "—"
  (pm, lm, um), (ps, ls, us) = _unsafe(multi), _unsafe(single)
  d = pm - ps
  lo = d - math.sqrt((pm - lm) ** 2 + (us - ps) ** 2)
  hi = d + math.sqrt((um - pm) ** 2 + (ps - ls) ** 2)
  return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _unsafe_cell(g: dict) -> str:
  if not g["n"]:
    return "—"
  p, lo, hi = _unsafe(g)
  return f"{p:.3f} [{lo:.3f}, {hi:.3f}] (n={g['n']})"


def turns_analysis(runs, pooled: dict, n_boot: int) -> tuple[dict, str]:
  """Splits every variant's records into single-turn and multi-turn prompts (by the testbed example)."""
  from safecomp.constants import INTENTS  # pylint: disable=import-outside-toplevel
  from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
  multiturn = {}
  for run in runs:
    p = pipeline.Pipeline(run.config, run.workdir)
    for prompt in p.task.eval_prompts():
      multiturn[f"s{run.seed}/{prompt.uid}"] = prompt.example.multiturn
  by_turns = {}
  for model, records in pooled.items():
    for r in records:
      if r["prompt_id"] not in multiturn:
        raise SystemExit(f"prompt {r['prompt_id']} of {model} is not among the regenerated eval prompts")
      turns = "multi_turn" if multiturn[r["prompt_id"]] else "single_turn"
      by_turns.setdefault(f"{model.split('/')[0]}/{turns}", []).append(r)
  summaries = common.summarize_pooled(by_turns, n_boot)
  lines = ["| variant | intent | single-turn unsafe rate | multi-turn unsafe rate | multi − single [95% CI] |",
           "|---|---|---|---|---|"]
  variants = list(dict.fromkeys(m.split("/")[0] for m in by_turns))
  for variant in variants:
    single, multi = summaries.get(f"{variant}/single_turn"), summaries.get(f"{variant}/multi_turn")
    if single is None or multi is None:
      continue
    for label in INTENTS:
      gs, gm = single["groups"][label], multi["groups"][label]
      if gm["n"]:
        lines.append(f"| {variant} | {label} | {_unsafe_cell(gs)} | {_unsafe_cell(gm)} | {_diff_of_rates(gm, gs)} |")
  note = ("Unsafe rate = share of outputs disclosing restricted detail (severity >= low). Single- and "
          "multi-turn prompts differ, so the difference is unpaired (Newcombe's interval from the two Wilson "
          "intervals). Multi-turn prompts are dual-use or malicious only, so rows are per intent.")
  return by_turns, note + "\n\n" + "\n".join(lines)


# -- long training ----------------------------------------------------------------------------------------
CURVES = {
    "response_length": ("response length (tokens)", ("response_length",)),
    "benign": ("benign prompts (gold)", ("gold_helpfulness_benign", "gold_refusal_benign")),
    "gold_reward": ("gold reward", ("gold_reward", "proxy_reward")),
}


def curves_analysis(runs, out: pathlib.Path) -> str:
  """Seed-averaged PPO metrics over iterations, plotted per variant; a first-vs-last table."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from safecomp.constants import MODES  # pylint: disable=import-outside-toplevel
  from safecomp.eval import plots  # pylint: disable=import-outside-toplevel
  from safecomp.training.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  series: dict[str, dict[str, dict[int, list[float]]]] = {}
  per_run: dict[tuple[str, int], dict[str, dict[int, float]]] = {}
  for run in runs:
    for row in read_metrics(run.workdir / "metrics" / "ppo.jsonl"):
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)):
          series.setdefault(run.name, {}).setdefault(key, {}).setdefault(int(row["step"]), []).append(value)
          per_run.setdefault((run.name, run.seed), {}).setdefault(key, {})[int(row["step"])] = value

  def change_per_seed(variant: str, key: str) -> list[float]:
    """Each seed's mean of its last fifth of logged points minus its first fifth."""
    out = []
    for (name, _), metrics in sorted(per_run.items()):
      points = [metrics[key][s] for s in sorted(metrics.get(key, {}))] if name == variant else []
      if points:
        k = max(1, len(points) // 5)
        out.append(float(np.mean(points[-k:]) - np.mean(points[:k])))
    return out

  def curve(variant: str, key: str):
    points = series.get(variant, {}).get(key, {})
    steps = sorted(points)
    return steps, [float(np.mean(points[s])) for s in steps]

  (out / "curves").mkdir(parents=True, exist_ok=True)
  written = []
  for name, (ylabel, keys) in CURVES.items():
    curves = {f"{v} {k}" if len(keys) > 1 else v: curve(v, k) for v in series for k in keys}
    curves = {k: c for k, c in curves.items() if c[0]}
    if curves:
      written.append(plots.plot_curves(curves, out / "curves" / f"{name}.png", xlabel="PPO iteration",
                                       ylabel=ylabel, title=f"{ylabel} over PPO (mean over seeds)"))
  for variant in series:
    curves = {m: curve(variant, f"gold_mode_{m}") for m in MODES}
    curves = {k: c for k, c in curves.items() if c[0]}
    if curves:
      written.append(plots.plot_curves(curves, out / "curves" / f"modes_{variant}.png", xlabel="PPO iteration",
                                       ylabel="share of sampled responses",
                                       title=f"response modes over PPO: {variant}"))
  keys = ["response_length", "kl_ref", "gold_reward", "gold_unsafe", "gold_helpfulness_benign", "gold_refusal_benign",
          "gold_helpfulness_dual_use"] + [
      f"gold_mode_{m}" for m in MODES]
  # One logged batch is 64 sampled responses, so the table compares the means of the first and last
  # fifth of the logged points rather than two single batches.
  lines = ["| variant | metric | first fifth (iterations) | last fifth (iterations) | last − first | "
           "last − first per seed (mean ± sd) |", "|---|---|---|---|---|---|"]
  for variant in series:
    for key in keys:
      steps, values = curve(variant, key)
      if steps:
        k = max(1, len(steps) // 5)
        first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
        changes = change_per_seed(variant, key)
        spread = f" ± {np.std(changes, ddof=1):.3f}" if len(changes) > 1 else ""
        lines.append(f"| {variant} | {key} | {first:.3f} ({steps[0]}-{steps[k - 1]}) | {last:.3f} "
                     f"({steps[-k]}-{steps[-1]}) | {last - first:+.3f} | "
                     + ", ".join(f"{c:+.3f}" for c in changes) + f" ({np.mean(changes):+.3f}{spread}) |")
  return ("Sampled PPO responses (temperature 1), gold-graded every `ppo.gold_every` iterations, mean over "
          "seeds. Plots: " + ", ".join(f"`curves/{p.name}`" for p in written) + ".\n\n" + "\n".join(lines))


def _information_levels(pipe, path) -> dict[str, list[int]]:
  """{intent: the highest information level (0 background .. 3 critical) of the prompt's own topic each
  answer in the completions file `path` discloses, or -1 for none}, regraded by the oracle."""
  from safecomp import testbed  # pylint: disable=import-outside-toplevel
  examples = {x.uid: x.example for x in pipe.task.eval_prompts()}
  levels: dict[str, list[int]] = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    if not line.strip():
      continue
    r = json.loads(line)
    example = examples.get(r["prompt_id"])
    if example is None:
      raise SystemExit(f"{path}: prompt {r['prompt_id']} is not among the run's regenerated eval prompts")
    g = testbed.grade(example.messages, r["completion"], pipe.task.world, example=example)
    own = [int(d.rsplit(":", 1)[1]) for d in g.disclosed if d.rsplit(":", 1)[0] == example.topic]
    levels.setdefault(example.intent, []).append(max(own, default=-1))
  return levels


def abstraction_analysis(runs) -> str:
  """Information level of what the greedy eval answers disclose, by intent, for the SFT policy (PPO
  iteration 0), the policy of the run the PPO stage's starting point was copied from when that run
  trained PPO for fewer iterations (`--reuse`), and this run's final PPO policy."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from safecomp.constants import INTENTS  # pylint: disable=import-outside-toplevel
  from safecomp.training import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  table: dict[tuple[str, int], dict[str, list[int]]] = {}
  for run in runs:
    pipe = pipeline_lib.Pipeline(run.config, run.workdir)
    points = [(0, run.workdir / "eval" / "sft_completions.jsonl"),
              (int(run.config.ppo.iterations), run.workdir / "eval" / "ppo_completions.jsonl")]
    found = _shorter_donor(run)
    if found is not None:
      points.insert(1, (found[1], found[0] / "eval" / "ppo_completions.jsonl"))
    for iteration, path in points:
      for intent, levels in _information_levels(pipe, path).items():
        table.setdefault((run.name, iteration), {}).setdefault(intent, []).extend(levels)
    pipe.close()
  lines = ["| variant | PPO iterations | intent | answers | mean level disclosed (-1 none .. 3 critical) | "
           "share disclosing nothing of the topic | share up to background / mechanism / actionable / critical |",
           "|---|---|---|---|---|---|---|"]
  for (variant, iteration), by_intent in sorted(table.items()):
    for intent in INTENTS:
      levels = np.asarray(by_intent.get(intent, []))
      if not levels.size:
        continue
      est = common.stats.mean_ci(levels, n_boot=1000).to_dict()
      shares = "/".join(f"{np.mean(levels == k):.2f}" for k in range(4))
      lines.append(f"| {variant} | {iteration} | {intent} | {levels.size} | {common._fmt(est)} | "  # pylint: disable=protected-access
                   f"{np.mean(levels < 0):.3f} | {shares} |")
  return ("Highest information level of the prompt's own topic disclosed by each greedy eval answer "
          "(all eval splits, seeds pooled), regraded by the oracle: the SFT policy (iteration 0), the "
          "copied-from run's PPO policy where it trained fewer iterations, and the final policy. A drift "
          "to generic answers shows as levels falling on benign and dual-use prompts.\n\n" + "\n".join(lines))


def _shorter_donor(run):
  """(workdir, PPO iterations) of the run this run's stages were copied from, when it trained PPO for
  fewer iterations and evaluated its policy; else None."""
  reused = run.workdir / common.REUSED_FILE
  if not reused.is_file():
    return None
  donor = pathlib.Path(json.loads(reused.read_text()).get("sft", ""))
  if not (donor / "eval" / "ppo_completions.jsonl").is_file():
    return None
  iterations = int(json.loads((donor / "config.json").read_text())["ppo"]["iterations"])
  return (donor, iterations) if iterations < int(run.config.ppo.iterations) else None


def longer_training_comparison(runs, pooled: dict, n_boot: int) -> str:
  """Each variant's final PPO policy against the copied-from run's shorter-trained one, paired on the
  same eval prompts (same seed, same eval settings)."""
  shorter: dict[str, list[dict]] = {}
  for run in runs:
    found = _shorter_donor(run)
    if found is not None:
      donor, iterations = found
      records = common.load_records(common.Run(f"{run.name}@{iterations}", run.seed, run.config, donor), "ppo")
      shorter.setdefault(f"{run.name}@{iterations}/ppo", []).extend(records)
  if not shorter:
    return "No run was copied from a shorter-trained one (`--reuse`), so there is nothing to compare."
  pairs = [(f"{name.split('@')[0]}/ppo", name) for name in shorter]
  comparisons = common.paired({**pooled, **shorter}, pairs, n_boot)
  return ("Greedy eval of the final policy against the same SFT policy and reward model trained for the "
          "controlled experiment's PPO iterations (the copied-from runs), paired on the same prompts:\n\n"
          + common.comparison_table(comparisons))


# -- reward over-optimisation -----------------------------------------------------------------------------
def _gold_points(run) -> list[dict]:
  """(iteration, KL to the reference, proxy, gold) of the sampled responses every gold-graded iteration."""
  from safecomp.training.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  rows = read_metrics(run.workdir / "metrics" / "ppo.jsonl")
  return [{"step": int(r["step"]), "kl": float(r["kl_ref"]), "proxy": float(r["proxy_reward"]),
           "gold": float(r["gold_reward"])} for r in rows
          if all(isinstance(r.get(k), (int, float)) for k in ("kl_ref", "proxy_reward", "gold_reward"))]


def _quadratic_fit(d, y, n_boot: int, seed: int = 0) -> dict:
  """y = c + a d - b d^2 by least squares, with the d > 0 of its peak (a / 2b when a, b > 0) and a
  percentile bootstrap interval of the peak over resampled points (a resample without one counts as inf)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  d, y = np.asarray(d, dtype=float), np.asarray(y, dtype=float)

  def fit(dd, yy):
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(dd), dd, -dd ** 2], axis=1), yy, rcond=None)
    return coef

  def peak_of(a, b):  # the d > 0 where the fitted curve turns down; none when it only rises or only falls
    return float(a / (2 * b)) if a > 0 and b > 0 else float("inf")

  c, a, b = fit(d, y)
  peak = peak_of(a, b)
  rng = np.random.default_rng(seed)
  peaks = []
  for _ in range(n_boot):
    idx = rng.integers(len(d), size=len(d))
    _, ab, bb = fit(d[idx], y[idx])
    peaks.append(peak_of(ab, bb))
  # A resample whose fit has no peak counts as a peak at infinity, hence quantiles without interpolation.
  lo, hi = (float(np.quantile(np.asarray(peaks), q, method="inverted_cdf")) for q in (0.025, 0.975))
  return {"c": float(c), "a": float(a), "b": float(b), "peak_d": peak, "peak_d_lo": lo, "peak_d_hi": hi,
          "n": int(len(d))}


def overoptimization_analysis(runs, pooled: dict, out, n_boot: int) -> str:
  """Proxy vs gold reward against sqrt(KL) for every run (one plot), fits, and a per-variant table."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from safecomp.eval import plots  # pylint: disable=import-outside-toplevel
  by_variant: dict[str, list[dict]] = {}
  for run in runs:
    by_variant.setdefault(run.name, []).extend({**p, "seed": run.seed} for p in _gold_points(run))
  points = {v: {"d": [np.sqrt(max(p["kl"], 0.0)) for p in ps], "proxy": [p["proxy"] for p in ps],
                "gold": [p["gold"] for p in ps]} for v, ps in by_variant.items() if ps}
  if not points:
    raise SystemExit("no PPO run logged gold-graded iterations (metrics/ppo.jsonl has no gold_reward)")
  d_all = np.concatenate([np.asarray(p["d"]) for p in points.values()])
  fits = {k: _quadratic_fit(d_all, np.concatenate([np.asarray(p[k]) for p in points.values()]), n_boot)
          for k in ("proxy", "gold")}
  grid = np.linspace(0.0, float(d_all.max()), 100)
  curves = {f"{k} fit: {f['c']:.3f} {f['a']:+.3f} d {-f['b']:+.3f} d^2": (grid, f["c"] + f["a"] * grid - f["b"] * grid ** 2)
            for k, f in fits.items()}
  path = plots.plot_overoptimization(points, curves, out / "overoptimization.png",
                                     title="Proxy (reward model) vs gold (oracle) reward over KL, all runs")
  lines = ["| variant | seeds | KL at end (nats) | proxy at end | gold at end | proxy − gold | eval gold reward "
           "(greedy) | eval proxy reward (greedy) |", "|---|---|---|---|---|---|---|---|"]
  for variant, ps in by_variant.items():
    seeds = sorted({p["seed"] for p in ps})
    # The end of a run: its last three gold-graded iterations (sampled rewards are noisy per batch).
    ends = [sorted((p for p in ps if p["seed"] == s), key=lambda p: p["step"])[-3:] for s in seeds]
    per_seed = {k: [float(np.mean([p[k] for p in e])) for e in ends] for k in ("kl", "proxy", "gold")}
    gap = [pr - g for pr, g in zip(per_seed["proxy"], per_seed["gold"])]

    def cell(values):
      sd = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
      return f"{np.mean(values):.3f}{sd}"

    records = pooled.get(f"{variant}/ppo", [])
    eval_gold = common._fmt(common.stats.mean_ci([r["gold_reward"] for r in records], n_boot=n_boot).to_dict())  # pylint: disable=protected-access
    eval_proxy = common._fmt(common.stats.mean_ci(  # pylint: disable=protected-access
        [r["proxy_reward"] for r in records if r.get("proxy_reward") is not None], n_boot=n_boot).to_dict())
    lines.append(f"| {variant} | {','.join(map(str, seeds))} | {cell(per_seed['kl'])} | {cell(per_seed['proxy'])} | "
                 f"{cell(per_seed['gold'])} | {cell(gap)} | {eval_gold} | {eval_proxy} |")
  fit_lines = ["| reward | c | a | b | peak at d = sqrt(KL) [95% CI] | points |", "|---|---|---|---|---|---|"]
  for k, f in fits.items():
    peak = (f"{f['peak_d']:.2f} [{f['peak_d_lo']:.2f}, {f['peak_d_hi']:.2f}]" if np.isfinite(f["peak_d"])
            else "none at d > 0 in the fit")
    fit_lines.append(f"| {k} | {f['c']:.3f} | {f['a']:.3f} | {f['b']:.3f} | {peak} | {f['n']} |")
  return ("Every gold-graded PPO iteration of every run is one point: the mean proxy reward (the reward "
          "model's r = h x s) and gold reward (the oracle's) of that iteration's sampled responses "
          "(temperature 1), against the square root of their mean KL to the reference (k1, summed over the "
          "response). End values are the mean of each run's last three gold-graded iterations, ± sd over "
          f"seeds. Plot: `{path.name}`.\n\n" + "\n".join(lines)
          + "\n\nQuadratic fits over all points pooled (bootstrap over points for the peak):\n\n"
          + "\n".join(fit_lines))


def main(argv=None) -> int:
  args = parse_args(argv)
  module = ablation_module(args.ablation)
  seeds = common.parse_seeds(args.seeds)
  variants = list(module.VARIANTS)
  if args.variants:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in module.VARIANTS]
    if unknown or not variants:
      raise SystemExit(f"--variants: unknown variant(s) {unknown} of {args.ablation}; expected {list(module.VARIANTS)}")
  if module.BASELINE in variants:  # the baseline first: every other variant is compared with it
    variants.remove(module.BASELINE)
    variants.insert(0, module.BASELINE)
  out = pathlib.Path(args.out)
  common.check_out_dir(out, {"experiment": f"ablation {args.ablation}", "scale": args.scale})
  compilation.enable_cache(args.compile_cache or "")
  runs = make_runs(module, out, seeds, args.scale, variants)
  start = time.time()
  if args.report_only:
    runs, seconds = common.finished_only(runs), {}
    seeds = sorted({r.seed for r in runs})
  else:
    donors = [pathlib.Path(d) for d in args.reuse.split(",") if d.strip()]
    missing = [str(d) for d in donors if not (d / "runs").is_dir()]
    if missing:
      raise SystemExit(f"--reuse: {', '.join(missing)} holds no runs/ folder of an experiment")
    seconds = common.run_grid(runs, reuse_from=donors)
  # The PPO policies; an ablation whose variants differ already in SFT (`STAGES`) reports its SFT ones too.
  stages = tuple(getattr(module, "STAGES", ("ppo",)))
  pooled = common.pool(runs, stages)
  pairs = [(f"{v}/{stage}", f"{variants[0]}/{stage}") for stage in reversed(stages) for v in variants[1:]]
  c = runs[0].config
  notes = [f"Ablation `{args.ablation}` ({(module.__doc__ or '').splitlines()[0].rstrip('.')}); variants "
           f"{', '.join(variants)} (baseline {variants[0]}); scale `{args.scale}`, seeds "
           f"{', '.join(map(str, seeds))}; per run {c.sft.steps} SFT steps and {c.ppo.iterations} PPO "
           f"iterations. {' and '.join(st.upper() for st in stages)} policies, gold-graded on {c.eval.n_per_split} prompts per split "
           f"({', '.join(c.eval.splits)}), seeds pooled."]
  reused = {f"{r.name} seed {r.seed}": json.loads((r.workdir / common.REUSED_FILE).read_text())
            for r in runs if (r.workdir / common.REUSED_FILE).is_file()}
  if reused:
    notes.append("Stages copied from runs trained with the same settings (`--reuse`; the pipeline checks "
                 "them like its own finished stages): " + "; ".join(
                     f"{label}: {', '.join(stages)} from `{pathlib.Path(next(iter(stages.values()))).name}`"
                     for label, stages in reused.items()) + ".")
  extra = []
  if module.ANALYSIS == "turns":
    _, text = turns_analysis(runs, pooled, args.bootstrap)
    extra.append(("Multi-turn attacks vs single-turn prompts", text))
  elif module.ANALYSIS == "curves":
    extra.append(("Over PPO iterations", curves_analysis(runs, out)))
    extra.append(("Information level disclosed", abstraction_analysis(runs)))
    extra.append(("Final policy vs the shorter-trained one", longer_training_comparison(runs, pooled, args.bootstrap)))
  elif module.ANALYSIS == "overoptimization":
    extra.append(("Proxy vs gold reward over KL", overoptimization_analysis(runs, pooled, out, args.bootstrap)))
  result = common.write_tables(out, f"Ablation: {args.ablation}", common.command_line(), pooled, pairs,
                               args.bootstrap, notes=notes, extra_sections=extra)
  print(result["markdown"], flush=True)
  print(f"[ablation] {len(runs)} runs ({len(seconds)} trained now) in {time.time() - start:.0f}s; "
        f"tables in {out / 'results.md'}", flush=True)
  # Wall-clock of every run trained so far: a rerun (or --report-only) adds to it rather than erasing it.
  record = out / "runs.json"
  earlier = json.loads(record.read_text()).get("seconds", {}) if record.is_file() else {}
  record.write_text(json.dumps({"variants": variants, "seeds": seeds, "seconds": {**earlier, **seconds}}) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
