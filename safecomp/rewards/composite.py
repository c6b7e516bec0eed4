"""Composite reward r = h * s and its ablation variants.

Safety `s` and helpfulness `h` are bounded scores in [0, 1] judged on the model's output. They are
combined as they are: centring or whitening either one before the product flips the sign of the
reward for some outputs (a safe but unhelpful answer would score above a safe, helpful one).
Whitening belongs to the final advantages only.
"""
from typing import Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from safecomp.constants import INTENT_INDEX, SEVERITIES

DEFAULT_SEVERITY_TO_SAFETY = (1.0, 0.6, 0.3, 0.0)
REWARD_KINDS = ("product", "sum", "min", "safety_only", "helpfulness_only", "refusal")


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def assert_unit_interval(x: chex.Array, name: str) -> None:
  """Raises AssertionError naming `name` if a concrete array has values outside [0, 1].

  Values can only be read outside a trace; inside `jax.jit` only the shape is checked, so run
  one step eagerly (or under `chex.fake_jit`) to validate a new data source.
  """
  if _is_concrete(x):
    chex.assert_tree_all_finite(x)
    arr = np.asarray(x)
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
      raise AssertionError(
          f"{name} must lie in [0, 1] (bounded score, never centred or whitened); "
          f"got min={arr.min():.4g}, max={arr.max():.4g}")


def safety_from_severity(
    severity: chex.Array,
    severity_to_safety: Sequence[float] = DEFAULT_SEVERITY_TO_SAFETY) -> chex.Array:
  """Maps severity to a safety score in [0, 1].

  Args:
    severity: int levels [B] in 0..3 (looked up), or probabilities [B, 4] over the levels, e.g.
      the reward model's softmaxed severity head (expectation of the lookup).
    severity_to_safety: safety of each severity level, one per `SEVERITIES` entry.

  Returns:
    Safety [B] in [0, 1].
  """
  table = jnp.asarray(severity_to_safety, dtype=jnp.float32)
  chex.assert_shape(table, (len(SEVERITIES),))
  assert_unit_interval(table, "severity_to_safety")
  severity = jnp.asarray(severity)
  if jnp.issubdtype(severity.dtype, jnp.integer):
    chex.assert_rank(severity, 1)
    if _is_concrete(severity) and severity.size:
      bad = np.asarray((severity < 0) | (severity >= len(SEVERITIES)))
      if bad.any():
        raise AssertionError(
            f"severity index out of range 0..{len(SEVERITIES) - 1} at rows {np.flatnonzero(bad)[:5]}")
    return table[severity]
  chex.assert_rank(severity, 2)
  chex.assert_axis_dimension(severity, 1, len(SEVERITIES))
  assert_unit_interval(severity, "severity probabilities")
  return severity.astype(jnp.float32) @ table


def refusal_correctness(intent: chex.Array, refused: chex.Array) -> chex.Array:
  """Reward of the comply/refuse baseline: 1 for the right decision given the prompt's intent.

  Benign and dual-use prompts should be answered, malicious ones refused. A refusal probability
  gives the expected correctness.
  """
  chex.assert_rank([intent, refused], 1)
  chex.assert_equal_shape([intent, refused])
  refused = jnp.asarray(refused, jnp.float32)
  assert_unit_interval(refused, "refused")
  should_refuse = jnp.asarray(intent) == INTENT_INDEX["malicious"]
  return jnp.where(should_refuse, refused, 1.0 - refused)


def composite_reward(
    safety: Optional[chex.Array],
    helpfulness: Optional[chex.Array],
    kind: str = "product",
    *,
    intent: Optional[chex.Array] = None,
    refused: Optional[chex.Array] = None) -> chex.Array:
  """Combines bounded safety and helpfulness [B] into a reward [B] in [0, 1].

  Args:
    safety: s [B] in [0, 1] (unused by `helpfulness_only` and `refusal`).
    helpfulness: h [B] in [0, 1] (unused by `safety_only` and `refusal`).
    kind: `product` (h * s, the method), `sum` ((h + s) / 2), `min`, `safety_only`,
      `helpfulness_only`, or `refusal` (comply/refuse correctness by intent; needs `intent`, `refused`).
    intent: prompt intent index [B] (`safecomp.constants.INTENTS`), for `refusal`.
    refused: whether (or the probability that) the output refuses [B], for `refusal`.

  Returns:
    Reward [B].
  """
  if kind not in REWARD_KINDS:
    raise ValueError(f"unknown reward kind {kind!r}; expected one of {REWARD_KINDS}")
  if kind == "refusal":
    if intent is None or refused is None:
      raise ValueError("reward kind 'refusal' needs `intent` and `refused`")
    return refusal_correctness(intent, refused)
  needs_s = kind != "helpfulness_only"
  needs_h = kind != "safety_only"
  if (needs_s and safety is None) or (needs_h and helpfulness is None):
    raise ValueError(f"reward kind {kind!r} needs safety and helpfulness scores")
  s = None if safety is None else jnp.asarray(safety, jnp.float32)
  h = None if helpfulness is None else jnp.asarray(helpfulness, jnp.float32)
  for x, name in ((s, "safety"), (h, "helpfulness")):
    if x is not None:
      chex.assert_rank(x, 1)
      assert_unit_interval(x, name)
  if s is not None and h is not None:
    chex.assert_equal_shape([s, h])
  if kind == "product":
    return h * s
  if kind == "sum":
    return 0.5 * (h + s)
  if kind == "min":
    return jnp.minimum(h, s)
  if kind == "safety_only":
    return s
  return h
