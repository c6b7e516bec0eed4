"""Compiles the SFT step of each real-run config for its mesh on simulated CPU devices.

Started by tests/test_real_configs.py in a fresh process (64 CPU devices: the largest mesh):
`python tests/parallel_helpers/compile_real_configs.py configs/a.py configs/b.py ...`. Prints one
JSON object {config: memory plan} on the last line of stdout. No weights are allocated: the step
is lowered against an AbstractMesh and compiled for the first N devices.
"""
import json
import math
import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 64)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from safecomp import memory, parallel  # pylint: disable=wrong-import-position
from safecomp.config import load_config  # pylint: disable=wrong-import-position


def main():
  results = {}
  for path in sys.argv[1:]:
    config = load_config(path)
    sizes = {axis: int(config.mesh[axis]) for axis in parallel.MESH_AXES}
    assert math.prod(sizes.values()) <= jax.device_count()
    results[path] = memory.plan(config, sizes, stage="sft", compile_step=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
