"""LoRA adapters in the PEFT format: `adapter_config.json` + `adapter_model.safetensors`.

An adapter trained here loads with `peft.PeftModel.from_pretrained(base, directory)` on the HF base it
was trained from, and a PEFT LoRA adapter of a Llama/Mistral/Qwen2/Gemma model loads here: the
tensors are only a few MB, so they can be shared without the (merged) base model.

PEFT stores `lora_A.weight` [r, in] and `lora_B.weight` [out, r] per Linear, scaled by lora_alpha / r;
ours are a [L, *in, r] and b [L, r, *out] per projection, scaled by alpha / rank. So A is laid out
like a kernel with the projection's input axes and B like a kernel with one input axis, and
`hf_io`'s `_Entry` converts both exactly as it converts the kernels.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from safecomp.errors import CheckpointError, ConfigError
from safecomp.models import lora
from safecomp.models.config import LORA_TARGETS, ModelConfig
from safecomp.models.hf_io import _LAYER_MAP, _Entry, _param_shapes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model.model.layers."  # PEFT's wrapper + the causal LM's `model.layers.{i}`
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")
# Our target name -> its HF projection name (q_proj, ...), from the checkpoint layout `hf_io` reads.
HF_PROJECTIONS = {key[1]: name.split(".")[-2] for key, (name, _) in _LAYER_MAP.items() if key[-1] == "kernel"}
_BY_HF_NAME = {HF_PROJECTIONS[t]: t for t in LORA_TARGETS}
# PEFT options that change what the adapter computes or stores, which our adapters cannot express.
_UNSUPPORTED = {
    "use_rslora": "safecomp scales by lora_alpha / r, not lora_alpha / sqrt(r)",
    "use_dora": "DoRA is not implemented",
    "modules_to_save": "fully trained copies of base modules are not supported; merge them into the base",
    "rank_pattern": "every projection must have the same rank",
    "alpha_pattern": "every projection must have the same alpha",
    "layers_to_transform": "every layer must carry the adapter",
    "fan_in_fan_out": "Llama-family Linear weights are [out, in]",
    "lora_bias": "LoRA biases are not supported",
}


def _entries(config: ModelConfig) -> List[_Entry]:
  """One entry per PEFT tensor of `config`'s adapters: lora_A / lora_B of each target in each layer."""
  shapes = _param_shapes(config)
  entries = []
  for key, (hf_name, n_in) in _LAYER_MAP.items():
    if key[-1] != "kernel" or key[1] not in config.lora_targets:
      continue
    part, target, _ = key
    module = hf_name[:-len(".weight")]
    for param, kind, kind_n_in in (("a", "A", n_in), ("b", "B", 1)):  # B: one input axis (rank)
      path = ("layers", part, target + lora.SUFFIX, param)
      for i in range(config.num_layers):
        entries.append(_Entry(f"{_PREFIX}{i}.{module}.lora_{kind}.weight", path, i, kind_n_in,
                              shapes[path][1:]))
  return entries


def export_adapter(config: ModelConfig, params: Mapping, directory: os.PathLike,
                   base_model_name_or_path: str = "") -> pathlib.Path:
  """Writes the adapters of `params` (a full tree or the adapters alone) as a PEFT LoRA adapter.

  `config` gives the rank, alpha and targets (`lora_rank` > 0); tensors are written in float32, the
  dtype adapters train in. Returns the directory.
  """
  if not config.lora_rank:
    raise ValueError("config.lora_rank is 0: there are no adapters to export")
  if params.keys() == {"params"}:
    params = params["params"]
  flat = traverse_util.flatten_dict(lora.adapters(params))
  tensors = {}
  for e in _entries(config):
    if e.path not in flat:
      raise ValueError(f"params have no adapter {'/'.join(e.path)} (targets {config.lora_targets})")
    value = np.asarray(jax.device_get(flat[e.path]), np.float32)
    if value.shape != (config.num_layers,) + e.shape:
      raise ValueError(f"adapter {'/'.join(e.path)} has shape {value.shape}, expected "
                       f"{(config.num_layers,) + e.shape}")
    tensors[e.name] = e.to_hf(value[e.layer])
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
  peft_config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(config.lora_rank),
      "lora_alpha": float(config.lora_alpha), "lora_dropout": 0.0,
      "target_modules": [HF_PROJECTIONS[t] for t in config.lora_targets],
      "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "modules_to_save": None,
      "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
      "init_lora_weights": True,
  }
  (directory / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2, sort_keys=True))
  return directory


