"""The `ModelConfig` an experiment config describes, without loading any weights.

When `model.init_from` names a directory with a `config.json`, that file decides the architecture
(as `load_pretrained` would). Otherwise the `model` section must spell it out; the configs for real
runs carry the public `config.json` values of their model (vocab_size, rope_theta, rms_norm_eps,
tie_word_embeddings, ...) so they can be planned and compiled before the checkpoint is downloaded.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

from safecomp import models
from safecomp.config import require

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


def model_config_from(config: Any, heads: tuple[str, ...] = ("lm",), *,
                      vocab_size: int | None = None) -> models.ModelConfig:
  """`ModelConfig` of the experiment's model with `heads`, numerics from `model.dtype` etc.

  Args:
    config: the experiment ConfigDict (reads its `model` section).
    heads: heads to build ("lm"; "lm", "value" for the PPO policy; "severity", "helpfulness"
      for the reward model).
    vocab_size: overrides / supplies the vocabulary size (fresh models take it from the tokenizer).
  """
  m = config.model
  numerics = dict(heads=tuple(heads), dtype=m.get("dtype", "float32"),
                  param_dtype=m.get("param_dtype", "float32"), remat=m.get("remat", "none"))
  init_from = m.get("init_from", "")
  if init_from and (pathlib.Path(init_from) / "config.json").is_file():
    hf = json.loads((pathlib.Path(init_from) / "config.json").read_text())
    overrides = {} if vocab_size is None else {"vocab_size": int(vocab_size)}
    return models.ModelConfig.from_hf(hf, **numerics, **overrides)
  hf = {hf_key: m[key] for key, hf_key in HF_KEYS.items() if key in m}
  if vocab_size is not None:
    hf["vocab_size"] = int(vocab_size)
  require("vocab_size" in hf, "model.vocab_size",
          "is needed to build the model without a checkpoint or tokenizer (set it, or point "
          "model.init_from at a directory with config.json)")
  if hf.get("sliding_window"):
    hf["use_sliding_window"] = True
  else:
    hf.pop("sliding_window", None)
  return models.ModelConfig.from_hf(hf, **numerics)
