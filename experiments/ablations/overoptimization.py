"""Ablation: reward over-optimisation, proxy (reward model) against gold (oracle) reward as the policy
moves away from the reference, over a sweep of KL coefficients and learning rates.

    python -m safecomp.train --config experiments/ablations/overoptimization.py:variant=kl0_lr3e-4 --workdir DIR
    python experiments/ablations/run.py --ablation overoptimization --out DIR [--seeds 0,1] [--reuse CE_DIR]

Variants `kl<coef>_lr<rate>` set `ppo.kl_coef` and `ppo.learning_rate` of the safe-completion arm
(baseline `kl0.05_lr1e-4`, the demo's values, so its runs are the controlled experiment's); every other key
is the experiment budget (`scale=default|tiny|large`, see `common.SCALES`), so all variants start from the
same SFT policy and reward model (`--reuse` copies them from the controlled experiment's runs). Gold and
proxy reward of the sampled PPO responses are logged every `ppo.gold_every` iterations (every 2 here) with
the KL to the reference of the same samples; the driver plots both against sqrt(KL), the axis of Gao et
al. (2023), pooling every run.
"""
import pathlib

from safecomp.config import load_module

GRID = (("0.05", "1e-4"), ("0.01", "1e-4"), ("0", "1e-4"), ("0", "3e-4"))
VARIANTS = tuple(f"kl{kl}_lr{lr}" for kl, lr in GRID)
BASELINE = "kl0.05_lr1e-4"
ANALYSIS = "overoptimization"


def _common():
  return load_module(pathlib.Path(__file__).with_name("common.py"), "safecomp_experiments_common")


def changes(variant: str, scale: str) -> dict:
  del scale
  kl, lr = dict(zip(VARIANTS, GRID))[variant]
  return {"ppo.kl_coef": float(kl), "ppo.learning_rate": float(lr), "ppo.gold_every": 2}


def get_config(arg: str | None = None):
  return _common().variant_config(__file__, arg, VARIANTS, BASELINE, changes)