def _read_config(path: pathlib.Path) -> Tuple[int, float, tuple]:
  """(rank, alpha, targets) of a PEFT `adapter_config.json`, refusing what our adapters can't express.

  `lora_dropout` only acts in training, so any value is accepted.
  """
  try:
    peft_config = json.loads(path.read_text())
  except ValueError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e})") from e
  if peft_config.get("peft_type") != "LORA":
    raise CheckpointError(f"{path}: peft_type={peft_config.get('peft_type')!r}, only 'LORA' is supported")
  for key, reason in _UNSUPPORTED.items():
    if peft_config.get(key):
      raise CheckpointError(f"{path}: {key}={peft_config[key]!r} is not supported ({reason})")
  if peft_config.get("bias", "none") != "none":
    raise CheckpointError(f"{path}: bias={peft_config['bias']!r} is not supported (only 'none')")
  names = peft_config.get("target_modules")
  if names == "all-linear":
    names = list(_BY_HF_NAME)
  if not isinstance(names, list) or not names:
    raise CheckpointError(f"{path}: target_modules={names!r} must be a list of projections among "
                          f"{list(_BY_HF_NAME)} (regular expressions are not supported)")
  unknown = [n for n in names if n.split(".")[-1] not in _BY_HF_NAME]
  if unknown:
    raise CheckpointError(f"{path}: target_modules {unknown} are not projections safecomp adapts "
                          f"({list(_BY_HF_NAME)})")
  try:
    rank, alpha = int(peft_config["r"]), float(peft_config["lora_alpha"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: r and lora_alpha must be numbers ({e!r})") from e
  wanted = {_BY_HF_NAME[n.split(".")[-1]] for n in names}
  return rank, alpha, tuple(t for t in LORA_TARGETS if t in wanted)


def load_adapter(directory: os.PathLike, config: ModelConfig) -> Tuple[dict, dict]:
  """Reads a PEFT LoRA adapter of the model `config` describes.

  Returns (adapters, fields): the adapters as a nested params dict (float32, scanned layout) and
  {"lora_rank", "lora_alpha", "lora_targets"} as the adapter sets them (`config`'s own lora fields
  are ignored). `load_pretrained(base, **fields)` builds the matching model; `lora.combine` its
  params with the adapters.

  Raises:
    CheckpointError: a missing file, an unsupported option, an unknown target module, or a missing,
      extra or misshapen tensor (names the file and the tensor).
  """
  directory = pathlib.Path(directory)
  config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
  for path in (config_path, weights):
    if not path.exists():
      raise CheckpointError(f"{path}: not found (expected a PEFT LoRA adapter directory)")
  rank, alpha, targets = _read_config(config_path)
  try:
    adapted = config.replace(lora_rank=rank, lora_alpha=alpha, lora_targets=targets)
  except ConfigError as e:
    raise CheckpointError(f"{config_path}: {e}") from e
  entries = _entries(adapted)
  flat: Dict[tuple, np.ndarray] = {}
  with safe_open(str(weights), framework="numpy") as f:
    names = set(f.keys())
    for e in entries:
      if e.name not in names:
        raise CheckpointError(f"{weights}: tensor {e.name} is missing (target_modules in "
                              f"{config_path} adapt it)")
      got = tuple(f.get_slice(e.name).get_shape())
      if got != e.hf_shape:
        raise CheckpointError(f"{weights}: tensor {e.name} has shape {got}, expected {e.hf_shape} "
                              f"(r={rank})")
      if e.path not in flat:
        flat[e.path] = np.empty((config.num_layers,) + e.shape, np.float32)
      flat[e.path][e.layer] = e.to_param(f.get_tensor(e.name).astype(np.float32))
  for name in sorted(names - {e.name for e in entries}):
    layer = _LAYER_RE.search(name)
    if layer and int(layer.group(1)) >= config.num_layers:
      raise CheckpointError(f"{weights}: tensor {name} is for layer {layer.group(1)}, the model has "
                            f"{config.num_layers} layers")
    raise CheckpointError(f"{weights}: unexpected tensor {name} (targets {list(targets)} of "
                          f"{config_path})")
  fields = {"lora_rank": rank, "lora_alpha": alpha, "lora_targets": targets}
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}), fields
