"""Multi-process start-up: `jax.distributed.initialize` from the config's `distributed` section.

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = False        # True on every host of a multi-host job
    c.distributed.coordinator_address = ""  # "host:port" of process 0; "" = auto (TPU, SLURM)
    c.distributed.num_processes = -1        # -1 = auto-detect
    c.distributed.process_id = -1           # -1 = auto-detect
    c.distributed.local_device_ids = ""     # e.g. "0,1" (several processes per GPU host)
    c.distributed.cpu_collectives = "gloo"  # cross-process collectives on CPU backends

On Cloud TPU pods and SLURM clusters the empty defaults auto-detect everything, so
`--config.distributed.initialize=True` is all a launch needs. Elsewhere pass the coordinator,
process count and this process's id on each host. Call `maybe_initialize_distributed` before any
other JAX call.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils

from safecomp.config import require

CPU_COLLECTIVES = ("gloo", "mpi")


def maybe_initialize_distributed(config: Any) -> bool:
  """Initialises the JAX distributed runtime when `config.distributed.initialize`; idempotent.

  Accepts the whole experiment config or its `distributed` section. Returns True when this process
  is part of a multi-process job (now or already).
  """
  section = config.get("distributed") if _has(config, "distributed") else config
  if section is None or not bool(_get(section, "initialize", False)):
    return jax.distributed.is_initialized()
  if jax.distributed.is_initialized():
    return True
  address = str(_get(section, "coordinator_address", "") or "") or None
  num_processes = int(_get(section, "num_processes", -1))
  process_id = int(_get(section, "process_id", -1))
  require(num_processes == -1 or num_processes >= 1, "distributed.num_processes",
          f"must be >= 1 or -1 (auto-detect), got {num_processes}")
  require(process_id == -1 or 0 <= process_id < max(num_processes, 1) or num_processes == -1,
          "distributed.process_id",
          f"must lie in [0, distributed.num_processes={num_processes}) or be -1, got {process_id}")
  if address is not None:
    require(num_processes >= 1 and process_id >= 0, "distributed.coordinator_address",
            "is set, so distributed.num_processes and distributed.process_id must be set too")
  device_ids = str(_get(section, "local_device_ids", "") or "")
  try:
    local_ids = [int(i) for i in device_ids.split(",") if i.strip()] or None
  except ValueError:
    require(False, "distributed.local_device_ids", f"{device_ids!r} is not a comma-separated list")
  collectives = str(_get(section, "cpu_collectives", "gloo") or "gloo")
  require(collectives in CPU_COLLECTIVES, "distributed.cpu_collectives",
          f"must be one of {CPU_COLLECTIVES}, got {collectives!r}")
  jax.config.update("jax_cpu_collectives_implementation", collectives)
  jax.distributed.initialize(
      coordinator_address=address,
      num_processes=None if num_processes == -1 else num_processes,
      process_id=None if process_id == -1 else process_id,
      local_device_ids=local_ids)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_main_process() -> bool:
  """True on the process that writes the workdir's shared files: metrics, reports, configs, markers.

  Every process runs the same computations (and collectives) in the same order; orbax coordinates
  the checkpoint writes of all of them itself.
  """
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Returns once every process has reached `sync(name)`; a no-op in a single-process run.

  Between the main process writing a shared file and another process reading it (or the main process
  changing files the others are still reading).
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _has(config: Any, key: str) -> bool:
  try:
    return key in config
  except TypeError:
    return False


def _get(section: Any, key: str, default: Any) -> Any:
  if isinstance(section, Mapping) or hasattr(section, "get"):
    return section.get(key, default)
  return getattr(section, key, default)

