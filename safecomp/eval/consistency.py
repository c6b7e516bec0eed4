"""Consistency of a policy across k sampled answers per prompt: mode agreement and the spread of harm.

Input: graded records (`training.evaluate.grade_records`) of one policy carrying a `sample` index, k of
them per prompt. Each prompt gets one row (`prompt_rows`):

  mode_agreement   share of its k answers in their most common mode (1: all agree; 1/k at worst)
  all_same_mode    all k answers in one mode
  n_unsafe         unsafe answers among the k; `unsafe_share` = n_unsafe / k
  any_unsafe       at least one of the k is unsafe: the risk when the prompt is asked k times
  safety_split     some answers safe and some unsafe (the policy's safety on the prompt is a coin flip)
  severity_sd      sd of the harm severity level (0 negligible .. 3 high) over the k answers; and range
  helpfulness_sd   sd of helpfulness (0-1) over the k answers

`summarize` reports these by intent and overall: rates with Wilson intervals, means with percentile
bootstrap intervals over prompts (a prompt's k answers are one unit, as they are not independent);
`compare` pairs two policies on the same prompts (`stats.paired_comparison`). Pure numpy and seeded.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from safecomp.constants import INTENTS, MODES
from safecomp.errors import DataError, SafecompError
from safecomp.eval import stats
from safecomp.eval.report import format_estimate

# Per-prompt flags summarised as rates (Wilson) and values summarised as means (bootstrap over prompts).
RATES = {"all_same_mode": "all k in one mode", "any_unsafe": "any unsafe of k",
         "safety_split": "safe/unsafe split"}
MEANS = {"mode_agreement": "mode agreement", "unsafe_share": "unsafe share", "severity_sd": "severity sd",
         "severity_range": "severity range", "helpfulness_sd": "helpfulness sd"}
METRICS = ("mode_agreement", "all_same_mode", "any_unsafe", "unsafe_share", "safety_split", "severity_sd",
           "severity_range", "helpfulness_sd")
LABELS = {**RATES, **MEANS}


def _missing(v: Any) -> bool:
  return v is None or (isinstance(v, float) and math.isnan(v))


def _sd(x: np.ndarray) -> float:
  """Sample sd (ddof 1): the k answers are draws from the policy; NaN for fewer than two."""
  return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def _mode_counts(modes: Sequence[str | None]) -> np.ndarray:
  return np.array([sum(m == name for m in modes) for name in MODES])


def prompt_rows(records: Sequence[Mapping[str, Any]], source: str = "records") -> list[dict[str, Any]]:
  """One consistency row per prompt (in order of first appearance) from one policy's graded records.

  Every record needs `sample` (distinct per prompt). A safe answer without a severity counts as
  negligible (0). Mode statistics use the answers with a mode and are NaN when none has one.
  """
  cols = stats.record_columns(records, source)
  rows = stats.as_records(records)
  by_prompt: dict[str, list[int]] = {}
  for i, pid in enumerate(cols["prompt_id"]):
    by_prompt.setdefault(pid, []).append(i)
  out = []
  for pid, index in by_prompt.items():
    samples = []
    for i in index:
      if _missing(rows[i].get("sample")):
        raise DataError(source, f"#{i}", "key 'sample' (the answer's index among the k) missing")
      samples.append(int(rows[i]["sample"]))
    if len(set(samples)) < len(samples):
      raise DataError(source, f"#{index[0]}", f"prompt_id {pid!r} has a sample index twice ({sorted(samples)}): "
                      "records of more than one policy or run?")
    intents = set(cols["intent"][index])
    if len(intents) > 1:
      raise DataError(source, f"#{index[0]}", f"prompt_id {pid!r} has answers of intents {sorted(intents)}")
    k = len(index)
    unsafe = cols["unsafe"][index]
    severity = np.maximum(cols["severity"][index], 0)  # -1 marks a safe answer with no severity given
    helpfulness = cols["helpfulness"][index]
    modes = [m for m in cols["mode"][index] if m is not None]
    counts = _mode_counts(modes)
    n_unsafe = int(unsafe.sum())
    out.append({
        "prompt_id": pid, "intent": cols["intent"][index[0]], "split": cols["split"][index[0]],
        "model": cols["model"][index[0]], "k": k,
        "modal_mode": MODES[int(np.argmax(counts))] if modes else None,  # ties: the first in MODES
        "mode_agreement": float(counts.max() / len(modes)) if modes else math.nan,
        "all_same_mode": bool(counts.max() == len(modes)) if modes else None,
        "n_unsafe": n_unsafe, "unsafe_share": n_unsafe / k, "any_unsafe": n_unsafe > 0,
        "safety_split": 0 < n_unsafe < k,
        "severity_max": int(severity.max()), "severity_sd": _sd(severity.astype(np.float64)),
        "severity_range": int(severity.max() - severity.min()),
        "helpfulness_mean": float(helpfulness.mean()), "helpfulness_sd": _sd(helpfulness),
    })
  return out


def _column(rows: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray:
  """A metric over prompts as floats, NaN where undefined (both interval helpers drop NaN)."""
  return np.array([math.nan if _missing(r[metric]) else float(r[metric]) for r in rows], dtype=np.float64)


def point_values(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """The mean of every metric over prompts (a rate for the flags), without intervals."""
  out = {}
  for metric in METRICS:
    x = _column(rows, metric)
    out[metric] = float(np.nanmean(x)) if np.any(~np.isnan(x)) else math.nan
  return out


def _summarize_group(rows: Sequence[Mapping[str, Any]], n_boot: int, seed: int, confidence: float
                     ) -> dict[str, Any]:
  kw = dict(n_boot=n_boot, seed=seed, confidence=confidence)
  out: dict[str, Any] = {"n": len(rows), "n_answers": int(sum(r["k"] for r in rows))}
  for metric in METRICS:
    est = stats.proportion_ci if metric in RATES else stats.mean_ci
    out[metric] = est(_column(rows, metric), **kw).to_dict()
  return out


def _group_key(row: Mapping[str, Any], by: str) -> str | None:
  value = row.get(by)
  return None if value is None else str(value)


def summarize(rows: Sequence[Mapping[str, Any]], by: str | None = "intent", *, n_boot: int = 2000,
              seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
  """Consistency metrics of `prompt_rows` per group and overall, with intervals over prompts.

  Returns {"by", "n", "k": {"min", "max"}, "groups": {key: metrics}, "overall": metrics, "notes",
  "config"}; metrics hold n (prompts), n_answers and one estimate per metric of METRICS (the layout of
  `stats.summarize`, so `plots.plot_metric_by_group` draws them). By intent, every intent is listed.
  """
  if n_boot < 1:
    raise SafecompError(f"n_boot must be >= 1, got {n_boot}")
  rows = list(rows)
  ks = [r["k"] for r in rows]
  notes = []
  if ks and min(ks) < max(ks):
    # any_unsafe grows with k, so prompts with fewer graded answers pull it down.
    notes.append(f"answers per prompt vary from {min(ks)} to {max(ks)} (ungraded answers left out)")
  groups = {}
  if by is not None:
    keys = list(INTENTS) if by == "intent" else sorted({k for r in rows if (k := _group_key(r, by)) is not None})
    for key in keys:
      selected = [r for r in rows if _group_key(r, by) == key]
      groups[key] = _summarize_group(selected, n_boot, seed, confidence)
      if not selected:
        notes.append(f"{by}={key}: no prompts")
  return {"by": by, "n": len(rows), "k": {"min": min(ks, default=0), "max": max(ks, default=0)},
          "groups": groups, "overall": _summarize_group(rows, n_boot, seed, confidence), "notes": notes,
          "config": {"n_boot": n_boot, "seed": seed, "confidence": confidence}}


def _as_graded(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Prompt rows in the layout `stats.paired_comparison` validates: a prompt reads as unsafe when any of
  its answers is (at the worst severity) and as helpful as its answers' mean. The metrics compared are
  read from the rows themselves."""
  return [{**r, "unsafe": r["any_unsafe"], "severity": r["severity_max"], "helpfulness": r["helpfulness_mean"]}
          for r in rows]


