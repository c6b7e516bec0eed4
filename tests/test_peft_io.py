"""PEFT LoRA adapters: export to and import from `peft` on tiny random Llama / Qwen2 checkpoints.

An adapter written by `export_adapter` must give, through `peft.PeftModel`, the logits safecomp
computes with it (and `export_pretrained`'s merged model the same); one written by `peft` must give
its logits here. Comparisons are float32, on a padded batch, to 1e-4.
"""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

import peft  # the test extra installs it: a missing peft fails here, it is never skipped
import torch
import transformers

from safecomp import models as M
from safecomp.errors import CheckpointError
from safecomp.models import lora, peft_io
from safecomp.models.config import LORA_TARGETS

PAD, VOCAB = 0, 64
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
              pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
ALL = LORA_TARGETS


@pytest.fixture(scope="module", params=list(FAMILIES))
def base(request, tmp_path_factory):
  """A tiny random HF checkpoint on disk (Qwen2 has q/k/v biases)."""
  config_cls, model_cls = FAMILIES[request.param]
  torch.manual_seed(0)
  hf = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**COMMON)).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():  # larger than default weights: logits well away from 0
      p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
  path = tmp_path_factory.mktemp(request.param)
  hf.save_pretrained(path)
  return types.SimpleNamespace(name=request.param, path=path)


def _hf(path):
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _batch():
  """Left- and right-padded rows, their mask and the HF position ids."""
  ids = np.random.default_rng(0).integers(3, VOCAB, size=(3, 10))
  mask = np.ones_like(ids)
  mask[1, :3] = 0
  mask[2, 7:] = 0
  return np.where(mask == 1, ids, PAD), mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


def _torch_logits(model):
  ids, mask, pos = _batch()
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()


def _our_logits(config, params):
  ids, mask, _ = _batch()
  return np.asarray(M.forward(config, params, jnp.asarray(ids), jnp.asarray(mask))["logits"])


def _max_diff(a, b):
  return np.abs(a - b)[_batch()[1].astype(bool)].max()


def _trained(base_path, targets, seed=0):
  """`load_pretrained` with adapters, every adapter leaf random (B too, so they change the logits)."""
  model, params = M.load_pretrained(base_path, lora_rank=4, lora_alpha=8, lora_targets=targets)
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(lora.adapters(params))
  assert {k[2] for k in flat} == {t + lora.SUFFIX for t in targets}
  noisy = {k: jnp.asarray(rng.normal(0.0, 0.2, v.shape), jnp.float32) for k, v in flat.items()}
  return model, lora.combine(params, traverse_util.unflatten_dict(noisy))


@pytest.mark.parametrize("subset", [False, True])
def test_export_matches_peft_and_merged_model(base, subset, tmp_path):
  targets = ("q", "v", "down") if subset else ALL
  model, params = _trained(base.path, targets)
  out = M.export_adapter(model.config, params, tmp_path / "adapter", base_model_name_or_path="tiny")
  written = json.loads((out / "adapter_config.json").read_text())
  assert written["target_modules"] == [peft_io.HF_PROJECTIONS[t] for t in targets]
  assert (written["r"], written["lora_alpha"], written["peft_type"]) == (4, 8.0, "LORA")
  assert len(load_file(str(out / "adapter_model.safetensors"))) == 2 * 2 * len(targets)

  ours = _our_logits(model.config, params)
  ref = _torch_logits(peft.PeftModel.from_pretrained(_hf(base.path), out).eval())
  assert _max_diff(ours, ref) < 1e-4
  plain = _our_logits(model.config.replace(lora_rank=0), lora.adapters_off(params))
  assert _max_diff(plain, ref) > 1e-2  # the adapters matter, so the match is not vacuous

  M.export_pretrained(model, params, tmp_path / "merged")
  assert _max_diff(_torch_logits(_hf(tmp_path / "merged")), ref) < 1e-4


def test_round_trip(base, tmp_path):
  targets = ("k", "o", "gate", "up")
  model, params = _trained(base.path, targets, seed=1)
  adapters, fields = M.load_adapter(M.export_adapter(model.config, lora.adapters(params), tmp_path),
                                    model.config)
  assert fields == {"lora_rank": 4, "lora_alpha": 8.0, "lora_targets": targets}
  want = traverse_util.flatten_dict(lora.adapters(params))
  got = traverse_util.flatten_dict(adapters)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


def test_adapter_saved_by_peft_gives_peft_logits(base, tmp_path):
  torch.manual_seed(1)
  lora_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj", "up_proj"],
                                lora_dropout=0.1, init_lora_weights=False)  # B random, not zero
  trained = peft.get_peft_model(_hf(base.path), lora_config).eval()
  trained.save_pretrained(tmp_path)
  ref = _torch_logits(trained)

  config = M.load_pretrained(base.path)[0].config
  adapters, fields = M.load_adapter(tmp_path, config)
  assert fields == {"lora_rank": 4, "lora_alpha": 8.0, "lora_targets": ("q", "k", "o", "up")}
  model, params = M.load_pretrained(base.path, **fields)
  assert _max_diff(_our_logits(model.config, lora.combine(params, adapters)), ref) < 1e-4


A0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def _drop(tensors, peft_config):
  del tensors[A0]


def _reshape(tensors, peft_config):
  tensors[A0] = np.zeros((4, 31), np.float32)


def _extra_layer(tensors, peft_config):
  tensors[A0.replace("layers.0", "layers.2")] = tensors[A0]


def _rslora(tensors, peft_config):
  peft_config["use_rslora"] = True


def _modules_to_save(tensors, peft_config):
  peft_config["modules_to_save"] = ["lm_head"]


def _unknown_target(tensors, peft_config):
  peft_config["target_modules"].append("embed_tokens")


@pytest.mark.parametrize("corrupt, file, words", [
    (_drop, "adapter_model.safetensors", [A0, "missing"]),
    (_reshape, "adapter_model.safetensors", [A0, "(4, 31)", "(4, 32)"]),
    (_extra_layer, "adapter_model.safetensors", ["layers.2.self_attn.q_proj.lora_A", "2 layers"]),
    (_rslora, "adapter_config.json", ["use_rslora"]),
    (_modules_to_save, "adapter_config.json", ["modules_to_save", "not supported"]),
    (_unknown_target, "adapter_config.json", ["embed_tokens"]),
], ids=["missing", "shape", "layer_range", "rslora", "modules_to_save", "target"])
def test_bad_adapters_are_named(tmp_path, corrupt, file, words):
  config = M.ModelConfig(lora_rank=4, lora_alpha=8)  # the defaults are a tiny Llama
  M.export_adapter(config, M.init_params(config, jax.random.PRNGKey(0)), tmp_path)
  tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
  peft_config = json.loads((tmp_path / "adapter_config.json").read_text())
  corrupt(tensors, peft_config)
  save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
  (tmp_path / "adapter_config.json").write_text(json.dumps(peft_config))
  with pytest.raises(CheckpointError) as error:
    M.load_adapter(tmp_path, config)
  for word in [str(tmp_path / file)] + words:
    assert word in str(error.value)


def test_missing_file_is_named(tmp_path):
  with pytest.raises(CheckpointError, match="adapter_config.json: not found"):
    M.load_adapter(tmp_path, M.ModelConfig())
