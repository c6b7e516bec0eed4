"""The decoder-only `Transformer` with optional heads, its KV cache and functional entry points."""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, NamedTuple, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from safecomp.errors import ConfigError
from safecomp.models import layers, quantize
from safecomp.models.config import ModelConfig

Array = jax.Array
NUM_SEVERITIES = 4


class KVCache(NamedTuple):
  """Per-layer keys/values plus per-slot validity and RoPE positions (a plain pytree).

  k, v: [num_layers, batch, max_len, num_kv_heads, head_dim]; mask: [batch, max_len] bool (True for
  slots holding a real token); positions: [batch, max_len] int32.
  """
  k: Array
  v: Array
  mask: Array
  positions: Array


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  """An empty cache for `batch` rows of up to `max_len` tokens (dtype defaults to compute dtype)."""
  dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
  shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 mask=jnp.zeros((batch, max_len), bool),
                 positions=jnp.zeros((batch, max_len), jnp.int32))


def last_token_index(attention_mask: Array) -> Array:
  """Index [B] of the last real token of each row (left or right padding); 0 for empty rows."""
  chex.assert_rank(attention_mask, 2)
  slots = jnp.arange(attention_mask.shape[1], dtype=jnp.int32)
  return jnp.max(jnp.where(attention_mask.astype(bool), slots[None, :], 0), axis=1)


def segment_positions(segment_ids: Array) -> Array:
  """RoPE positions of packed rows: 0, 1, 2, ... restarting where the segment id changes."""
  chex.assert_rank(segment_ids, 2)
  slots = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)[None, :]
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  return slots - jax.lax.cummax(jnp.where(starts, slots, 0), axis=1)


def default_positions(attention_mask: Array, offset: Optional[Array] = None) -> Array:
  """RoPE positions cumsum(mask) - 1 (plus per-row `offset`), clipped at 0 so left padding works."""
  pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1
  if offset is not None:
    pos = pos + offset[:, None]
  return jnp.maximum(pos, 0)


def _remat_policy(name: str):
  if name == "full":
    return None  # save nothing: recompute the whole block
  return getattr(jax.checkpoint_policies, name)


