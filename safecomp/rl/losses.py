"""Clipped PPO policy and value losses, entropy and value diagnostics (token-level masked means)."""
import chex
import jax
import jax.numpy as jnp

from safecomp.rl import kl as kl_lib
from safecomp.rl.advantages import masked_mean, masked_var


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_eps: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate, averaged over valid tokens.

  Args:
    logp: [B, N] log-probs under the policy being trained.
    old_logp: [B, N] log-probs under the rollout policy.
    advantages: [B, N].
    mask: [B, N] response mask.
    clip_eps: ratio clip range: ratios are clipped to [1 - clip_eps, 1 + clip_eps].

  Returns:
    (loss, metrics) with metrics clipfrac, approx_kl (k3 estimate of KL(old || new)), ratio_mean,
    ratio_min, ratio_max.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, advantages, mask])
  old_logp = jax.lax.stop_gradient(old_logp)
  advantages = jax.lax.stop_gradient(advantages)
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  valid = mask > 0
  ratio_ng = jax.lax.stop_gradient(ratio)
  metrics = {
      "clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
      # Samples come from the old policy, so k3(old, new) estimates KL(old || new).
      "approx_kl": masked_mean(kl_lib.kl_k3(old_logp, jax.lax.stop_gradient(logp)), mask),
      "ratio_mean": masked_mean(ratio_ng, mask),
      "ratio_min": jnp.min(jnp.where(valid, ratio_ng, jnp.inf)),
      "ratio_max": jnp.max(jnp.where(valid, ratio_ng, -jnp.inf)),
  }
  return loss, metrics


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    clip_eps: float | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """0.5 * squared error to `returns`, pessimistic over the clipped and unclipped value.

  `clip_eps=None` turns clipping off. Returns (loss, {"vf_clipfrac"}).
  """
  chex.assert_rank(values, 2)
  chex.assert_equal_shape([values, old_values, returns, mask])
  old_values = jax.lax.stop_gradient(old_values)
  returns = jax.lax.stop_gradient(returns)
  err = jnp.square(values - returns)
  if clip_eps is None:
    return 0.5 * masked_mean(err, mask), {"vf_clipfrac": jnp.zeros((), jnp.float32)}
  clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  clipped_err = jnp.square(clipped_values - returns)
  loss = 0.5 * masked_mean(jnp.maximum(err, clipped_err), mask)
  return loss, {"vf_clipfrac": masked_mean((clipped_err > err).astype(jnp.float32), mask)}


def token_entropy(logits: jax.Array) -> jax.Array:
  """[...] entropy of softmax(logits) over the last axis."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean entropy over valid tokens of [B, N, V] logits (already divided by the temperature)."""
  chex.assert_rank(logits, 3)
  chex.assert_equal_shape_prefix([logits, mask], 2)
  return masked_mean(token_entropy(logits), mask)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over valid tokens (1 is perfect, <= 0 is useless)."""
  chex.assert_equal_shape([values, returns, mask])
  var_returns = masked_var(returns, mask)
  return 1.0 - masked_var(returns - values, mask) / jnp.maximum(var_returns, 1e-8)
