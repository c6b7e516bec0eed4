"""Quantised storage of a frozen base (QLoRA): int8 or NF4 kernels, dequantised layer by layer.

Under adapters (`lora.rank`) the base never trains, so its layer kernels (the attention and MLP
projections) can be stored in 8 or 4 bits: `quantize_tree` replaces each by a `QuantizedKernel`
(codes + one float32 absmax scale per output channel), and a model built with
`ModelConfig.base_quantization` dequantises the kernels of one layer at a time inside the layer scan,
so a full-precision copy of the base never exists. The embedding, the final norm and the LM head stay
in `param_dtype`, as in QLoRA.

- int8: symmetric, code = round(w / s) with s = absmax / 127 per output channel.
- nf4: the 16 NormalFloat levels of QLoRA (Dettmers et al., 2023), w ~ level[code] * absmax per output
  channel, two codes per byte along the last (output) axis. QLoRA scales blocks of 64 weights; one
  scale per output channel is coarser (see tests/test_lora.py for the error this gives).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct, traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from safecomp.models.config import BASE_QUANTIZATIONS

KINDS = BASE_QUANTIZATIONS
# Input axes (after the layer axis) of each layer kernel: the o projection contracts (heads, head_dim).
_INPUT_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
NF4_LEVELS = np.asarray([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)


@struct.dataclass
class QuantizedKernel:
  """A kernel stored as codes and per-output-channel scales (a pytree: both leaves shard and scan)."""
  codes: jax.Array  # int8 (int8), or uint8 holding two 4-bit codes along the last axis (nf4)
  scale: jax.Array  # float32: the kernel's shape with its input axes reduced to 1
  kind: str = struct.field(pytree_node=False)


def _kernel_axes(path: tuple) -> int | None:
  """Number of input axes of a layer kernel at `path` (scanned: ("layers", part, name, "kernel")), else None."""
  if len(path) == 4 and path[0] == "layers" and path[-1] == "kernel" and path[2] in _INPUT_AXES:
    return _INPUT_AXES[path[2]]
  return None


def quantize_kernel(kernel: jax.Array, input_axes: int, kind: str) -> QuantizedKernel:
  """`kernel` [L, *in, *out] (a leading layer axis) as codes and absmax scales per output channel."""
  axes = tuple(range(1, 1 + input_axes))
  w = kernel.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w), axis=axes, keepdims=True)
  absmax = jnp.where(absmax > 0, absmax, 1.0)
  if kind == "int8":
    scale = absmax / 127.0
    return QuantizedKernel(jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8), scale, kind)
  if kind != "nf4":
    raise ValueError(f"unknown quantization {kind!r}; expected one of {KINDS[1:]}")
  levels = jnp.asarray(NF4_LEVELS)
  codes = jnp.argmin(jnp.abs((w / absmax)[..., None] - levels), axis=-1).astype(jnp.uint8)
  if codes.shape[-1] % 2:
    codes = jnp.concatenate([codes, jnp.zeros(codes.shape[:-1] + (1,), jnp.uint8)], axis=-1)
  packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
  return QuantizedKernel(packed, absmax, kind)


def dequantize_kernel(q: QuantizedKernel, dtype) -> jax.Array:
  """The kernel `q` stands for, in `dtype`."""
  if q.kind == "int8":
    return (q.codes.astype(jnp.float32) * q.scale).astype(dtype)
  low, high = q.codes & 0x0F, q.codes >> 4
  codes = jnp.stack([low, high], axis=-1).reshape(q.codes.shape[:-1] + (2 * q.codes.shape[-1],))
  codes = codes[..., :q.scale.shape[-1]]  # the last axis is an output axis: the scale keeps its size
  return (jnp.asarray(NF4_LEVELS)[codes] * q.scale).astype(dtype)


def is_quantized(x: Any) -> bool:
  return isinstance(x, QuantizedKernel)


def quantize_tree(params: Mapping, kind: str) -> dict:
  """`params` with every layer kernel quantised (`kind` "none" returns it as it is)."""
  if kind == "none":
    return dict(params)
  flat = traverse_util.flatten_dict(dict(params))
  return traverse_util.unflatten_dict({
      k: v if _kernel_axes(k) is None else quantize_kernel(v, _kernel_axes(k), kind) for k, v in flat.items()})


def dequantize_tree(tree: Any, dtype) -> Any:
  """`tree` with every `QuantizedKernel` replaced by the kernel it stands for (other leaves as they are)."""
  return jax.tree.map(lambda x: dequantize_kernel(x, dtype) if is_quantized(x) else x, tree, is_leaf=is_quantized)


def stored_like_training(params: Mapping, kind: str, dtype) -> dict:
  """The base weights a model trained on a `kind`-quantised base computed with, in full precision
  (what evaluation and export use, so they see the weights training saw)."""
  if kind == "none":
    return dict(params)
  return dequantize_tree(quantize_tree(params, kind), dtype)


def match_shardings(shardings: Any, abstract: Any) -> Any:
  """Shardings of a quantised tree from the unquantised tree's: codes shard like the kernel (nf4's
  halved last axis too), scales like the kernel with the input axes unsplit (they have size 1)."""
  flat_sh = traverse_util.flatten_dict(dict(shardings))
  flat_abs = traverse_util.flatten_dict(dict(abstract), is_leaf=lambda _, x: is_quantized(x))
  out = {}
  for key, value in flat_abs.items():
    sharding = flat_sh[key]
    if not is_quantized(value):
      out[key] = sharding
      continue
    spec = list(sharding.spec) + [None] * (len(value.scale.shape) - len(sharding.spec))
    n_in = _kernel_axes(key)
    scale_spec = PartitionSpec(*[None if 1 <= i <= n_in else s for i, s in enumerate(spec)])
    out[key] = QuantizedKernel(sharding, NamedSharding(sharding.mesh, scale_spec), value.kind)
  return traverse_util.unflatten_dict(out)
