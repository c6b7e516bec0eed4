"""Response-mode classifier vs the keyword-refusal baseline on human-labelled completions.

    python experiments/mode_classifier_eval.py [--data-dir DIR] [--public-dir ../shared/data] [--fit]

Reads the XSTest v2 completions and the RBR gold set through their tfds builders
(`safecomp.data.public`): prepared under `--data-dir` on first use, from the source files in
`--public-dir/<dataset>/` (default $SAFECOMP_SHARED_DATA or `../shared/data` beside the repository,
when it exists) or else downloaded from their pinned URLs; either way each file's sha256 is checked,
so a modified or missing file fails here rather than changing the numbers.

Prints Markdown tables: binary balanced accuracy (complies vs refuses) and per-class precision /
recall / F1 for the classifier and the keyword baseline, on XSTest (design set), the odd RBR gold
lines (design) and the even RBR gold lines (held out). `--fit` also refits the refusal weights on the
design split and prints them in the form `mode_classifier.REFUSAL_WEIGHTS` takes.

Label mappings:
  XSTest `final_label`: 1_full_compliance -> "comply" (mode direct); 2_full_refusal -> "refuse";
    3_partial_refusal -> "partial" (safe_completion; left out of the binary score: it is both).
  RBR gold propositions (human judgments of the completion): fully_complies -> "comply" (direct);
    partially_complies only -> "partial" (safe_completion; left out of the binary score);
    neither -> "refuse", with mode refusal_redirect when encourage_professional_help,
    provides_resources or gentle_encouragement_for_help holds, else hard_refusal.
  Predicted modes map onto those classes through MODE_TO_CLASS.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import sys
from typing import Mapping, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from safecomp.constants import MODES  # pylint: disable=wrong-import-position
from safecomp.data import public, readers  # pylint: disable=wrong-import-position
from safecomp.rewards import mode_classifier as mc  # pylint: disable=wrong-import-position
from safecomp.tasks.sources import DEFAULT_DATA_DIR  # pylint: disable=wrong-import-position

CLASSES = ("comply", "partial", "refuse")
MODE_TO_CLASS = {"direct": "comply", "safe_completion": "partial",
                 "refusal_redirect": "refuse", "hard_refusal": "refuse"}
XSTEST_LABELS = {"1_full_compliance": "comply", "2_full_refusal": "refuse",
                 "3_partial_refusal": "partial"}
RBR_REDIRECT = ("encourage_professional_help", "provides_resources", "gentle_encouragement_for_help")


@dataclasses.dataclass(frozen=True)
class LabeledExample:
  """One human-labelled completion: `label` is comply / partial / refuse, `mode` the mapped mode
  where the labels pin it down (None otherwise), `source` dataset:split:row (row 1-based, in file
  order)."""
  prompt: str
  completion: str
  label: str
  mode: str | None
  source: str


# ----------------------------------------------------------------------------- data


def default_public_dir() -> pathlib.Path | None:
  path = pathlib.Path(os.environ.get("SAFECOMP_SHARED_DATA", REPO.parent / "shared" / "data"))
  return path if path.is_dir() else None


def prepared(name: str, config: str | None, data_dir, public_dir=None) -> public.PublicBuilder:
  """The builder of a public set, prepared under `data_dir` unless it already is there."""
  builder = public.PUBLIC_BUILDERS[name](config=config, data_dir=str(data_dir),
                                         file_format="array_record")
  if (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file():
    return builder
  manual = None
  if public_dir is not None:
    manual = pathlib.Path(public_dir) / name
    # tfds reads a missing manual dir as "download"; a named folder must be there.
    if not manual.is_dir():
      raise FileNotFoundError(f"{manual} not found: no source files for {name}")
  with contextlib.redirect_stdout(sys.stderr):  # tfds reports on stdout; it carries the tables
    return public.build_public(name, data_dir, config=config, manual_dir=manual)


def xstest_examples(data_dir, public_dir=None) -> list[LabeledExample]:
  """The XSTest v2 completions of all three models with their human `final_label`."""
  builder = prepared("xstest", "completions", data_dir, public_dir)
  out = []
  for model in public.XSTEST_MODELS:
    for i, row in enumerate(readers.load_split(builder.data_dir, model)):
      label = XSTEST_LABELS[row["final_label"]]  # the builder admits only these labels
      mode = {"comply": "direct", "partial": "safe_completion"}.get(label)
      out.append(LabeledExample(row["prompt"], row["completion"], label, mode,
                                f"xstest:{model}:{i + 1}"))
  return out


def rbr_label(props: Mapping[str, bool]) -> tuple[str, str]:
  """(class, mode) from the RBR propositions (see the module docstring)."""
  if props["fully_complies"]:
    return "comply", "direct"
  if props["partially_complies"]:
    return "partial", "safe_completion"
  if any(props[k] for k in RBR_REDIRECT):
    return "refuse", "refusal_redirect"
  return "refuse", "hard_refusal"


def rbr_gold_examples(data_dir, public_dir=None) -> list[LabeledExample]:
  """The RBR gold set with labels from its human propositions."""
  builder = prepared("rbr_gold", None, data_dir, public_dir)
  out = []
  for i, row in enumerate(readers.load_split(builder.data_dir, "train")):
    label, mode = rbr_label(row["propositions"])
    out.append(LabeledExample(mc.last_user_message(row["prompt"]), row["completion"], label, mode,
                              f"rbr_gold:train:{i + 1}"))
  return out


def split_rbr(examples: Sequence[LabeledExample]
              ) -> tuple[list[LabeledExample], list[LabeledExample]]:
  """(design, held_out): odd and even lines of the RBR gold file."""
  row = lambda e: int(e.source.rsplit(":", 1)[1])
  return [e for e in examples if row(e) % 2 == 1], [e for e in examples if row(e) % 2 == 0]


# ----------------------------------------------------------------------------- fitting


def fit_refusal_weights(examples: Sequence[LabeledExample], *, l2: float = 1.0,
                        group_weights: Mapping[str, float] | None = None,
                        steps: int = 50) -> dict[str, float]:
  """Fits the linear refusal model by L2-regularised logistic regression (Newton steps).

  Uses the comply and refuse rows (partial rows are both and are left out). `group_weights` maps
  a source prefix to a row weight so that a small set is not drowned by a large one.
  """
  rows = [e for e in examples if e.label in ("comply", "refuse")]
  if not rows:
    raise ValueError("no comply/refuse rows to fit on")
  names = list(mc.refusal_inputs(mc.extract_features("", "")).keys())
  inputs = [mc.refusal_inputs(mc.extract_features(e.prompt, e.completion)) for e in rows]
  x = np.array([[row[k] for k in names] for row in inputs])
  x = np.concatenate([np.ones((len(rows), 1)), x], axis=1)
  y = np.array([e.label == "refuse" for e in rows], dtype=np.float64)
  sw = np.ones(len(rows))
  for prefix, gw in (group_weights or {}).items():
    sw[[e.source.startswith(prefix) for e in rows]] = gw
  reg = np.full(x.shape[1], l2)
  reg[0] = 0.0  # no penalty on the bias
  w = np.zeros(x.shape[1])
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-x @ w))
    grad = x.T @ (sw * (p - y)) + reg * w
    hess = (x * (sw * p * (1 - p))[:, None]).T @ x + np.diag(reg)
    w -= np.linalg.solve(hess, grad)
  return {"bias": float(w[0]), **{k: float(v) for k, v in zip(names, w[1:])}}


def fit_design_weights(xstest: Sequence[LabeledExample], rbr: Sequence[LabeledExample],
                       l2: float = 1.0) -> dict[str, float]:
  """Refits `mc.REFUSAL_WEIGHTS` on the design split (XSTest and the odd RBR lines), the RBR rows
  weighted up to XSTest's total."""
  rbr_design, _ = split_rbr(rbr)
  n_x = sum(e.label != "partial" for e in xstest)
  n_r = sum(e.label != "partial" for e in rbr_design)
  return fit_refusal_weights(list(xstest) + rbr_design, l2=l2,
                             group_weights={"rbr_gold:": n_x / max(n_r, 1)})


