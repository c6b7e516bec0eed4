"""Controlled experiment: refusal training vs safe-completion training, same model and budget.

    python experiments/ce_refusal_vs_safecomplete/run.py --out DIR [--seeds 0,1,2] [--scale default|tiny|large]

Trains both arms (`config.py:arm=refusal` and `arm=safe_completion`) for every seed with
`safecomp.training.pipeline.run`, each in `DIR/runs/<arm>-seed<seed>/` (finished runs are skipped and
unfinished ones resume, so rerunning the command continues where it stopped), then pools the eval
stage's gold-graded completions across seeds per arm (prompt ids made unique per seed; both arms
answer the same prompts for a seed) and writes:

  DIR/results.md, DIR/results.json  per-intent table with 95% intervals (SFT and PPO policy of each
                                    arm), paired differences safe-completion − refusal on the same
                                    prompts (interval and p-value), the per-seed spread, per split
  DIR/figure4.png, DIR/figure5.png  the paper's Figures 4 and 5 (PPO policies by intent: safety and
                                    helpfulness given safe with 95% intervals; severity among unsafe)
  DIR/report/                       the full report (eval.md / eval.json) and plots: safety and
                                    helpfulness by intent, severity among unsafe outputs, modes,
                                    over-refusal; one bar per arm and policy
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

from safecomp.config import load_module
from safecomp.training import compilation

HERE = pathlib.Path(__file__).resolve().parent
ARMS = ("refusal", "safe_completion")


common = load_module(HERE.parent / "ablations" / "common.py", "safecomp_experiments_common")
ce_config = load_module(HERE / "config.py", "safecomp_experiments_ce_config")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--out", required=True, help="output folder (runs, tables, plots)")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (config key `seed`)")
  parser.add_argument("--scale", default="default", choices=tuple(common.SCALES))
  parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
  parser.add_argument("--report-only", action="store_true",
                      help="train nothing: tabulate the runs whose eval stage finished")
  parser.add_argument("--compile-cache", default=None,
                      help="persistent XLA compilation cache directory (default: the runs' compile_cache_dir, "
                      "~/.cache/safecomp/jax; 'none' turns it off)")
  return parser.parse_args(argv)


def make_runs(out: pathlib.Path, seeds, scale: str) -> list:
  runs = []
  for seed in seeds:  # arms interleaved per seed, so a partial experiment stays balanced
    for arm in ARMS:
      config = ce_config.get_config(f"arm={arm},scale={scale}")
      config.seed = seed
      runs.append(common.Run(arm, seed, config, out / "runs" / f"{arm}-seed{seed}"))
  return runs


def split_table(pooled, n_boot: int) -> str:
  """Markdown: safety, helpfulness | safe and gold reward per eval split for every policy."""
  summaries = common.summarize_pooled(pooled, n_boot, by="split")
  lines = ["| model | split | n | safety rate | helpfulness given safe | gold reward |", "|---|---|---|---|---|---|"]
  for model, s in summaries.items():
    for split, g in s["groups"].items():
      lines.append(f"| {model} | {split} | {g['n']} | {common._fmt(g['safety_rate'])} | "  # pylint: disable=protected-access
                   f"{common._fmt(g['helpfulness_given_safe'])} | {common._fmt(g.get('gold_reward'))} |")  # pylint: disable=protected-access
  return "\n".join(lines)


def paper_figures(summaries: dict, out: pathlib.Path) -> list[pathlib.Path]:
  """The paper's Figures 4 and 5 for the two PPO policies, by prompt intent, seeds pooled.

  figure4.png: safety rate and helpfulness given safe (95% intervals as error bars);
  figure5.png: the harm-severity distribution among unsafe outputs (each bar with its count).
  """
  from safecomp.constants import INTENTS, SEVERITIES  # pylint: disable=import-outside-toplevel
  from safecomp.eval import plots  # pylint: disable=import-outside-toplevel
  policies = {arm: summaries[f"{arm}/ppo"] for arm in ARMS if f"{arm}/ppo" in summaries}
  return [
      plots.plot_metric_panels(policies, {"safety_rate": "safety rate",
                                          "helpfulness_given_safe": "helpfulness given safe (0-1)"},
                               out / "figure4.png", labels=list(INTENTS),
                               title="Safety and helpfulness given safe, by prompt intent (PPO policies)"),
      plots.plot_distribution_by_group(policies, "severity_of_unsafe", SEVERITIES, out / "figure5.png",
                                       title="Harm severity among unsafe outputs, by prompt intent"),
  ]


def main(argv=None) -> int:
  args = parse_args(argv)
  seeds = common.parse_seeds(args.seeds)
  out = pathlib.Path(args.out)
  common.check_out_dir(out, {"experiment": "ce_refusal_vs_safecomplete", "scale": args.scale})
  compilation.enable_cache(args.compile_cache or "")
  runs = make_runs(out, seeds, args.scale)
  start = time.time()
  if args.report_only:
    runs, seconds = common.finished_only(runs), {}
    seeds = sorted({r.seed for r in runs})
  else:
    seconds = common.run_grid(runs)
  pooled = common.pool(runs, ("sft", "ppo"))
  pairs = [("safe_completion/ppo", "refusal/ppo"), ("safe_completion/sft", "refusal/sft")]
  c = runs[0].config
  notes = [
      f"Scale `{args.scale}`, seeds {', '.join(map(str, seeds))}; per run: {c.sft.steps} SFT steps, "
      f"{c.ppo.iterations} PPO iterations of {c.ppo.prompts_per_iteration} prompts, a "
      f"{c.model.num_layers}-layer {c.model.hidden_size}-wide model; eval on "
      f"{c.eval.n_per_split} prompts per split ({', '.join(c.eval.splits)}), greedy, gold-graded. "
      "The refusal arm trains no reward model (its reward reads the prompt's intent label).",
      "Seeds are pooled: intervals are over prompts and do not include the variation between training "
      "runs; the per-seed table shows that spread.",
  ]
  result = common.write_tables(out, "Refusal training vs safe-completion training", common.command_line(),
                               pooled, pairs, args.bootstrap, notes=notes,
                               extra_sections=[("By eval split (seeds pooled)", split_table(pooled, args.bootstrap))])
  figures = paper_figures(result["summaries"], out)
  print(result["markdown"], flush=True)
  print("[ce] figures: " + ", ".join(str(f) for f in figures), flush=True)
  print(f"[ce] {len(runs)} runs ({len(seconds)} trained now) in {time.time() - start:.0f}s; "
        f"tables in {out / 'results.md'}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
