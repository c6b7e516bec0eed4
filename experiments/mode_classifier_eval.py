"""Response-mode classifier vs the keyword-refusal baseline on human-labelled completions.

    python experiments/mode_classifier_eval.py [--data-dir ../shared/data] [--fit]

Prints Markdown tables: binary balanced accuracy (complies vs refuses) and per-class precision /
recall / F1 for the classifier and the keyword baseline, on XSTest (design set), the odd RBR gold
lines (design) and the even RBR gold lines (held out). Label mappings are documented in
`safecomp/rewards/mode_classifier.py`. `--fit` also refits the refusal weights on the design split
and prints them in the form `REFUSAL_WEIGHTS` takes.
"""
import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safecomp.constants import MODES  # pylint: disable=wrong-import-position
from safecomp.rewards import mode_classifier as mc  # pylint: disable=wrong-import-position

CLASSES = ("comply", "partial", "refuse")


def default_data_dir() -> pathlib.Path:
  repo = pathlib.Path(__file__).resolve().parents[1]
  return pathlib.Path(os.environ.get("SAFECOMP_SHARED_DATA", repo.parent / "shared" / "data"))


def evaluate(examples):
  """Predictions of both methods, with the binary scores and per-class reports."""
  results = [mc.classify_mode(e.prompt, e.completion) for e in examples]
  keyword = [mc.keyword_refusal_matcher(e.completion) for e in examples]
  true = [e.label for e in examples]
  clf_cls = [mc.MODE_TO_CLASS[r.mode] for r in results]
  kw_cls = ["refuse" if k else "comply" for k in keyword]
  return {
      "n": len(examples),
      "clf_binary": mc.binary_scores(examples, [not r.complies for r in results]),
      "kw_binary": mc.binary_scores(examples, keyword),
      "clf_classes": mc.per_class_report(clf_cls, true, CLASSES),
      "kw_classes": mc.per_class_report(kw_cls, true, CLASSES),
      "modes": ([r.mode for r in results], [e.mode for e in examples]),
  }


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
  report = mc.per_class_report(pred, true, MODES)
  print(f"\n**{name}**: the classifier per mode (gold modes from the RBR propositions)\n")
  print("| mode | support | precision | recall | F1 |")
  print("|---|---|---|---|---|")
  for m in MODES:
    r = report[m]
    print(f"| {m} | {int(r['support'])} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data-dir", type=pathlib.Path, default=default_data_dir())
  p.add_argument("--fit", action="store_true", help="refit and print the refusal weights")
  args = p.parse_args(argv)

  if args.fit:
    weights = mc.fit_design_weights(args.data_dir)
    print("REFUSAL_WEIGHTS = {")
    for k, v in weights.items():
      print(f'    "{k}": {v:.2f},')
    print("}\n")

  xstest = mc.xstest_examples(args.data_dir)
  rbr = mc.rbr_gold_examples(args.data_dir)
  rbr_design, rbr_heldout = mc.split_rbr(rbr)
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
