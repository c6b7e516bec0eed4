"""Ablation: long PPO training, and how the policy drifts over it.

    python -m safecomp.train --config experiments/ablations/long_training.py:variant=refusal --workdir DIR
    python experiments/ablations/run.py --ablation long_training --out DIR [--seeds 0,1,2] [--scale tiny]

Both arms (`safe_completion`, the baseline, and `refusal`) train for five times the experiment's PPO
iterations (200 at `scale=default`, 8 at `tiny`, 750 at `large`), with gold-graded samples every
`ppo.gold_every` iterations. The driver plots, from `DIR/metrics/ppo.jsonl`, response length, the
mode distribution and benign helpfulness / refusal over the PPO iterations, averaged over seeds.
"""
import pathlib

from safecomp.config import load_module

VARIANTS = ("safe_completion", "refusal")
BASELINE = "safe_completion"
ANALYSIS = "curves"
ITERATIONS = {"tiny": 8, "default": 200, "large": 750}
GOLD_EVERY = {"tiny": 1, "default": 5, "large": 10}


def _common():
  return load_module(pathlib.Path(__file__).with_name("common.py"), "safecomp_experiments_common")


def changes(variant: str, scale: str) -> dict:
  return {"arm": variant, "ppo.iterations": ITERATIONS[scale], "ppo.gold_every": GOLD_EVERY[scale],
          "ppo.checkpoint_every": max(2, ITERATIONS[scale] // 5)}


def get_config(arg: str | None = None):
  return _common().variant_config(__file__, arg, VARIANTS, BASELINE, changes)
