"""The one training loop every stage runs: resume, step, guard, log, checkpoint, stop cleanly.

A stage supplies a pure jitted `step_fn(state, batch) -> (state, metrics)` and `batch_fn(step)`, a pure
function of the step index (so a resumed run sees exactly the batches an uninterrupted run would) and
this loop does the rest:
- resumes from the newest complete checkpoint in the stage directory, or skips a stage marked done;
- a step whose loss or gradients are not finite is not applied (the step function reports it in
  `metrics["nonfinite"]`); the step number is logged; after `max_consecutive_nonfinite` in a row the run
  stops with an error, leaving the last good checkpoint intact;
- SIGTERM (preemption on TPU VMs) saves a checkpoint at the current step and exits with status 0;
- progress with ETA, metrics to JSONL and TensorBoard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax.training import train_state

from safecomp.errors import SafecompError
from safecomp.models import lora
from safecomp.training.checkpoints import StageCheckpointer
from safecomp.training.metrics import MetricWriter, progress


class NonFiniteLossError(SafecompError):
  """Too many consecutive steps with a NaN/inf loss."""


class Preempted(SystemExit):
  """Raised after SIGTERM once the checkpoint is written; exits with status 0."""

  def __init__(self):
    super().__init__(0)


def make_optimizer(section: Any, total_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, global-norm clipping first."""
  warmup = int(min(section.get("warmup_steps", 0), max(total_steps - 1, 0)))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else section.learning_rate, peak_value=section.learning_rate,
      warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.1 * section.learning_rate)
  return optax.chain(
      optax.clip_by_global_norm(section.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=section.get("weight_decay", 0.0)))


def _all_finite(tree: Any) -> jax.Array:
  finite = jax.numpy.asarray(True)
  for leaf in jax.tree.leaves(tree):
    if jax.numpy.issubdtype(jax.numpy.result_type(leaf), jax.numpy.inexact):
      finite &= jax.numpy.all(jax.numpy.isfinite(leaf))
  return finite


def apply_if_finite(state: train_state.TrainState, grads: Any, loss: jax.Array):
  """Applies the update only when it is finite; returns (state, nonfinite flag).

  Finite means the loss, the gradients and the updated parameters and optimizer state (an overflowing
  update, e.g. from a huge learning rate, is rejected like a NaN loss).
  """
  updated = state.apply_gradients(grads=grads)
  finite = _all_finite((loss, grads, updated.params, updated.opt_state))
  new_state = jax.tree.map(lambda new, old: jax.numpy.where(finite, new, old), updated, state)
  return new_state, ~finite


def keep_if_finite(old_state: Any, new_state: Any, loss: jax.Array):
  """`new_state` when it and `loss` are finite, else `old_state`; returns (state, nonfinite flag).

  For updates made elsewhere (several PPO epochs and minibatches in one call): the whole update is
  dropped when any of it went non-finite.
  """
  finite = _all_finite((loss, new_state.params, new_state.opt_state))
  state = jax.tree.map(lambda new, old: jax.numpy.where(finite, new, old), new_state, old_state)
  return state, ~finite


def _strongly_typed(tree: Any, like: Any) -> Any:
  """`tree`'s leaves as device arrays with the dtypes (weak types dropped) and placement of `like`'s.

  A fresh state (a Python-int step) and one restored from numpy arrays then present one signature to
  the jitted step function, which is therefore compiled once, not again after a resume.
  """
  def convert(value, reference):
    dtype = jax.dtypes.canonicalize_dtype(reference.dtype if hasattr(reference, "dtype")
                                          else np.result_type(reference))
    sharding = reference.sharding if isinstance(reference, jax.Array) else None
    if not isinstance(value, jax.Array):
      return jax.device_put(np.asarray(value, dtype), sharding)
    if value.dtype != dtype or value.weak_type:
      value = value.astype(dtype)
    return value if sharding is None or value.sharding == sharding else jax.device_put(value, sharding)
  return jax.tree.map(convert, tree, like)


def new_state(params: Any, tx: optax.GradientTransformation, adapters: bool = False,
              quantization: str = "none") -> lora.TrainState:
  """A fresh TrainState of a supervised stage; with `adapters` (a LoRA model) only the adapters and
  fresh heads train and the base stays frozen (`lora.TrainState`), stored as `quantization` says."""
  return lora.create_state(params, tx, adapters=adapters, quantization=quantization)


