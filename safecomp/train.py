"""Entry point: `python -m safecomp.train --config configs/demo.py [--config.key=value] --workdir DIR`.

Runs the stages named in `config.stages` (sft, rm, ppo, eval) in order. Each stage checkpoints into
`DIR/<stage>/`, records the config it is trained with in `DIR/<stage>/config.json`, and is skipped
when it is complete, so rerunning the same command resumes where it stopped. A rerun whose config
differs for a finished stage (in a key that can change its result) stops at start-up naming the keys;
`--retrain_from=STAGE` trains that stage and every later one again, moving their old results to
`DIR/replaced/`. The config is printed and saved as `DIR/config.json` at start.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from safecomp import config as config_lib
from safecomp.errors import SafecompError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (a .py with get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and reports go.")
_RETRAIN_FROM = flags.DEFINE_string(
    "retrain_from", None, "Train this stage (sft, rm, ppo or eval; one of config.stages) and every later "
    "stage again, although complete, e.g. after changing their config; their old results move to "
    "WORKDIR/replaced/.")


_STATE = {"flags_parsed": False}


def _main(argv):
  del argv
  _STATE["flags_parsed"] = True
  # Imported once the flags parsed, so a bad flag or key is reported before JAX loads.
  from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
  # Library INFO chatter (orbax, jax) drowns the progress bars; stage summaries are printed.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  if _WORKDIR.value is None:
    print("error: --workdir is required", file=sys.stderr)
    return 2
  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value, retrain_from=_RETRAIN_FROM.value)
  except SafecompError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def _unknown_key_message(argv: list[str]) -> str:
  """Names the override whose key the config lacks, and the closest valid key."""
  config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_path is None and "--config" in argv[:-1]:
    config_path = argv[argv.index("--config") + 1]
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  message = config_lib.unknown_key_message(config_path, overrides) if config_path else None
  return message or "unknown config key in " + " ".join(a for a in argv if a.startswith("--config."))


def main():
  flags.mark_flag_as_required("config")
  try:
    app.run(lambda argv: sys.exit(_main(argv)))
  except (AttributeError, KeyError):  # an override naming a key the config lacks
    if _STATE["flags_parsed"]:  # raised by the run itself: a bug, not a bad override
      raise
    print(f"error: {_unknown_key_message(sys.argv)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
