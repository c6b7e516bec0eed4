"""PNG plots of evaluation summaries and training curves (matplotlib Agg, no pyplot state)."""
from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from safecomp.constants import MODES, SEVERITIES
from safecomp.errors import SafecompError

# Colours by severity (green to red) and by mode; fixed so plots compare across runs.
_SEVERITY_COLORS = ("#9ecae1", "#fdd49e", "#fc8d59", "#b30000")
_MODE_COLORS = ("#4daf4a", "#377eb8", "#ff7f00", "#e41a1c")
_LABEL_MIN = 0.05  # segments thinner than this get no percent label


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, format="png")
  return path


def _num(x: Any) -> float:
  return math.nan if x is None else float(x)


def _labels(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
  labels: list[str] = []
  for s in summaries.values():
    for label in s.get("groups", {}):
      if label not in labels:
        labels.append(label)
  return labels + ["overall"]


def _group(summary: Mapping[str, Any], label: str) -> Mapping[str, Any]:
  return summary["overall"] if label == "overall" else summary.get("groups", {}).get(label, {})


def _metric_bars(ax, summaries: Mapping[str, Mapping[str, Any]], metric: str, *, ylabel: str | None,
                 ylim: tuple[float, float] | None, labels: Sequence[str] | None = None):
  """Grouped bars of one scalar metric on `ax`: one bar per model per group, with CI error bars."""
  labels = list(labels) if labels is not None else _labels(summaries)
  models = list(summaries)
  x = np.arange(len(labels))
  width = 0.8 / max(1, len(models))
  for k, model in enumerate(models):
    ests = [_group(summaries[model], label).get(metric) or {} for label in labels]
    values = np.array([_num(e.get("value")) for e in ests])
    lo = np.array([_num(e.get("lo")) for e in ests])
    hi = np.array([_num(e.get("hi")) for e in ests])
    # Clipped at 0: a Wilson interval at a rate of exactly 0 or 1 can sit a rounding error inside it.
    err = np.clip(np.vstack([np.nan_to_num(values - lo), np.nan_to_num(hi - values)]), 0.0, None)
    pos = x - 0.4 + width * (k + 0.5)
    ax.bar(pos, np.nan_to_num(values), width, yerr=err, capsize=3, label=model)
    for xi, v in zip(pos, values):
      if math.isnan(v):
        ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=7)
  ax.set_xticks(x, labels)
  ax.set_ylabel(ylabel or metric.replace("_", " "))
  if ylim is not None:
    ax.set_ylim(*ylim)


