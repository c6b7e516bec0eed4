"""Evaluation reports: `eval.json`, `eval.md` with per-intent tables, plots, and a console table."""
from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from safecomp.constants import MODES, SEVERITIES
from safecomp.errors import SafecompError

# Scalar metrics shown as one table each: key in a group summary -> heading.
SCALAR_METRICS = {
    "safety_rate": "Safety rate",
    "helpfulness_given_safe": "Helpfulness given safe (0-1)",
    "helpfulness_1to4_given_safe": "Helpfulness given safe (1-4)",
    "over_refusal_rate": "Over-refusal rate (benign prompts)",
    "refusal_rate": "Refusal rate",
    "gold_reward": "Mean gold reward",
    "proxy_reward": "Mean proxy reward",
}
# Distribution metrics: key -> (heading, category names).
DISTRIBUTION_METRICS = {
    "severity_of_unsafe": ("Severity among unsafe outputs", SEVERITIES),
    "modes": ("Response modes", MODES),
}
_SHORT = {"negligible": "neg", "low": "low", "moderate": "mod", "high": "high", "direct": "dir",
          "safe_completion": "sc", "refusal_redirect": "rr", "hard_refusal": "hr"}


def _num(x: Any) -> float:
  return math.nan if x is None else float(x)


def format_estimate(est: Mapping[str, Any] | None, digits: int = 3) -> str:
  """`value [lo, hi]`, or an em dash when undefined (n=0 or missing)."""
  if est is None or math.isnan(_num(est.get("value"))):
    return "—"
  lo, hi = _num(est.get("lo")), _num(est.get("hi"))
  value = f"{_num(est['value']):.{digits}f}"
  if math.isnan(lo) or math.isnan(hi):
    return value
  return f"{value} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _rows(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
  """(label, group metrics) for every group, then overall."""
  return list(summary.get("groups", {}).items()) + [("overall", summary["overall"])]


