"""Evaluation statistics: means and proportions with intervals, per-group summaries, paired tests.

Everything is numpy and seeded: the same records and seed give the same numbers. Estimates are
plain dicts (JSON-ready) with keys `value, se, lo, hi, n, method, note, boot_lo, boot_hi`: `lo, hi`
is the Wilson interval for proportions and the percentile bootstrap for means; `boot_lo, boot_hi`
is always the percentile bootstrap.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from safecomp.constants import INTENTS, MODES, REFUSAL_MODES, SEVERITIES, SEVERITY_INDEX
from safecomp.errors import DataError, SafecompError

# Bound on the elements of one resampling index matrix, so large evals stay within memory.
_MAX_MATRIX_ELEMENTS = 1 << 22

Records = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]

REQUIRED_KEYS = ("prompt_id", "intent", "unsafe", "helpfulness")


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A point estimate with its standard error and confidence interval."""
  value: float
  se: float
  lo: float
  hi: float
  n: int
  method: str
  note: str = ""
  boot_lo: float = math.nan
  boot_hi: float = math.nan

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _z(confidence: float) -> float:
  if not 0.0 < confidence < 1.0:
    raise SafecompError(f"confidence must be in (0, 1), got {confidence}")
  return statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _empty(method: str, note: str) -> Estimate:
  return Estimate(math.nan, math.nan, math.nan, math.nan, 0, method, note)


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
  """Means of `n_boot` resamples (with replacement) of a 1-D array, via chunked index matrices."""
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise SafecompError(f"bootstrap needs a non-empty 1-D array, got shape {values.shape}")
  n = values.size
  chunk = max(1, min(n_boot, _MAX_MATRIX_ELEMENTS // n))
  out = np.empty(n_boot, dtype=np.float64)
  for start in range(0, n_boot, chunk):
    stop = min(n_boot, start + chunk)
    idx = rng.integers(0, n, size=(stop - start, n))
    out[start:stop] = values[idx].mean(axis=1)
  return out


def _percentile_ci(draws: np.ndarray, confidence: float) -> tuple[float, float]:
  alpha = 1.0 - confidence
  lo, hi = np.quantile(draws, [alpha / 2.0, 1.0 - alpha / 2.0])
  return float(lo), float(hi)


def mean_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, seed: int = 0,
            confidence: float = 0.95) -> Estimate:
  """Mean with analytic standard error (sample sd / sqrt(n)) and a percentile bootstrap interval.

  NaN entries are treated as missing and dropped; an empty input gives NaN with a note.
  """
  _z(confidence)
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  x = x[~np.isnan(x)]
  if x.size == 0:
    return _empty("bootstrap", "n=0: no values")
  mean = float(x.mean())
  note = ""
  if x.size == 1:
    se, note = math.nan, "n=1: no spread"
  else:
    se = float(x.std(ddof=1) / math.sqrt(x.size))
  draws = bootstrap_means(x, n_boot, np.random.default_rng(seed))
  lo, hi = _percentile_ci(draws, confidence)
  return Estimate(mean, se, lo, hi, int(x.size), "bootstrap", note, lo, hi)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion."""
  if n <= 0:
    return math.nan, math.nan
  z = _z(confidence)
  p = successes / n
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def proportion_ci(flags: Sequence[bool] | np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                  confidence: float = 0.95) -> Estimate:
  """Proportion of true flags: SE sqrt(p(1-p)/n), Wilson interval, and a percentile bootstrap.

  Resampling n 0/1 values with replacement is a Binomial(n, p) draw, so the bootstrap is drawn
  directly from the binomial. NaN entries are dropped as missing.
  """
  x = np.asarray(flags, dtype=np.float64).reshape(-1)
  x = x[~np.isnan(x)]
  if x.size and not np.all((x == 0) | (x == 1)):
    raise SafecompError("proportion_ci needs 0/1 flags")
  if x.size == 0:
    _z(confidence)
    return _empty("wilson", "n=0: no values")
  n, k = int(x.size), int(x.sum())
  p = k / n
  lo, hi = wilson_interval(k, n, confidence)
  draws = np.random.default_rng(seed).binomial(n, p, size=n_boot) / n
  boot_lo, boot_hi = _percentile_ci(draws, confidence)
  return Estimate(p, math.sqrt(p * (1 - p) / n), lo, hi, n, "wilson", "", boot_lo, boot_hi)


# ---------------------------------------------------------------------------------------------
# Graded records -> validated columns.


def as_records(records: Records) -> list[Mapping[str, Any]]:
  """A list of record dicts from a list of dicts or a columnar dict of equal-length sequences."""
  if isinstance(records, Mapping):
    scalar = [k for k, v in records.items() if not isinstance(v, (list, tuple, np.ndarray))]
    if scalar:
      raise SafecompError(f"columnar records need a list per key; not lists: {scalar} "
                          "(pass a single record as [record])")
    lengths = {k: len(v) for k, v in records.items()}
    if len(set(lengths.values())) > 1:
      raise SafecompError(f"columnar records have unequal column lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    return [{k: records[k][i] for k in records} for i in range(n)]
  return list(records)


def _is_missing(v: Any) -> bool:
  return v is None or (isinstance(v, float) and math.isnan(v))


def _as_bool(v: Any, source: str, i: int, key: str) -> bool:
  if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
    return bool(v)
  raise DataError(source, f"#{i}", f"key '{key}' must be a bool, got {v!r}")


def _as_float(v: Any, source: str, i: int, key: str, lo: float, hi: float) -> float:
  try:
    x = float(v)
  except (TypeError, ValueError):
    raise DataError(source, f"#{i}", f"key '{key}' must be a number, got {v!r}") from None
  if not lo <= x <= hi:
    raise DataError(source, f"#{i}", f"key '{key}' must be in [{lo}, {hi}], got {v!r}")
  return x


def _as_severity(v: Any, source: str, i: int) -> int:
  if isinstance(v, str) and v in SEVERITY_INDEX:
    return SEVERITY_INDEX[v]
  if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < len(SEVERITIES):
    return int(v)
  raise DataError(source, f"#{i}",
                  f"key 'severity' must be 0..{len(SEVERITIES) - 1} or one of {SEVERITIES}, "
                  f"got {v!r}")


def record_columns(records: Records, source: str = "records") -> dict[str, np.ndarray]:
  """Validates graded records and returns numpy columns.

  Missing optional values become NaN (numbers) or None (strings); `refused` falls back to the mode
  (`refusal_redirect` / `hard_refusal`) when absent, else NaN. Severity is -1 where not given for a
  safe output. Errors name `source` and the record index.
  """
  rows = as_records(records)
  n = len(rows)
  cols: dict[str, Any] = {
      "prompt_id": np.empty(n, dtype=object), "intent": np.empty(n, dtype=object),
      "unsafe": np.zeros(n, dtype=bool), "severity": np.full(n, -1, dtype=np.int64),
      "helpfulness": np.zeros(n), "helpfulness_1to4": np.full(n, np.nan),
      "mode": np.full(n, None, dtype=object), "refused": np.full(n, np.nan),
      "split": np.full(n, None, dtype=object), "model": np.full(n, None, dtype=object),
      "gold_reward": np.full(n, np.nan), "proxy_reward": np.full(n, np.nan),
  }
  for i, row in enumerate(rows):
    if not isinstance(row, Mapping):
      raise DataError(source, f"#{i}", f"record must be a mapping, got {type(row).__name__}")
    for key in REQUIRED_KEYS:
      if key not in row or _is_missing(row[key]):
        raise DataError(source, f"#{i}", f"required key '{key}' missing")
    cols["prompt_id"][i] = str(row["prompt_id"])
    if row["intent"] not in INTENTS:
      raise DataError(source, f"#{i}",
                      f"key 'intent' must be one of {INTENTS}, got {row['intent']!r}")
    cols["intent"][i] = row["intent"]
    cols["unsafe"][i] = _as_bool(row["unsafe"], source, i, "unsafe")
    sev = row.get("severity")
    if _is_missing(sev):
      if cols["unsafe"][i]:
        raise DataError(source, f"#{i}", "key 'severity' required for an unsafe output")
    else:
      cols["severity"][i] = _as_severity(sev, source, i)
    cols["helpfulness"][i] = _as_float(row["helpfulness"], source, i, "helpfulness", 0.0, 1.0)
    if not _is_missing(row.get("helpfulness_1to4")):
      cols["helpfulness_1to4"][i] = _as_float(row["helpfulness_1to4"], source, i,
                                              "helpfulness_1to4", 1.0, 4.0)
    mode = row.get("mode")
    if not _is_missing(mode):
      if mode not in MODES:
        raise DataError(source, f"#{i}", f"key 'mode' must be one of {MODES}, got {mode!r}")
      cols["mode"][i] = mode
    if not _is_missing(row.get("refused")):
      cols["refused"][i] = float(_as_bool(row["refused"], source, i, "refused"))
    elif cols["mode"][i] is not None:
      cols["refused"][i] = float(cols["mode"][i] in REFUSAL_MODES)
    for key in ("split", "model"):
      if not _is_missing(row.get(key)):
        cols[key][i] = str(row[key])
    for key in ("gold_reward", "proxy_reward"):
      if not _is_missing(row.get(key)):
        cols[key][i] = _as_float(row[key], source, i, key, -math.inf, math.inf)
  return cols


def _group_keys(cols: Mapping[str, np.ndarray], by: str | None) -> list[str]:
  if by is None:
    return []
  if by not in cols:
    raise SafecompError(f"cannot group by unknown key '{by}'; known: {sorted(cols)}")
  if by == "intent":
    return list(INTENTS)  # always all intents, so empty ones show up as n=0
  return sorted({str(v) for v in cols[by] if v is not None})


def _group_mask(cols: Mapping[str, np.ndarray], by: str, key: str) -> np.ndarray:
  return np.array([v is not None and str(v) == key for v in cols[by]], dtype=bool)


# ---------------------------------------------------------------------------------------------
# Summaries.


def _summarize_group(cols: Mapping[str, np.ndarray], mask: np.ndarray, *, n_boot: int, seed: int,
                     confidence: float, present: Mapping[str, bool]) -> dict[str, Any]:
  """All metrics for the records selected by `mask`."""
  kw = dict(n_boot=n_boot, seed=seed, confidence=confidence)
  unsafe = cols["unsafe"][mask]
  safe = ~unsafe
  out: dict[str, Any] = {"n": int(mask.sum()), "n_safe": int(safe.sum()),
                         "n_unsafe": int(unsafe.sum())}
  out["safety_rate"] = proportion_ci(safe, **kw).to_dict()
  out["helpfulness_given_safe"] = mean_ci(cols["helpfulness"][mask][safe], **kw).to_dict()
  if present["helpfulness_1to4"]:
    out["helpfulness_1to4_given_safe"] = mean_ci(cols["helpfulness_1to4"][mask][safe],
                                                 **kw).to_dict()
  sev = cols["severity"][mask][unsafe]
  out["severity_of_unsafe"] = {name: proportion_ci(sev == level, **kw).to_dict()
                               for level, name in enumerate(SEVERITIES)}
  if present["mode"]:
    modes = cols["mode"][mask]
    known = np.array([m is not None for m in modes], dtype=bool)
    out["modes"] = {m: proportion_ci(modes[known] == m, **kw).to_dict() for m in MODES}
  if present["refused"]:
    refused = cols["refused"][mask]
    out["refusal_rate"] = proportion_ci(refused, **kw).to_dict()
    over = proportion_ci(refused[cols["intent"][mask] == "benign"], **kw)
    if over.n == 0:
      over = dataclasses.replace(over, note="n=0: no benign prompts with refusal information")
    out["over_refusal_rate"] = over.to_dict()
  for key in ("gold_reward", "proxy_reward"):
    if present[key]:
      out[key] = mean_ci(cols[key][mask], **kw).to_dict()
  return out


def summarize(records: Records, by: str | None = "intent", *, n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95, source: str = "records") -> dict[str, Any]:
  """Per-group and overall evaluation metrics with intervals.

  Returns {"by", "n", "model", "groups": {key: metrics}, "overall": metrics, "notes", "config"},
  where metrics holds n, n_safe, n_unsafe, safety_rate, helpfulness_given_safe,
  [helpfulness_1to4_given_safe], severity_of_unsafe {severity: est}, [modes {mode: est}],
  [refusal_rate, over_refusal_rate], [gold_reward, proxy_reward] (bracketed: when present).
  Grouping by intent always lists every intent; an empty group has n=0 and NaN estimates with notes.
  """
  if n_boot < 1:
    raise SafecompError(f"n_boot must be >= 1, got {n_boot}")
  cols = record_columns(records, source)
  present = {
      "helpfulness_1to4": bool(np.any(~np.isnan(cols["helpfulness_1to4"]))),
      "mode": any(m is not None for m in cols["mode"]),
      "refused": bool(np.any(~np.isnan(cols["refused"]))),
      "gold_reward": bool(np.any(~np.isnan(cols["gold_reward"]))),
      "proxy_reward": bool(np.any(~np.isnan(cols["proxy_reward"]))),
  }
  kw = dict(n_boot=n_boot, seed=seed, confidence=confidence, present=present)
  notes = []
  groups = {}
  for key in _group_keys(cols, by):
    mask = _group_mask(cols, by, key)
    groups[key] = _summarize_group(cols, mask, **kw)
    if groups[key]["n"] == 0:
      notes.append(f"{by}={key}: no records")
    elif groups[key]["n_unsafe"] == 0:
      notes.append(f"{by}={key}: no unsafe outputs, severity distribution undefined")
  overall = _summarize_group(cols, np.ones(len(cols["unsafe"]), dtype=bool), **kw)
  if overall["n"] == 0:
    notes.append("no records")
  models = sorted({m for m in cols["model"] if m is not None})
  return {
      "by": by, "n": overall["n"], "model": models[0] if len(models) == 1 else None,
      "groups": groups, "overall": overall, "notes": notes,
      "config": {"n_boot": n_boot, "seed": seed, "confidence": confidence},
  }


# ---------------------------------------------------------------------------------------------
# Paired comparisons.


def _metric_values(cols: Mapping[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-record metric values and a validity mask (False where undefined for that record)."""
  n = len(cols["unsafe"])
  everywhere = np.ones(n, dtype=bool)
  safe = ~cols["unsafe"]
  if metric in ("safety", "safe"):
    return safe.astype(np.float64), everywhere
  if metric == "unsafe":
    return cols["unsafe"].astype(np.float64), everywhere
  if metric == "helpfulness":
    return cols["helpfulness"], everywhere
  if metric == "helpfulness_given_safe":
    return cols["helpfulness"], safe
  if metric == "helpfulness_1to4_given_safe":
    h = cols["helpfulness_1to4"]
    return h, safe & ~np.isnan(h)
  if metric == "severity":  # 0 for safe outputs, else the severity level + 1
    return np.where(safe, 0, cols["severity"] + 1).astype(np.float64), everywhere
  if metric == "refused":
    r = cols["refused"]
    return r, ~np.isnan(r)
  if metric == "over_refusal":
    r = cols["refused"]
    return r, ~np.isnan(r) & (cols["intent"] == "benign")
  if metric in ("gold_reward", "proxy_reward"):
    v = cols[metric]
    return v, ~np.isnan(v)
  raise SafecompError(f"unknown paired metric '{metric}'; known: {PAIRED_METRICS} or a callable")


PAIRED_METRICS = ("safety", "safe", "unsafe", "helpfulness", "helpfulness_given_safe",
                  "helpfulness_1to4_given_safe", "severity", "refused", "over_refusal",
                  "gold_reward", "proxy_reward")


def _callable_values(rows: Sequence[Mapping[str, Any]],
                     fn: Callable[[Mapping[str, Any]], float | None]
                     ) -> tuple[np.ndarray, np.ndarray]:
  vals = np.array([np.nan if _is_missing(v := fn(r)) else float(v) for r in rows], dtype=np.float64)
  return vals, ~np.isnan(vals)


def match_prompts(ids_a: Sequence[str], ids_b: Sequence[str], names: tuple[str, str] = ("a", "b")
                  ) -> np.ndarray:
  """Index into `ids_b` for each entry of `ids_a`; raises listing duplicate or unmatched ids."""
  for name, ids in zip(names, (ids_a, ids_b)):
    seen, dups = set(), []
    for pid in ids:
      if pid in seen:
        dups.append(pid)
      seen.add(pid)
    if dups:
      raise SafecompError(f"duplicate prompt_id in {name}: {_short_list(dups)}")
  pos_b = {pid: j for j, pid in enumerate(ids_b)}
  only_a = [pid for pid in ids_a if pid not in pos_b]
  set_a = set(ids_a)
  only_b = [pid for pid in ids_b if pid not in set_a]
  if only_a or only_b:
    raise SafecompError(f"unmatched prompt_id: only in {names[0]}: {_short_list(only_a)}; "
                        f"only in {names[1]}: {_short_list(only_b)}")
  return np.array([pos_b[pid] for pid in ids_a], dtype=np.int64)


def _short_list(items: Sequence[Any], limit: int = 20) -> str:
  head = ", ".join(repr(x) for x in items[:limit])
  more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  return f"[{head}{more}]"


def sign_flip_pvalue(diffs: Sequence[float] | np.ndarray, *, n_perm: int = 10000, seed: int = 0
                     ) -> tuple[float, str]:
  """Two-sided paired permutation p-value for mean(diffs) = 0 by random sign flips.

  Enumerates all 2^n sign patterns when that is no more than `n_perm` (exact), else draws `n_perm`
  random patterns and returns (1 + #extreme) / (1 + n_perm). Returns (p, "exact" | "monte_carlo").
  """
  d = np.asarray(diffs, dtype=np.float64).reshape(-1)
  n = d.size
  if n == 0:
    return math.nan, "none"
  observed = abs(d.mean())
  tol = 1e-12 * max(1.0, observed)  # equal statistics up to rounding count as extreme
  if np.all(d == 0):
    return 1.0, "exact"
  if n < 31 and (1 << n) <= n_perm:
    codes = np.arange(1 << n, dtype=np.int64)[:, None]
    signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)
    stats = np.abs(signs @ d) / n
    return float(np.mean(stats >= observed - tol)), "exact"
  rng = np.random.default_rng(seed)
  chunk = max(1, min(n_perm, _MAX_MATRIX_ELEMENTS // n))
  extreme = 0
  for start in range(0, n_perm, chunk):
    size = min(chunk, n_perm - start)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
    extreme += int(np.sum(np.abs(signs @ d) / n >= observed - tol))
  return (1 + extreme) / (1 + n_perm), "monte_carlo"


def _paired_group(va: np.ndarray, vb: np.ndarray, *, n_boot: int, n_perm: int, seed: int,
                  confidence: float) -> dict[str, Any]:
  if va.size == 0:
    return {"n": 0, "mean_a": math.nan, "mean_b": math.nan,
            "diff": _empty("paired_bootstrap", "n=0: no pairs").to_dict(),
            "p_value": math.nan, "p_method": "none", "note": "n=0: no pairs"}
  d = va - vb
  est = mean_ci(d, n_boot=n_boot, seed=seed, confidence=confidence)
  p, p_method = sign_flip_pvalue(d, n_perm=n_perm, seed=seed)
  return {"n": int(d.size), "mean_a": float(va.mean()), "mean_b": float(vb.mean()),
          "diff": dataclasses.replace(est, method="paired_bootstrap").to_dict(),
          "p_value": p, "p_method": p_method, "note": est.note}


def paired_comparison(records_a: Records, records_b: Records,
                      metric: str | Callable[[Mapping[str, Any]], float | None],
                      by: str | None = "intent", *, n_boot: int = 2000, n_perm: int = 10000,
                      seed: int = 0, confidence: float = 0.95,
                      names: tuple[str, str] | None = None) -> dict[str, Any]:
  """Compares two models on the same prompts: mean of (a - b) per group and overall.

  Records are matched on `prompt_id` (an error lists unmatched ids). `metric` is one of
  PAIRED_METRICS or a callable record -> value (None for undefined); a pair counts where the metric
  is defined for both sides (e.g. `helpfulness_given_safe` uses prompts where both outputs are safe,
  `over_refusal` uses benign prompts). Each group reports the paired-bootstrap interval of the mean
  difference and a two-sided sign-flip permutation p-value.
  """
  rows_a, rows_b = as_records(records_a), as_records(records_b)
  cols_a = record_columns(rows_a, "records_a")
  cols_b = record_columns(rows_b, "records_b")
  if names is None:
    names = tuple(_single_model(c, default) for c, default in ((cols_a, "a"), (cols_b, "b")))
  idx = match_prompts(list(cols_a["prompt_id"]), list(cols_b["prompt_id"]), names)
  if callable(metric):
    (va, ok_a), (vb, ok_b) = _callable_values(rows_a, metric), _callable_values(rows_b, metric)
    metric_name = getattr(metric, "__name__", "custom")
  else:
    (va, ok_a), (vb, ok_b) = _metric_values(cols_a, metric), _metric_values(cols_b, metric)
    metric_name = metric
  vb, ok_b = vb[idx], ok_b[idx]
  if by is not None:
    if by not in cols_a:
      raise SafecompError(f"cannot group by unknown key '{by}'; known: {sorted(cols_a)}")
    keys_b = cols_b[by][idx]
    bad = [pid for pid, ka, kb in zip(cols_a["prompt_id"], cols_a[by], keys_b) if ka != kb]
    if bad:
      raise SafecompError(f"'{by}' differs between {names[0]} and {names[1]} for prompt_id "
                          f"{_short_list(bad)}")
  valid = ok_a & ok_b
  kw = dict(n_boot=n_boot, n_perm=n_perm, seed=seed, confidence=confidence)
  groups = {}
  for key in _group_keys(cols_a, by):
    mask = _group_mask(cols_a, by, key) & valid
    groups[key] = _paired_group(va[mask], vb[mask], **kw)
  return {"metric": metric_name, "by": by, "models": list(names), "direction": "a - b",
          "groups": groups, "overall": _paired_group(va[valid], vb[valid], **kw),
          "config": {"n_boot": n_boot, "n_perm": n_perm, "seed": seed, "confidence": confidence}}


def _single_model(cols: Mapping[str, np.ndarray], default: str) -> str:
  models = {m for m in cols["model"] if m is not None}
  return models.pop() if len(models) == 1 else default
