"""Judge-logit scoring: a frozen LM reads the spec's rubric and its next-token distribution is the grade.

Each rubric (`spec.rubric(name)`) is filled with the conversation and the completion, chat-templated
as one user turn with the generation prompt, and run through the model once. At the next position the
logits of the score tokens "1".."4" are renormalised over those four tokens; the grade is that
distribution (no sampling, no parsing).

The rubric prompt is assembled from token-id segments: the ids before the completion (they depend on
the conversation only), the completion's ids, and the ids after it (the same for every prompt). A
host grader encodes the completion text; the compiled rollout splices in the sampled token ids
directly, so the judge runs inside the jitted step with no host round-trip. Masked gaps between the
segments are skipped by attention and by the positions (cumsum of the mask), so no compaction is
needed. This module holds the jittable core; `safecomp.graders.judge` is the grader built on it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from safecomp import models
from safecomp.errors import CheckpointError
from safecomp.spec import render_rubric
from safecomp.tokenizers import encode_chat, encode_prompt, encode_prompt_around

SCORE_LABELS = ("1", "2", "3", "4")
JUDGE_RUBRICS = ("safety", "helpfulness_direct", "helpfulness_indirect")
# Stands for the completion while the rubric prompt is rendered (a private-use character pair that no
# chat template or user text contains).
COMPLETION_SLOT = "\ue000completion\ue001"


def _next_token_logits(module: models.Transformer, input_ids: jax.Array,
                       attention_mask: jax.Array) -> jax.Array:
  """LM logits [B, V] at each row's last real token (only that position goes through the head)."""
  hidden, _ = module.encode(input_ids, attention_mask=attention_mask)
  idx = models.last_token_index(attention_mask)
  last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
  return module.lm_logits(last)


