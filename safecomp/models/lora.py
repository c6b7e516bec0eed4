"""Low-rank adapters (LoRA) on the attention and MLP projections, and the trees they live in.

With `ModelConfig.lora_rank > 0` each targeted projection `y = x W` becomes `y = x W + (alpha / rank)
(x A) B`: A (fan-in, initialised like PEFT's Kaiming-uniform) and B (zeros, so a fresh adapter
changes nothing) sit in a sub-module `<projection>_lora` next to the projection, in float32 whatever
the base's `param_dtype`, and carry logical axis names (the projection's input axes + "lora_rank",
"lora_rank" + its output axes) so they shard on the mesh with the weights they adapt.

Training keeps the base frozen: `split` cuts a params tree into (frozen, trainable) by path (the
adapters and the scalar heads a stage adds train; every pretrained weight stays), the step
differentiates the trainable part only and calls the model on `combine(frozen, trainable)`
(`TrainState`). Every stage runs on the same base and carries the adapters on: SFT trains them from
fresh (or from `lora.init_from`), the reward model starts from the SFT adapters and the critic from
the reward model's, PPO's policy trains them further and its reference is the base with the SFT
adapters. `merge` folds adapters into the kernels (the exported model); `adapters_off` drops them
(the base model).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct, traverse_util
from flax.training import train_state

from safecomp.models import quantize
from safecomp.models.config import ModelConfig

Array = jax.Array

SUFFIX = "_lora"
# Scalar heads: fresh in every stage that adds them, so they train with the adapters.
TRAINED_HEADS = ("value_head", "severity_head", "helpfulness_head")


def maybe_delta(config: ModelConfig, target: str, x: Array, in_names: tuple, out_shape: tuple,
                out_names: tuple) -> Array | None:
  """The adapter's output for projection `target` of input `x` (inside a module), or None when the
  config puts no adapter there."""
  if not config.lora_rank or target not in config.lora_targets:
    return None
  return LoraDelta(int(config.lora_rank), float(config.lora_alpha), len(in_names), tuple(out_shape),
                   tuple(in_names), tuple(out_names), config.compute_dtype, name=target + SUFFIX)(x)


class LoraDelta(nn.Module):
  """(alpha / rank) (x A) B for a projection contracting x's last `in_ndim` axes into `out_shape`."""
  rank: int
  alpha: float
  in_ndim: int
  out_shape: tuple
  in_names: tuple  # logical axes of the contracted input dims
  out_names: tuple  # logical axes of the output dims
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.in_ndim:]
    fan_in = tuple(range(self.in_ndim))
    a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=fan_in,
                                              out_axis=-1)
    a = self.param("a", nn.with_logical_partitioning(a_init, self.in_names + ("lora_rank",)),
                   in_shape + (self.rank,), jnp.float32)
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                     ("lora_rank",) + self.out_names),
                   (self.rank,) + tuple(self.out_shape), jnp.float32)
    xa = jnp.tensordot(x, a.astype(self.dtype), axes=self.in_ndim)
    return jnp.tensordot(xa, b.astype(self.dtype), axes=1) * jnp.asarray(self.alpha / self.rank, self.dtype)


def is_adapter(path: Sequence[str]) -> bool:
  """Whether a params path lies inside an adapter module."""
  return any(str(part).endswith(SUFFIX) for part in path)


def is_trainable(path: Sequence[str]) -> bool:
  """Whether a params leaf at `path` trains under LoRA: an adapter or a freshly added scalar head."""
  return is_adapter(path) or any(str(part) in TRAINED_HEADS for part in path)


def split(params: Mapping) -> tuple[dict, dict]:
  """(frozen, trainable) nested dicts of a params tree (see `is_trainable`)."""
  flat = traverse_util.flatten_dict(dict(params))
  frozen = {k: v for k, v in flat.items() if not is_trainable(k)}
  trainable = {k: v for k, v in flat.items() if is_trainable(k)}
  return traverse_util.unflatten_dict(frozen), traverse_util.unflatten_dict(trainable)


def combine(frozen: Mapping, trainable: Mapping) -> dict:
  """The full params tree of `split`'s two halves."""
  flat = traverse_util.flatten_dict(dict(frozen))
  flat.update(traverse_util.flatten_dict(dict(trainable)))
  return traverse_util.unflatten_dict(flat)


