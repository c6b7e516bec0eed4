"""`ModelConfig`: one frozen, hashable description of a decoder-only model and its heads.

One config covers Llama 2/3 (incl. Llama 3.1 `llama3` RoPE scaling), Mistral, Qwen2 and Gemma 1;
`from_hf` / `to_hf` translate Hugging Face `config.json` dictionaries.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import flax
import jax.numpy as jnp

from safecomp import config as config_lib
from safecomp.errors import ConfigError

HEADS = ("lm", "value", "severity", "helpfulness")
FAMILIES = ("llama", "mistral", "qwen2", "gemma")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu")
ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "checkpoint_dots", "checkpoint_dots_with_no_batch_dims", "nothing_saveable",
                  "everything_saveable")
DTYPES = ("float32", "bfloat16", "float16")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # projections an adapter can target
BASE_QUANTIZATIONS = ("none", "int8", "nf4")  # storage of a frozen base (see safecomp.models.quantize)

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
}
# Activation spellings found in released configs, mapped onto ours.
_ACT_ALIASES = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_pytorch_tanh",
                "gelu_new": "gelu_pytorch_tanh", "gelu_fast": "gelu_pytorch_tanh", "gelu": "gelu"}

TokenIds = Union[None, int, tuple]


def _freeze(value: Any) -> Any:
  """Makes nested dicts/lists hashable (FrozenDict / tuple)."""
  if isinstance(value, Mapping):
    return flax.core.FrozenDict({k: _freeze(v) for k, v in value.items()})
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {k: _thaw(v) for k, v in value.items()}
  if isinstance(value, tuple):
    return [_thaw(v) for v in value]
  return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture, heads and numerics of a `Transformer`.

  Frozen and hashable so it can be a static `jax.jit` argument. `dtype` is the compute dtype
  (activations); parameters are stored in `param_dtype`.
  """
  family: str = "llama"
  vocab_size: int = 64
  hidden_size: int = 32
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 8
  intermediate_size: int = 64
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Optional[Mapping[str, Any]] = None
  hidden_act: str = "silu"
  attention_bias: bool = False  # bias on q/k/v projections
  attention_out_bias: bool = False  # bias on the output projection (Llama `attention_bias`)
  mlp_bias: bool = False
  tie_word_embeddings: bool = False
  scale_embeddings: bool = False  # multiply embeddings by sqrt(hidden_size) (Gemma)
  norm_unit_offset: bool = False  # RMSNorm scales by (1 + w) (Gemma)
  sliding_window: Optional[int] = None
  pad_token_id: Optional[int] = None
  bos_token_id: Optional[int] = None
  eos_token_id: TokenIds = None
  heads: tuple = ("lm",)
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  initializer_range: float = 0.02
  # Low-rank adapters (`safecomp.models.lora`): rank 0 = none; targets name projections.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple = ("q", "k", "v", "o", "gate", "up", "down")
  # How the frozen base's layer kernels are stored under adapters (`safecomp.models.quantize`): QLoRA.
  base_quantization: str = "none"

  def __post_init__(self):
    object.__setattr__(self, "heads", tuple(self.heads))
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    if self.rope_scaling is not None:
      object.__setattr__(self, "rope_scaling", _freeze(dict(self.rope_scaling)))
    if isinstance(self.eos_token_id, (list, tuple)):
      ids = tuple(int(i) for i in self.eos_token_id)
      object.__setattr__(self, "eos_token_id", ids[0] if len(ids) == 1 else ids)
    for name, value, allowed in (("family", self.family, FAMILIES),
                                 ("hidden_act", self.hidden_act, ACTIVATIONS),
                                 ("dtype", self.dtype, DTYPES),
                                 ("param_dtype", self.param_dtype, DTYPES),
                                 ("remat", self.remat, REMAT_POLICIES),
                                 ("rope_type", self.rope_type, ROPE_TYPES)):
      if value not in allowed:
        raise ConfigError(f"model.{name}={value!r} is not one of {allowed}")
    unknown = [h for h in self.heads if h not in HEADS]
    if unknown or len(set(self.heads)) != len(self.heads):
      raise ConfigError(f"model.heads={self.heads!r}: each head must appear once and be one "
                        f"of {HEADS}")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size", "max_position_embeddings"):
      if int(getattr(self, name)) <= 0:
        raise ConfigError(f"model.{name}={getattr(self, name)!r} must be positive")
    if int(self.lora_rank) < 0:
      raise ConfigError(f"lora.rank={self.lora_rank!r} must be 0 (no adapters) or positive")
    if self.lora_rank:
      if not float(self.lora_alpha) > 0:
        raise ConfigError(f"lora.alpha={self.lora_alpha!r} must be positive")
      unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
      if unknown or not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
        raise ConfigError(f"lora.targets={self.lora_targets!r}: give each of {LORA_TARGETS} at most "
                          "once (at least one)")
    if self.base_quantization not in BASE_QUANTIZATIONS:
      raise ConfigError(f"lora.base_quantization={self.base_quantization!r} is not one of {BASE_QUANTIZATIONS}")
    if self.base_quantization != "none" and not self.lora_rank:
      raise ConfigError(f"lora.base_quantization={self.base_quantization!r} stores the frozen base of an "
                        "adapter run: set lora.rank > 0 (without adapters every weight trains)")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"model.num_heads={self.num_heads} is not a multiple of "
                        f"model.num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"model.head_dim={self.head_dim} must be even for RoPE")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ConfigError(f"model.sliding_window={self.sliding_window} must be positive or None")
    if self.rope_type == "llama3":
      missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor",
                             "original_max_position_embeddings") if k not in self.rope_scaling]
      if missing:
        raise ConfigError(f"model.rope_scaling (llama3) lacks keys {missing}")
    if self.rope_type == "linear" and "factor" not in self.rope_scaling:
      raise ConfigError("model.rope_scaling (linear) lacks key 'factor'")

  # ---------------------------------------------------------------- derived values
  @property
  def rope_type(self) -> str:
    if not self.rope_scaling:
      return "default"
    return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def eos_ids(self) -> tuple:
    """End-of-sequence ids as a tuple (empty when the config has none)."""
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, tuple):
      return self.eos_token_id
    return (int(self.eos_token_id),)

  def replace(self, **kw) -> "ModelConfig":
    """Returns a copy with the given fields changed (validated again)."""
    unknown = sorted(set(kw) - {f.name for f in dataclasses.fields(self)})
    if unknown:
      raise ConfigError(f"unknown model config keys {unknown}")
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    """Plain-Python dict of every field (JSON-serialisable)."""
    return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

  # ---------------------------------------------------------------- Hugging Face
  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds a config from a Hugging Face `config.json` dict (Llama/Mistral/Qwen2/Gemma)."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
      raise ConfigError(f"config.json: model_type={model_type!r} is not supported; "
                        f"expected one of {FAMILIES}")

    def need(key):
      if key not in hf:
        raise ConfigError(f"config.json: missing key {key!r}")
      return hf[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = hf.get("head_dim") or hidden // heads
    # Rope: transformers>=5 writes `rope_parameters`; older configs `rope_theta` + `rope_scaling`.
    rope = dict(hf.get("rope_parameters") or {})
    if not rope:
      rope = dict(hf.get("rope_scaling") or {})
    theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope_type not in ROPE_TYPES:
      raise ConfigError(f"config.json: rope type {rope_type!r} is not supported; "
                        f"expected one of {ROPE_TYPES}")
    rope_scaling = None
    if rope_type != "default":
      rope_scaling = {"rope_type": rope_type, **rope}
      if rope_type == "llama3":
        rope_scaling.setdefault("original_max_position_embeddings",
                                hf.get("max_position_embeddings"))

    if model_type == "gemma":
      # Released Gemma configs say "gelu" but mean the tanh approximation (as transformers does).
      act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
      act = "gelu_pytorch_tanh" if act == "gelu" else act
    else:
      act = hf.get("hidden_act", "silu")
    if act not in _ACT_ALIASES:
      raise ConfigError(f"config.json: hidden_act={act!r} is not supported")

    bias = bool(hf.get("attention_bias", False))
    kw = dict(
        family=model_type,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        intermediate_size=int(need("intermediate_size")),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        hidden_act=_ACT_ALIASES[act],
        attention_bias=bias,
        attention_out_bias=bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type == "gemma")),
        scale_embeddings=model_type == "gemma",
        norm_unit_offset=model_type == "gemma",
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )
    if model_type == "qwen2":
      kw.update(attention_bias=True, attention_out_bias=False)
      window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
      if window is not None:
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if i >= hf.get("max_window_layers", 0) else "full_attention"
            for i in range(kw["num_layers"])]
        if any(t != "sliding_attention" for t in layer_types):
          raise ConfigError("config.json: Qwen2 with a sliding window on only some layers is "
                            "not supported")
      kw["sliding_window"] = window
    elif model_type == "mistral":
      kw["sliding_window"] = hf.get("sliding_window")
    elif model_type == "gemma":
      kw.update(attention_out_bias=bias)
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """The Hugging Face `config.json` dict for this architecture (heads are not part of it)."""
    fam = self.family
    if fam == "qwen2":
      if not self.attention_bias or self.attention_out_bias:
        raise ConfigError("Qwen2 export needs attention_bias=True and attention_out_bias=False")
    elif fam == "mistral" and (self.attention_bias or self.attention_out_bias):
      raise ConfigError("Mistral export does not support attention biases")
    elif self.attention_bias != self.attention_out_bias:
      raise ConfigError(f"{fam} export needs attention_bias == attention_out_bias")
    if (fam == "gemma") != self.scale_embeddings or (fam == "gemma") != self.norm_unit_offset:
      raise ConfigError(f"{fam} export: scale_embeddings/norm_unit_offset must be {fam == 'gemma'}")
    if self.mlp_bias and fam != "llama":
      raise ConfigError(f"{fam} export does not support mlp_bias")
    if self.sliding_window is not None and fam not in ("mistral", "qwen2"):
      raise ConfigError(f"{fam} export does not support sliding_window")
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    out = {
        "architectures": [_ARCHITECTURES[fam]],
        "model_type": fam,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": self.hidden_act,
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_scaling": _thaw(self.rope_scaling) if self.rope_scaling else None,
        "tie_word_embeddings": self.tie_word_embeddings,
        "pad_token_id": self.pad_token_id,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": eos,
        "initializer_range": self.initializer_range,
        "attention_dropout": 0.0,
        "torch_dtype": self.param_dtype,
    }
    if fam in ("llama", "gemma"):
      out["attention_bias"] = self.attention_bias
    if fam == "llama":
      out["mlp_bias"] = self.mlp_bias
    if fam == "mistral":
      out["sliding_window"] = self.sliding_window
    if fam == "qwen2":
      out["use_sliding_window"] = self.sliding_window is not None
      out["sliding_window"] = self.sliding_window
      out["max_window_layers"] = 0
    return out