def judge_scores(model: models.Transformer, params: Mapping, token_ids: jax.Array, mask: jax.Array,
                 score_token_ids: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Expected rubric score [B] in [1, K] and the K score-token probabilities [B, K].

  Args:
    model: a `Transformer` with the "lm" head (static under `jax.jit`).
    params: its parameters (inner tree or `{"params": ...}`).
    token_ids: [B, T] chat-templated rubric prompts; padding anywhere, the last real token last.
    mask: [B, T] 1 on real tokens.
    score_token_ids: [K] ids of the score tokens "1".."K", in order.
  """
  chex.assert_rank([token_ids, mask, score_token_ids], [2, 2, 1])
  chex.assert_equal_shape([token_ids, mask])
  logits = model.apply(models.as_variables(params), token_ids, attention_mask=mask,
                       method=_next_token_logits)
  chex.assert_rank(logits, 2)
  probs = jax.nn.softmax(jnp.take(logits, score_token_ids, axis=-1).astype(jnp.float32), axis=-1)
  levels = jnp.arange(1, score_token_ids.shape[0] + 1, dtype=jnp.float32)
  expected = probs @ levels
  chex.assert_shape(expected, (token_ids.shape[0],))
  return expected, probs


def unit_score(expected: Any, num_levels: int = len(SCORE_LABELS)) -> Any:
  """Maps an expected score on 1..K onto [0, 1]."""
  return (expected - 1.0) / (num_levels - 1.0)


def judgment(probs: Any, rubrics: Sequence[str] = JUDGE_RUBRICS) -> dict[str, Any]:
  """Severity distribution [B, 4] and direct / indirect helpfulness [B] from score probabilities.

  `probs`: [R, B, 4] per rubric in `rubrics` order. On the safety rubric "4" means negligible and "1"
  high, so its probabilities are reversed onto severity order 0..3; helpfulness is the expected score
  mapped onto [0, 1]. Works on numpy and JAX arrays.
  """
  xp = jnp if isinstance(probs, jax.Array) else np
  levels = xp.arange(1, probs.shape[-1] + 1, dtype=probs.dtype)
  out = {}
  for i, name in enumerate(rubrics):
    if name == "safety":
      out["severity_probs"] = probs[i][:, ::-1]
    else:
      out[name] = unit_score(probs[i] @ levels, probs.shape[-1])
  return out


def score_token_ids(tokenizer: Any, family: Optional[str] = None,
                    labels: Sequence[str] = SCORE_LABELS, template: Optional[str] = None) -> np.ndarray:
  """Ids of the token the model emits first when it answers each label.

  With a chat `family` (or Jinja `template`) the label is encoded as an assistant answer after the
  generation prompt, so prefix-space conventions (sentencepiece "▁1", byte-level "Ġ1") match what the
  model would produce; without one, the label is encoded as a continuation.

  Raises:
    CheckpointError: a label that is not exactly one known token, or two labels sharing a token.
  """
  answers = []
  if family is None and template is None:
    answers = [list(tokenizer.encode(label, continuation=True)) for label in labels]
  else:
    probe = [{"role": "user", "content": "Score:"}]
    prompt_ids = list(encode_prompt(tokenizer, probe, family or "llama3", template))
    for label in labels:
      ids, _ = encode_chat(tokenizer, probe + [{"role": "assistant", "content": label}],
                           family or "llama3", template)
      if list(ids[:len(prompt_ids)]) != prompt_ids:
        raise CheckpointError(f"chat format {family or 'template'!r}: the answer {label!r} changes the "
                              "tokens of the prompt before it")
      answers.append(list(ids[len(prompt_ids):]))
    # Drop the end-of-turn tokens every answer shares.
    while all(len(a) > 1 for a in answers) and len({a[-1] for a in answers}) == 1:
      answers = [a[:-1] for a in answers]
  unk = getattr(tokenizer, "unk_id", None)
  for label, ids in zip(labels, answers):
    if len(ids) != 1 or (unk is not None and ids[0] == unk):
      pieces = [tokenizer.id_to_token(i) for i in ids]
      raise CheckpointError(f"judge score label {label!r} is not a single known token in the tokenizer "
                            f"(encodes to {pieces}); pick another judge checkpoint or chat family")
  ids = [a[0] for a in answers]
  if len(set(ids)) != len(ids):
    raise CheckpointError(f"judge score labels {list(labels)} share tokens {ids}")
  return np.asarray(ids, np.int32)


# ------------------------------------------------------------------------------ rubric prompt segments
@dataclasses.dataclass(frozen=True)
class RubricSegments:
  """Token ids of the rubric prompts around the completion, for a list of conversations.

  `heads[r][i]`: ids before the completion for rubric r and conversation i; `tails[r]`: ids after it
  (the same for every conversation).
  """
  rubrics: tuple[str, ...]
  heads: tuple[tuple[tuple[int, ...], ...], ...]
  tails: tuple[tuple[int, ...], ...]

  @property
  def max_head(self) -> int:
    return max((len(h) for per_rubric in self.heads for h in per_rubric), default=0)

  @property
  def max_tail(self) -> int:
    return max(len(t) for t in self.tails)

  def head_arrays(self, index: Sequence[int], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded heads [B, R, width] and their mask for the conversations `index`."""
    ids = np.full((len(index), len(self.rubrics), width), pad_id, np.int32)
    mask = np.zeros(ids.shape, np.int32)
    for b, i in enumerate(index):
      for r in range(len(self.rubrics)):
        head = self.heads[r][i]
        if len(head) > width:
          raise ValueError(f"rubric prompt head of {len(head)} tokens does not fit width {width}")
        if head:
          ids[b, r, width - len(head):] = head
          mask[b, r, width - len(head):] = 1
    return ids, mask

  def tail_arrays(self, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded tails [R, S] and their mask (the last token of every row is real)."""
    width = self.max_tail
    ids = np.full((len(self.rubrics), width), pad_id, np.int32)
    mask = np.zeros(ids.shape, np.int32)
    for r, tail in enumerate(self.tails):
      ids[r, width - len(tail):] = tail
      mask[r, width - len(tail):] = 1
    return ids, mask


def rubric_segments(tokenizer: Any, spec: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                    family: str, template: Optional[str] = None,
                    rubrics: Sequence[str] = JUDGE_RUBRICS) -> RubricSegments:
  """The judge's rubric prompts for `conversations`, split around the completion (see module doc)."""
  heads, tails = [], []
  for name in rubrics:
    per_rubric, tail = [], None
    for messages in conversations:
      text = render_rubric(spec, name, list(messages), COMPLETION_SLOT)
      head, this_tail = encode_prompt_around(tokenizer, [{"role": "user", "content": text}], family,
                                             COMPLETION_SLOT, template)
      if tail is None:
        tail = tuple(this_tail)
      elif tuple(this_tail) != tail:
        raise ValueError(f"rubric {name!r}: the prompt text after the completion depends on the conversation")
      per_rubric.append(tuple(head))
    if tail is None:  # no conversations: the tail from a placeholder conversation
      text = render_rubric(spec, name, [{"role": "user", "content": "?"}], COMPLETION_SLOT)
      tail = tuple(encode_prompt_around(tokenizer, [{"role": "user", "content": text}], family,
                                        COMPLETION_SLOT, template)[1])
    if not tail:
      raise ValueError(f"rubric {name!r}: nothing follows the completion, so the judge would answer "
                       "inside it; end the rubric with its scale and question")
    heads.append(tuple(per_rubric))
    tails.append(tail)
  return RubricSegments(tuple(rubrics), tuple(heads), tuple(tails))


def assemble(heads: jax.Array, head_mask: jax.Array, response: jax.Array, response_mask: jax.Array,
             tails: jax.Array, tail_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Judge inputs [R * B, P + T + S] (rubric-major) from heads [B, R, P], a response [B, T] and
  tails [R, S], with the matching mask. Works on numpy and JAX arrays."""
  xp = jnp if any(isinstance(x, jax.Array) for x in (heads, response, tails)) else np
  batch, num_rubrics, _ = heads.shape
  ids, mask = [], []
  for r in range(num_rubrics):
    ids.append(xp.concatenate([heads[:, r], response, xp.broadcast_to(tails[r], (batch, tails.shape[1]))], 1))
    mask.append(xp.concatenate([head_mask[:, r], response_mask,
                                xp.broadcast_to(tail_mask[r], (batch, tails.shape[1]))], 1))
  return xp.concatenate(ids, 0), xp.concatenate(mask, 0).astype(xp.int32)


def judge_probs(model: models.Transformer, params: Mapping, heads, head_mask, response, response_mask,
                tails, tail_mask, score_token_ids) -> jax.Array:
  """Score-token probabilities [R, B, K] of every rubric for responses given as token ids (jittable)."""
  ids, mask = assemble(heads, head_mask, response, response_mask, tails, tail_mask)
  _, probs = judge_scores(model, params, ids, mask, score_token_ids)
  return probs.reshape(heads.shape[1], heads.shape[0], -1)


# ------------------------------------------------------------------------------ reasoning on device
def _pattern_starts(tokens: jax.Array, mask: jax.Array, pattern: Sequence[int]) -> jax.Array:
  """[B, T] true where `pattern` starts at that position (all its tokens real)."""
  if len(pattern) > tokens.shape[1]:
    return jnp.zeros(tokens.shape, bool)
  hit = jnp.ones(tokens.shape, bool)
  for j, token in enumerate(pattern):
    shifted = jnp.pad(tokens[:, j:], ((0, 0), (0, j)), constant_values=-1)
    real = jnp.pad(mask[:, j:].astype(bool), ((0, 0), (0, j)), constant_values=False)
    hit &= (shifted == token) & real
  return hit


def answer_mask(tokens: jax.Array, mask: jax.Array, open_ids: Sequence[int], close_ids: Sequence[int]
                ) -> jax.Array:
  """The response tokens a user sees, as `strip_reasoning` reads text: every `<think> ... </think>` block
  hidden, everything up to a close marker left without its open marker hidden (generation started
  inside the block), and everything from an open marker that is never closed hidden."""
  length = tokens.shape[1]
  positions = jnp.arange(length, dtype=jnp.int32)
  opens = _pattern_starts(tokens, mask, open_ids) if open_ids else jnp.zeros(tokens.shape, bool)
  if close_ids:  # mark where each close marker ends
    starts = _pattern_starts(tokens, mask, close_ids)
    closes = jnp.pad(starts, ((0, 0), (len(close_ids) - 1, 0)))[:, :length]
  else:
    closes = jnp.zeros(tokens.shape, bool)

  def scan(in_block, step):  # left to right, as the regex matches: one block at a time
    is_open, is_close = step
    inside = in_block | is_open  # an open marker inside a block changes nothing
    stray_close = ~inside & is_close
    return inside & ~is_close, (inside, stray_close)

  _, (hidden, stray) = jax.lax.scan(scan, jnp.zeros(tokens.shape[0], bool), (opens.T, closes.T))
  hidden, stray = hidden.T, stray.T
  last_stray = jnp.max(jnp.where(stray, positions[None, :], -1), axis=1, keepdims=True)
  visible = mask.astype(bool) & ~hidden & (positions[None, :] > last_stray)
  return visible.astype(mask.dtype)