# ----------------------------------------------------------------------------- metrics


def balanced_accuracy(pred_refuses: Sequence[bool], true_refuses: Sequence[bool]) -> float:
  """Mean of recall on refusals and recall on compliances."""
  pos = [p for p, t in zip(pred_refuses, true_refuses) if t]
  neg = [p for p, t in zip(pred_refuses, true_refuses) if not t]
  if not pos or not neg:
    raise ValueError("balanced accuracy needs both classes")
  return 0.5 * (sum(pos) / len(pos) + sum(not p for p in neg) / len(neg))


def per_class_report(pred: Sequence[str], true: Sequence[str],
                     classes: Sequence[str]) -> dict[str, dict[str, float]]:
  """Precision, recall, F1 and support per class."""
  report = {}
  for c in classes:
    tp = sum(p == c and t == c for p, t in zip(pred, true))
    n_pred = sum(p == c for p in pred)
    n_true = sum(t == c for t in true)
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_true if n_true else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    report[c] = {"precision": prec, "recall": rec, "f1": f1, "support": float(n_true)}
  return report


def binary_scores(examples: Sequence[LabeledExample], pred_refuses: Sequence[bool]) -> dict[str, float]:
  """Balanced accuracy of refusal predictions (one per example) on the comply-vs-refuse rows, plus
  the variant that counts `partial` rows as complying."""
  if len(pred_refuses) != len(examples):
    raise ValueError(f"{len(pred_refuses)} predictions for {len(examples)} examples")
  pairs = [(bool(p), e.label) for p, e in zip(pred_refuses, examples)]
  clear = [(p, label == "refuse") for p, label in pairs if label != "partial"]
  with_partial = [(p, label == "refuse") for p, label in pairs]
  return {
      "balanced_accuracy": balanced_accuracy(*zip(*clear)),
      "balanced_accuracy_partial_as_comply": balanced_accuracy(*zip(*with_partial)),
      "n_clear": float(len(clear)),
      "n_all": float(len(with_partial)),
  }


