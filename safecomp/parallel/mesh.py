"""The device mesh (`data`, `fsdp`, `tensor`) and the logical-axis rules that map the model onto it.

A config's `mesh` section names the size of each axis; -1 means "every device the other axes leave":

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

`data` replicates parameters and splits the batch; `fsdp` splits the batch *and* shards parameters
and optimizer state (ZeRO-3 style, gathered per layer by XLA); `tensor` splits attention heads, MLP
and vocabulary dimensions (Megatron style). Meshes keep JAX's automatic axis types, so shardings are
propagated by XLA from the `in_shardings` / `out_shardings` and the model's logical constraints.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, Mesh

from safecomp.config import require

MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes the batch dimension is split over (also the axes gradients are reduced over).
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axes. Order matters: flax assigns a mesh axis to the first logical axis
# of an array that claims it, so activations [batch, length, embed] shard the batch over
# (data, fsdp) and leave `embed` whole, while parameters [vocab, embed] / [embed, mlp] shard
# `embed` over fsdp.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("lora_rank", None),  # adapters shard like the weights they adapt, never along their rank
)

AnyMesh = Mesh | AbstractMesh


def axis_rules(overrides: Mapping[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
  """`DEFAULT_RULES` with some logical axes remapped, e.g. `{"embed": None}` (no FSDP)."""
  overrides = dict(overrides or {})
  known = {name for name, _ in DEFAULT_RULES}
  unknown = sorted(set(overrides) - known)
  require(not unknown, "mesh.rules",
          f"unknown logical axes {unknown}; expected some of {sorted(known)}")
  for name, target in overrides.items():
    targets = (target,) if isinstance(target, str) or target is None else tuple(target)
    bad = [t for t in targets if t is not None and t not in MESH_AXES]
    require(not bad, f"mesh.rules.{name}", f"mesh axes {bad} are not among {MESH_AXES}")
  return tuple((name, overrides.get(name, target)) for name, target in DEFAULT_RULES)


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules of a run (`mesh.rules`, else the defaults): every sharded step uses them."""
  mesh = config.get("mesh") or {}
  return axis_rules(dict(mesh.get("rules") or {}))


def rules_section() -> ml_collections.ConfigDict:
  """`mesh.rules`: every logical axis and the mesh axes it maps to (None: replicated), overridable
  one by one (`--config.mesh.rules.embed=None` turns FSDP off)."""
  return ml_collections.ConfigDict({name: ml_collections.FieldReference(target, field_type=object)
                                    for name, target in DEFAULT_RULES})


def parse_mesh(text: str) -> dict[str, int]:
  """Parses "data=1,fsdp=8,tensor=1" (missing axes are 1; -1 means the rest)."""
  sizes: dict[str, int] = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, sep, value = item.partition("=")
    require(sep == "=" and name in MESH_AXES, "mesh",
            f"{item!r} must look like name=size with name one of {MESH_AXES}")
    try:
      sizes[name] = int(value)
    except ValueError:
      require(False, f"mesh.{name}", f"size {value!r} is not an integer")
  return sizes


def mesh_shape(section: Mapping[str, Any] | None, num_devices: int | None = None) -> dict[str, int]:
  """Axis sizes {data, fsdp, tensor} from a `mesh` config section, resolving one -1 against devices.

  Args:
    section: mapping (ConfigDict, dict) with any of `data`, `fsdp`, `tensor`; missing axes are 1,
      and `None` means "all devices on data".
    num_devices: the number of devices to cover; needed when an axis is -1, and checked otherwise.

  Raises:
    ConfigError naming the `mesh.<axis>` key at fault.
  """
  section = {"data": -1} if section is None else section
  extra = sorted(k for k in section.keys() if k not in MESH_AXES and k != "rules")
  require(not extra, "mesh", f"unknown mesh axes {extra}; expected {MESH_AXES}")
  sizes = {}
  for axis in MESH_AXES:
    value = section.get(axis, 1) if hasattr(section, "get") else section[axis]
    require(isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            and (value == -1 or value >= 1), f"mesh.{axis}",
            f"must be a positive integer or -1 (the devices left), got {value!r}")
    sizes[axis] = int(value)
  rest = [axis for axis in MESH_AXES if sizes[axis] == -1]
  require(len(rest) <= 1, f"mesh.{rest[-1] if rest else 'data'}",
          f"only one axis may be -1, got {rest}")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if rest:
    require(num_devices is not None, f"mesh.{rest[0]}",
            "is -1 (the devices left) but the number of devices is unknown; give every axis a size")
    require(num_devices % fixed == 0, f"mesh.{rest[0]}",
            f"is -1 but the other axes ({fixed} devices) do not divide the {num_devices} devices")
    sizes[rest[0]] = num_devices // fixed
  if num_devices is not None:
    require(math.prod(sizes.values()) == num_devices, "mesh",
            f"data x fsdp x tensor = {sizes['data']} x {sizes['fsdp']} x {sizes['tensor']} = "
            f"{math.prod(sizes.values())} but there are {num_devices} devices")
  return sizes


