"""KV-cache sampling: prefill, then a `lax.while_loop` of one-token steps (jit-able).

Sequences keep the prompt layout as given (left or right padding) followed by the response, so a
training forward over `sequences` with mask `concat(prompt_mask, response_mask)` sees exactly what
the sampler saw: `token_logprobs` of that forward equals `response_logprobs`.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence, Union

import chex
import jax
import jax.numpy as jnp

from safecomp.errors import ConfigError
from safecomp.models.transformer import (Transformer, as_variables, init_cache, last_token_index)

Array = jax.Array


class SampleOutput(NamedTuple):
  """What `generate` returns (all arrays; a pytree)."""
  sequences: Array  # [B, P+N] int32: prompt as given, then response
  response_tokens: Array  # [B, N] int32, pad after EOS
  response_logprobs: Array  # [B, N] float32, 0 where response_mask is 0
  response_mask: Array  # [B, N] int32, 1 up to and including EOS
  finished: Array  # [B] bool: emitted EOS


def token_logprobs(logits: Array, tokens: Array, temperature: float = 1.0) -> Array:
  """log_softmax(logits / temperature) gathered at `tokens`: [..., V], [...] -> [...] (float32)."""
  chex.assert_equal_shape_prefix((logits, tokens), tokens.ndim)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Sets logits outside the top-k / nucleus (top-p) set to -inf; the best token is always kept."""
  neg = jnp.asarray(-jnp.inf, logits.dtype)
  if top_k and top_k > 0:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token while the mass strictly before it is below top_p.
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, neg, logits)
  return logits


