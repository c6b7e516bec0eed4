"""The controlled experiment's runs: one arm at one scale (the driver, `run.py`, runs them all).

    python -m safecomp.train --config experiments/ce_refusal_vs_safecomplete/config.py:arm=refusal --workdir DIR

Options: `arm=safe_completion|refusal` (default safe_completion) and `scale=default|tiny|large`
(default `default`; budgets in `experiments/ablations/common.py`, `SCALES`). The arms differ only in
what `configs/demo.py:arm=...` changes: the style of the SFT data (safe-completion vs refusal
teacher) and the PPO reward (r = h x s from the reward model vs the refusal reward on the prompt's
intent label). The refusal arm trains no reward model (its reward never reads one).
"""
import pathlib

from safecomp.config import load_module


def _common():
  return load_module(pathlib.Path(__file__).resolve().parents[1] / "ablations" / "common.py",
                     "safecomp_experiments_common")


def get_config(arg: str | None = None):
  common = _common()
  options = common.parse_options(arg, ("arm", "scale", "size"), __file__)
  return common.experiment_config(options.get("arm", "safe_completion"), options.get("scale", "default"),
                                  source=__file__)