def make_mesh(section: Mapping[str, Any] | None = None,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A `jax.sharding.Mesh` over `devices` (default: every device of every process).

  Uses `mesh_utils.create_device_mesh` so that on TPU the axes follow the physical torus; on a
  multi-slice TPU job (devices carry `slice_index`) the `data` axis spans slices over DCN.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(section, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  slices = {getattr(d, "slice_index", 0) for d in devices}
  try:
    if len(slices) > 1:
      require(sizes["data"] % len(slices) == 0, "mesh.data",
              f"must be a multiple of the number of TPU slices ({len(slices)})")
      ici = (sizes["data"] // len(slices), sizes["fsdp"], sizes["tensor"])
      grid = mesh_utils.create_hybrid_device_mesh(ici, (len(slices), 1, 1), devices)
    else:
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (AssertionError, NotImplementedError, ValueError) as e:
    # Topologies mesh_utils does not know (odd CPU/GPU counts): process-major order, which keeps
    # each host's devices contiguous along the batch axes.
    logging.warning("mesh_utils could not lay out %s over %d devices (%s); using device order",
                    shape, len(devices), e)
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    grid = np.asarray(ordered, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def abstract_mesh(section: Mapping[str, Any] | None,
                  num_devices: int | None = None) -> AbstractMesh:
  """An `AbstractMesh` of the configured shape: for lowering and memory planning without devices."""
  sizes = mesh_shape(section, num_devices)
  return AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES)


def mesh_sizes(mesh: AnyMesh) -> dict[str, int]:
  return {name: int(size) for name, size in mesh.shape.items()}


def batch_divisor(mesh: AnyMesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> int:
  """How many ways the batch dimension is split (the global batch must be a multiple of it)."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
  axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
  sizes = mesh_sizes(mesh)
  return math.prod(sizes[a] for a in axes)


def check_batch_size(batch_size: int, mesh: AnyMesh, key: str,
                     rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
  """Raises a ConfigError naming `key` unless `batch_size` splits evenly over the batch axes."""
  divisor = batch_divisor(mesh, rules)
  require(batch_size % divisor == 0, key,
          f"{batch_size} is not a multiple of {divisor} (the batch is split over mesh axes "
          f"{BATCH_AXES}: {mesh_sizes(mesh)})")


@contextlib.contextmanager
def mesh_context(mesh: AnyMesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Iterator[None]:
  """Activates `mesh` (concrete or abstract) and the logical-axis rules for tracing the model.

  Inside, `nn.with_logical_constraint` in the model becomes a real sharding constraint.
  """
  enter = (jax.sharding.use_abstract_mesh(mesh) if isinstance(mesh, AbstractMesh)
           else jax.set_mesh(mesh))
  with enter, nn.logical_axis_rules(rules), _flat_kernel_init_guard():
    yield


_GUARD = {"depth": 0, "original": None}


@contextlib.contextmanager
def _flat_kernel_init_guard() -> Iterator[None]:
  """Skips logical constraints whose names do not match the rank of the boxed value.

  `nn.DenseGeneral` initialises multi-axis kernels (q/k/v [embed, heads, head_dim], o [heads,
  head_dim, embed]) flat as 2-D and reshapes after unboxing, so under an active mesh the logical
  constraint meets a 2-D value and raises (google/flax#3676). Flax evaluates the initialiser on
  every `apply` to check parameter shapes, so this happens in every sharded forward pass. The
  skipped constraint only concerns that throw-away flat value; the reshaped kernel is still
  constrained and its sharding comes from the step's `in_shardings`.
  """
  cls = nn.LogicallyPartitioned
  if _GUARD["depth"] == 0:
    original = cls.unbox
    _GUARD["original"] = original

    def unbox(self, apply_constraint=True):
      names = getattr(self, "names", None)
      if names is not None and np.ndim(self.value) != len(names):
        return self.value
      return original(self, apply_constraint)

    cls.unbox = unbox
  _GUARD["depth"] += 1
  try:
    yield
  finally:
    _GUARD["depth"] -= 1
    if _GUARD["depth"] == 0:
      cls.unbox = _GUARD["original"]
