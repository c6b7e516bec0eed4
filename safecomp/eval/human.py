"""Human evaluation round trip: blinded side-by-side pairs out, raters' preferences back in.

`export_pairs` writes pairs for raters with a seeded random left/right order and the model names
held in a separate key file; `load_ratings` reads raters' CSV/JSONL files; `unblind` maps left/right
back to models with the key; `win_rates` gives model A's win rate (ties count half) with a bootstrap
interval over pairs, a per-intent breakdown, mean 1-4 scores and inter-rater agreement.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from safecomp.errors import DataError, SafecompError
from safecomp.eval.stats import Records, as_records, match_prompts, mean_ci

PAIR_FIELDS = ("pair_id", "prompt", "left", "right")
RATING_FIELDS = ("pair_id", "rater", "preference", "safety_left", "safety_right",
                 "helpfulness_left", "helpfulness_right")
PREFERENCES = ("left", "right", "tie")
SCORE_FIELDS = RATING_FIELDS[3:]
OUTCOMES = ("a", "b", "tie")


@dataclasses.dataclass(frozen=True)
class Rating:
  """One rater's judgement of one pair, with the file and line it came from."""
  pair_id: str
  rater: str
  preference: str
  safety_left: int | None = None
  safety_right: int | None = None
  helpfulness_left: int | None = None
  helpfulness_right: int | None = None
  source: str = "<memory>"
  line: int = 0


# ---------------------------------------------------------------------------------------------
# Export.


def _outputs_by_prompt(outputs: Records, source: str, prompt_key: str, response_key: str
                       ) -> list[Mapping[str, Any]]:
  rows = as_records(outputs)
  for i, row in enumerate(rows):
    for key in ("prompt_id", prompt_key, response_key):
      if key not in row or row[key] is None:
        raise DataError(source, f"#{i}", f"required key '{key}' missing")
  return rows


def render_prompt(prompt: Any) -> str:
  """Prompt text for raters: a string as is, a chat as `role: content` blocks."""
  if isinstance(prompt, str):
    return prompt
  if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
    return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
  return str(prompt)


def _single_model(rows: Sequence[Mapping[str, Any]], default: str) -> str:
  models = {str(r["model"]) for r in rows if r.get("model") is not None}
  return models.pop() if len(models) == 1 else default