def adapters_off(params: Mapping) -> dict:
  """`params` without the adapters: the base model's tree."""
  flat = traverse_util.flatten_dict(dict(params))
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not is_adapter(k)})


def adapters(params: Mapping) -> dict:
  """The adapters alone: {(..., "<projection>_lora", "a" | "b"): array} as a nested dict."""
  flat = traverse_util.flatten_dict(dict(params))
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if is_adapter(k)})


def delta_kernel(a: Array, b: Array, alpha: float, rank: int, stacked: bool) -> Array:
  """(alpha / rank) A B in float32, in the kernel's layout [*in, *out].

  `a` is [*in, r] and `b` [r, *out]; `stacked`: both carry a leading layer axis (scanned layers).
  """
  product = lambda x, y: jnp.tensordot(x.astype(jnp.float32), y.astype(jnp.float32), axes=1)
  return (jax.vmap(product) if stacked else product)(a, b) * (alpha / rank)


def merge(params: Mapping, alpha: float, rank: int) -> dict:
  """The base tree with every adapter folded into the kernel it adapts (W + (alpha / rank) A B).

  Kernels keep their dtype; the sum is computed in float32 first.
  """
  flat = traverse_util.flatten_dict(dict(params))
  out = {k: v for k, v in flat.items() if not is_adapter(k)}
  for key in [k for k in flat if is_adapter(k) and k[-1] == "a"]:
    module = key[-2]
    target = key[:-2] + (module[:-len(SUFFIX)], "kernel")
    if target not in out:
      raise ValueError(f"adapter {'/'.join(key[:-1])} has no kernel {'/'.join(target)} to merge into")
    kernel = out[target]
    delta = delta_kernel(flat[key], flat[key[:-1] + ("b",)], alpha, rank, stacked=key[0] == "layers")
    if delta.shape != kernel.shape:
      raise ValueError(f"adapter {'/'.join(key[:-1])} gives shape {delta.shape}, kernel is {kernel.shape}")
    out[target] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
  return traverse_util.unflatten_dict(out)


class TrainState(train_state.TrainState):
  """A TrainState whose `params` may be only the trainable part of the model's parameters.

  With adapters, `params` holds what trains (adapters, fresh heads) and `frozen` the base weights,
  which the optimizer never sees and checkpoints never store (they are the stage's starting point,
  rebuilt from it on restore); `join(frozen, params)` gives the model's tree. Without, `frozen` is
  None and `params` is the whole tree.
  """
  frozen: Any = None
  join: Callable[[Any, Any], Any] = struct.field(pytree_node=False, default=None)

  def model_params(self, trainable: Any = None) -> Any:
    """The model's parameters with `trainable` (default: `self.params`) in place."""
    return model_params(self, self.params if trainable is None else trainable)


def model_params(state: Any, trainable: Any) -> Any:
  """The model's parameters of any TrainState given its trainable part (the step's gradient variable)."""
  frozen = getattr(state, "frozen", None)
  return trainable if frozen is None else state.join(frozen, trainable)


def create_state(params: Any, tx, *, adapters: bool, split_fn: Callable = None, join_fn: Callable = None,
                 quantization: str = "none", **fields) -> TrainState:
  """A fresh `TrainState` (a subclass's with `fields`, see `state_class`): with `adapters`, `params` is cut
  by `split_fn` (default `split`), only its trainable half gets an optimizer state, and the frozen half's
  layer kernels are stored as `quantization` says (`quantize.quantize_tree`; QLoRA)."""
  cls = fields.pop("state_class", TrainState)
  if not adapters:
    return cls.create(apply_fn=None, params=params, tx=tx, **fields)
  frozen, trainable = (split_fn or split)(params)
  return cls.create(apply_fn=None, params=trainable, tx=tx, frozen=quantize.quantize_tree(frozen, quantization),
                    join=join_fn or combine, **fields)


def count(params: Mapping) -> tuple[int, int]:
  """(trainable, frozen) parameter counts under `split`."""
  frozen, trainable = split(params)
  size = lambda t: int(sum(x.size for x in jax.tree.leaves(t)))
  return size(trainable), size(frozen)
