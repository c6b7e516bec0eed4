"""Building blocks of the decoder: RMSNorm, RoPE, grouped-query attention, gated MLP, one block.

Conventions follow Hugging Face so checkpoints import without permutation: RoPE uses the
rotate-half layout, q/k/v kernels are `[embed, heads, head_dim]` (the transpose of HF's Linear
weight, reshaped), and norms/softmax run in float32 whatever the compute dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from safecomp.models import lora
from safecomp.models.config import ModelConfig

Array = jax.Array

# Logical axis names of activations at block boundaries.
HIDDEN_AXES = ("batch", "length", "embed")


def dense_init(config: ModelConfig, names: tuple) -> nn.initializers.Initializer:
  """Normal(initializer_range) kernel init carrying logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def zeros_init(names: tuple) -> nn.initializers.Initializer:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class RMSNorm(nn.Module):
  """RMSNorm computed in float32; `unit_offset` scales by (1 + w) as Gemma does."""
  eps: float
  unit_offset: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros_init() if self.unit_offset else nn.initializers.ones_init()
    scale = self.param("scale", nn.with_logical_partitioning(init, ("embed",)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.unit_offset:
      # Gemma multiplies in float32 before casting.
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
    # Llama casts first, then multiplies by the weight.
    return scale.astype(self.dtype) * normed.astype(self.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse RoPE frequencies [head_dim // 2] (float32), with linear / llama3 scaling."""
  dim = config.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
  kind = config.rope_type
  if kind == "linear":
    inv_freq = inv_freq / np.float32(config.rope_scaling["factor"])
  elif kind == "llama3":
    rs = config.rope_scaling
    factor = float(rs["factor"])
    low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_len = float(rs["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq.astype(np.float32)


def rope_tables(config: ModelConfig, positions: Array) -> Tuple[Array, Array]:
  """cos/sin tables [B, T, head_dim] for integer positions [B, T], in the compute dtype."""
  chex.assert_rank(positions, 2)
  inv_freq = jnp.asarray(rope_inv_freq(config))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(config.compute_dtype), jnp.sin(emb).astype(config.compute_dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotate-half RoPE on x [B, T, heads, head_dim] with tables [B, T, head_dim]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def attention_mask(query_slots: Array, key_slots: Array, key_valid: Array,
                   query_positions: Optional[Array] = None, key_positions: Optional[Array] = None,
                   sliding_window: Optional[int] = None, segment_ids: Optional[Array] = None) -> Array:
  """Boolean mask [B, 1, T, S]: causal by slot, pad keys hidden, optional sliding window.

  Args:
    query_slots: [T] cache slots of the queries.
    key_slots: [S] cache slots of the keys.
    key_valid: [B, S] True for real (non-pad) keys.
    query_positions, key_positions: [B, T] / [B, S] RoPE positions (for the sliding window).
    sliding_window: keys at position distance >= window are hidden.
    segment_ids: [B, T] (no cache, T == S) for packed rows: a query sees keys of its own segment only.
  """
  mask = (key_slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None, :]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  if sliding_window is not None:
    dist = query_positions[:, :, None] - key_positions[:, None, :]
    mask = mask & (dist < sliding_window)
  return mask[:, None]


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE and an optional per-layer KV cache."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, cos: Array, sin: Array, mask: Array,
               cache: Optional[Tuple[Array, Array]], cache_index: Optional[Array], layer: Optional[Array] = None):
    """`cache`: every layer's (k, v) [L, B, S, KV, hd], updated in place at (`layer`, `cache_index`):
    carried whole through the layer scan (and the decode loop), so no step copies it."""
    cfg = self.config
    dt, pdt = cfg.compute_dtype, cfg.params_dtype

    def proj(name, heads, head_axis):
      y = nn.DenseGeneral(
          (heads, cfg.head_dim), use_bias=cfg.attention_bias, dtype=dt, param_dtype=pdt,
          kernel_init=dense_init(cfg, ("embed", head_axis, "head_dim")),
          bias_init=zeros_init((head_axis, "head_dim")), name=name)(x)
      delta = lora.maybe_delta(cfg, name, x, ("embed",), (heads, cfg.head_dim), (head_axis, "head_dim"))
      return y if delta is None else y + delta

    q = proj("q", cfg.num_heads, "heads")
    k = proj("k", cfg.num_kv_heads, "kv_heads")
    v = proj("v", cfg.num_kv_heads, "kv_heads")
    q_axes = ("batch", "length", "heads", "head_dim")
    kv_axes = ("batch", "length", "kv_heads", "head_dim")
    q = nn.with_logical_constraint(apply_rope(q, cos, sin), q_axes)
    k = nn.with_logical_constraint(apply_rope(k, cos, sin), kv_axes)
    v = nn.with_logical_constraint(v, kv_axes)

    new_cache = None
    if cache is not None:
      k_cache, v_cache = cache
      start = (layer, 0, cache_index, 0, 0)
      k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype)[None], start)
      v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype)[None], start)
      new_cache = (k_cache, v_cache)
      k = jax.lax.dynamic_index_in_dim(k_cache, layer, 0, keepdims=False).astype(dt)
      v = jax.lax.dynamic_index_in_dim(v_cache, layer, 0, keepdims=False).astype(dt)

    # XLA path: logits and softmax in float32, GQA without materialising repeated K/V.
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=cfg.head_dim ** -0.5,
                                       implementation="xla")
    out = nn.with_logical_constraint(out, q_axes)
    y = nn.DenseGeneral(
        cfg.hidden_size, axis=(-2, -1), use_bias=cfg.attention_out_bias, dtype=dt, param_dtype=pdt,
        kernel_init=dense_init(cfg, ("heads", "head_dim", "embed")),
        bias_init=zeros_init(("embed",)), name="o")(out)
    delta = lora.maybe_delta(cfg, "o", out, ("heads", "head_dim"), (cfg.hidden_size,), ("embed",))
    return (y if delta is None else y + delta), new_cache


def activation(name: str):
  if name == "silu":
    return jax.nn.silu
  if name == "gelu_pytorch_tanh":
    return lambda x: jax.nn.gelu(x, approximate=True)
  return lambda x: jax.nn.gelu(x, approximate=False)


class MLP(nn.Module):
  """Gated MLP: down(act(gate(x)) * up(x)) (SwiGLU / GeGLU)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dt, pdt = cfg.compute_dtype, cfg.params_dtype

    def dense(name, inputs, features, names):
      y = nn.Dense(features, use_bias=cfg.mlp_bias, dtype=dt, param_dtype=pdt,
                   kernel_init=dense_init(cfg, names), bias_init=zeros_init(names[-1:]),
                   name=name)(inputs)
      delta = lora.maybe_delta(cfg, name, inputs, names[:1], (features,), names[1:])
      return y if delta is None else y + delta

    gate = dense("gate", x, cfg.intermediate_size, ("embed", "mlp"))
    up = dense("up", x, cfg.intermediate_size, ("embed", "mlp"))
    h = activation(cfg.hidden_act)(gate) * up
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return dense("down", h, cfg.hidden_size, ("mlp", "embed"))


class DecoderBlock(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)). Scanned over layers: the carry is (x, the
  whole KV cache or None), the scanned input the layer index."""
  config: ModelConfig

  @nn.compact
  def __call__(self, carry, layer: Array, shared):
    cfg = self.config
    x, cache = carry
    cos, sin, mask, cache_index = shared
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.norm_unit_offset, cfg.compute_dtype,
                                cfg.params_dtype, name=name)
    h, new_cache = Attention(cfg, name="attn")(norm("attn_norm")(x), cos, sin, mask, cache, cache_index, layer)
    x = nn.with_logical_constraint(x + h, HIDDEN_AXES)
    x = x + MLP(cfg, name="mlp")(norm("mlp_norm")(x))
    x = nn.with_logical_constraint(x, HIDDEN_AXES)
    return (x, new_cache), None