def plot_metric_by_group(summaries: Mapping[str, Mapping[str, Any]], metric: str,
                         path: str | pathlib.Path, *, ylabel: str | None = None,
                         ylim: tuple[float, float] | None = (0.0, 1.0)) -> pathlib.Path:
  """Grouped bars of one scalar metric by group, one bar per model, with CI error bars."""
  labels = _labels(summaries)
  fig = _new_figure(1.6 + 1.2 * len(labels) * max(1, len(summaries)) ** 0.5, 3.6)
  ax = fig.add_subplot()
  _metric_bars(ax, summaries, metric, ylabel=ylabel, ylim=ylim, labels=labels)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_metric_panels(summaries: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, str],
                       path: str | pathlib.Path, *, labels: Sequence[str] | None = None,
                       ylim: tuple[float, float] | None = (0.0, 1.0), title: str | None = None) -> pathlib.Path:
  """Side-by-side panels of `plot_metric_by_group` in one PNG, one per metric ({key: y label});
  `labels` picks the groups (default every group, then overall)."""
  if not metrics:
    raise SafecompError("plot_metric_panels needs at least one metric")
  labels = list(labels) if labels is not None else _labels(summaries)
  panel_width = 1.6 + 1.2 * len(labels) * max(1, len(summaries)) ** 0.5
  fig = _new_figure(panel_width * len(metrics), 3.8)
  for i, (metric, ylabel) in enumerate(metrics.items()):
    ax = fig.add_subplot(1, len(metrics), i + 1)
    _metric_bars(ax, summaries, metric, ylabel=ylabel, ylim=ylim, labels=labels)
    if i == 0:  # above the bars: rates near 1 leave no room inside the panel
      ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(1, len(summaries)))
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_distribution_by_group(summaries: Mapping[str, Mapping[str, Any]], key: str,
                               categories: Sequence[str], path: str | pathlib.Path, *,
                               colors: Sequence[str] | None = None, title: str | None = None
                               ) -> pathlib.Path:
  """Stacked bars of a distribution metric by group, one bar per model, with percent labels.

  Severities and modes get their fixed colours unless `colors` is given."""
  if colors is None:
    colors = {tuple(SEVERITIES): _SEVERITY_COLORS, tuple(MODES): _MODE_COLORS}.get(tuple(categories))
  labels = _labels(summaries)
  models = list(summaries)
  fig = _new_figure(2.4 + 0.6 * len(labels) * len(models), 4.4)
  ax = fig.add_subplot()
  positions = [(gi * (len(models) + 1) + k, label, model)
               for gi, label in enumerate(labels) for k, model in enumerate(models)]
  xs = np.array([p[0] for p in positions], dtype=float)
  dists = [_group(summaries[model], label).get(key) or {} for _, label, model in positions]
  bottoms = np.zeros(len(positions))
  for c, cat in enumerate(categories):
    shares = [_num((dist.get(cat) or {}).get("value")) for dist in dists]
    shares = np.nan_to_num(np.array(shares))
    ax.bar(xs, shares, 0.8, bottom=bottoms, label=cat,
           color=None if colors is None else colors[c % len(colors)])
    for xi, b, s in zip(xs, bottoms, shares):
      if s >= _LABEL_MIN:
        ax.text(xi, b + s / 2, f"{100 * s:.0f}%", ha="center", va="center", fontsize=7)
    bottoms += shares
  # Shares over few outputs are noisy, so each bar carries its count.
  for xi, dist in zip(xs, dists):
    n = max([int(e.get("n") or 0) for e in dist.values()], default=0)
    ax.text(xi, 1.01, f"n={n}", ha="center", va="bottom", fontsize=7)
  if len(models) > 1:
    ax.set_xticks(xs, [p[2] for p in positions], fontsize=7, rotation=30, ha="right")
    for gi, label in enumerate(labels):
      centre = gi * (len(models) + 1) + (len(models) - 1) / 2
      ax.text(centre, -0.2, label, transform=ax.get_xaxis_transform(), ha="center", va="top",
              fontsize=9)
  else:
    ax.set_xticks(xs, labels)
  ax.set_ylim(0, 1.08)
  ax.set_ylabel("share")
  if title:
    ax.set_title(title)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return _save(fig, path)


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                path: str | pathlib.Path, *, xlabel: str = "step", ylabel: str = "value",
                title: str | None = None) -> pathlib.Path:
  """Line plot of named (x, y) series, e.g. proxy vs gold reward over PPO steps."""
  if not curves:
    raise SafecompError("plot_curves needs at least one curve")
  fig = _new_figure(6.0, 3.6)
  ax = fig.add_subplot()
  for name, (xs, ys) in curves.items():
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
      raise SafecompError(f"curve '{name}': x shape {xs.shape} and y shape {ys.shape} differ")
    ax.plot(xs, ys, label=name, marker="." if xs.size < 30 else None)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_summaries(summaries: Mapping[str, Mapping[str, Any]], out_dir: str | pathlib.Path
                   ) -> list[pathlib.Path]:
  """All summary plots for {model: summarize(...)}: safety rate, helpfulness given safe, severity
  of unsafe outputs and, when graded, response modes. Returns the PNG paths."""
  out = pathlib.Path(out_dir)
  paths = [
      plot_metric_by_group(summaries, "safety_rate", out / "safety_rate.png",
                           ylabel="safety rate"),
      plot_metric_by_group(summaries, "helpfulness_given_safe", out / "helpfulness_given_safe.png",
                           ylabel="helpfulness | safe"),
      plot_distribution_by_group(summaries, "severity_of_unsafe", SEVERITIES,
                                 out / "severity_of_unsafe.png", colors=_SEVERITY_COLORS,
                                 title="severity among unsafe outputs"),
  ]
  if any("modes" in s["overall"] for s in summaries.values()):
    paths.append(plot_distribution_by_group(summaries, "modes", MODES, out / "modes.png",
                                            colors=_MODE_COLORS, title="response modes"))
  if any("over_refusal_rate" in s["overall"] for s in summaries.values()):
    paths.append(plot_metric_by_group(summaries, "over_refusal_rate", out / "over_refusal.png",
                                      ylabel="over-refusal rate (benign)"))
  return paths