def export_pairs(outputs_a: Records, outputs_b: Records, out_dir: str | pathlib.Path,
                 key_path: str | pathlib.Path, *, model_a: str | None = None,
                 model_b: str | None = None, seed: int = 0, prompt_key: str = "prompt",
                 response_key: str = "response") -> dict[str, pathlib.Path]:
  """Writes blinded pairs for raters and the un-blinding key.

  `outputs_a`/`outputs_b` hold `prompt_id`, the prompt and the response (optionally `intent`,
  `model`) for the same prompts; a chat prompt (list of role/content messages) is rendered as text.
  In `out_dir`: `pairs.csv`, `pairs.jsonl` (pair_id, prompt, left,
  right; pairs shuffled, sides drawn per pair from `seed`) and `ratings_template.csv`. The key
  (which model is on which side, prompt_id, intent) goes to `key_path`, which must lie outside
  `out_dir` so the folder can be handed to raters as is.
  """
  out, key_path = pathlib.Path(out_dir), pathlib.Path(key_path)
  if out.resolve() in key_path.resolve().parents:
    raise SafecompError(f"key file {key_path} must not be inside the raters' folder {out}")
  rows_a = _outputs_by_prompt(outputs_a, "outputs_a", prompt_key, response_key)
  rows_b = _outputs_by_prompt(outputs_b, "outputs_b", prompt_key, response_key)
  model_a = model_a or _single_model(rows_a, "a")
  model_b = model_b or _single_model(rows_b, "b")
  if model_a == model_b:
    raise SafecompError(f"both models are named '{model_a}'; pass model_a and model_b")
  ids_a = [str(r["prompt_id"]) for r in rows_a]
  idx_b = match_prompts(ids_a, [str(r["prompt_id"]) for r in rows_b], (model_a, model_b))
  for i, j in enumerate(idx_b):
    if rows_a[i][prompt_key] != rows_b[j][prompt_key]:
      raise DataError("outputs_b", f"#{j}", f"prompt text differs from outputs_a for prompt_id "
                      f"{ids_a[i]!r}")

  rng = np.random.default_rng(seed)
  order = rng.permutation(len(rows_a))
  a_left = rng.integers(0, 2, size=len(rows_a)).astype(bool)
  pairs, key = [], {}
  for k, i in enumerate(order):
    ra, rb = rows_a[i], rows_b[idx_b[i]]
    pair_id = f"pair-{k:05d}"
    left, right = (ra, rb) if a_left[k] else (rb, ra)
    pairs.append({"pair_id": pair_id, "prompt": render_prompt(ra[prompt_key]),
                  "left": str(left[response_key]), "right": str(right[response_key])})
    key[pair_id] = {"prompt_id": ids_a[i], "intent": ra.get("intent"),
                    "left": "a" if a_left[k] else "b", "right": "b" if a_left[k] else "a"}

  out.mkdir(parents=True, exist_ok=True)
  key_path.parent.mkdir(parents=True, exist_ok=True)
  paths = {"csv": out / "pairs.csv", "jsonl": out / "pairs.jsonl",
           "template": out / "ratings_template.csv", "key": key_path}
  with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=PAIR_FIELDS)
    writer.writeheader()
    writer.writerows(pairs)
  with open(paths["jsonl"], "w", encoding="utf-8") as f:
    f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
  with open(paths["template"], "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=RATING_FIELDS)
    writer.writeheader()
    writer.writerows({"pair_id": p["pair_id"]} for p in pairs)
  key_doc = {"models": {"a": model_a, "b": model_b}, "seed": seed, "pairs": key}
  key_path.write_text(json.dumps(key_doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
  return paths


# ---------------------------------------------------------------------------------------------
# Import.


def _parse_score(value: Any, path: str, line: int, field: str) -> int | None:
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  if isinstance(value, bool):
    raise DataError(path, line, f"'{field}' must be an integer 1-4, got {value!r}")
  try:
    score = float(value)
  except (TypeError, ValueError):
    raise DataError(path, line, f"'{field}' must be an integer 1-4, got {value!r}") from None
  if not score.is_integer() or not 1 <= score <= 4:
    raise DataError(path, line, f"'{field}' must be an integer 1-4, got {value!r}")
  return int(score)


def _parse_rating(row: Mapping[str, Any], path: str, line: int) -> Rating:
  fields = {}
  for key in ("pair_id", "rater"):
    value = row.get(key)
    if value is None or not str(value).strip():
      raise DataError(path, line, f"'{key}' is missing or empty")
    fields[key] = str(value).strip()
  pref = row.get("preference")
  pref = str(pref).strip().lower() if pref is not None else ""
  if pref not in PREFERENCES:
    raise DataError(path, line, f"'preference' must be one of {PREFERENCES}, got "
                    f"{row.get('preference')!r}")
  scores = {f: _parse_score(row.get(f), path, line, f) for f in SCORE_FIELDS}
  return Rating(fields["pair_id"], fields["rater"], pref, **scores, source=path, line=line)


def _read_rows(path: pathlib.Path) -> Iterable[tuple[int, Mapping[str, Any]]]:
  """(line number, row) pairs from a CSV (header on line 1) or JSONL file."""
  name = str(path)
  if path.suffix.lower() == ".csv":
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      header = reader.fieldnames or []
      missing = [k for k in ("pair_id", "rater", "preference") if k not in header]
      if missing:
        raise DataError(name, 1, f"CSV header lacks columns {missing}; got {reader.fieldnames}")
      for row in reader:
        line = reader.line_num  # the row's last physical line (rows may span lines)
        if None in row:
          raise DataError(name, line, f"row has {len(row) - 1 + len(row[None])} fields, header "
                          f"has {len(reader.fieldnames)}")
        yield line, row
  elif path.suffix.lower() in (".jsonl", ".json"):
    with open(path, encoding="utf-8") as f:
      for line, text in enumerate(f, start=1):
        if not text.strip():
          continue
        try:
          row = json.loads(text)
        except json.JSONDecodeError as e:
          raise DataError(name, line, f"invalid JSON: {e.msg}") from None
        if not isinstance(row, dict):
          raise DataError(name, line, f"expected a JSON object, got {type(row).__name__}")
        yield line, row
  else:
    raise SafecompError(f"{path}: ratings must be .csv or .jsonl")


def load_ratings(paths: str | pathlib.Path | Sequence[str | pathlib.Path]) -> list[Rating]:
  """Reads ratings (pair_id, rater, preference left/right/tie, optional safety_/helpfulness_
  left/right 1-4) from CSV or JSONL files. Bad rows raise DataError naming the file and line; a
  rater rating the same pair twice is an error too."""
  if isinstance(paths, (str, pathlib.Path)):
    paths = [paths]
  ratings: list[Rating] = []
  seen: dict[tuple[str, str], Rating] = {}
  for path in map(pathlib.Path, paths):
    for line, row in _read_rows(path):
      rating = _parse_rating(row, str(path), line)
      prev = seen.get((rating.pair_id, rating.rater))
      if prev is not None:
        raise DataError(str(path), line, f"rater {rating.rater!r} already rated "
                        f"{rating.pair_id!r} at {prev.source}:{prev.line}")
      seen[(rating.pair_id, rating.rater)] = rating
      ratings.append(rating)
  return ratings


def load_key(key: str | pathlib.Path | Mapping[str, Any]) -> dict[str, Any]:
  """The un-blinding key written by export_pairs (a path or the loaded dict)."""
  if isinstance(key, Mapping):
    doc, name = dict(key), "<key>"
  else:
    name = str(key)
    try:
      doc = json.loads(pathlib.Path(key).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise DataError(name, e.lineno, f"invalid JSON: {e.msg}") from None
  if not isinstance(doc, dict) or "models" not in doc or "pairs" not in doc:
    raise SafecompError(f"{name}: not a pair key (needs 'models' and 'pairs')")
  doc["_source"] = name
  return doc


def unblind(ratings: Sequence[Rating], key: str | pathlib.Path | Mapping[str, Any]
            ) -> list[dict[str, Any]]:
  """Maps each rating's left/right to models a/b with the key.

  Each result has pair_id, prompt_id, intent, rater, winner ('a', 'b' or 'tie'), winner_model,
  score_a (1 win, 0.5 tie, 0 loss) and safety_a/b, helpfulness_a/b (None where not rated).
  """
  doc = load_key(key)
  models, pairs = doc["models"], doc["pairs"]
  out = []
  for r in ratings:
    entry = pairs.get(r.pair_id)
    if entry is None:
      raise DataError(r.source, r.line, f"pair_id {r.pair_id!r} not in key {doc['_source']}")
    side = {"left": entry["left"], "right": entry["right"]}
    winner = "tie" if r.preference == "tie" else side[r.preference]
    row = {"pair_id": r.pair_id, "prompt_id": entry["prompt_id"], "intent": entry.get("intent"),
           "rater": r.rater, "winner": winner,
           "winner_model": "tie" if winner == "tie" else models[winner],
           "score_a": {"a": 1.0, "b": 0.0, "tie": 0.5}[winner]}
    for metric in ("safety", "helpfulness"):
      for pos in ("left", "right"):
        row[f"{metric}_{side[pos]}"] = getattr(r, f"{metric}_{pos}")
    out.append(row)
  return out


# ---------------------------------------------------------------------------------------------
# Scores.


def rater_agreement(unblinded: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Agreement on the outcome (a / b / tie) over pairs rated by two or more raters.

  `percent_agreement` is the mean over pairs of the share of agreeing rater pairs; `fleiss_kappa`
  is Fleiss' kappa in its form for a varying number of raters per pair.
  """
  counts: dict[str, np.ndarray] = {}
  for row in unblinded:
    counts.setdefault(row["pair_id"], np.zeros(len(OUTCOMES)))[OUTCOMES.index(row["winner"])] += 1
  table = np.array([c for c in counts.values() if c.sum() >= 2]).reshape(-1, len(OUTCOMES))
  result = {"n_pairs": int(table.shape[0]), "percent_agreement": math.nan,
            "fleiss_kappa": math.nan, "note": ""}
  if table.shape[0] == 0:
    result["note"] = "no pair rated by two or more raters"
    return result
  n_i = table.sum(axis=1)
  p_i = ((table ** 2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
  p_bar = float(p_i.mean())
  p_j = table.sum(axis=0) / n_i.sum()
  p_e = float((p_j ** 2).sum())
  result["percent_agreement"] = p_bar
  if p_e >= 1.0:
    result["note"] = "every rating has the same outcome: kappa undefined"
  else:
    result["fleiss_kappa"] = (p_bar - p_e) / (1.0 - p_e)
  return result


def _score_block(rows: Sequence[Mapping[str, Any]], *, n_boot: int, seed: int,
                 confidence: float) -> dict[str, Any]:
  """Win rate of model a with ties as half: per-pair mean over raters, bootstrapped over pairs."""
  by_pair: dict[str, list[float]] = {}
  for row in rows:
    by_pair.setdefault(row["pair_id"], []).append(row["score_a"])
  pair_scores = np.array([np.mean(v) for v in by_pair.values()], dtype=np.float64)
  kw = dict(n_boot=n_boot, seed=seed, confidence=confidence)
  win = mean_ci(pair_scores, **kw).to_dict()
  counts = {o: sum(1 for r in rows if r["winner"] == o) for o in OUTCOMES}
  block = {"n_pairs": len(by_pair), "n_ratings": len(rows), "win_rate_a": win,
           "counts": {"a": counts["a"], "b": counts["b"], "tie": counts["tie"]}}
  for metric in ("safety", "helpfulness"):
    for side in ("a", "b"):
      vals = [r[f"{metric}_{side}"] for r in rows if r.get(f"{metric}_{side}") is not None]
      if vals:
        block[f"{metric}_{side}"] = mean_ci(np.array(vals, dtype=np.float64), **kw).to_dict()
  return block


def win_rates(unblinded: Sequence[Mapping[str, Any]], key: str | pathlib.Path | Mapping[str, Any],
              *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
  """Win rate of model a over b (ties half) with a bootstrap CI over pairs, overall and by intent,
  plus mean 1-4 safety/helpfulness per model and inter-rater agreement."""
  doc = load_key(key)
  if not unblinded:
    raise SafecompError("no ratings to score")
  kw = dict(n_boot=n_boot, seed=seed, confidence=confidence)
  intent_of = lambda r: str(r["intent"] or "unknown")
  intents = sorted({intent_of(r) for r in unblinded})
  rated = {r["pair_id"] for r in unblinded}
  return {
      "models": dict(doc["models"]),
      "n_raters": len({r["rater"] for r in unblinded}),
      "n_unrated_pairs": len(set(doc["pairs"]) - rated),
      "overall": _score_block(unblinded, **kw),
      "by_intent": {i: _score_block([r for r in unblinded if intent_of(r) == i], **kw)
                    for i in intents},
      "agreement": rater_agreement(unblinded),
      "config": {"n_boot": n_boot, "seed": seed, "confidence": confidence},
  }


def score_ratings(ratings_paths: str | pathlib.Path | Sequence[str | pathlib.Path],
                  key: str | pathlib.Path | Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
  """load_ratings + unblind + win_rates."""
  return win_rates(unblind(load_ratings(ratings_paths), key), key, **kwargs)


def format_win_rates(result: Mapping[str, Any], digits: int = 3) -> str:
  """Markdown table of a win_rates() result."""
  a, b = result["models"]["a"], result["models"]["b"]
  lines = [f"Win rate of {a} over {b} (ties count half), {result['n_raters']} rater(s).", "",
           "| group | pairs | ratings | win rate [CI] | wins / losses / ties |",
           "|---|---|---|---|---|"]
  blocks = list(result["by_intent"].items()) + [("overall", result["overall"])]
  for label, blk in blocks:
    w, c = blk["win_rate_a"], blk["counts"]
    ci = "—" if math.isnan(w["value"]) else (
        f"{w['value']:.{digits}f} [{w['lo']:.{digits}f}, {w['hi']:.{digits}f}]")
    lines.append(f"| {label} | {blk['n_pairs']} | {blk['n_ratings']} | {ci} | "
                 f"{c['a']} / {c['b']} / {c['tie']} |")
  agr = result["agreement"]
  if agr["n_pairs"]:
    lines += ["", f"Agreement over {agr['n_pairs']} multiply-rated pairs: "
              f"{agr['percent_agreement']:.{digits}f} raw, Fleiss kappa "
              f"{agr['fleiss_kappa']:.{digits}f}."]
  return "\n".join(lines) + "\n"
