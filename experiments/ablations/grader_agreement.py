"""Grader agreement on the spec ablation: do the oracle, the reward model and the spec-reading judge agree?

    python experiments/ablations/run.py --ablation spec_granularity --out DIR [--seeds 0,1,2] [--scale tiny]
    python experiments/ablations/grader_agreement.py --ablation-dir DIR --out OUT [--bootstrap 1000]
        [--judge-miss-rate R]

Every finished run in `DIR/runs/<variant>-seed<k>/` has its PPO policy's eval completions
(`eval/ppo_completions.jsonl`, graded by the gold oracle). Each completion gets the verdicts of three
graders:

- oracle: the gold grader, read from the records. unsafe = severity >= low; acceptable = safe and in
  the world's intended mode (`testbed.intended_mode`).
- rm: the run's trained reward model (the `rm` grader of `safecomp.graders`). unsafe = its most likely
  severity >= low; helpfulness = its helpfulness head. It has no mode head (the mode on its grades is
  the response-mode classifier's), so it takes no part in the acceptable verdict.
- judge: the testbed's judge filter (`testbed.judge_filter`, the one that filtered the run's SFT data)
  reading the run's spec, with the run's `testbed.judge_miss_rate` (or `--judge-miss-rate`).
  unsafe = dropped as unsafe; acceptable = kept (safe, on topic, not degenerate and in the mode of
  the spec's rule as this reader resolves it). Its safety check is the oracle's severity, so its
  unsafe verdict differs from the oracle's only through misses and through degenerate or off-topic
  answers, which it drops for that reason first. On a spec whose rules clash it resolves each clash
  with its own draw (`Spec.decide(..., rng)`), as it did when it filtered the SFT data.

Reported per variant, seeds pooled: for each grader pair and verdict the agreement rate and Cohen's
kappa with percentile-bootstrap 95% intervals over completions; Pearson and Spearman correlations
of the reward model's helpfulness with the oracle's; each variant minus the baseline (`fine`), with
a bootstrap interval (paired by prompt when both variants answered the same prompts); and per seed
with the mean ± sd over seeds. Writes `OUT/results.md`, `OUT/results.json` and the per-completion
verdicts `OUT/verdicts/<variant>-seed<k>.jsonl`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
import sys
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

from safecomp.config import load_module
from safecomp.eval import stats

HERE = pathlib.Path(__file__).resolve().parent
GRADERS = ("oracle", "rm", "judge")
VERDICT_PAIRS = (("unsafe", "oracle", "rm"), ("unsafe", "oracle", "judge"), ("unsafe", "rm", "judge"),
                 ("acceptable", "oracle", "judge"))
JUDGE_STREAM = 31  # the judge's rng: default_rng([run seed, JUDGE_STREAM]), read in record order
RUN_DIR = re.compile(r"(?P<variant>.+)-seed(?P<seed>\d+)")

Columns = Mapping[str, np.ndarray]


# -- statistics: each is a function of column means, so one bootstrap of means serves them all ------------
@dataclasses.dataclass(frozen=True)
class Statistic:
  """A statistic of per-completion columns that depends on them only through column means."""
  name: str
  columns: Callable[[Columns], dict[str, np.ndarray]]  # verdict table -> columns to average
  from_means: Callable[[Mapping[str, np.ndarray]], np.ndarray]  # means (scalars or draws) -> value


def agreement_columns(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  return {"a": a, "b": b, "agree": (a == b).astype(np.float64)}


def agreement_from_means(m: Mapping[str, np.ndarray]) -> np.ndarray:
  return np.asarray(m["agree"], dtype=np.float64)


def kappa_from_means(m: Mapping[str, np.ndarray]) -> np.ndarray:
  """Cohen's kappa of two binary raters: (p_o - p_e) / (1 - p_e); NaN where chance agreement is 1."""
  pa, pb, po = (np.asarray(m[k], dtype=np.float64) for k in ("a", "b", "agree"))
  pe = pa * pb + (1 - pa) * (1 - pb)
  with np.errstate(divide="ignore", invalid="ignore"):
    # Both raters constant and equal: kappa is undefined, not 1 (no rater showed it can discriminate).
    return np.where(np.isclose(pe, 1.0), np.nan, (po - pe) / (1 - pe))


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
  cols = agreement_columns(np.asarray(a), np.asarray(b))
  return float(kappa_from_means({k: v.mean() for k, v in cols.items()}))


