"""Per-token KL estimators and the KL-coefficient controllers.

With samples drawn from the policy p, and log-ratio `logr = ref_logp - logp`:
  k1 = -logr                   unbiased, high variance, can be negative per token;
  k2 = logr**2 / 2             biased, low variance, >= 0;
  k3 = exp(logr) - 1 - logr    unbiased, low variance, >= 0 (Schulman, "Approximating KL
                               divergence").
"""
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from safecomp.errors import ConfigError

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k1 = logp - ref_logp."""
  chex.assert_equal_shape([logp, ref_logp])
  return logp - ref_logp


def kl_k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k2 = (logp - ref_logp)^2 / 2."""
  chex.assert_equal_shape([logp, ref_logp])
  return 0.5 * jnp.square(logp - ref_logp)


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k3 = exp(ref_logp - logp) - 1 - (ref_logp - logp); always >= 0."""
  chex.assert_equal_shape([logp, ref_logp])
  logr = ref_logp - logp
  # expm1 keeps precision when the two policies are close.
  return jnp.expm1(logr) - logr


_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k1") -> jax.Array:
  """Per-token KL(p || ref) estimate with the named estimator ("k1", "k2" or "k3")."""
  if estimator not in _ESTIMATORS:
    raise ConfigError(f"kl_estimator={estimator!r}: expected one of {KL_ESTIMATORS}")
  return _ESTIMATORS[estimator](logp, ref_logp)


def adaptive_kl_coef(
    coef: jax.Array | float,
    observed_kl: jax.Array | float,
    n_steps: int | jax.Array,
    target: float,
    horizon: float,
) -> jax.Array:
  """OpenAI's proportional controller (Ziegler et al. 2019).

  err = clip(observed_kl / target - 1, -0.2, 0.2); coef * (1 + err * n_steps / horizon).

  Args:
    coef: current KL coefficient.
    observed_kl: mean over episodes of the sequence-summed KL to the reference.
    n_steps: episodes in the batch that produced `observed_kl`.
    target: KL the controller steers towards (> 0).
    horizon: episodes over which a full proportional correction is spread (> 0).

  Returns:
    The new coefficient (float32 scalar).
  """
  if target <= 0 or horizon <= 0:
    raise ConfigError(f"adaptive KL needs target > 0 and horizon > 0, got {target=}, {horizon=}")
  err = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
  return jnp.asarray(coef, jnp.float32) * (1.0 + err * n_steps / horizon)


def update_kl_coef(
    coef: jax.Array | float,
    observed_kl: jax.Array | float,
    n_steps: int | jax.Array,
    target: float | None,
    horizon: float,
) -> jax.Array:
  """Adaptive update when `target` is set, otherwise the fixed coefficient unchanged."""
  if target is None:
    return jnp.asarray(coef, jnp.float32)
  return adaptive_kl_coef(coef, observed_kl, n_steps, target, horizon)
