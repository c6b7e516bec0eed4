"""The PPO stage with a host grader (the oracle) on 2 simulated CPU devices.

Started by tests/test_ppo_step.py in a fresh process (the device count is fixed when JAX creates its
backend): `python tests/parallel_helpers/ppo_step_devices.py WORKDIR`. Prints one JSON object on the
last line of stdout.
"""
import json
import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from safecomp import config as config_lib  # pylint: disable=wrong-import-position
from safecomp import parallel  # pylint: disable=wrong-import-position
from safecomp.errors import ConfigError  # pylint: disable=wrong-import-position
from safecomp.training import pipeline  # pylint: disable=wrong-import-position
from safecomp.training import ppo as ppo_stage  # pylint: disable=wrong-import-position
from safecomp.training.metrics import read_metrics  # pylint: disable=wrong-import-position

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "configs", "demo.py")


def untrained_pipeline(workdir, **overrides):
  """A tiny refusal-arm pipeline (reward.grader=oracle) whose SFT "checkpoint" is the fresh model."""
  config = config_lib.load_config(f"{DEMO}:arm=refusal,size=tiny", [
      "stages=('ppo',)", "ppo.iterations=1", "mesh.data=2",
      *(f"{k}={v!r}" for k, v in overrides.items())])
  p = pipeline.Pipeline(config, workdir)
  p.trained_params = lambda stage, like, section: like
  return p


def main():
  workdir = sys.argv[1]
  out = {"devices": jax.device_count()}
  try:
    ppo_stage.run_ppo(untrained_pipeline(os.path.join(workdir, "odd"), **{"ppo.prompts_per_iteration": 3}))
    out["odd_batch_error"] = None
  except ConfigError as e:
    out["odd_batch_error"] = str(e)

  p = untrained_pipeline(os.path.join(workdir, "run"))
  prompts = p.task.train_prompts()
  step, args = ppo_stage.ppo_step(p, prompts)
  out["sampler_is_sharded"] = isinstance(step.sample, parallel.ShardedStep) and step.fused is None
  out["mesh_devices"] = int(step.mesh.devices.size)
  out["rows"] = step.rows().tolist()
  roll = step.sample(args["state"], {"prompts": np.zeros((8, p.config.max_prompt_len), np.int32),
                                            "prompt_mask": np.ones((8, p.config.max_prompt_len), np.int32),
                                            "intent": np.zeros(8, np.int32), "step": np.int32(0)},
                     args["ref_params"])
  out["rollout_shard_rows"] = sorted({s.data.shape[0] for s in roll["sequences"].addressable_shards})
  out["rollout_devices"] = len(roll["sequences"].sharding.device_set)
  summary = ppo_stage.run_ppo(p)
  rows = read_metrics(os.path.join(workdir, "run", "metrics", "ppo.jsonl"))
  out["iterations"] = summary["iterations"]
  out["last_row"] = {k: v for k, v in rows[-1].items() if isinstance(v, (int, float))}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