class Transformer(nn.Module):
  """Decoder-only LM trunk with any subset of heads ("lm", "value", "severity", "helpfulness").

  `apply({"params": p}, input_ids, *, positions=None, attention_mask=None, cache=None,
  cache_index=None)` returns a dict: "hidden" [B,T,D] (final normed hidden state) always, "logits"
  [B,T,V] (float32), "values" [B,T], "severity_logits" [B,4], "helpfulness_logit" [B] by heads,
  and "cache" when a cache was passed (tokens are written at slots cache_index..cache_index+T-1).
  Reward heads read the last real token of each row.
  """
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
        embedding_init=layers.dense_init(cfg, ("vocab", "embed")))
    block = layers.DecoderBlock
    if cfg.base_quantization != "none":  # QLoRA: each layer's kernels dequantised inside the scan
      block = nn.map_variables(block, "params", init=True, trans_in_fn=functools.partial(
          quantize.dequantize_tree, dtype=cfg.params_dtype))
    if cfg.remat != "none":
      block = nn.remat(block, policy=_remat_policy(cfg.remat), prevent_cse=False)
    self.layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast), length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})(cfg)
    self.final_norm = layers.RMSNorm(cfg.rms_norm_eps, cfg.norm_unit_offset, cfg.compute_dtype,
                                     cfg.params_dtype)
    if "lm" in cfg.heads and not cfg.tie_word_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                              param_dtype=cfg.params_dtype,
                              kernel_init=layers.dense_init(cfg, ("embed", "vocab")))
    # Scalar heads start near zero so they barely perturb training at first.
    head_init = nn.with_logical_partitioning(
        nn.initializers.normal(0.01 / math.sqrt(cfg.hidden_size)), ("embed", None))
    bias_init = layers.zeros_init((None,))
    # Heads a stage adds train even on a frozen base (adapters): then in float32, like the adapters.
    head_dtype = jnp.float32 if cfg.lora_rank else cfg.params_dtype
    make = lambda n: nn.Dense(n, dtype=jnp.float32, param_dtype=head_dtype,
                              kernel_init=head_init, bias_init=bias_init)
    if "value" in cfg.heads:
      self.value_head = make(1)
    if "severity" in cfg.heads:
      self.severity_head = make(NUM_SEVERITIES)
    if "helpfulness" in cfg.heads:
      self.helpfulness_head = make(1)

  def encode(self, input_ids: Array, *, positions: Optional[Array] = None,
             attention_mask: Optional[Array] = None, cache: Optional[KVCache] = None,
             cache_index: Optional[Array] = None, segment_ids: Optional[Array] = None):
    """Runs the trunk; returns (final normed hidden [B,T,D], updated cache or None).

    `segment_ids` [B, T] (packed rows, no cache): tokens attend within their own segment only, and
    RoPE positions restart at 0 in each segment unless `positions` are given.
    """
    cfg = self.config
    chex.assert_rank(input_ids, 2)
    batch, length = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((batch, length), bool)
    chex.assert_shape(attention_mask, (batch, length))
    mask = attention_mask.astype(bool)

    if cache is None:
      if positions is None:
        positions = default_positions(mask) if segment_ids is None else segment_positions(segment_ids)
      slots = jnp.arange(length, dtype=jnp.int32)
      attn = layers.attention_mask(slots, slots, mask, positions, positions, cfg.sliding_window, segment_ids)
      layer_cache, index = None, None
    else:
      if segment_ids is not None:
        raise ValueError("segment_ids (packed rows) are for training forwards, not with a KV cache")
      if cache_index is None:
        raise ValueError("cache_index is required when a cache is passed")
      chex.assert_shape(cache.k, (cfg.num_layers, batch, None, cfg.num_kv_heads, cfg.head_dim))
      max_len = cache.mask.shape[1]
      index = jnp.asarray(cache_index, jnp.int32)
      key_slots = jnp.arange(max_len, dtype=jnp.int32)
      if positions is None:
        seen = jnp.sum(cache.mask & (key_slots[None, :] < index), axis=1, dtype=jnp.int32)
        positions = default_positions(mask, seen)
      key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, index))
      key_pos = jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32),
                                             (0, index))
      query_slots = index + jnp.arange(length, dtype=jnp.int32)
      attn = layers.attention_mask(query_slots, key_slots, key_mask, positions, key_pos,
                                   cfg.sliding_window)
      layer_cache = (cache.k, cache.v)
    chex.assert_shape(positions, (batch, length))

    x = self.embed(input_ids)
    if cfg.scale_embeddings:
      # Scale in the compute dtype, as HF does (sqrt(3072) rounds in bfloat16).
      x = x * jnp.asarray(math.sqrt(cfg.hidden_size), cfg.compute_dtype)
    x = nn.with_logical_constraint(x.astype(cfg.compute_dtype), layers.HIDDEN_AXES)
    cos, sin = layers.rope_tables(cfg, positions)
    (x, new_layer_cache), _ = self.layers((x, layer_cache), jnp.arange(cfg.num_layers, dtype=jnp.int32),
                                          (cos, sin, attn, index))
    hidden = self.final_norm(x)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(k=new_layer_cache[0], v=new_layer_cache[1], mask=key_mask,
                          positions=key_pos)
    return hidden, new_cache

  def lm_logits(self, hidden: Array) -> Array:
    """Policy logits (float32) [..., V] from final normed hidden states [..., D]."""
    if "lm" not in self.config.heads:
      raise ConfigError("this model was built without the 'lm' head")
    if self.config.tie_word_embeddings:
      out = self.embed.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return out.astype(jnp.float32)

  def values(self, hidden: Array) -> Array:
    """Critic values (float32) [...] from final normed hidden states [..., D]."""
    if "value" not in self.config.heads:
      raise ConfigError("this model was built without the 'value' head")
    return self.value_head(hidden.astype(jnp.float32))[..., 0]

  def __call__(self, input_ids: Array, *, positions: Optional[Array] = None,
               attention_mask: Optional[Array] = None, cache: Optional[KVCache] = None,
               cache_index: Optional[Array] = None, segment_ids: Optional[Array] = None) -> dict:
    cfg = self.config
    hidden, new_cache = self.encode(input_ids, positions=positions, attention_mask=attention_mask,
                                    cache=cache, cache_index=cache_index, segment_ids=segment_ids)
    out = {"hidden": hidden}
    if "lm" in cfg.heads:
      out["logits"] = nn.with_logical_constraint(self.lm_logits(hidden),
                                                 ("batch", "length", "vocab"))
    h32 = hidden.astype(jnp.float32)
    if "value" in cfg.heads:
      out["values"] = self.values(hidden)
    if "severity" in cfg.heads or "helpfulness" in cfg.heads:
      mask = (jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask)
      idx = last_token_index(mask)
      last = jnp.take_along_axis(h32, idx[:, None, None], axis=1)[:, 0]
      if "severity" in cfg.heads:
        out["severity_logits"] = self.severity_head(last)
      if "helpfulness" in cfg.heads:
        out["helpfulness_logit"] = self.helpfulness_head(last)[..., 0]
    if new_cache is not None:
      out["cache"] = new_cache
    return out


