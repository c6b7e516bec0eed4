"""Reward-model losses and metrics.

The reward model has a severity head (4 logits over `SEVERITIES`) and a helpfulness head (one logit).
Its reward is the composite r = h * s with s = E[safety | severity probs] and h = sigmoid(logit)
(or the ordinal expectation). Preference pairs are scored by Bradley-Terry on log r, i.e.
P(chosen > rejected) = r_c / (r_c + r_r), which keeps the bounded composite as the BT strength.

Everything is pure jnp, jittable, and takes optional masks so rows without a label drop out.
"""
from typing import Mapping, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from safecomp.constants import SEVERITIES
from safecomp.models.masking import masked_mean
from safecomp.rewards import composite

NUM_SEVERITIES = len(SEVERITIES)
HELPFULNESS_LOSSES = ("bce", "ordinal")
# Ordinal thresholds on the logit between the 1..4 helpfulness levels (cumulative-logit model).
DEFAULT_ORDINAL_THRESHOLDS = (-2.0, 0.0, 2.0)
DEFAULT_LOSS_WEIGHTS = {"severity": 1.0, "helpfulness": 1.0, "preference": 0.0}


def _mask_or_ones(mask: Optional[chex.Array], like: chex.Array) -> chex.Array:
  if mask is None:
    return jnp.ones(like.shape[:1], jnp.float32)
  chex.assert_shape(mask, like.shape[:1])
  return jnp.asarray(mask, jnp.float32)


def _masked_mean(x: chex.Array, mask: chex.Array) -> chex.Array:
  # A denominator of at least 1: fractional row weights summing below 1 are not renormalised.
  return masked_mean(x, mask, min_count=1.0)


# ----------------------------------------------------------------------------- losses


def severity_loss(logits: chex.Array, labels: chex.Array,
                  mask: Optional[chex.Array] = None) -> chex.Array:
  """Mean softmax cross-entropy of severity logits [B, 4] against int labels [B]."""
  chex.assert_rank([logits, labels], [2, 1])
  chex.assert_axis_dimension(logits, 1, NUM_SEVERITIES)
  chex.assert_equal_shape_prefix([logits, labels], 1)
  mask = _mask_or_ones(mask, labels)
  safe_labels = jnp.clip(labels, 0, NUM_SEVERITIES - 1)  # masked rows may carry -1
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe_labels)
  return _masked_mean(ce, mask)


def helpfulness_levels(target: chex.Array) -> chex.Array:
  """Maps helpfulness in [0, 1] to the nearest level index 0..3 (scale 1..4)."""
  return jnp.clip(jnp.round(target * 3.0), 0, 3).astype(jnp.int32)


def helpfulness_from_logit(
    logit: chex.Array, kind: str = "bce",
    thresholds: Sequence[float] = DEFAULT_ORDINAL_THRESHOLDS) -> chex.Array:
  """Helpfulness h in [0, 1] predicted by the head under the loss `kind` it was trained with."""
  if kind == "bce":
    return jax.nn.sigmoid(logit)
  if kind == "ordinal":
    # P(level > k) = sigmoid(logit - theta_k); E[level] = sum_k P(level > k), over 0..3.
    theta = jnp.asarray(thresholds, jnp.float32)
    return jnp.sum(jax.nn.sigmoid(logit[..., None] - theta), axis=-1) / theta.shape[0]
  raise ValueError(f"unknown helpfulness loss {kind!r}; expected one of {HELPFULNESS_LOSSES}")


def helpfulness_loss(
    logit: chex.Array, target: chex.Array, mask: Optional[chex.Array] = None, *,
    kind: str = "bce", thresholds: Sequence[float] = DEFAULT_ORDINAL_THRESHOLDS) -> chex.Array:
  """Helpfulness head loss for logit [B] against targets [B] in [0, 1].

  `bce`: sigmoid cross-entropy regression on the soft target (the default).
  `ordinal`: all-threshold cumulative-logit loss over the 1..4 scale, fixed thresholds; it respects
  the ordering of the graded levels instead of treating 0.67 as a coin with bias 0.67.
  """
  chex.assert_rank([logit, target], 1)
  chex.assert_equal_shape([logit, target])
  mask = _mask_or_ones(mask, target)
  logit = logit.astype(jnp.float32)
  target = jnp.clip(target.astype(jnp.float32), 0.0, 1.0)  # masked rows may carry -1
  if kind == "bce":
    per_row = optax.sigmoid_binary_cross_entropy(logit, target)
  elif kind == "ordinal":
    theta = jnp.asarray(thresholds, jnp.float32)
    above = (helpfulness_levels(target)[:, None] > jnp.arange(theta.shape[0])).astype(jnp.float32)
    per_row = jnp.sum(optax.sigmoid_binary_cross_entropy(logit[:, None] - theta, above), axis=-1)
  else:
    raise ValueError(f"unknown helpfulness loss {kind!r}; expected one of {HELPFULNESS_LOSSES}")
  return _masked_mean(per_row, mask)


