"""Masked reductions shared by the reward-model losses (`safecomp.rewards`) and the RL math
(`safecomp.rl`), which sit on one layer and do not import each other."""
import chex
import jax
import jax.numpy as jnp


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Sum of `x * mask` (mask cast to x's dtype) over `axis` (all axes when None)."""
  return jnp.sum(x * mask.astype(x.dtype), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None, *, min_count: float = 1e-8) -> jax.Array:
  """Mask-weighted mean of `x` (in float32) over `axis` (all axes when None); 0 where nothing is valid.

  sum(x * mask) / max(sum(mask), min_count). With a 0/1 mask every `min_count` in (0, 1] gives the
  same numbers; it only matters for fractional weights whose sum is below it (the reward-model metrics
  use 1.0, the RL math 1e-8).
  """
  chex.assert_equal_shape([x, mask])
  x = x.astype(jnp.float32)
  count = jnp.sum(mask.astype(jnp.float32), axis=axis)
  return masked_sum(x, mask, axis) / jnp.maximum(count, min_count)
