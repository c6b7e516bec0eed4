"""Rewards per token, masked statistics and sequence-level advantage baselines (GRPO, RLOO)."""
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from safecomp.errors import ConfigError
from safecomp.models.masking import masked_mean, masked_sum  # re-exported: rl.masked_mean, rl.masked_sum
from safecomp.models.transformer import last_token_index
from safecomp.rl import kl as kl_lib


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
  """Variance of `x` over all positions where `mask` is 1."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  if unbiased:
    count = jnp.sum(mask.astype(jnp.float32))
    var = var * count / jnp.maximum(count - 1.0, 1.0)
  return var


def masked_whiten(
    x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
  """`x` divided by its std over valid positions, and centred first if `shift_mean`; 0 elsewhere.

  `shift_mean=False` only rescales, so zeros and signs are kept.
  """
  mean, var = masked_mean(x, mask), masked_var(x, mask)
  centred = x - mean if shift_mean else x
  return centred * jax.lax.rsqrt(var + eps) * mask.astype(jnp.float32)


def sequence_kl(
    logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, estimator: str = "k1") -> jax.Array:
  """[B] KL to the reference summed over each response's valid tokens."""
  return masked_sum(kl_lib.kl_estimate(logp, ref_logp, estimator), mask, axis=1)


def token_rewards(
    scores: jax.Array,
    logp: jax.Array,
    ref_logp: jax.Array,
    mask: jax.Array,
    kl_coef: jax.Array | float,
    estimator: str = "k1",
) -> jax.Array:
  """Per-token rewards: -kl_coef * KL at every valid token, plus the score at the last valid one.

  Args:
    scores: [B] sequence scores.
    logp: [B, N] log-probs of the response tokens under the rollout policy.
    ref_logp: [B, N] the same under the reference policy.
    mask: [B, N] response mask; a row with no valid token gets no reward at all.
    kl_coef: KL penalty coefficient.
    estimator: "k1", "k2" or "k3".

  Returns:
    [B, N] float32 rewards, zero at masked positions.
  """
  chex.assert_rank([scores, logp], [1, 2])
  chex.assert_equal_shape([logp, ref_logp, mask])
  chex.assert_equal_shape_prefix([scores, logp], 1)
  m = mask.astype(jnp.float32)
  kl = kl_lib.kl_estimate(logp.astype(jnp.float32), ref_logp.astype(jnp.float32), estimator)
  last = jax.nn.one_hot(last_token_index(mask), mask.shape[1], dtype=jnp.float32) * m
  return -kl_coef * kl * m + last * scores.astype(jnp.float32)[:, None]


def broadcast_to_tokens(seq_values: jax.Array, mask: jax.Array) -> jax.Array:
  """[B] per-sequence values copied to every valid token of a [B, N] mask."""
  chex.assert_rank([seq_values, mask], [1, 2])
  chex.assert_equal_shape_prefix([seq_values, mask], 1)
  return seq_values.astype(jnp.float32)[:, None] * mask.astype(jnp.float32)


def _groups(scores: jax.Array, group_size: int) -> jax.Array:
  chex.assert_rank(scores, 1)
  if group_size < 2:
    raise ConfigError(f"group_size={group_size}: group baselines need >= 2 samples per prompt")
  if scores.shape[0] % group_size:
    raise ConfigError(
        f"scores has {scores.shape[0]} rows, not a multiple of group_size={group_size}")
  return scores.astype(jnp.float32).reshape(-1, group_size)


def grpo_advantages(
    scores: jax.Array,
    group_size: int,
    normalize_std: bool = True,
    eps: float = 1e-6,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Group-relative advantages (score - group mean) / group std.

  Rows are grouped by consecutive runs of `group_size` (each prompt repeated `group_size` times).
  Returns [B], or [B, N] broadcast over valid tokens when `mask` is given.
  """
  g = _groups(scores, group_size)
  adv = g - g.mean(axis=1, keepdims=True)
  if normalize_std:
    adv = adv / (g.std(axis=1, ddof=1, keepdims=True) + eps)
  adv = adv.reshape(-1)
  return adv if mask is None else broadcast_to_tokens(adv, mask)


def rloo_advantages(
    scores: jax.Array, group_size: int, mask: jax.Array | None = None) -> jax.Array:
  """REINFORCE leave-one-out: score minus the mean score of the other samples of the same prompt.

  Returns [B], or [B, N] broadcast over valid tokens when `mask` is given.
  """
  g = _groups(scores, group_size)
  baseline = (g.sum(axis=1, keepdims=True) - g) / (group_size - 1)
  adv = (g - baseline).reshape(-1)
  return adv if mask is None else broadcast_to_tokens(adv, mask)


def contains_eos(responses: jax.Array, mask: jax.Array, eos_id: int | tuple[int, ...]) -> jax.Array:
  """[B] bool: whether each response emitted `eos_id` (or any of several stop ids) at a valid position."""
  chex.assert_rank(responses, 2)
  chex.assert_equal_shape([responses, mask])
  hit = jnp.isin(responses, jnp.asarray(eos_id, responses.dtype).reshape(-1))
  return jnp.any(hit & (mask > 0), axis=1)


def eos_penalty(
    scores: jax.Array, responses: jax.Array, mask: jax.Array, eos_id: int | tuple[int, ...], penalty: float
) -> jax.Array:
  """Subtracts `penalty` from the score of every response that never emits EOS (truncated ones)."""
  chex.assert_rank(scores, 1)
  ended = contains_eos(responses, mask, eos_id)
  return scores.astype(jnp.float32) - penalty * (1.0 - ended.astype(jnp.float32))


class RunningMoments(NamedTuple):
  """Running mean and (population) variance of every score seen so far."""
  mean: jax.Array
  var: jax.Array
  count: jax.Array


def init_running_moments() -> RunningMoments:
  """Empty statistics (count 0)."""
  return RunningMoments(jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32),
                        jnp.zeros((), jnp.float32))


def update_running_moments(stats: RunningMoments, x: jax.Array) -> RunningMoments:
  """Folds a batch `x` into the statistics (Chan et al.'s parallel update)."""
  x = x.astype(jnp.float32).reshape(-1)
  n = jnp.asarray(x.shape[0], jnp.float32)
  batch_mean, batch_var = x.mean(), x.var()
  total = stats.count + n
  delta = batch_mean - stats.mean
  mean = stats.mean + delta * n / total
  m2 = stats.var * stats.count + batch_var * n + jnp.square(delta) * stats.count * n / total
  return RunningMoments(mean, m2 / total, total)


def normalize_scores(
    scores: jax.Array, stats: RunningMoments, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
  """Scores scaled by the running std (and centred on the running mean if `shift_mean`)."""
  centred = scores - stats.mean if shift_mean else scores
  return centred * jax.lax.rsqrt(stats.var + eps)