def tiny(**overrides) -> ModelConfig:
  """A very small Llama-style config for tests (vocab 64, hidden 32, 2 layers, GQA 4:2)."""
  base = dict(family="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
              num_kv_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=256,
              rms_norm_eps=1e-6, rope_theta=10000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
  base.update(overrides)
  return ModelConfig(**base)


def parse_heads(heads: Union[str, Sequence[str]]) -> tuple:
  """Accepts "lm,value" or a sequence; returns a validated tuple."""
  if isinstance(heads, str):
    heads = [h.strip() for h in heads.split(",") if h.strip()]
  heads = tuple(heads)
  unknown = [h for h in heads if h not in HEADS]
  if unknown:
    raise ConfigError(f"unknown heads {unknown}; expected a subset of {HEADS}")
  return heads


def parse_lora_targets(targets: Union[str, Sequence[str]]) -> tuple:
  """`lora.targets`: "q,k,v,o" or a sequence of projection names -> a tuple (validated by ModelConfig)."""
  if isinstance(targets, str):
    targets = [t.strip() for t in targets.split(",") if t.strip()]
  return tuple(targets)


# Experiment-config key (under `model`) -> Hugging Face config.json key.
HF_KEYS = {
    "family": "model_type",
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "tie_word_embeddings": "tie_word_embeddings",
    "hidden_act": "hidden_act",
    "attention_bias": "attention_bias",
    "sliding_window": "sliding_window",
}


def lora_fields(config: Any) -> dict:
  """The `ModelConfig` adapter fields of the experiment config's `lora` section (none for runs
  recorded before the section existed)."""
  adapters = config.get("lora")
  if adapters is None:
    return {}
  return dict(lora_rank=int(adapters.rank), lora_alpha=float(adapters.alpha),
              lora_targets=parse_lora_targets(adapters.targets),
              base_quantization=adapters.get("base_quantization", "none"))


def model_config_from(config: Any, heads: tuple[str, ...] = ("lm",), *, vocab_size: int | None = None,
                      **token_ids: Any) -> ModelConfig:
  """`ModelConfig` of the experiment's model with `heads`, numerics from `model.dtype` etc.

  Args:
    config: the experiment ConfigDict (reads its `model` section, and `lora` for adapters).
    heads: heads to build ("lm"; "lm", "value" for the PPO policy; "severity", "helpfulness"
      for the reward model).
    vocab_size: overrides / supplies the vocabulary size (fresh models take it from the tokenizer).
    **token_ids: `pad_token_id`, `bos_token_id`, `eos_token_id` of the run's tokenizer, if known.

  The one place the `model` section becomes a `ModelConfig`: the pipeline, the PPO step, the memory
  planner and the benchmarks all build their models with it.
  """
  m = config.model
  numerics = dict(heads=tuple(heads), dtype=m.get("dtype", "float32"),
                  param_dtype=m.get("param_dtype", "float32"), remat=m.get("remat", "none"))
  numerics.update(lora_fields(config))
  init_from = m.get("init_from", "")
  if init_from and (pathlib.Path(init_from) / "config.json").is_file():
    hf = json.loads((pathlib.Path(init_from) / "config.json").read_text())
    overrides = {} if vocab_size is None else {"vocab_size": int(vocab_size)}
    return ModelConfig.from_hf(hf, **numerics, **overrides, **token_ids)
  hf = {hf_key: m[key] for key, hf_key in HF_KEYS.items() if key in m}
  if vocab_size is not None:
    hf["vocab_size"] = int(vocab_size)
  config_lib.require("vocab_size" in hf, "model.vocab_size",
          "is needed to build the model without a checkpoint or tokenizer (set it, or point "
          "model.init_from at a directory with config.json)")
  if hf.get("sliding_window"):
    hf["use_sliding_window"] = True
  else:
    hf.pop("sliding_window", None)
  return ModelConfig.from_hf(hf, **numerics, **token_ids)
