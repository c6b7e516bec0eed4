"""The controlled experiment's runs: one arm at one scale (the driver, `run.py`, runs them all).

    python -m safecomp.train --config experiments/ce_refusal_vs_safecomplete/config.py:arm=refusal --workdir DIR

Options: `arm=safe_completion|refusal` (default safe_completion) and `scale=default|tiny|large`
(default `default`; budgets in `experiments/ablations/common.py`, `SCALES`). The arms differ only in
what `configs/demo.py:arm=...` changes: the style of the SFT data (safe-completion vs refusal
teacher) and the PPO reward (r = h x s from the reward model vs the refusal reward on the prompt's
intent label). The refusal arm trains no reward model (its reward never reads one).
"""
import importlib.util
import pathlib
import sys


def _common():
  name = "safecomp_experiments_common"
  if name not in sys.modules:
    path = pathlib.Path(__file__).resolve().parents[1] / "ablations" / "common.py"
    spec = importlib.util.spec_from_file_location(name, path)
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
  return sys.modules[name]


def get_config(arg: str | None = None):
  common = _common()
  options = common.parse_options(arg, ("arm", "scale", "size"), __file__)
  return common.experiment_config(options.get("arm", "safe_completion"), options.get("scale", "default"),
                                  source=__file__)