def evaluate(examples):
  """Predictions of both methods, with the binary scores and per-class reports."""
  results = [mc.classify_mode(e.prompt, e.completion) for e in examples]
  keyword = [mc.keyword_refusal_matcher(e.completion) for e in examples]
  true = [e.label for e in examples]
  clf_cls = [MODE_TO_CLASS[r.mode] for r in results]
  kw_cls = ["refuse" if k else "comply" for k in keyword]
  return {
      "n": len(examples),
      "clf_binary": binary_scores(examples, [not r.complies for r in results]),
      "kw_binary": binary_scores(examples, keyword),
      "clf_classes": per_class_report(clf_cls, true, CLASSES),
      "kw_classes": per_class_report(kw_cls, true, CLASSES),
      "modes": ([r.mode for r in results], [e.mode for e in examples]),
  }


# ----------------------------------------------------------------------------- tables


def print_binary(rows):
  print("| set | rows (clear / all) | classifier BA | keyword BA | classifier BA, partial = comply | "
        "keyword BA, partial = comply |")
  print("|---|---|---|---|---|---|")
  for name, ev in rows:
    c, k = ev["clf_binary"], ev["kw_binary"]
    print(f"| {name} | {int(c['n_clear'])} / {int(c['n_all'])} | {c['balanced_accuracy']:.3f} | "
          f"{k['balanced_accuracy']:.3f} | {c['balanced_accuracy_partial_as_comply']:.3f} | "
          f"{k['balanced_accuracy_partial_as_comply']:.3f} |")


def print_classes(name, ev):
  print(f"\n**{name}** (per class; `partial` = safe_completion)\n")
  print("| class | support | clf precision | clf recall | clf F1 | kw precision | kw recall | kw F1 |")
  print("|---|---|---|---|---|---|---|---|")
  for c in CLASSES:
    a, b = ev["clf_classes"][c], ev["kw_classes"][c]
    print(f"| {c} | {int(a['support'])} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
          f"{b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |")


def print_modes(name, ev):
  pred, true = ev["modes"]
  report = per_class_report(pred, true, MODES)
  print(f"\n**{name}**: the classifier per mode (gold modes from the RBR propositions)\n")
  print("| mode | support | precision | recall | F1 |")
  print("|---|---|---|---|---|")
  for m in MODES:
    r = report[m]
    print(f"| {m} | {int(r['support'])} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path(DEFAULT_DATA_DIR),
                 help="where the public sets are prepared (default ~/tensorflow_datasets)")
  p.add_argument("--public-dir", type=pathlib.Path, default=default_public_dir(),
                 help="a folder of the public sets' source files, one subfolder per dataset "
                      "(default $SAFECOMP_SHARED_DATA or ../shared/data; without one they are "
                      "downloaded)")
  p.add_argument("--fit", action="store_true", help="refit and print the refusal weights")
  args = p.parse_args(argv)

  xstest = xstest_examples(args.data_dir, args.public_dir)
  rbr = rbr_gold_examples(args.data_dir, args.public_dir)
  if args.fit:
    weights = fit_design_weights(xstest, rbr)
    print("REFUSAL_WEIGHTS = {")
    for k, v in weights.items():
      print(f'    "{k}": {v:.2f},')
    print("}\n")

  rbr_design, rbr_heldout = split_rbr(rbr)
  evals = [("XSTest (design)", evaluate(xstest)), ("RBR gold, odd lines (design)", evaluate(rbr_design)),
           ("RBR gold, even lines (held out)", evaluate(rbr_heldout)), ("RBR gold, all", evaluate(rbr))]
  print("## Complies vs refuses: balanced accuracy (BA)\n")
  print("Clear rows only (partial refusals / partial compliance left out), and with them counted as "
        "complying.\n")
  print_binary(evals)
  print("\n## Per-class precision / recall / F1 (classifier vs keyword baseline)")
  for name, ev in evals:
    print_classes(name, ev)
  print_modes("RBR gold, even lines (held out)", evals[2][1])
  print_modes("RBR gold, all", evals[3][1])


if __name__ == "__main__":
  main()