def plot_overoptimization(points: Mapping[str, Mapping[str, Sequence[float]]],
                          fits: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                          path: str | pathlib.Path, *, title: str | None = None) -> pathlib.Path:
  """Proxy and gold reward against sqrt(KL to the reference), the axes of Gao et al. (2023).

  `points`: {series: {"d": sqrt KL, "proxy": ..., "gold": ...}}, one colour per series (gold filled,
  proxy hollow); `fits`: {label: (d, fitted reward)} drawn as lines over the pooled points.
  """
  if not points:
    raise SafecompError("plot_overoptimization needs at least one series of points")
  fig = _new_figure(7.2, 4.4)
  ax = fig.add_subplot()
  colors = [f"C{i}" for i in range(10)]
  for i, (name, p) in enumerate(points.items()):
    d, proxy, gold = (np.asarray(p[k], dtype=float) for k in ("d", "proxy", "gold"))
    if not d.shape == proxy.shape == gold.shape:
      raise SafecompError(f"series '{name}': d, proxy and gold have shapes {d.shape}, {proxy.shape}, {gold.shape}")
    color = colors[i % len(colors)]
    ax.scatter(d, gold, s=14, color=color, label=f"{name} gold")
    ax.scatter(d, proxy, s=14, facecolors="none", edgecolors=color, label=f"{name} proxy")
  for k, (label, (d, y)) in enumerate(fits.items()):
    ax.plot(np.asarray(d, dtype=float), np.asarray(y, dtype=float), color="black",
            linestyle=("-", "--", ":")[k % 3], linewidth=1.5, label=label)
  ax.set_xlabel("sqrt(KL to the reference), nats^0.5 per response")
  ax.set_ylabel("reward of sampled responses")
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return _save(fig, path)


def plot_bands(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
               path: str | pathlib.Path, *, xlabel: str = "step", ylabel: str = "value",
               title: str | None = None, ylim: tuple[float, float] | None = None) -> pathlib.Path:
  """Lines of named (x, y, lo, hi) series, each with its interval as a shaded band and error bars."""
  if not series:
    raise SafecompError("plot_bands needs at least one series")
  fig = _new_figure(6.0, 3.8)
  ax = fig.add_subplot()
  for name, columns in series.items():
    xs, ys, lo, hi = (np.asarray(c, dtype=float) for c in columns)
    if not xs.ndim == 1 or not xs.shape == ys.shape == lo.shape == hi.shape:
      raise SafecompError(f"series '{name}': x, y, lo and hi need equal 1-D shapes")
    err = np.clip(np.vstack([np.nan_to_num(ys - lo), np.nan_to_num(hi - ys)]), 0.0, None)
    line = ax.errorbar(xs, ys, yerr=err, label=name, marker="o", capsize=3)
    ax.fill_between(xs, lo, hi, alpha=0.15, color=line[0].get_color())
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # turns, steps: no fractional ticks
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if ylim is not None:
    ax.set_ylim(*ylim)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
