"""`NamedSharding` trees for parameters, optimizer state and batches, and host -> device placement.

Parameter shardings come from the logical axis names every parameter carries (see
`safecomp.models.param_specs`) mapped through the mesh rules. A mesh axis that does not divide a
dimension (e.g. 8-way `tensor` over a single KV head) is dropped for that dimension, so any model
fits any mesh; `describe` reports what ended up split.

Optimizer state is sharded like the parameters it mirrors (Adam's mu / nu), found with
`optax.tree_map_params` on the abstract state (`jax.eval_shape`): nothing is allocated to plan it.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from safecomp import models
from safecomp.models import lora, quantize
from safecomp.parallel.mesh import DEFAULT_RULES, AnyMesh, mesh_sizes

Rules = Sequence[tuple[str, Any]]


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def fit_spec(spec: P, shape: Sequence[int], mesh: AnyMesh) -> P:
  """`spec` with mesh axes removed (last first) from any dimension they do not divide evenly."""
  sizes = mesh_sizes(mesh)
  entries = list(spec) + [None] * (len(shape) - len(spec))
  out = []
  for dim, entry in zip(shape, entries):
    if entry is P.UNCONSTRAINED:
      out.append(entry)
      continue
    axes = list(_axes(entry))
    while axes and dim % math.prod(sizes[a] for a in axes):
      axes.pop()
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def logical_shardings(logical_specs: Any, shapes: Any, mesh: AnyMesh,
                      rules: Rules = DEFAULT_RULES) -> Any:
  """NamedSharding tree from a logical PartitionSpec tree and a matching tree of shaped leaves."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  is_spec = lambda x: isinstance(x, P)
  return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh)),
                      mesh_specs, shapes, is_leaf=is_spec)


def abstract_params(config: models.ModelConfig) -> tuple[Any, Any]:
  """(ShapeDtypeStruct tree, logical PartitionSpec tree) of `config`'s params; nothing allocated."""
  shapes, specs = _abstract_params(config)
  copy = lambda tree: jax.tree.map(lambda x: x, tree, is_leaf=lambda x: isinstance(x, P))
  return copy(shapes), copy(specs)


@functools.lru_cache(maxsize=32)
def _abstract_params(config: models.ModelConfig) -> tuple[Any, Any]:
  boxed = jax.eval_shape(models.Transformer(config).init, jax.random.key(0),
                         jnp.zeros((1, 2), jnp.int32))
  specs = nn.get_partition_spec(boxed)["params"]
  return nn.meta.unbox(boxed)["params"], specs