def correlation_columns(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
  x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
  return {"x": x, "y": y, "xx": x * x, "yy": y * y, "xy": x * y}


def pearson_from_means(m: Mapping[str, np.ndarray]) -> np.ndarray:
  x, y, xx, yy, xy = (np.asarray(m[k], dtype=np.float64) for k in ("x", "y", "xx", "yy", "xy"))
  var_x, var_y = xx - x * x, yy - y * y
  with np.errstate(divide="ignore", invalid="ignore"):
    # A constant variable (zero variance) has no correlation: NaN.
    return np.where((var_x > 1e-12) & (var_y > 1e-12), (xy - x * y) / np.sqrt(var_x * var_y), np.nan)


def statistics_list() -> list[Statistic]:
  out = []
  for verdict, g1, g2 in VERDICT_PAIRS:
    cols = (lambda t, v=verdict, p=g1, q=g2: agreement_columns(t[f"{p}_{v}"], t[f"{q}_{v}"]))
    out.append(Statistic(f"{verdict} {g1}~{g2} agreement", cols, agreement_from_means))
    out.append(Statistic(f"{verdict} {g1}~{g2} kappa", cols, kappa_from_means))
  out.append(Statistic("helpfulness rm~oracle pearson",
                       lambda t: correlation_columns(t["rm_helpfulness"], t["oracle_helpfulness"]),
                       pearson_from_means))
  # Spearman = Pearson of ranks; resamples keep the full sample's ranks (not re-ranked per draw).
  out.append(Statistic("helpfulness rm~oracle spearman",
                       lambda t: correlation_columns(scipy_stats.rankdata(t["rm_helpfulness"]),
                                                     scipy_stats.rankdata(t["oracle_helpfulness"])),
                       pearson_from_means))
  return out


def _nan_to_none(x: float) -> float | None:
  return None if x is None or not math.isfinite(x) else float(x)


def bootstrap_draws(columns: Mapping[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
  """Bootstrap means of every column under the SAME row resamples.

  `stats.bootstrap_means` draws its index matrices from (length, n_boot, rng) alone, so one seed per
  call pairs the columns; tables of equal length with the same seed get the same resamples too.
  """
  return {k: stats.bootstrap_means(v, n_boot, np.random.default_rng(seed)) for k, v in columns.items()}


def _interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float | None, float | None, int]:
  finite = draws[np.isfinite(draws)]
  if finite.size == 0:
    return None, None, int(draws.size)
  lo, hi = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
  return float(lo), float(hi), int(draws.size - finite.size)


def estimate(table: Columns, stat: Statistic, n_boot: int, seed: int = 0) -> dict:
  """Value over all completions with a percentile-bootstrap 95% interval over completions."""
  cols = stat.columns(table)
  n = len(next(iter(cols.values())))
  if n == 0:
    return {"value": None, "lo": None, "hi": None, "n": 0, "undefined_draws": 0}
  value = float(stat.from_means({k: v.mean() for k, v in cols.items()}))
  lo, hi, undefined = _interval(stat.from_means(bootstrap_draws(cols, n_boot, seed)))
  return {"value": _nan_to_none(value), "lo": lo, "hi": hi, "n": n, "undefined_draws": undefined}


def difference(table: Columns, base: Columns, stat: Statistic, n_boot: int, seed: int = 0) -> dict:
  """stat(table) - stat(base) with a bootstrap interval: paired by prompt when both tables hold the
  same (seed, prompt) keys in the same order, independent resamples otherwise."""
  cols, base_cols = stat.columns(table), stat.columns(base)
  paired = np.array_equal(table["key"], base["key"])
  value = (stat.from_means({k: v.mean() for k, v in cols.items()})
           - stat.from_means({k: v.mean() for k, v in base_cols.items()}))
  draws = (stat.from_means(bootstrap_draws(cols, n_boot, seed))
           - stat.from_means(bootstrap_draws(base_cols, n_boot, seed if paired else seed + 1)))
  lo, hi, undefined = _interval(draws)
  return {"value": _nan_to_none(float(value)), "lo": lo, "hi": hi, "paired": bool(paired),
          "n": len(table["key"]), "n_base": len(base["key"]), "undefined_draws": undefined}


def per_seed(table: Columns, stat: Statistic) -> dict:
  """The statistic per seed, and its mean ± sd over seeds (seeds where it is defined)."""
  values = {}
  for seed in sorted(set(table["seed"].tolist())):
    mask = table["seed"] == seed
    cols = stat.columns(select(table, mask))
    values[int(seed)] = float(stat.from_means({k: v.mean() for k, v in cols.items()}))
  finite = np.array([v for v in values.values() if math.isfinite(v)])
  return {"per_seed": {k: _nan_to_none(v) for k, v in values.items()},
          "mean": float(finite.mean()) if finite.size else None,
          "sd": float(finite.std(ddof=1)) if finite.size > 1 else None}


def select(table: Columns, mask: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v[mask] for k, v in table.items()}


def concat(tables: Sequence[Columns]) -> dict[str, np.ndarray]:
  """Tables stacked and ordered by (seed, prompt) key, so variants on the same prompts line up."""
  joined = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
  return select(joined, np.argsort(joined["key"], kind="stable"))


# -- verdicts ------------------------------------------------------------------------------------------
def judge_verdicts(world, spec, example, completion: str, miss_rate: float, rng) -> dict[str, bool]:
  """The testbed judge filter's verdict on one completion (see module docstring)."""
  from safecomp.testbed import teachers  # pylint: disable=import-outside-toplevel
  kept, reason = teachers.judge_filter(world, spec, example, completion, miss_rate=miss_rate, rng=rng,
                                       style="safe_completion")
  return {"judge_unsafe": (not kept) and reason.startswith("unsafe"), "judge_acceptable": bool(kept),
          "judge_reason": reason}


def run_verdicts(workdir: pathlib.Path, variant: str, seed: int, miss_rate: float | None) -> list[dict]:
  """One verdict row per gradable PPO eval completion of a finished run."""
  # JAX and the model code load only here, so the statistics above stay light (and fast to test).
  from safecomp import testbed  # pylint: disable=import-outside-toplevel
  from safecomp.training import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel

  common = load_module(HERE / "common.py", "safecomp_experiments_common")
  p = pipeline_lib.open_workdir(workdir)
  if not (workdir / "rm" / "DONE.json").is_file():
    raise SystemExit(f"{workdir}: no finished rm stage, so no reward model to grade with")
  records = [r for r in common.load_records(common.Run(variant, seed, p.config, workdir), "ppo")
             if not r.get("ungraded")]
  by_uid = {x.uid: x for x in p.task.eval_prompts()}
  prompts = [by_uid[r["prompt_id"].split("/", 1)[1]] for r in records]
  rm_grades = p.grader("rm").grade(prompts, [r["completion"] for r in records])
  miss = p.config.testbed.judge_miss_rate if miss_rate is None else miss_rate
  rng = np.random.default_rng([seed, JUDGE_STREAM])
  spec, world = p.task.spec, p.task.world
  rows = []
  for record, prompt, rm in zip(records, prompts, rm_grades, strict=True):
    if not rm.graded:
      continue
    intended = testbed.intended_mode(prompt.example, world)
    rows.append({
        "variant": variant, "seed": seed, "prompt_id": record["prompt_id"], "intent": record["intent"],
        "spec": spec.name, "oracle_unsafe": bool(record["unsafe"]),
        "oracle_acceptable": (not record["unsafe"]) and record["mode"] == intended,
        "oracle_helpfulness": float(record["helpfulness"]), "oracle_mode": record["mode"],
        "intended_mode": intended, "rm_unsafe": bool(rm.unsafe), "rm_helpfulness": float(rm.helpfulness),
        "rm_severity": int(rm.severity), "judge_miss_rate": miss,
        **judge_verdicts(world, spec, prompt.example, record["completion"], miss, rng)})
  return rows


def as_table(rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
  keys = ("oracle_unsafe", "rm_unsafe", "judge_unsafe", "oracle_acceptable", "judge_acceptable",
          "oracle_helpfulness", "rm_helpfulness")
  table = {k: np.array([r[k] for r in rows], dtype=np.float64).reshape(-1) for k in keys}
  table["seed"] = np.array([r["seed"] for r in rows], dtype=np.int64).reshape(-1)
  table["key"] = np.array([f"{r['seed']:06d}/{r['prompt_id']}" for r in rows], dtype=object).reshape(-1)
  table["intent"] = np.array([r["intent"] for r in rows], dtype=object).reshape(-1)
  return table


# -- the report ---------------------------------------------------------------------------------------
def analyse(tables: Mapping[str, Columns], baseline: str, n_boot: int) -> dict:
  """Per variant: pooled estimates, by intent, per seed, and differences from the baseline."""
  out = {}
  for variant, table in tables.items():
    res = {"n": len(table["key"]), "seeds": sorted(set(table["seed"].tolist())), "pooled": {}, "by_intent": {},
           "per_seed": {}, "minus_baseline": {}}
    for stat in statistics_list():
      res["pooled"][stat.name] = estimate(table, stat, n_boot)
      res["per_seed"][stat.name] = per_seed(table, stat)
      res["by_intent"][stat.name] = {
          intent: estimate(select(table, table["intent"] == intent), stat, n_boot)
          for intent in sorted(set(table["intent"].tolist()))}
      if variant != baseline and baseline in tables:
        res["minus_baseline"][stat.name] = difference(table, tables[baseline], stat, n_boot)
    out[variant] = res
  return out


def _f(x: float | None, digits: int = 3) -> str:
  return "—" if x is None else f"{x:.{digits}f}"


def _est(e: Mapping) -> str:
  text = f"{_f(e['value'])} [{_f(e['lo'])}, {_f(e['hi'])}]"
  return text + (f" ({e['undefined_draws']} undefined draws)" if e.get("undefined_draws") else "")


def markdown(result: Mapping, baseline: str) -> str:
  variants = result["variants"]
  names = [s.name for s in statistics_list()]
  lines = ["# Grader agreement: oracle, reward model and spec-reading judge", "", "```bash", result["command"], "```",
           ""] + [f"- {n}" for n in result["notes"]] + [
      "", "## Seeds pooled (value [95% bootstrap interval over completions])", "",
      "| statistic | " + " | ".join(f"{v} (n={variants[v]['n']})" for v in variants) + " |",
      "|---|" + "---|" * len(variants)]
  lines += [f"| {s} | " + " | ".join(_est(variants[v]["pooled"][s]) for v in variants) + " |" for s in names]
  others = [v for v in variants if v != baseline]
  if others and baseline in variants:
    lines += ["", f"## Each variant minus `{baseline}` (bootstrap 95% interval)", "",
              "| statistic | " + " | ".join(f"{v} − {baseline}" for v in others) + " |", "|---|" + "---|" * len(others)]
    lines += [f"| {s} | " + " | ".join(_est(variants[v]["minus_baseline"][s]) + (
        "" if variants[v]["minus_baseline"][s]["paired"] else " (unpaired)") for v in others) + " |" for s in names]
  lines += ["", "## Per seed (mean ± sd over seeds; per-seed values in brackets)", "",
            "| statistic | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
  for s in names:
    cells = []
    for v in variants:
      ps = variants[v]["per_seed"][s]
      cells.append(f"{_f(ps['mean'])} ± {_f(ps['sd'])} (" + ", ".join(
          f"s{k}: {_f(x)}" for k, x in ps["per_seed"].items()) + ")")
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  lines += ["", "## By prompt intent, seeds pooled (agreement rates and kappa)", "",
            "| variant | intent | " + " | ".join(n for n in names if "helpfulness" not in n) + " |",
            "|---|---|" + "---|" * sum("helpfulness" not in n for n in names)]
  for v in variants:
    for intent in next(iter(variants[v]["by_intent"].values())):
      lines.append(f"| {v} | {intent} | " + " | ".join(
          _est(variants[v]["by_intent"][n][intent]) for n in names if "helpfulness" not in n) + " |")
  return "\n".join(lines) + "\n"


def find_runs(ablation_dir: pathlib.Path) -> list[tuple[str, int, pathlib.Path]]:
  """(variant, seed, workdir) of every run whose eval stage finished, baseline variant first."""
  runs = []
  for path in sorted((ablation_dir / "runs").iterdir()) if (ablation_dir / "runs").is_dir() else []:
    m = RUN_DIR.fullmatch(path.name)
    if m and (path / "eval" / "DONE.json").is_file() and (path / "eval" / "ppo_completions.jsonl").is_file():
      runs.append((m["variant"], int(m["seed"]), path))
  if not runs:
    raise SystemExit(f"{ablation_dir}/runs holds no finished run (<variant>-seed<k>/eval/DONE.json); run "
                     f"python experiments/ablations/run.py --ablation spec_granularity --out {ablation_dir}")
  return runs


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--ablation-dir", required=True, help="the --out folder of run.py --ablation spec_granularity")
  parser.add_argument("--out", required=True, help="output folder (results.md, results.json, verdicts/)")
  parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
  parser.add_argument("--judge-miss-rate", type=float, default=None,
                      help="the judge's miss rate (default: each run's testbed.judge_miss_rate; 0 isolates "
                      "the spec's effect from the judge's random misses)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  ablation_dir, out = pathlib.Path(args.ablation_dir), pathlib.Path(args.out)
  baseline = load_module(HERE / "spec_granularity.py", "safecomp_experiments_ablation_spec_granularity").BASELINE
  runs = find_runs(ablation_dir)
  (out / "verdicts").mkdir(parents=True, exist_ok=True)
  by_variant: dict[str, list] = {}
  all_rows = []
  for variant, seed, workdir in runs:
    rows = run_verdicts(workdir, variant, seed, args.judge_miss_rate)
    all_rows.append(rows)
    with (out / "verdicts" / f"{variant}-seed{seed}.jsonl").open("w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"[agreement] {workdir.name}: {len(rows)} completions graded", flush=True)
    by_variant.setdefault(variant, []).append(as_table(rows))
  order = sorted(by_variant, key=lambda v: (v != baseline, v))
  tables = {v: concat(by_variant[v]) for v in order}
  miss_rates = sorted({r["judge_miss_rate"] for rows in all_rows for r in rows})
  result = {
      "command": " ".join(["python", "experiments/ablations/grader_agreement.py"] + sys.argv[1:]),
      "ablation_dir": str(ablation_dir), "baseline": baseline, "bootstrap": args.bootstrap,
      "runs": [{"variant": v, "seed": s, "workdir": str(w)} for v, s, w in runs],
      "notes": [
          "PPO policies' eval completions; verdicts per completion in `verdicts/`. unsafe = severity >= low.",
          "oracle acceptable: safe and in the world's intended mode; judge acceptable: kept by the testbed "
          "judge filter reading the run's spec (safe, on topic, not degenerate, in the mode of the spec's "
          "rule as the judge resolves it).",
          "The reward model has no mode head (its grades' modes are the response-mode classifier's), so it is "
          "compared on safety and helpfulness only.",
          "The judge's safety check is the oracle's severity: its unsafe verdict departs from the oracle's only "
          "through misses and through degenerate or off-topic answers, which it drops for that reason first.",
          f"Judge miss rate: {', '.join(map(str, miss_rates))}"
          + (" (--judge-miss-rate)" if args.judge_miss_rate is not None else " (the runs' testbed.judge_miss_rate)")
          + ". Kappa is undefined (—) when both graders give one verdict throughout; "
          "bootstrap draws where it is undefined are left out and counted.",
          "Differences from the baseline resample prompts jointly when both variants answered the same "
          "prompts (same seeds), independently otherwise (marked unpaired).",
      ],
      "variants": analyse(tables, baseline, args.bootstrap),
  }
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
  text = markdown(result, baseline)
  (out / "results.md").write_text(text, encoding="utf-8")
  print(text, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