def bradley_terry_loss(r_chosen: chex.Array, r_rejected: chex.Array,
                       mask: Optional[chex.Array] = None, margin: float = 0.0) -> chex.Array:
  """Mean -log sigmoid(r_chosen - r_rejected - margin) over pairs [P] (scores on a logit scale)."""
  chex.assert_rank([r_chosen, r_rejected], 1)
  chex.assert_equal_shape([r_chosen, r_rejected])
  mask = _mask_or_ones(mask, r_chosen)
  diff = r_chosen.astype(jnp.float32) - r_rejected.astype(jnp.float32) - margin
  return _masked_mean(-jax.nn.log_sigmoid(diff), mask)


def reward_from_heads(
    severity_logits: chex.Array, helpfulness_logit: chex.Array, *,
    helpfulness_kind: str = "bce", kind: str = "product",
    severity_to_safety: Sequence[float] = composite.DEFAULT_SEVERITY_TO_SAFETY
) -> Tuple[chex.Array, chex.Array, chex.Array]:
  """(reward, safety, helpfulness) [B] from the reward-model heads (`composite.reward_terms` of the
  severity distribution and the helpfulness head; reward = h * s for the `product` kind)."""
  chex.assert_rank([severity_logits, helpfulness_logit], [2, 1])
  severity_probs = jax.nn.softmax(severity_logits.astype(jnp.float32), -1)
  helpfulness = helpfulness_from_logit(helpfulness_logit.astype(jnp.float32), helpfulness_kind)
  safety, helpfulness, reward = composite.reward_terms(severity_probs, helpfulness, kind,
                                                       severity_to_safety=severity_to_safety)
  return reward, safety, helpfulness


def rm_loss(
    outputs: Mapping[str, chex.Array], batch: Mapping[str, chex.Array],
    weights: Optional[Mapping[str, float]] = None, *,
    helpfulness_kind: str = "bce",
    severity_to_safety: Sequence[float] = composite.DEFAULT_SEVERITY_TO_SAFETY,
    eps: float = 1e-6) -> Tuple[chex.Array, dict]:
  """Weighted reward-model loss and scalar metrics.

  Args:
    outputs: model outputs with `severity_logits` [B, 4] and `helpfulness_logit` [B].
    batch: `severity` [B] int (-1 = no label) and `helpfulness` [B] in [0, 1] (negative = no label);
      optional `pair_index` [P, 2] int (chosen row, rejected row within the batch) with optional
      `pair_mask` [P] for preference pairs.
    weights: loss weights for `severity`, `helpfulness`, `preference` (missing keys: defaults).
    helpfulness_kind: `bce` or `ordinal`.
    severity_to_safety: safety per severity level, for the composite used by preference pairs.
    eps: floor on r inside log r.

  Returns:
    (loss, metrics) with scalar metrics.
  """
  w = dict(DEFAULT_LOSS_WEIGHTS)
  w.update(weights or {})
  unknown = set(w) - set(DEFAULT_LOSS_WEIGHTS)
  if unknown:
    raise ValueError(f"unknown rm loss weights {sorted(unknown)}; expected {sorted(DEFAULT_LOSS_WEIGHTS)}")
  sev_logits = outputs["severity_logits"]
  help_logit = outputs["helpfulness_logit"]
  chex.assert_rank([sev_logits, help_logit], [2, 1])
  chex.assert_equal_shape_prefix([sev_logits, help_logit], 1)
  metrics = {}
  loss = jnp.zeros((), jnp.float32)

  if "severity" in batch:
    labels = jnp.asarray(batch["severity"], jnp.int32)
    sev_mask = (labels >= 0).astype(jnp.float32)
    l_sev = severity_loss(sev_logits, labels, sev_mask)
    loss = loss + w["severity"] * l_sev
    metrics["severity_loss"] = l_sev
    metrics["severity_accuracy"] = accuracy(sev_logits, labels, sev_mask)
    metrics["severity_ece"] = expected_calibration_error(
        jax.nn.softmax(sev_logits.astype(jnp.float32), -1), labels, mask=sev_mask)

  if "helpfulness" in batch:
    target = jnp.asarray(batch["helpfulness"], jnp.float32)
    help_mask = (target >= 0).astype(jnp.float32)
    l_help = helpfulness_loss(help_logit, target, help_mask, kind=helpfulness_kind)
    loss = loss + w["helpfulness"] * l_help
    pred = helpfulness_from_logit(help_logit.astype(jnp.float32), helpfulness_kind)
    metrics["helpfulness_loss"] = l_help
    metrics["helpfulness_mae"] = helpfulness_mae(pred, target, help_mask)
    metrics["helpfulness_corr"] = pearson_correlation(pred, target, help_mask)

  if "pair_index" in batch:
    pairs = jnp.asarray(batch["pair_index"], jnp.int32)
    chex.assert_rank(pairs, 2)
    chex.assert_axis_dimension(pairs, 1, 2)
    reward, _, _ = reward_from_heads(sev_logits, help_logit, helpfulness_kind=helpfulness_kind,
                                     severity_to_safety=severity_to_safety)
    log_r = jnp.log(reward + eps)
    r_c, r_r = log_r[pairs[:, 0]], log_r[pairs[:, 1]]
    pair_mask = batch.get("pair_mask")
    l_pref = bradley_terry_loss(r_c, r_r, pair_mask)
    loss = loss + w["preference"] * l_pref
    metrics["preference_loss"] = l_pref
    metrics["pairwise_accuracy"] = pairwise_accuracy(r_c, r_r, pair_mask)

  metrics["loss"] = loss
  return loss, metrics


