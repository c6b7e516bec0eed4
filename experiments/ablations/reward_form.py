"""Ablation: how safety s and helpfulness h are combined into the PPO reward.

    python -m safecomp.train --config experiments/ablations/reward_form.py:variant=sum --workdir DIR
    python experiments/ablations/run.py --ablation reward_form --out DIR [--seeds 0,1,2] [--scale tiny]

Variants set `reward.kind` (`safecomp.rewards.composite.REWARD_KINDS`): `product` (r = h x s, the
default and the baseline of the comparison), `sum` ((h + s) / 2), `min`, `safety_only`,
`helpfulness_only`. Everything else is the safe-completion arm of `configs/demo.py` at the
experiment budget (`scale=default`; `scale=tiny` for seconds, `scale=large` for a bigger model and
longer training; see `common.SCALES`).
"""
import pathlib

from safecomp.config import load_module

VARIANTS = ("product", "sum", "min", "safety_only", "helpfulness_only")
BASELINE = "product"
ANALYSIS = "intent"


def _common():
  return load_module(pathlib.Path(__file__).with_name("common.py"), "safecomp_experiments_common")


def changes(variant: str, scale: str) -> dict:
  del scale
  return {"reward.kind": variant}


def get_config(arg: str | None = None):
  return _common().variant_config(__file__, arg, VARIANTS, BASELINE, changes)
