"""Reward-model stage: severity (4-way) and helpfulness heads on the transformer trunk."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from safecomp.rewards import reward_model as rm_lib
from safecomp.parallel.step import accumulate_gradients
from safecomp.training import loop as loop_lib

LABEL_KEYS = ("severity", "helpfulness", "pair_index", "pair_mask")


def rm_forward(model, params, batch) -> dict:
  return model.apply({"params": params}, batch["tokens"], attention_mask=batch["attention_mask"])


def rm_step_fn(model, weights: dict, helpfulness_kind: str, microbatches: int = 1):
  """Pure `step(state, batch) -> (state, metrics)` on the weighted severity/helpfulness(/preference)
  loss, with in-step gradient accumulation over `microbatches` equal micro-batches."""

  def loss_fn(params, batch):
    outputs = rm_forward(model, params, batch)
    labels = {k: batch[k] for k in LABEL_KEYS if k in batch}
    return rm_lib.rm_loss(outputs, labels, weights, helpfulness_kind=helpfulness_kind)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: train_state.TrainState, batch):
    (loss, metrics), grads = accumulate_gradients(grad_fn, state.params, batch, microbatches)
    state, nonfinite = loop_lib.apply_if_finite(state, grads, loss)
    return state, dict(metrics, grad_norm=optax.global_norm(grads), nonfinite=nonfinite)

  return step


def make_rm_step(model, weights: dict, helpfulness_kind: str, microbatches: int = 1):
  """`rm_step_fn` jitted for one device (`safecomp.parallel.shard_step` shards it over a mesh)."""
  return jax.jit(rm_step_fn(model, weights, helpfulness_kind, microbatches), donate_argnums=0)


def rm_predict(model, params, arrays: dict[str, np.ndarray], batch_size: int,
               helpfulness_kind: str) -> dict[str, np.ndarray]:
  """Severity probabilities [N,4] and helpfulness [N] for every row, batch by batch."""

  @jax.jit
  def predict(params, batch):
    out = rm_forward(model, params, batch)
    probs = jax.nn.softmax(out["severity_logits"].astype(jnp.float32), -1)
    return probs, rm_lib.helpfulness_from_logit(out["helpfulness_logit"].astype(jnp.float32),
                                               helpfulness_kind)

  probs, helpful = [], []
  for start in range(0, len(arrays["tokens"]), batch_size):
    batch = {k: arrays[k][start:start + batch_size] for k in ("tokens", "attention_mask")}
    p, h = jax.device_get(predict(params, batch))
    probs.append(p)
    helpful.append(h)
  return {"severity_probs": np.concatenate(probs), "helpfulness": np.concatenate(helpful)}


def rm_report(predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, Any]:
  """Held-out accuracy, confusion matrix (rows = gold), ECE and helpfulness error."""
  probs, gold = predictions["severity_probs"], np.asarray(labels["severity"])
  pred = probs.argmax(-1)
  report = {
      "severity_accuracy": float(rm_lib.accuracy(jnp.asarray(pred), jnp.asarray(gold))),
      "severity_confusion": np.asarray(rm_lib.confusion_matrix(jnp.asarray(pred), jnp.asarray(gold))).tolist(),
      "severity_ece": float(rm_lib.expected_calibration_error(jnp.asarray(probs), jnp.asarray(gold))),
      "unsafe_accuracy": float(np.mean((pred >= 1) == (gold >= 1))),
  }
  if "helpfulness" in labels:
    target = np.asarray(labels["helpfulness"], np.float32)
    report["helpfulness_mae"] = float(np.mean(np.abs(predictions["helpfulness"] - target)))
    varies = np.std(target) > 0 and np.std(predictions["helpfulness"]) > 0
    report["helpfulness_corr"] = float(np.corrcoef(predictions["helpfulness"], target)[0, 1]) if varies else float("nan")
  return report