# ----------------------------------------------------------------------------- metrics


def accuracy(logits_or_pred: chex.Array, labels: chex.Array,
             mask: Optional[chex.Array] = None) -> chex.Array:
  """Fraction of rows whose argmax (for logits [B, C]) or int prediction [B] equals the label."""
  pred = logits_or_pred
  if pred.ndim == 2:
    pred = jnp.argmax(pred, axis=-1)
  chex.assert_equal_shape([pred, labels])
  mask = _mask_or_ones(mask, labels)
  return _masked_mean((pred == labels).astype(jnp.float32), mask)


def confusion_matrix(pred: chex.Array, labels: chex.Array, num_classes: int = NUM_SEVERITIES,
                     mask: Optional[chex.Array] = None) -> chex.Array:
  """Counts [C, C]: row = true label, column = prediction. Logits [B, C] are argmaxed."""
  if pred.ndim == 2:
    pred = jnp.argmax(pred, axis=-1)
  chex.assert_rank([pred, labels], 1)
  chex.assert_equal_shape([pred, labels])
  mask = _mask_or_ones(mask, labels)
  true_oh = jax.nn.one_hot(labels, num_classes) * mask[:, None]
  return (true_oh.T @ jax.nn.one_hot(pred, num_classes)).astype(jnp.int32)


def expected_calibration_error(probs: chex.Array, labels: chex.Array, num_bins: int = 10,
                               mask: Optional[chex.Array] = None) -> chex.Array:
  """Top-label ECE with equal-width confidence bins: sum_b |B|/N * |acc(B) - conf(B)|."""
  chex.assert_rank([probs, labels], [2, 1])
  chex.assert_equal_shape_prefix([probs, labels], 1)
  mask = _mask_or_ones(mask, labels)
  conf = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
  # Bin b holds conf in (b/n, (b+1)/n]; conf = 0 goes to bin 0.
  bins = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  onehot = jax.nn.one_hot(bins, num_bins) * mask[:, None]
  count = onehot.sum(0)
  gap = jnp.abs(onehot.T @ correct - onehot.T @ conf)  # |sum acc - sum conf| per bin
  return jnp.sum(gap) / jnp.maximum(jnp.sum(count), 1.0)


def helpfulness_mae(pred: chex.Array, target: chex.Array,
                    mask: Optional[chex.Array] = None) -> chex.Array:
  """Mean absolute error between predicted and target helpfulness [B]."""
  chex.assert_equal_shape([pred, target])
  mask = _mask_or_ones(mask, target)
  return _masked_mean(jnp.abs(pred - target), mask)


def pearson_correlation(x: chex.Array, y: chex.Array,
                        mask: Optional[chex.Array] = None) -> chex.Array:
  """Pearson correlation of x and y [B] over masked rows (0 when either is constant)."""
  chex.assert_rank([x, y], 1)
  chex.assert_equal_shape([x, y])
  mask = _mask_or_ones(mask, x)
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  xc = x - _masked_mean(x, mask)
  yc = y - _masked_mean(y, mask)
  cov = jnp.sum(mask * xc * yc)
  denom = jnp.sqrt(jnp.sum(mask * xc**2) * jnp.sum(mask * yc**2))
  return jnp.where(denom > 0, cov / jnp.where(denom > 0, denom, 1.0), 0.0)


def pairwise_accuracy(r_chosen: chex.Array, r_rejected: chex.Array,
                      mask: Optional[chex.Array] = None) -> chex.Array:
  """Fraction of pairs ranked correctly; a tie counts one half."""
  chex.assert_rank([r_chosen, r_rejected], 1)
  chex.assert_equal_shape([r_chosen, r_rejected])
  mask = _mask_or_ones(mask, r_chosen)
  win = jnp.where(r_chosen > r_rejected, 1.0, jnp.where(r_chosen == r_rejected, 0.5, 0.0))
  return _masked_mean(win, mask)