def as_variables(params: Mapping) -> dict:
  """Accepts either the inner params tree or a full `{"params": ...}` variables dict."""
  if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
    return dict(params)
  return {"params": params}


def graft(fresh: Any, pretrained: Any) -> Any:
  """`fresh` with every leaf that `pretrained` also has replaced by it (new heads stay fresh).

  How a reward model or critic starts from a trained trunk: same trunk, its own freshly initialised head.
  """
  if isinstance(fresh, Mapping):
    return {k: graft(v, pretrained[k]) if isinstance(pretrained, Mapping) and k in pretrained else v
            for k, v in fresh.items()}
  if jnp.shape(fresh) != jnp.shape(pretrained):
    raise ValueError(f"shape mismatch grafting parameters: {jnp.shape(fresh)} vs {jnp.shape(pretrained)}")
  return pretrained


def init_params(config: ModelConfig, rng: Array) -> dict:
  """Fresh parameters (plain arrays, logical-axis metadata stripped) for `config`."""
  return _init_params(config, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(config: ModelConfig, rng: Array) -> dict:
  variables = Transformer(config).init(rng, jnp.zeros((1, 2), jnp.int32))
  return nn.meta.unbox(variables)["params"]


def param_specs(config: ModelConfig) -> Any:
  """Logical `PartitionSpec` tree of the params (no arrays are allocated)."""
  model = Transformer(config)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
  return nn.get_partition_spec(abstract)["params"]


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: Transformer, variables: dict, input_ids: Array, kw: dict) -> dict:
  return model.apply(variables, input_ids, **kw)


def forward(config: ModelConfig, params: Mapping, input_ids: Array,
            attention_mask: Optional[Array] = None, **kw) -> dict:
  """Jitted `Transformer(config).apply` on params; `kw` are positions/cache/cache_index."""
  return _apply(Transformer(config), as_variables(params), input_ids,
                dict(kw, attention_mask=attention_mask))


def logits(model: Transformer, params: Mapping, input_ids: Array,
           attention_mask: Optional[Array] = None) -> Array:
  """Policy logits [batch, seq, vocab] of `model` (a `Transformer`), jitted."""
  out = _apply(model, as_variables(params), input_ids, {"attention_mask": attention_mask})
  return out["logits"]
