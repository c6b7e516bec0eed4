"""Ablation: whether the policy writes spec-citing reasoning (`<think> ... </think>`) before answering.

    python -m safecomp.train --config experiments/ablations/reasoning.py:variant=off --workdir DIR
    python experiments/ablations/run.py --ablation reasoning --out DIR [--seeds 0,1,2] [--scale tiny]

Variants set `reasoning`: `on` (True, the default and the baseline) and `off` (the SFT targets and
reward-model candidates carry the answer alone). Everything else is the safe-completion arm of
`configs/demo.py` at the experiment budget (`scale=default|tiny|large`, see `common.SCALES`).
"""
import pathlib

from safecomp.config import load_module

VARIANTS = ("on", "off")
BASELINE = "on"
ANALYSIS = "intent"
STAGES = ("sft", "ppo")  # reasoning changes the SFT targets: compare the SFT policies as well


def _common():
  return load_module(pathlib.Path(__file__).with_name("common.py"), "safecomp_experiments_common")


def changes(variant: str, scale: str) -> dict:
  del scale
  return {"reasoning": variant == "on"}


def get_config(arg: str | None = None):
  return _common().variant_config(__file__, arg, VARIANTS, BASELINE, changes)
