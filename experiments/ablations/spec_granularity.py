"""Ablation: the granularity and clarity of the content-policy spec the teacher and graders read.

    python -m safecomp.train --config experiments/ablations/spec_granularity.py:variant=coarse --workdir DIR
    python experiments/ablations/run.py --ablation spec_granularity --out DIR [--seeds 0,1,2] [--scale tiny]
    python experiments/ablations/grader_agreement.py --ablation-dir DIR --out OUT   # oracle / RM / judge

Variants set `spec`: `fine` (`safe_completion_fine`, the default and the baseline), `coarse`
(`safe_completion_coarse`) and `inconsistent` (`safe_completion_inconsistent`: the fine spec with
rules that clash on some requests and section severities that contradict a rule; the teacher and
the judge filter each resolve a clash by their own random pick of a matching rule); see
`safecomp/spec/policies/`. Everything else is the safe-completion arm of `configs/demo.py` at the
experiment budget (`scale=default|tiny|large`, see `common.SCALES`).
"""
import pathlib

from safecomp.config import load_module

VARIANTS = ("fine", "coarse", "inconsistent")
BASELINE = "fine"
ANALYSIS = "intent"


def _common():
  return load_module(pathlib.Path(__file__).with_name("common.py"), "safecomp_experiments_common")


def changes(variant: str, scale: str) -> dict:
  del scale
  return {"spec": f"safe_completion_{variant}"}


def get_config(arg: str | None = None):
  return _common().variant_config(__file__, arg, VARIANTS, BASELINE, changes)