def checkpoint_tree(state: train_state.TrainState) -> dict:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def restore_tree(state: train_state.TrainState, tree: dict) -> train_state.TrainState:
  return state.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])


@dataclasses.dataclass
class LoopConfig:
  total_steps: int
  log_every: int = 10
  checkpoint_every: int = 100
  max_consecutive_nonfinite: int = 5
  desc: str = "train"


@contextlib.contextmanager
def _sigterm_flag():
  """Records SIGTERM instead of dying, so the loop can checkpoint first."""
  received = {"flag": False}

  def handler(signum, frame):  # pylint: disable=unused-argument
    received["flag"] = True

  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread: leave signals alone
    yield received
    return
  try:
    yield received
  finally:
    signal.signal(signal.SIGTERM, previous)


def run_loop(state: Any, step_fn: Callable, batch_fn: Callable[[int], Any], checkpointer: StageCheckpointer,
             writer: MetricWriter, loop: LoopConfig, *, to_tree: Callable = checkpoint_tree,
             from_tree: Callable = restore_tree, eval_fn: Callable[[Any, int], dict] | None = None,
             eval_every: int = 0, on_log: Callable[[int, dict], dict] | None = None) -> Any:
  """Runs `step_fn` from the last checkpoint to `loop.total_steps`; returns the final state.

  Metrics rows are buffered between logging steps and always written before a checkpoint, so the
  metrics of a run resumed from any checkpoint have every step exactly once.
  """
  start, fresh = 0, state
  if checkpointer.latest_step() is not None:
    tree, meta = checkpointer.restore(jax.tree.map(np.asarray, to_tree(state)))
    state = from_tree(state, tree)
    start = int(meta["step"])
    writer.truncate_after(start)
    print(f"[{loop.desc}] resumed from step {start} ({checkpointer.directory})", file=sys.stderr, flush=True)
  state = _strongly_typed(state, fresh)
  del fresh
  nonfinite_run = 0
  bar = progress(loop.total_steps, loop.desc, initial=start)
  pending: list[tuple[int, dict]] = []

  def flush():
    if not pending:
      return
    for logged_step, logged in jax.device_get(pending):
      row = dict(logged)
      if on_log is not None:
        row.update(on_log(logged_step, row))
      writer.write(logged_step, row)
    last = jax.device_get(pending[-1][1])
    bar.set_postfix({k: f"{float(np.asarray(v)):.4g}" for k, v in last.items()
                     if np.asarray(v).size == 1 and k in ("loss", "score_mean", "kl_ref")})
    pending.clear()

  with _sigterm_flag() as sigterm:
    for step in range(start, loop.total_steps):
      batch = batch_fn(step)
      state, metrics = step_fn(state, batch)
      done = step + 1
      bar.update(1)
      nonfinite = bool(metrics.get("nonfinite", False))
      pending.append((done, metrics))
      if nonfinite:
        nonfinite_run += 1
        logging.warning("%s: non-finite loss or update at step %d; update skipped (%d in a row)",
                        loop.desc, done, nonfinite_run)
        print(f"[{loop.desc}] non-finite loss or update at step {done}: update skipped "
              f"({nonfinite_run} in a row)", file=sys.stderr, flush=True)
        if nonfinite_run >= loop.max_consecutive_nonfinite:
          flush()
          bar.close()
          raise NonFiniteLossError(
              f"{loop.desc}: {nonfinite_run} consecutive non-finite steps (last at step {done}); "
              f"stopping. The last good checkpoint is step {checkpointer.latest_step()} in "
              f"{checkpointer.directory}.")
      else:
        nonfinite_run = 0
      evaluating = eval_fn is not None and eval_every and (done % eval_every == 0 or done == loop.total_steps)
      preempted = sigterm["flag"]  # read once: a signal arriving later is handled after the next step
      checkpointing = preempted or (done % loop.checkpoint_every == 0 and done < loop.total_steps)
      if done % loop.log_every == 0 or done == loop.total_steps or evaluating or checkpointing:
        flush()
      if evaluating:
        writer.write(done, eval_fn(state, done))
      if preempted:
        checkpointer.save(done, to_tree(state))
        bar.close()
        print(f"[{loop.desc}] SIGTERM: checkpoint saved at step {done}; exiting.", file=sys.stderr, flush=True)
        raise Preempted()
      if checkpointing:
        checkpointer.save(done, to_tree(state))
  bar.close()
  if checkpointer.latest_step() != loop.total_steps:
    checkpointer.save(loop.total_steps, to_tree(state))
  return state
