"""Ablation: multi-turn attacks, where the restricted detail is asked for in pieces over several turns.

    python -m safecomp.train --config experiments/ablations/multiturn.py:variant=refusal --workdir DIR
    python experiments/ablations/run.py --ablation multiturn --out DIR [--seeds 0,1,2] [--scale tiny]

Both training arms (`safe_completion`, the baseline, and `refusal`) are evaluated on the single-turn
prompts of the `test` split and on the `multiturn` split; the driver reports the unsafe-output rate
of each by intent, multi-turn against single-turn (multi-turn conversations inside `test` count as
multi-turn). Everything else is `configs/demo.py` at the experiment budget
(`scale=default|tiny|large`, see `common.SCALES`).
"""
import pathlib

from safecomp.config import load_module

VARIANTS = ("safe_completion", "refusal")
BASELINE = "safe_completion"
ANALYSIS = "turns"


def _common():
  return load_module(pathlib.Path(__file__).with_name("common.py"), "safecomp_experiments_common")


def changes(variant: str, scale: str) -> dict:
  del scale
  return {"arm": variant, "eval.splits": ("test", "multiturn")}


def get_config(arg: str | None = None):
  return _common().variant_config(__file__, arg, VARIANTS, BASELINE, changes)
