"""Stage checkpoints on orbax: atomic, pickle-free, fingerprinted, and robust to torn directories."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from safecomp.errors import CheckpointError

DONE_FILE = "DONE.json"
CONFIG_FILE = "config.json"  # the full config the stage was trained with


class StageCheckpointer:
  """Saves and restores one stage's state under `directory/<step>/`.

  `fingerprint` (the config keys that decide array shapes) is stored with every step and compared on
  restore, so a checkpoint from another config is a clear error rather than a shape crash.
  """

  def __init__(self, directory: str | os.PathLike, fingerprint: dict | None = None, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self.fingerprint = fingerprint or {}
    self.closed = False
    # orbax's own clean-up of temporary step directories runs in a thread that only `save` waits for:
    # a process that stops on an error before saving prints "cannot schedule new futures after
    # interpreter shutdown" from that thread. The same clean-up, done here, leaves no thread behind.
    _remove_temporary_steps(self.directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  # -- queries -------------------------------------------------------------------------------------
  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def is_done(self) -> bool:
    done = self.directory / DONE_FILE
    if not done.is_file():
      return False
    try:
      step = json.loads(done.read_text())["step"]
    except (ValueError, KeyError):
      return False
    # Step 0 marks a stage that keeps no state of its own (eval): DONE.json alone completes it.
    return step == 0 or step in self.steps()

  def has_state(self) -> bool:
    """Whether the stage trained anything here: complete, or checkpointed part of the way."""
    return self.is_done() or bool(self.steps())

  def recorded_config(self) -> dict | None:
    """The config the stage was trained with (`CONFIG_FILE`), or None when it recorded none."""
    path = self.directory / CONFIG_FILE
    if not path.is_file():
      return None
    try:
      return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
      raise CheckpointError(f"{path}: unreadable record of the stage's config ({e}); restore it or "
                            f"retrain the stage") from None

  def done_meta(self) -> dict:
    """The completed stage's summary; raises if it was written under another config."""
    meta = json.loads((self.directory / DONE_FILE).read_text())
    self._check_fingerprint(meta, DONE_FILE)
    return meta

  # -- writing -------------------------------------------------------------------------------------
  def save(self, step: int, state: Any, meta: dict | None = None):
    meta = dict(meta or {}, step=int(step), fingerprint=self.fingerprint)
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def record_config(self, text: str):
    """Writes the config the stage is trained with (JSON text) beside its checkpoints."""
    record_config(self.directory, text)

  def mark_done(self, step: int, summary: dict | None = None):
    """Writes DONE.json atomically: the stage is complete at `step` and can be skipped on rerun."""
    _write_atomically(self.directory / DONE_FILE, json.dumps(
        dict(summary or {}, step=int(step), fingerprint=self.fingerprint), indent=2, sort_keys=True))

  # -- reading -------------------------------------------------------------------------------------
  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores `step` (default: the newest that reads back whole); returns (state, meta).

    A step directory that fails to read (a run killed mid-write, a truncated file) is logged and skipped
    in favour of the previous complete one.
    """
    candidates = [step] if step is not None else list(reversed(self.steps()))
    if not candidates:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    errors, unreadable = [], []
    for candidate in candidates:
      try:
        meta = self._manager.restore(candidate, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"step {candidate}: {type(e).__name__}: {e}")
        unreadable.append(candidate)
        logging.warning("checkpoint %s/%s unreadable, trying an older one: %s", self.directory, candidate, e)
        continue
      self._check_fingerprint(meta, candidate)
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except (ValueError, KeyError, TypeError) as e:
        if "shape" in str(e).lower() or "structure" in str(e).lower():
          raise CheckpointError(
              f"{self.directory}/{candidate}: checkpoint does not match the model: {e}") from None
        errors.append(f"step {candidate}: {type(e).__name__}: {e}")
        unreadable.append(candidate)
        continue
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"step {candidate}: {type(e).__name__}: {e}")
        unreadable.append(candidate)
        logging.warning("checkpoint %s/%s unreadable, trying an older one: %s", self.directory, candidate, e)
        continue
      if step is None:
        self._set_aside(unreadable)
      return restored["state"], meta
    raise CheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(errors)
                          + f". Delete {self.directory} to run the stage again from the start.")

  def _set_aside(self, steps: list[int]):
    """Moves unreadable step directories to `unreadable.<step>.<time>/`.

    Training goes on from the older step it restored and saves those steps again; orbax never
    overwrites a step, and a torn directory must not count as the newest checkpoint. The torn files
    are kept for inspection, under a name orbax does not read as a step. With several processes the
    first one moves them and the others wait for it.
    """
    if not steps:
      return
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        path = self.directory / str(step)
        if path.is_dir():
          target = self.directory / f"unreadable.{step}.{stamp}"
          os.replace(path, target)
          logging.warning("moved unreadable checkpoint %s to %s", path, target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("safecomp_set_aside_unreadable_checkpoints")
    self._manager.reload()

  def _check_fingerprint(self, meta: dict, step: int):
    stored = meta.get("fingerprint", {})
    for key, value in self.fingerprint.items():
      found = first_difference(key, stored[key], value) if key in stored else None
      if found is not None:
        key, old, new = found
        raise CheckpointError(
            f"{self.directory}/{step} was written with a different config: {key}={old!r}, "
            f"this run has {key}={new!r}. Use another --workdir or restore the old config.")

  def close(self):
    """Finishes outstanding work and releases orbax's resources; idempotent."""
    if not self.closed:
      self.closed = True
      self._manager.close()


def record_config(directory: str | os.PathLike, text: str):
  """Writes a stage's config record (`CONFIG_FILE`) atomically, without opening its checkpoints."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  _write_atomically(directory / CONFIG_FILE, text)


def _write_atomically(path: pathlib.Path, text: str):
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def _remove_temporary_steps(directory: pathlib.Path):
  """Deletes step directories a killed run left half-written (orbax's temporary names), on process 0."""
  if jax.process_index() != 0 or not directory.is_dir():
    return
  for tmp in ocp.utils.tmp_checkpoints(directory):
    path = pathlib.Path(str(tmp.get() if hasattr(tmp, "get") else directory / tmp))
    logging.info("removing the unfinished checkpoint %s", path)
    shutil.rmtree(path, ignore_errors=True)


def first_difference(key: str, old: Any, new: Any) -> tuple[str, Any, Any] | None:
  """The dotted key of the first leaf where two config values differ (`model.hidden_size`, 32, 48).

  Keys the older record lacks are not differences: a config key added later (with its default)
  must not orphan every earlier checkpoint. None when nothing differs.
  """
  if isinstance(old, dict) and isinstance(new, dict):
    for name in sorted(set(old) | set(new)):
      if name in old and old.get(name) != new.get(name):
        found = first_difference(f"{key}.{name}", old.get(name), new.get(name))
        if found is not None:
          return found
    return None
  return None if old == new else (key, old, new)


def abstract_like(tree: Any) -> Any:
  """Shape/dtype (and sharding) skeleton of a pytree, for restoring without a template copy."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