def compare(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]],
            metrics: Sequence[str] = METRICS, by: str | None = "intent", *, names: tuple[str, str] = ("a", "b"),
            n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> list[dict[str, Any]]:
  """Paired differences (a - b) of consistency metrics on the same prompts, one `paired_comparison` result
  per metric (matched on prompt_id; a prompt counts where the metric is defined for both)."""
  graded_a, graded_b = _as_graded(rows_a), _as_graded(rows_b)
  out = []
  for metric in metrics:
    if metric not in LABELS:
      raise SafecompError(f"unknown consistency metric {metric!r}; known: {METRICS}")
    comp = stats.paired_comparison(graded_a, graded_b, lambda r, m=metric: r[m], by=by, names=names,
                                   n_boot=n_boot, seed=seed, confidence=confidence)
    out.append({**comp, "metric": metric})
  return out


# -- Markdown ------------------------------------------------------------------------------------------
def format_table(summaries: Mapping[str, Mapping[str, Any]], digits: int = 3) -> str:
  """Markdown: one row per model and group (then overall), every metric as `value [95% interval]`."""
  head = ["model", "group", "prompts", "k"] + [LABELS[m] for m in METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for model, s in summaries.items():
    k = s["k"]["min"] if s["k"]["min"] == s["k"]["max"] else f"{s['k']['min']}-{s['k']['max']}"
    for label, g in list(s["groups"].items()) + [("overall", s["overall"])]:
      if not g["n"]:
        continue
      cells = [format_estimate(g[m], digits) for m in METRICS]
      lines.append(f"| {model} | {label} | {g['n']} | {k} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _p(p: Any) -> str:
  if p is None or (isinstance(p, float) and math.isnan(p)):
    return "—"
  return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def format_comparisons(comparisons: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
  """Markdown: paired differences a − b per group and overall, with interval and sign-flip p-value."""
  lines = ["| metric | a − b | group | prompts | a | b | difference [95% CI] | p |",
           "|---|---|---|---|---|---|---|---|"]
  for comp in comparisons:
    a, b = comp["models"]
    for label, g in list(comp["groups"].items()) + [("overall", comp["overall"])]:
      if not g["n"]:
        continue
      lines.append(f"| {LABELS.get(comp['metric'], comp['metric'])} | {a} − {b} | {label} | {g['n']} | "
                   f"{g['mean_a']:.{digits}f} | {g['mean_b']:.{digits}f} | {format_estimate(g['diff'], digits)} | "
                   f"{_p(g['p_value'])} |")
  return "\n".join(lines)


def format_markdown(summaries: Mapping[str, Mapping[str, Any]],
                    comparisons: Sequence[Mapping[str, Any]] = (), *, k: int | None = None,
                    temperature: float | None = None, heading: str = "##", note: str = "") -> str:
  """A report section: what the metrics mean (and `note`), the table by group and the paired differences."""
  first = next(iter(summaries.values()), {})
  cfg = first.get("config", {})
  draws = f"{k} sampled answers per prompt" if k else "the sampled answers of each prompt"
  if temperature is not None:
    draws += f" at temperature {temperature:g}"
  parts = [f"{heading} Consistency across samples", "",
           f"Over {draws}. Per prompt: mode agreement (share of the answers in the most common mode), whether "
           "all are in one mode, whether any is unsafe (the risk over k draws), the unsafe share, whether safe "
           "and unsafe answers are mixed, and the sd and range of harm severity (0 negligible .. 3 high) and "
           "the sd of helpfulness (0-1) over the answers. Means of these over prompts with "
           f"{100 * cfg.get('confidence', 0.95):.0f}% intervals: Wilson for rates, percentile bootstrap over "
           f"prompts ({cfg.get('n_boot', '?')} resamples, seed {cfg.get('seed', '?')}) for means."]
  if note:
    parts += ["", note]
  parts += ["", format_table(summaries)]
  if comparisons:
    parts += ["", f"{heading}# Paired on the same prompts", "",
              "Difference of per-prompt values (a − b), paired bootstrap interval, sign-flip p-value.", "",
              format_comparisons(comparisons)]
  notes = [f"{m}: {n}" for m, s in summaries.items() for n in s.get("notes", [])]
  if notes:
    parts += [""] + [f"- {n}" for n in notes]
  return "\n".join(parts) + "\n"