def sample_tokens(logits: Array, rng: Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, greedy: bool = False) -> Array:
  """One token per row from logits [B, V]."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = filter_logits(logits.astype(jnp.float32) / temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


def prefill(model: Transformer, params: Mapping, prompt_tokens: Array, prompt_mask: Array, max_len: int,
            cache_dtype=None) -> tuple[Array, Any]:
  """The prompt forward `generate` starts with: (logits [B, V] at each row's last real prompt token,
  a KV cache of `max_len` slots holding the prompt)."""
  variables = as_variables(params)
  cache = init_cache(model.config, prompt_tokens.shape[0], max_len, cache_dtype)
  hidden, cache = model.apply(variables, prompt_tokens, attention_mask=prompt_mask.astype(bool), cache=cache,
                              cache_index=0, method=Transformer.encode)
  last = last_token_index(prompt_mask)
  hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  return model.apply(variables, hidden, method=Transformer.lm_logits), cache


def generate(model: Transformer, params: Mapping, prompt_tokens: Array, prompt_mask: Array,
             rng: Array, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, greedy: bool = False,
             eos_id: Union[int, Sequence[int], Array, None] = None, pad_id: int = 0,
             cache_dtype=None) -> SampleOutput:
  """Samples up to `max_new_tokens` per row after left- or right-padded prompts.

  Stops a row at EOS (any of `eos_id`: int, sequence or int array) and the whole loop once every
  row has stopped. Log-probs are under the temperature-scaled, untruncated distribution (top-k /
  top-p only restrict what is drawn; greedy ignores them). Options after `*` other than `eos_id`
  are static. Runs eagerly or inside a larger `jax.jit`; step i draws with `fold_in(rng, i)`.
  For right-padded prompts the first response token is predicted at the last real prompt token:
  score with `response_logprobs`, not a plain shift.
  """
  cfg = model.config
  if "lm" not in cfg.heads:
    raise ConfigError("generate needs a model built with the 'lm' head")
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be positive (greedy=True ignores it except "
                     "for the reported log-probs)")
  chex.assert_rank(prompt_tokens, 2)
  chex.assert_equal_shape((prompt_tokens, prompt_mask))
  variables = as_variables(params)
  batch, prompt_len = prompt_tokens.shape
  # EOS ids may be static Python ints or a traced array (no recompilation per id).
  eos = jnp.atleast_1d(jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32))
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_mask = prompt_mask.astype(bool)

  def step_logits(hidden):
    return model.apply(variables, hidden, method=Transformer.lm_logits)

  logits, cache = prefill(model, variables, prompt_tokens, prompt_mask, prompt_len + max_new_tokens, cache_dtype)

  tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  logprobs = jnp.zeros((batch, max_new_tokens), jnp.float32)
  mask = jnp.zeros((batch, max_new_tokens), jnp.int32)
  finished = jnp.zeros((batch,), bool)
  state = (jnp.int32(0), cache, logits, tokens, logprobs, mask, finished)

  def cond(state):
    i, _, _, _, _, _, finished = state
    return (i < max_new_tokens) & ~jnp.all(finished)

  def body(state):
    i, cache, logits, tokens, logprobs, mask, finished = state
    tok = sample_tokens(logits, jax.random.fold_in(rng, i), temperature=temperature, top_k=top_k,
                        top_p=top_p, greedy=greedy)
    alive = ~finished
    lp = jnp.where(alive, token_logprobs(logits, tok, temperature), 0.0)
    tok = jnp.where(alive, tok, pad_id)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
    logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, None], (0, i))
    mask = jax.lax.dynamic_update_slice(mask, alive.astype(jnp.int32)[:, None], (0, i))
    finished = finished | (alive & jnp.any(tok[:, None] == eos[None, :], axis=1))
    # The step after the last sample is wasted but keeps the body uniform.
    hidden, cache = model.apply(variables, tok[:, None], attention_mask=alive[:, None], cache=cache,
                                cache_index=prompt_len + i, method=Transformer.encode)
    return (i + 1, cache, step_logits(hidden[:, 0]), tokens, logprobs, mask, finished)

  _, _, _, tokens, logprobs, mask, finished = jax.lax.while_loop(cond, body, state)
  return SampleOutput(sequences=jnp.concatenate([prompt_tokens, tokens], axis=1),
                      response_tokens=tokens, response_logprobs=logprobs, response_mask=mask,
                      finished=finished)


def response_outputs(outputs: Array, prompt_mask: Array) -> Array:
  """The per-position model outputs [B, N, ...] that predict the N response tokens.

  `outputs` [B, P+N, ...] (logits, values, hidden states) come from a forward over `sequences` =
  concat(prompt [B, P], response [B, N]) with mask concat(prompt_mask, response_mask). Response token
  i > 0 is predicted at slot P-1+i; token 0 at the last real prompt token, which is slot P-1 for left
  padding and earlier for right padding (slot 0 for an empty prompt row). Outputs at response slots
  after EOS (right padding of the response) are returned as they are: mask them with response_mask.
  The one definition of this alignment for the sampler, the rollout's scoring and the PPO update.
  """
  chex.assert_rank(prompt_mask, 2)
  if outputs.ndim < 2:
    raise ValueError(f"outputs must be [B, P+N, ...], got shape {outputs.shape}")
  prompt_len = prompt_mask.shape[1]
  if outputs.shape[0] != prompt_mask.shape[0] or outputs.shape[1] <= prompt_len:
    raise ValueError(f"outputs of shape {outputs.shape} do not extend prompt_mask of shape "
                     f"{prompt_mask.shape} by a response")
  index = last_token_index(prompt_mask).reshape((-1,) + (1,) * (outputs.ndim - 1))
  first = jnp.take_along_axis(outputs, index, axis=1)
  return jnp.concatenate([first, outputs[:, prompt_len:-1]], axis=1)


def response_forward(model: Transformer, params: Mapping, sequences: Array, attention_mask: Array,
                     response_width: int) -> tuple[Array | None, Array | None]:
  """(logits [B, N, V] float32, values [B, N] float32) at the N positions that predict the response.

  One trunk forward over `sequences` = concat(prompt [B, P], response [B, N]) with `attention_mask`
  [B, P+N]; the heads then run on the N hidden states of `response_outputs` only, so the LM head and
  its softmax never touch prompt positions. Either output is None when `model` lacks that head.
  """
  chex.assert_rank([sequences, attention_mask], 2)
  variables = as_variables(params)
  hidden, _ = model.apply(variables, sequences, attention_mask=attention_mask, method=Transformer.encode)
  hidden = response_outputs(hidden, attention_mask[:, :sequences.shape[1] - response_width])
  heads = model.config.heads
  logits = values = None
  if "lm" in heads:
    logits = model.apply(variables, hidden, method=Transformer.lm_logits)
  if "value" in heads:
    values = model.apply(variables, hidden, method=Transformer.values)
  return logits, values


def response_logprobs(logits: Array, sequences: Array, prompt_mask: Array,
                      temperature: float = 1.0, response_mask: Array | None = None) -> Array:
  """Per-token log-probs [B, N] of the response part of `sequences` from a training forward.

  `logits` [B, P+N, V] come from a forward over `sequences` [B, P+N] with mask concat(prompt_mask,
  response_mask); prompts may be left- or right-padded (see `response_outputs`). With
  `response_mask` [B, N] the log-probs are multiplied by it, so the response's right padding (after
  EOS) scores 0.
  """
  chex.assert_rank([logits, sequences], [3, 2])
  chex.assert_equal_shape_prefix([logits, sequences], 2)
  logp = token_logprobs(response_outputs(logits, prompt_mask), sequences[:, prompt_mask.shape[1]:],
                        temperature)
  if response_mask is not None:
    chex.assert_equal_shape([logp, response_mask])
    logp = logp * response_mask
  return logp