def _normalize(summaries: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
  """Accepts one summary or {model: summary}; returns {model: summary}."""
  if "overall" in summaries and "groups" in summaries:
    return {summaries.get("model") or "model": summaries}
  if not summaries:
    raise SafecompError("no summaries to report")
  for name, s in summaries.items():
    if not isinstance(s, Mapping) or "overall" not in s:
      raise SafecompError(f"summary for model '{name}' is not a summarize() result")
  return dict(summaries)


def _group_labels(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
  labels: list[str] = []
  for s in summaries.values():
    for label, _ in _rows(s):
      if label not in labels:
        labels.append(label)
  labels.remove("overall")
  return labels + ["overall"]


def _group(summary: Mapping[str, Any], label: str) -> Mapping[str, Any] | None:
  return summary["overall"] if label == "overall" else summary.get("groups", {}).get(label)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def _distribution_share(group: Mapping[str, Any] | None, key: str, names: Sequence[str]
                        ) -> str:
  """Compact `12/30/40/18` percentages of a distribution metric, or an em dash."""
  dist = (group or {}).get(key)
  if not dist:
    return "—"
  values = [_num(dist.get(name, {}).get("value")) for name in names]
  if any(math.isnan(v) for v in values):
    return "—"
  return "/".join(f"{100 * v:.0f}" for v in values)


def format_table(summaries: Mapping[str, Any], digits: int = 2) -> str:
  """Plain-text table by intent (rows) for one or more models: n, safety rate, helpfulness given
  safe, severity distribution of unsafe outputs and mode distribution (percent), over-refusal."""
  summaries = _normalize(summaries)
  sev_head = "unsafe sev % (" + "/".join(_SHORT[s] for s in SEVERITIES) + ")"
  mode_head = "modes % (" + "/".join(_SHORT[m] for m in MODES) + ")"
  header = ["model", "group", "n", "safety rate", "help | safe", sev_head, mode_head,
            "over-refusal"]
  rows = []
  for model, summary in summaries.items():
    for label in _group_labels(summaries):
      g = _group(summary, label)
      if g is None:
        continue
      rows.append([model, label, str(g["n"]),
                   format_estimate(g.get("safety_rate"), digits),
                   format_estimate(g.get("helpfulness_given_safe"), digits),
                   _distribution_share(g, "severity_of_unsafe", SEVERITIES),
                   _distribution_share(g, "modes", MODES),
                   format_estimate(g.get("over_refusal_rate"), digits)])
  widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
  fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
  lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
  return "\n".join(lines)


def _format_p(p: Any) -> str:
  p = _num(p)
  if math.isnan(p):
    return "—"
  return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _comparison_md(comp: Mapping[str, Any], digits: int) -> str:
  a, b = comp["models"]
  header = ["group", "pairs", a, b, f"{a} − {b} [CI]", "p"]
  rows = []
  for label, g in list(comp.get("groups", {}).items()) + [("overall", comp["overall"])]:
    mean_a, mean_b = _num(g.get("mean_a")), _num(g.get("mean_b"))
    rows.append([label, str(g["n"]),
                 "—" if math.isnan(mean_a) else f"{mean_a:.{digits}f}",
                 "—" if math.isnan(mean_b) else f"{mean_b:.{digits}f}",
                 format_estimate(g["diff"], digits), _format_p(g.get("p_value"))])
  return f"### {comp['metric']}: {a} vs {b}\n\n" + _md_table(header, rows)


def format_markdown(summaries: Mapping[str, Any],
                    comparisons: Sequence[Mapping[str, Any]] | None = None, *, digits: int = 3,
                    title: str = "Evaluation report", plot_paths: Sequence[pathlib.Path] = ()
                    ) -> str:
  """The Markdown report: counts, one table per metric by group (a column per model), the
  distributions, and paired differences with p-values."""
  summaries = _normalize(summaries)
  models = list(summaries)
  labels = _group_labels(summaries)
  first = next(iter(summaries.values()))
  cfg = first.get("config", {})
  conf = _num(cfg.get("confidence", 0.95))
  parts = [f"# {title}", "",
           f"Models: {', '.join(models)}. Grouped by `{first.get('by')}`. Intervals are "
           f"{100 * conf:.0f}% (Wilson for proportions, percentile bootstrap with "
           f"{cfg.get('n_boot', '?')} resamples for means; seed {cfg.get('seed', '?')})."]

  count_rows = []
  for label in labels:
    cells = []
    for m in models:
      g = _group(summaries[m], label)
      cells.append("—" if g is None else f"{g['n']} ({g['n_unsafe']} unsafe)")
    count_rows.append([label] + cells)
  parts += ["", "## Counts", "", _md_table(["group"] + models, count_rows)]

  for key, heading in SCALAR_METRICS.items():
    if not any(key in (_group(s, "overall") or {}) for s in summaries.values()):
      continue
    rows = [[label] + [format_estimate((_group(summaries[m], label) or {}).get(key), digits)
                       for m in models] for label in labels]
    parts += ["", f"## {heading}", "", _md_table(["group"] + models, rows)]

  for key, (heading, names) in DISTRIBUTION_METRICS.items():
    if not any(key in (_group(s, "overall") or {}) for s in summaries.values()):
      continue
    rows = []
    for label in labels:
      for name in names:
        rows.append([label, name] + [
            format_estimate(((_group(summaries[m], label) or {}).get(key) or {}).get(name), digits)
            for m in models])
    parts += ["", f"## {heading}", "", _md_table(["group", "category"] + models, rows)]

  if comparisons:
    parts += ["", "## Paired differences", "",
              "Prompts matched on `prompt_id`; difference of means with a paired-bootstrap "
              "interval; p from a two-sided sign-flip permutation test."]
    for comp in comparisons:
      parts += ["", _comparison_md(comp, digits)]

  notes = [f"{m}: {n}" for m, s in summaries.items() for n in s.get("notes", [])]
  if notes:
    parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
  if plot_paths:
    parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plot_paths]
  return "\n".join(parts) + "\n"


def to_jsonable(obj: Any) -> Any:
  """Nested structure with NaN/inf as None and numpy scalars as Python numbers (strict JSON)."""
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return to_jsonable(obj.tolist())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, pathlib.Path):
    return str(obj)
  return obj


def write_report(summaries: Mapping[str, Any], out_dir: str | pathlib.Path,
                 comparisons: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]
                 | None = None, *, plots: bool = True, title: str = "Evaluation report",
                 digits: int = 3, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes `eval.json`, `eval.md` and (if `plots`) PNG plots into `out_dir`.

  `summaries` is {model name: summarize(...)} (or one summary); `comparisons` a list (or dict) of
  paired_comparison(...) results; `data` the task's account of the eval prompts (`data_report()`:
  their number, their overlap with the training prompts, what was dropped). Returns {"json": path,
  "md": path, "plots": [paths]}.
  """
  from safecomp.eval import plots as plots_lib  # matplotlib is loaded only when plotting

  summaries = _normalize(summaries)
  if isinstance(comparisons, Mapping):
    comparisons = list(comparisons.values())
  comparisons = list(comparisons or [])
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  plot_paths = plots_lib.plot_summaries(summaries, out) if plots else []
  json_path, md_path = out / "eval.json", out / "eval.md"
  payload = {"models": summaries, "comparisons": comparisons,
             "plots": [p.name for p in plot_paths]}
  if data is not None:
    payload["data"] = dict(data)
  json_path.write_text(json.dumps(to_jsonable(payload), indent=1, allow_nan=False) + "\n",
                       encoding="utf-8")
  markdown = format_markdown(summaries, comparisons, digits=digits, title=title, plot_paths=plot_paths)
  if data is not None:
    markdown += "\nData: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data.items()) + "\n"
  md_path.write_text(markdown, encoding="utf-8")
  return {"json": json_path, "md": md_path, "plots": plot_paths}
