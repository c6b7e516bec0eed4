"""Hugging Face-format checkpoints: `config.json` + (sharded) safetensors, read tensor by tensor.

The trunk and LM head use HF tensor names, so `transformers` loads what `export_pretrained` writes.
Value/reward heads live beside them in `safecomp_heads.safetensors` (HF ignores that file).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from safecomp.errors import CheckpointError, ConfigError
from safecomp.models import lora, quantize
from safecomp.models.config import LORA_TARGETS, ModelConfig, parse_heads
from safecomp.models.transformer import Transformer

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HEADS_FILE = "safecomp_heads.safetensors"
HEAD_MODULES = {"value": "value_head", "severity": "severity_head",
                "helpfulness": "helpfulness_head"}
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# Non-parameter buffers some older checkpoints carry; transformers ignores them too.
_IGNORABLE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

# Param path (inside a layer) -> (HF name inside `model.layers.{i}.`, layout): layout None keeps the
# shape, 0 flattens (biases), n >= 1 is a Linear kernel whose first n axes are inputs.
_LAYER_MAP = {
    ("attn_norm", "scale"): ("input_layernorm.weight", None),
    ("mlp_norm", "scale"): ("post_attention_layernorm.weight", None),
    ("attn", "q", "kernel"): ("self_attn.q_proj.weight", 1),
    ("attn", "k", "kernel"): ("self_attn.k_proj.weight", 1),
    ("attn", "v", "kernel"): ("self_attn.v_proj.weight", 1),
    ("attn", "o", "kernel"): ("self_attn.o_proj.weight", 2),
    ("attn", "q", "bias"): ("self_attn.q_proj.bias", 0),
    ("attn", "k", "bias"): ("self_attn.k_proj.bias", 0),
    ("attn", "v", "bias"): ("self_attn.v_proj.bias", 0),
    ("attn", "o", "bias"): ("self_attn.o_proj.bias", 0),
    ("mlp", "gate", "kernel"): ("mlp.gate_proj.weight", 1),
    ("mlp", "up", "kernel"): ("mlp.up_proj.weight", 1),
    ("mlp", "down", "kernel"): ("mlp.down_proj.weight", 1),
    ("mlp", "gate", "bias"): ("mlp.gate_proj.bias", 0),
    ("mlp", "up", "bias"): ("mlp.up_proj.bias", 0),
    ("mlp", "down", "bias"): ("mlp.down_proj.bias", 0),
}
_TOP_MAP = {
    ("embed", "embedding"): ("model.embed_tokens.weight", None),
    ("final_norm", "scale"): ("model.norm.weight", None),
    ("lm_head", "kernel"): ("lm_head.weight", 1),
}


class _Entry:
  """One HF tensor <-> one param (or one layer slice of a stacked param)."""

  def __init__(self, name: str, path: tuple, layer: Optional[int], n_in: Optional[int],
               shape: tuple):
    self.name, self.path, self.layer, self.n_in = name, path, layer, n_in
    self.shape = shape  # param shape, without the layer axis

  @property
  def hf_shape(self) -> tuple:
    if self.n_in is None:
      return self.shape
    if self.n_in == 0:
      return (math.prod(self.shape),)
    return (math.prod(self.shape[self.n_in:]), math.prod(self.shape[:self.n_in]))

  def to_param(self, tensor: np.ndarray) -> np.ndarray:
    if not self.n_in:
      return tensor.reshape(self.shape)
    return tensor.T.reshape(self.shape)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    if not self.n_in:
      return value.reshape(self.hf_shape)
    return np.ascontiguousarray(value.reshape(math.prod(self.shape[:self.n_in]), -1).T)


def _param_shapes(config: ModelConfig) -> Dict[tuple, tuple]:
  abstract = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 2), jnp.int32))
  flat = traverse_util.flatten_dict(nn.meta.unbox(abstract)["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def _trunk_entries(config: ModelConfig, shapes: Mapping[tuple, tuple]) -> List[_Entry]:
  """HF entries for every trunk / LM-head param (heads excluded)."""
  entries = []
  for path, shape in shapes.items():
    if path[0] in HEAD_MODULES.values() or lora.is_adapter(path):
      continue
    if path[0] == "layers":
      name, n_in = _LAYER_MAP[path[1:]]
      for i in range(config.num_layers):
        entries.append(_Entry(f"model.layers.{i}.{name}", path, i, n_in, shape[1:]))
    else:
      name, n_in = _TOP_MAP[path]
      entries.append(_Entry(name, path, None, n_in, shape))
  return entries


def _head_name(path: tuple) -> str:
  return "safecomp." + ".".join(path)


def _available(directory: pathlib.Path) -> Dict[str, str]:
  """Tensor name -> file name of the trunk checkpoint in `directory`."""
  index = directory / INDEX_FILE
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError) as e:
      raise CheckpointError(f"{index}: unreadable index ({e})") from e
    for file in sorted(set(weight_map.values())):
      if not (directory / file).exists():
        raise CheckpointError(f"{index}: shard {file} is missing from {directory}")
    return dict(weight_map)
  single = directory / SINGLE_FILE
  if not single.exists():
    raise CheckpointError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
  with safe_open(str(single), framework="numpy") as f:
    return {k: SINGLE_FILE for k in f.keys()}


class _Reader:
  """Keeps one safetensors handle per file open and reads single tensors, checking shapes."""

  def __init__(self, directory: pathlib.Path, stack: contextlib.ExitStack):
    self.directory, self.stack = directory, stack
    self.handles: Dict[str, Any] = {}

  def read(self, file: str, name: str, want: tuple, dtype: np.dtype) -> np.ndarray:
    if file not in self.handles:
      self.handles[file] = self.stack.enter_context(
          safe_open(str(self.directory / file), framework="numpy"))
    handle = self.handles[file]
    if name not in handle.keys():
      raise CheckpointError(f"{self.directory / file}: tensor {name} is listed in the index but "
                            "absent from the file")
    got = tuple(handle.get_slice(name).get_shape())
    if got != tuple(want):
      raise CheckpointError(f"{self.directory / file}: tensor {name} has shape {got}, "
                            f"expected {tuple(want)}")
    return handle.get_tensor(name).astype(dtype)


def _fresh_adapters(model: Transformer, rng: jax.Array) -> dict:
  """Fresh adapters only (A random, B zero); the base init is dead code XLA removes."""
  return jax.jit(lambda r: lora.adapters(nn.meta.unbox(model.init(r, jnp.zeros((1, 2), jnp.int32)))["params"]))(rng)


def _fresh_heads(model: Transformer, rng: jax.Array, modules: Sequence[str]) -> dict:
  """Initialises only the named head modules (the trunk init is dead code XLA removes)."""
  def init(rng):
    params = nn.meta.unbox(model.init(rng, jnp.zeros((1, 2), jnp.int32)))["params"]
    return {m: params[m] for m in modules}
  return jax.jit(init)(rng)


def load_pretrained(path: os.PathLike, dtype: str = "float32", heads: Sequence[str] = ("lm",),
                    tokenizer: Any = None, *, param_dtype: str = "float32", remat: str = "none",
                    seed: int = 0, lora_rank: int = 0, lora_alpha: float = 16.0,
                    lora_targets: Sequence[str] = LORA_TARGETS) -> Tuple[Transformer, dict]:
  """Loads a local HF-style directory into `(Transformer, params)`.

  Args:
    path: directory with `config.json` and `model.safetensors` or sharded files plus
      `model.safetensors.index.json` (Llama, Mistral, Qwen2, Gemma).
    dtype: compute dtype; parameters are stored in `param_dtype`.
    heads: heads to build; value/reward heads absent from the checkpoint are initialised from
      `seed`.
    tokenizer: optional object with `.vocab_size`; more token ids than embedding rows is an error.
    lora_rank, lora_alpha, lora_targets: fresh low-rank adapters on the loaded weights (rank 0: none);
      a fresh adapter leaves the logits unchanged (its B is zero).

  Raises:
    CheckpointError: missing/unexpected tensor, wrong shape, or vocabulary mismatch (names the
      tensor and file).
  """
  directory = pathlib.Path(path)
  config_path = directory / CONFIG_FILE
  if not config_path.exists():
    raise CheckpointError(f"{config_path}: not found (expected a Hugging Face model directory)")
  try:
    hf_config = json.loads(config_path.read_text())
  except ValueError as e:
    raise CheckpointError(f"{config_path}: invalid JSON ({e})") from e
  try:
    config = ModelConfig.from_hf(hf_config, heads=parse_heads(heads), dtype=dtype,
                                 param_dtype=param_dtype, remat=remat, lora_rank=int(lora_rank),
                                 lora_alpha=float(lora_alpha), lora_targets=tuple(lora_targets))
  except ConfigError as e:
    raise CheckpointError(f"{config_path}: {e}") from e
  if tokenizer is not None and int(tokenizer.vocab_size) > config.vocab_size:
    raise CheckpointError(
        f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but tensor "
        f"model.embed_tokens.weight has only {config.vocab_size} rows "
        f"(vocab_size in {config_path})")

  shapes = _param_shapes(config)
  entries = _trunk_entries(config, shapes)
  available = _available(directory)
  expected = {e.name for e in entries}
  for e in entries:
    if e.name not in available:
      raise CheckpointError(f"{directory}: tensor {e.name} is missing from the checkpoint")
  for name, file in sorted(available.items()):
    # The LM head is not read when it is tied, or when the model is built without it (a reward model or
    # critic started from a pretrained trunk).
    unused_head = name == "lm_head.weight" and (config.tie_word_embeddings or "lm" not in config.heads)
    if name not in expected and not unused_head and not _IGNORABLE.search(name):
      raise CheckpointError(f"{directory / file}: unexpected tensor {name} for a "
                            f"{config.family} model with this config")

  np_dtype = config.params_dtype
  flat: Dict[tuple, np.ndarray] = {}
  with contextlib.ExitStack() as stack:
    reader = _Reader(directory, stack)
    for e in entries:
      tensor = reader.read(available[e.name], e.name, e.hf_shape, np_dtype)
      if e.layer is None:
        flat[e.path] = e.to_param(tensor)
      else:
        if e.path not in flat:
          flat[e.path] = np.empty(shapes[e.path], np_dtype)
        flat[e.path][e.layer] = e.to_param(tensor)

  model = Transformer(config)
  wanted = [HEAD_MODULES[h] for h in config.heads if h in HEAD_MODULES]
  stored = _read_heads(directory, shapes, wanted, np_dtype)
  flat.update(stored)
  missing = sorted({m for m in wanted if not any(p[0] == m for p in stored)})
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})
  if missing:
    params.update(_fresh_heads(model, jax.random.PRNGKey(seed), missing))
  if config.lora_rank:
    params = lora.combine(params, _fresh_adapters(model, jax.random.PRNGKey(seed + 1)))
  return model, params


def _read_heads(directory: pathlib.Path, shapes: Mapping[tuple, tuple], wanted: Sequence[str],
                dtype) -> Dict[tuple, np.ndarray]:
  """Value/reward head tensors from `safecomp_heads.safetensors` for the wanted head modules."""
  file = directory / HEADS_FILE
  if not file.exists() or not wanted:
    return {}
  out = {}
  with safe_open(str(file), framework="numpy") as f:
    names = set(f.keys())
    for module in wanted:
      paths = [p for p in shapes if p[0] == module]
      present = [p for p in paths if _head_name(p) in names]
      if not present:
        continue
      for p in paths:
        name = _head_name(p)
        if name not in names:
          raise CheckpointError(f"{file}: tensor {name} is missing (head {module} is partial)")
        got = tuple(f.get_slice(name).get_shape())
        if got != shapes[p]:
          raise CheckpointError(f"{file}: tensor {name} has shape {got}, expected {shapes[p]}")
        out[p] = f.get_tensor(name).astype(dtype)
  return out


def _to_numpy(value: Any, dtype) -> np.ndarray:
  return np.asarray(jax.device_get(value)).astype(dtype)


def export_pretrained(model: Transformer, params: Mapping, path: os.PathLike,
                      max_shard_bytes: int = 5 * 10**9, dtype: Optional[str] = None) -> None:
  """Writes `config.json` + safetensors (sharded with an index above `max_shard_bytes`).

  `dtype` ("float32"/"bfloat16") defaults to the config's `param_dtype`. Heads other than "lm" go to
  `safecomp_heads.safetensors`. Stale `model*.safetensors` files in `path` are replaced.
  """
  config = model.config
  if params.keys() == {"params"}:
    params = params["params"]
  if config.lora_rank:  # the merged model: W + (alpha / rank) A B on the (dequantised) base, a plain checkpoint
    params = quantize.dequantize_tree(params, config.params_dtype)
    params = lora.merge(params, config.lora_alpha, config.lora_rank)
    config = config.replace(lora_rank=0, base_quantization="none")
  out_dtype = dtype or config.param_dtype
  np_dtype = jnp.dtype(out_dtype)
  directory = pathlib.Path(path)
  directory.mkdir(parents=True, exist_ok=True)
  hf_config = config.to_hf()
  hf_config["torch_dtype"] = out_dtype

  flat = traverse_util.flatten_dict(params)
  shapes = {k: tuple(np.shape(v)) for k, v in flat.items()}
  entries = _trunk_entries(config, shapes)
  itemsize = np.dtype(np_dtype).itemsize
  shards: List[List[_Entry]] = [[]]
  size = 0
  for e in entries:
    nbytes = math.prod(e.hf_shape) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += nbytes

  for old in directory.iterdir():
    if old.name in (SINGLE_FILE, INDEX_FILE, HEADS_FILE) or _SHARD_RE.match(old.name):
      old.unlink()

  def tensors(group: Sequence[_Entry]) -> Dict[str, np.ndarray]:
    out = {}
    for e in group:
      value = flat[e.path] if e.layer is None else flat[e.path][e.layer]
      out[e.name] = e.to_hf(_to_numpy(value, np_dtype))
    return out

  metadata = {"format": "pt"}
  if len(shards) == 1:
    save_file(tensors(shards[0]), str(directory / SINGLE_FILE), metadata=metadata)
  else:
    weight_map = {}
    for i, group in enumerate(shards):
      file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(tensors(group), str(directory / file), metadata=metadata)
      weight_map.update({e.name: file for e in group})
    total = sum(math.prod(e.hf_shape) * itemsize for e in entries)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))

  head_tensors = {_head_name(k): _to_numpy(v, np_dtype) for k, v in flat.items()
                  if k[0] in HEAD_MODULES.values()}
  if head_tensors:
    save_file(head_tensors, str(directory / HEADS_FILE), metadata=metadata)
  (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True))
