"""Reward-model losses and metrics on hand-made inputs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp.rewards import reward_model as rm


def test_severity_loss_matches_manual_cross_entropy_and_mask():
  logits = jnp.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  labels = jnp.array([0, 3])
  ce0 = -math.log(math.exp(2) / (math.exp(2) + 3))
  ce1 = math.log(4)
  np.testing.assert_allclose(rm.severity_loss(logits, labels), (ce0 + ce1) / 2, rtol=1e-5)
  np.testing.assert_allclose(rm.severity_loss(logits, jnp.array([0, -1]), jnp.array([1.0, 0.0])),
                             ce0, rtol=1e-5)


def test_helpfulness_bce_minimised_at_target():
  target = jnp.array([0.25, 0.75])
  best = jnp.log(target / (1 - target))
  l_best = rm.helpfulness_loss(best, target)
  for delta in (-0.5, 0.5):
    assert rm.helpfulness_loss(best + delta, target) > l_best
  np.testing.assert_allclose(rm.helpfulness_from_logit(best), target, rtol=1e-6)


def test_helpfulness_ordinal_prefers_the_right_level():
  target = jnp.array([1.0, 0.0, 2 / 3])  # levels 4, 1, 3
  good = jnp.array([6.0, -6.0, 1.0])
  bad = jnp.array([-6.0, 6.0, -3.0])
  assert rm.helpfulness_loss(good, target, kind="ordinal") < rm.helpfulness_loss(bad, target, kind="ordinal")
  h = rm.helpfulness_from_logit(good, "ordinal")
  assert h[0] > 0.9 and h[1] < 0.1 and 0.5 < h[2] < 0.8
  with pytest.raises(ValueError, match="unknown helpfulness loss"):
    rm.helpfulness_loss(good, target, kind="mse")


def test_bradley_terry():
  np.testing.assert_allclose(rm.bradley_terry_loss(jnp.zeros(3), jnp.zeros(3)), math.log(2), rtol=1e-6)
  np.testing.assert_allclose(rm.bradley_terry_loss(jnp.array([2.0]), jnp.array([0.0])),
                             math.log1p(math.exp(-2.0)), rtol=1e-6)
  assert rm.bradley_terry_loss(jnp.array([3.0]), jnp.array([0.0])) < rm.bradley_terry_loss(
      jnp.array([0.0]), jnp.array([3.0]))


def test_confusion_matrix_known_counts():
  labels = jnp.array([0, 0, 1, 2, 3, 3, 3])
  pred = jnp.array([0, 1, 1, 2, 3, 2, 3])
  expected = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 2]])
  np.testing.assert_array_equal(rm.confusion_matrix(pred, labels), expected)
  np.testing.assert_allclose(rm.accuracy(pred, labels), 5 / 7, rtol=1e-6)
  masked = rm.confusion_matrix(pred, labels, mask=jnp.array([1, 0, 1, 1, 1, 1, 1]))
  assert int(masked[0, 1]) == 0 and int(masked.sum()) == 6


def test_ece_zero_when_perfectly_calibrated_and_known_value_otherwise():
  # Ten rows at confidence 0.7 of which seven are right; ten at 0.9 of which nine are right.
  p7 = jnp.array([0.7, 0.1, 0.1, 0.1])
  p9 = jnp.array([0.9, 0.05, 0.03, 0.02])
  probs = jnp.stack([p7] * 10 + [p9] * 10)
  labels = jnp.array([0] * 7 + [1] * 3 + [0] * 9 + [2])
  np.testing.assert_allclose(rm.expected_calibration_error(probs, labels), 0.0, atol=1e-6)
  # All right at confidence 0.7: gap 0.3 on every row.
  np.testing.assert_allclose(rm.expected_calibration_error(probs[:10], jnp.zeros(10, jnp.int32)), 0.3,
                             rtol=1e-5)


def test_mae_correlation_and_pairwise_accuracy():
  x = jnp.array([0.1, 0.4, 0.9])
  np.testing.assert_allclose(rm.helpfulness_mae(x, jnp.array([0.2, 0.4, 0.5])), 0.5 / 3, rtol=1e-5)
  np.testing.assert_allclose(rm.pearson_correlation(x, 2 * x + 1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(rm.pearson_correlation(x, -x), -1.0, rtol=1e-5)
  assert float(rm.pearson_correlation(x, jnp.ones(3))) == 0.0
  np.testing.assert_allclose(
      rm.pairwise_accuracy(jnp.array([1.0, 0.0, 2.0, 1.0]), jnp.array([0.0, 1.0, 1.0, 1.0])), 2.5 / 4)


def test_rm_loss_combines_weighted_terms_and_is_jittable():
  outputs = {"severity_logits": jnp.array([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]),
             "helpfulness_logit": jnp.array([2.0, -2.0, 0.0])}
  batch = {"severity": jnp.array([0, 3, -1]), "helpfulness": jnp.array([0.9, 0.1, -1.0]),
           "pair_index": jnp.array([[0, 1], [1, 0]])}
  weights = {"severity": 1.0, "helpfulness": 0.5, "preference": 0.25}
  loss, m = rm.rm_loss(outputs, batch, weights)
  expected = m["severity_loss"] + 0.5 * m["helpfulness_loss"] + 0.25 * m["preference_loss"]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(m["severity_loss"], rm.severity_loss(outputs["severity_logits"][:2],
                                                                  batch["severity"][:2]), rtol=1e-6)
  assert float(m["severity_accuracy"]) == 1.0
  # Row 0 (safe, helpful) outranks row 1 (severe, unhelpful): pair 0 right, pair 1 wrong.
  np.testing.assert_allclose(m["pairwise_accuracy"], 0.5)
  jl, jm = jax.jit(lambda o, b: rm.rm_loss(o, b, weights))(outputs, batch)
  np.testing.assert_allclose(jl, loss, rtol=1e-5)
  np.testing.assert_allclose(jm["helpfulness_mae"], m["helpfulness_mae"], rtol=1e-5)
  grads = jax.grad(lambda o: rm.rm_loss(o, batch, weights)[0])(outputs)
  assert float(jnp.abs(grads["helpfulness_logit"][2])) == 0.0  # unlabelled and unpaired row
  with pytest.raises(ValueError, match="unknown rm loss weights"):
    rm.rm_loss(outputs, batch, {"safety": 1.0})
