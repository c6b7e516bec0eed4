"""Composite reward variants, checked against hand-worked values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp.constants import INTENT_INDEX
from safecomp.rewards.composite import composite_reward, refusal_correctness, safety_from_severity

S = jnp.array([1.0, 0.6, 0.0, 0.5])
H = jnp.array([0.5, 1.0, 1.0, 0.2])


def test_safety_lookup_from_int_severity():
  np.testing.assert_allclose(safety_from_severity(jnp.array([3, 0, 2, 1])), [0.0, 1.0, 0.3, 0.6])


def test_safety_expectation_from_probabilities():
  probs = jnp.array([[0.5, 0.5, 0.0, 0.0],   # 0.5*1.0 + 0.5*0.6 = 0.8
                     [0.0, 0.0, 0.5, 0.5],   # 0.5*0.3 = 0.15
                     [0.25, 0.25, 0.25, 0.25]])  # (1 + .6 + .3 + 0)/4 = 0.475
  np.testing.assert_allclose(safety_from_severity(probs), [0.8, 0.15, 0.475], rtol=1e-6)


def test_safety_custom_table_and_range_errors():
  np.testing.assert_allclose(safety_from_severity(jnp.array([1, 2]), (1.0, 0.9, 0.1, 0.0)), [0.9, 0.1])
  with pytest.raises(AssertionError, match="out of range"):
    safety_from_severity(jnp.array([4]))
  with pytest.raises(AssertionError):
    safety_from_severity(jnp.ones((2, 3)) / 3)


@pytest.mark.parametrize("kind,expected", [
    ("product", [0.5, 0.6, 0.0, 0.1]),
    ("sum", [0.75, 0.8, 0.5, 0.35]),
    ("min", [0.5, 0.6, 0.0, 0.2]),
    ("safety_only", [1.0, 0.6, 0.0, 0.5]),
    ("helpfulness_only", [0.5, 1.0, 1.0, 0.2]),
])
def test_kinds_hand_worked(kind, expected):
  np.testing.assert_allclose(composite_reward(S, H, kind), expected, rtol=1e-6)


def test_product_ranks_safe_helpful_over_unsafe_helpful_and_safe_unhelpful():
  # A safe, helpful answer beats both a harmful full answer and a safe but empty refusal.
  r = composite_reward(jnp.array([0.9, 0.0, 1.0]), jnp.array([0.8, 1.0, 0.1]))
  assert int(jnp.argmax(r)) == 0


def test_refusal_baseline_by_intent():
  intent = jnp.array([INTENT_INDEX["benign"], INTENT_INDEX["dual_use"], INTENT_INDEX["malicious"],
                      INTENT_INDEX["malicious"], INTENT_INDEX["benign"]])
  refused = jnp.array([False, True, True, False, True])
  np.testing.assert_allclose(composite_reward(None, None, "refusal", intent=intent, refused=refused),
                             [1.0, 0.0, 1.0, 0.0, 0.0])
  # Refusal probabilities give the expected correctness.
  np.testing.assert_allclose(refusal_correctness(intent[:3], jnp.array([0.2, 0.3, 0.9])),
                             [0.8, 0.7, 0.9], rtol=1e-6)
  with pytest.raises(ValueError, match="intent"):
    composite_reward(S, H, "refusal")


def test_rejects_centred_or_whitened_scores():
  whitened = (S - S.mean()) / S.std()
  with pytest.raises(AssertionError, match="safety must lie in"):
    composite_reward(whitened, H)
  with pytest.raises(AssertionError, match="helpfulness must lie in"):
    composite_reward(S, H + 0.9)
  with pytest.raises(ValueError, match="unknown reward kind"):
    composite_reward(S, H, "ratio")


def test_jit_matches_eager():
  for kind in ("product", "sum", "min"):
    f = jax.jit(lambda s, h, k=kind: composite_reward(s, h, k))
    np.testing.assert_allclose(f(S, H), composite_reward(S, H, kind), rtol=1e-6)
  probs = jax.nn.softmax(jnp.arange(8.0).reshape(2, 4))
  np.testing.assert_allclose(jax.jit(safety_from_severity)(probs), safety_from_severity(probs), rtol=1e-6)