def param_shardings(config: models.ModelConfig, mesh: AnyMesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedSharding tree of the params of `Transformer(config)` (same structure as `init_params`)."""
  shapes, specs = abstract_params(config)
  return logical_shardings(specs, shapes, mesh, rules)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the arguments of an AOT `jit(...).lower(...)`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with their shardings) of a tree of global arrays: a restore target that
  puts each process's slices straight onto its devices (e.g. orbax `StandardRestore`)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def replicated(mesh: AnyMesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(abstract_state: Any, params_shardings: Any, mesh: AnyMesh, split_fn: Callable | None = None) -> Any:
  """Shardings of a `TrainState` (or subclass, e.g. `RLTrainState`) from its abstract value.

  `abstract_state` is `jax.eval_shape(lambda: TrainState.create(...))`. Parameters get
  `params_shardings`; optimizer leaves that mirror parameters get the same sharding (found with
  `optax.tree_map_params`, so chains, `MultiSteps`, masked transforms all work); everything else
  (step counts, KL coefficient, running statistics) is replicated. A state with frozen base weights
  (`lora.TrainState` with adapters) gets `params_shardings` for the whole model's tree, cut by `split_fn`
  (default `lora.split`) into the frozen part's and the trainable part's.
  """
  rep = replicated(mesh)
  out = jax.tree.map(lambda _: rep, abstract_state)
  if getattr(abstract_state, "frozen", None) is not None:
    frozen_shardings, params_shardings = (split_fn or lora.split)(params_shardings)
    out = out.replace(frozen=quantize.match_shardings(frozen_shardings, abstract_state.frozen))
  opt = optax.tree_map_params(
      abstract_state.tx, lambda _, sharding: sharding, abstract_state.opt_state, params_shardings,
      transform_non_params=lambda _: rep,
      is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct, NamedSharding)))
  return out.replace(params=params_shardings, opt_state=opt)


def init_sharded_state(create_fn: Callable[..., Any], params: Any, params_shardings: Any,
                       mesh: AnyMesh, split_fn: Callable | None = None) -> tuple[Any, Any]:
  """`(state, shardings)`: `create_fn(params)` built on the mesh (e.g. `TrainState.create(...)`).

  `params` may be host arrays (a freshly loaded checkpoint) or device arrays; they are placed with
  `params_shardings` first, and the optimizer state is created in place, already sharded.
  """
  abstract = jax.eval_shape(create_fn, params)
  shardings = state_shardings(abstract, params_shardings, mesh, split_fn)
  placed = place(params, params_shardings)
  state = jax.jit(create_fn, in_shardings=(params_shardings,), out_shardings=shardings)(placed)
  return state, shardings


def place(tree: Any, shardings: Any) -> Any:
  """Puts a tree holding the same full value on every process onto devices with `shardings`.

  Works on one host and on many (each process copies only the slices its devices hold).
  Leaves that already have the requested sharding are kept as they are.
  """
  def put(leaf, sharding):
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
      return leaf
    if isinstance(leaf, jax.Array) and leaf.is_fully_addressable and jax.process_count() == 1:
      return jax.device_put(leaf, sharding)
    value = np.asarray(leaf)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(put, tree, shardings)


# ------------------------------------------------------------------------------------------ batches
def batch_spec(rules: Rules = DEFAULT_RULES) -> P:
  """PartitionSpec of the leading (batch) dimension under `rules`."""
  return nn.logical_to_mesh_axes(("batch",), rules)


def batch_shardings(batch: Any, mesh: AnyMesh, rules: Rules = DEFAULT_RULES) -> Any:
  """Per-leaf shardings of a batch: dimension 0 split over the batch axes; scalars and PRNG keys
  replicated. `batch` may hold arrays or ShapeDtypeStructs."""
  split = NamedSharding(mesh, batch_spec(rules))
  rep = replicated(mesh)

  def leaf_sharding(x):
    if np.ndim(x) == 0 or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return rep
    return split
  return jax.tree.map(leaf_sharding, batch)


def _full(prefix: Any, tree: Any) -> Any:
  """Expands a sharding pytree prefix (e.g. one NamedSharding) to the structure of `tree`."""
  return jax.tree.broadcast(prefix, tree, is_leaf=lambda x: isinstance(x, NamedSharding))


def host_rows(sharding: NamedSharding, global_batch: int) -> np.ndarray:
  """Row indices of the global batch this process must load for a batch-split `sharding`.

  With these rows, `put_batch` assembles exactly the global batch one process would have seen.
  """
  indices = sharding.addressable_devices_indices_map((global_batch,))
  rows = set()
  for index in indices.values():
    rows.update(range(global_batch)[index[0]] if index else range(global_batch))
  return np.asarray(sorted(rows), np.int64)


def put_batch(batch: Any, shardings: Any, global_batch: int | None = None) -> Any:
  """Global arrays from each process's rows of the batch (`jax.make_array_from_process_local_data`).

  On one process the local batch is the global batch. On several, each process passes the rows
  `host_rows(...)` names (its own shard) and `global_batch` (the global leading size). Replicated
  leaves (scalars, keys) must be identical on every process. Leaves that are already global
  `jax.Array`s with the right sharding pass through.
  """
  shardings = _full(shardings, batch)

  def put(leaf, sharding):
    if isinstance(leaf, jax.Array) and (not leaf.is_fully_addressable or leaf.sharding == sharding):
      return leaf
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
      data = np.asarray(jax.random.key_data(leaf))
      data = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    value = np.asarray(leaf)
    if value.ndim == 0 or sharding.is_fully_replicated:
      return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    shape = None if global_batch is None else (global_batch,) + value.shape[1:]
    return jax.make_array_from_process_local_data(sharding, value, shape)
  return jax.tree.map(put, batch, shardings)


# ------------------------------------------------------------------------------------------ reports
def shard_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes one device holds of a tree of (abstract) arrays under `shardings` (the largest shard)."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
    shape = sharding.shard_shape(tuple(leaf.shape))
    total += math.prod(shape) * _itemsize(leaf.dtype)
  return total


def _itemsize(dtype) -> int:
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return 8  # a threefry key is two uint32 words
  return jnp.dtype(dtype).itemsize


def describe(abstract: Any, shardings: Any) -> list[str]:
  """One line per leaf: path, global shape, mesh spec and per-device shape (for logs and tests)."""
  lines = []
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract)
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sharding in zip(flat, flat_s):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    lines.append(f"{name} {tuple(leaf.shape)} {sharding.spec} -> "
                 f"{sharding.shard_shape(tuple(leaf.shape))}")
  return lines
