"""Generalised advantage estimation over response tokens."""
import chex
import jax
import jax.numpy as jnp
from jax import lax


def compute_gae(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
  """GAE(gamma, lambda) per token, scanning the response right to left.

  A masked position contributes nothing and is never bootstrapped from: the value after the last
  valid token is 0 (the episode ends there), and so is the value of any masked position.

  Args:
    rewards: [B, N] per-token rewards.
    values: [B, N] value estimates V(s_t) for the state before response token t.
    mask: [B, N] 1 for valid response tokens, 0 for padding / tokens after EOS.
    gamma: discount factor.
    lam: GAE lambda.

  Returns:
    (advantages, returns), both [B, N] float32 and zero where `mask` is 0;
    returns = advantages + values (computed before any whitening).
  """
  chex.assert_rank(rewards, 2)
  chex.assert_equal_shape([rewards, values, mask])
  m = mask.astype(jnp.float32)
  r = rewards.astype(jnp.float32) * m
  v = values.astype(jnp.float32) * m
  next_m = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
  next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
  deltas = r + gamma * next_v - v

  def step(next_adv, xs):
    delta, valid, next_valid = xs
    adv = (delta + gamma * lam * next_valid * next_adv) * valid
    return adv, adv

  # Scan over time: inputs are transposed to [N, B].
  _, adv_t = lax.scan(
      step, jnp.zeros_like(m[:, 0]), (deltas.T, m.T, next_m.T), reverse=True)
  advantages = adv_t.T
  returns = (advantages + v) * m
  return advantages, returns
