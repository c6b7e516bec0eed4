"""Parity with `transformers` (torch CPU) on tiny random Llama/Mistral/Qwen2/Gemma checkpoints.

Checkpoints are written with `save_pretrained` (one sharded) and read back with `load_pretrained`;
logits of a padded batch must agree to 1e-4 (fp32) and greedy continuations token for token.
"""
import functools
import json
import pathlib
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safecomp import models as M  # noqa: E402
from safecomp.errors import CheckpointError  # noqa: E402

PAD, BOS, EOS, VOCAB = 0, 1, 2, 251
COMMON = dict(vocab_size=VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=3, num_key_value_heads=1, head_dim=32,
              max_position_embeddings=128, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# name -> (config class, model class, config overrides, save_pretrained max_shard_size)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "60KB"),
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True), None),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5), None),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, None),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=48), None),  # 3 * 48 != 96
}


def _build_hf(name, seed=0):
  config_cls, model_cls, extra, _ = FAMILIES[name]
  config = getattr(transformers, config_cls)(**{**COMMON, **extra})
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(config).eval()
  gemma = name == "gemma"
  with torch.no_grad():
    # Larger-than-default weights so greedy continuations vary; norm gains near their identity.
    # Gemma multiplies embeddings by sqrt(hidden): smaller embeddings keep them from dominating.
    for pname, p in model.named_parameters():
      if "norm" in pname:
        p.copy_(torch.randn_like(p) * 0.1 + (0.0 if gemma else 1.0))
      else:
        p.normal_(0.0, 0.2 if gemma else 0.1)
    if gemma:
      model.model.embed_tokens.weight.normal_(0.0, 0.03)
  return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
  name = request.param
  hf = _build_hf(name)
  path = tmp_path_factory.mktemp(name)
  shard = FAMILIES[name][3]
  hf.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
  return types.SimpleNamespace(name=name, hf=hf, path=path)


def _batch():
  """Left- and right-padded rows of different lengths, plus the HF position ids."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, VOCAB, size=(3, 12))
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding
  mask[2, 9:] = 0  # right padding
  ids = np.where(mask == 1, ids, PAD)
  return ids, mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


def _hf_logits(hf, ids, mask, pos):
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              position_ids=torch.tensor(pos)).logits.numpy()


def test_logits_match_transformers(family):
  path = pathlib.Path(family.path)
  if family.name == "llama":
    assert (path / "model.safetensors.index.json").exists()
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 1
  model, params = M.load_pretrained(path)
  ids, mask, pos = _batch()
  ref = _hf_logits(family.hf, ids, mask, pos)
  out = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  real = mask.astype(bool)
  assert np.abs(out - ref)[real].max() < 1e-4
  assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero logits
  # Features transformers could silently skip are exercised: without them the logits differ.
  changed = {"llama3": dict(rope_scaling=None), "mistral": dict(sliding_window=None)}
  if family.name in changed:
    other = model.config.replace(**changed[family.name])
    alt = np.asarray(M.logits(M.Transformer(other), params, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(alt - ref)[real].max() > 1e-3


def test_greedy_generation_matches_transformers(family):
  model, params = M.load_pretrained(family.path)
  ids, mask, _ = _batch()
  ids, mask = ids[:2, :9], mask[:2, :9]  # row 1 is left padded (HF generation needs left padding)
  with torch.no_grad():
    ref = family.hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             max_new_tokens=32, do_sample=False, eos_token_id=EOS,
                             pad_token_id=PAD).numpy()
  gen = jax.jit(functools.partial(M.generate, model, max_new_tokens=32, greedy=True, eos_id=EOS,
                                  pad_id=PAD))
  out = gen(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0))
  seq = np.asarray(out.sequences)
  np.testing.assert_array_equal(seq[:, :ref.shape[1]], ref)
  assert np.all(seq[:, ref.shape[1]:] == PAD)  # HF stops once every row has emitted EOS
  assert len(set(ref[:, 9:].ravel().tolist())) > 8  # a varied continuation, not one token


def _hf_reload_logits(path, ids, mask, pos):
  hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  return _hf_logits(hf, ids, mask, pos)


def test_export_round_trip_sharded_with_heads(tmp_path):
  hf_config = getattr(transformers, "LlamaConfig")(**COMMON).to_dict()
  cfg = M.ModelConfig.from_hf(hf_config, heads=("lm", "value", "severity"), initializer_range=0.05)
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  model = M.Transformer(cfg)
  M.export_pretrained(model, params, tmp_path, max_shard_bytes=100_000)
  assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert "lm_head.weight" in index["weight_map"]
  ids, mask, pos = _batch()
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  ref = _hf_reload_logits(tmp_path, ids, mask, pos)
  real = mask.astype(bool)
  assert np.abs(ours - ref)[real].max() < 1e-5
  # safecomp reads back exactly what it wrote, heads included.
  model2, params2 = M.load_pretrained(tmp_path, heads=("lm", "value", "severity"))
  assert model2.config == cfg
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  assert [p for p, _ in flat(params2)] == [p for p, _ in flat(params)]
  for (_, a), (_, b) in zip(flat(params2), flat(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_round_trip_from_loaded_gemma(tmp_path):
  hf = _build_hf("gemma", seed=1)
  hf.save_pretrained(tmp_path / "in")
  model, params = M.load_pretrained(tmp_path / "in")
  M.export_pretrained(model, params, tmp_path / "out")
  assert (tmp_path / "out" / "model.safetensors").exists()
  ids, mask, pos = _batch()
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  ref = _hf_reload_logits(tmp_path / "out", ids, mask, pos)
  real = mask.astype(bool)
  assert np.abs(ours - ref)[real].max() < 1e-5
  np.testing.assert_array_equal(ref[real], _hf_logits(hf, ids, mask, pos)[real])


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
  hf = _build_hf("qwen2").to(torch.bfloat16)
  hf.save_pretrained(tmp_path)
  model, params = M.load_pretrained(tmp_path)
  assert params["embed"]["embedding"].dtype == jnp.float32
  # HF Linear weight [heads * head_dim, embed] vs our kernel [embed, heads, head_dim].
  want = hf.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
  got = np.asarray(params["layers"]["attn"]["q"]["kernel"][1])
  np.testing.assert_array_equal(got.reshape(96, -1).T, want)
  np.testing.assert_array_equal(np.asarray(params["layers"]["attn"]["k"]["bias"][0]).ravel(),
                                hf.model.layers[0].self_attn.k_proj.bias.detach().float().numpy())


# ------------------------------------------------------------------ errors name the tensor
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("small")
  _build_hf("qwen2").save_pretrained(path)
  return path


def _rewrite(src, dst, edit):
  from safetensors.numpy import load_file, save_file
  shutil.copytree(src, dst)
  tensors = load_file(str(dst / "model.safetensors"))
  edit(tensors)
  save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
  return dst


def test_missing_tensor_is_named(small_checkpoint, tmp_path):
  name = "model.layers.1.mlp.up_proj.weight"
  path = _rewrite(small_checkpoint, tmp_path / "c", lambda t: t.pop(name))
  with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
    M.load_pretrained(path)


def test_wrong_shape_is_named(small_checkpoint, tmp_path):
  name = "model.layers.0.self_attn.k_proj.weight"
  path = _rewrite(small_checkpoint, tmp_path / "c",
                  lambda t: t.__setitem__(name, np.zeros((33, 96), np.float32)))
  with pytest.raises(CheckpointError, match=rf"model\.safetensors.*{name}.*\(33, 96\)"):
    M.load_pretrained(path)


def test_unexpected_tensor_is_named(small_checkpoint, tmp_path):
  name = "model.layers.0.mlp.extra_proj.weight"
  path = _rewrite(small_checkpoint, tmp_path / "c",
                  lambda t: t.__setitem__(name, np.zeros((4, 4), np.float32)))
  with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
    M.load_pretrained(path)


def test_untied_checkpoint_loads_as_a_reward_model(tmp_path):
  """Llama-3-8B keeps a separate LM head: a reward model or critic built from its trunk must still load."""
  path = tmp_path / "untied"
  _build_hf("llama").save_pretrained(str(path))
  model, params = M.load_pretrained(path, heads=("severity", "helpfulness"))
  assert "lm_head" not in params and "severity_head" in params
  _, with_lm = M.load_pretrained(path, heads=("lm",))
  np.testing.assert_array_equal(params["embed"]["embedding"], with_lm["embed"]["embedding"])


def test_vocab_mismatch_is_named(small_checkpoint):
  tokenizer = types.SimpleNamespace(vocab_size=VOCAB + 5)
  with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight"):
    M.load_pretrained(small_checkpoint, tokenizer=tokenizer)
  _, params = M.load_pretrained(small_checkpoint, tokenizer=types.SimpleNamespace(vocab_size=VOCAB))
  assert params["embed"]["embedding"].shape == (VOCAB, 96)


def test_embedding_rows_must_match_config(small_checkpoint, tmp_path):
  path = _rewrite(small_checkpoint, tmp_path / "c",
                  lambda t: t.__setitem__("model.embed_tokens.weight",
                                          np.zeros((VOCAB - 1, 96), np.float32)))
  with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight"):
    M.load_pretrained(path)


def test_missing_shard_is_named(tmp_path):
  dst = tmp_path / "c"
  _build_hf("llama").save_pretrained(dst, max_shard_size=FAMILIES["llama"][3])
  victim = sorted(dst.glob("model-*-of-*.safetensors"))[1]
  victim.unlink()
  with pytest.raises(CheckpointError, match=victim.name):
    M.load_pretrained(dst)


def test_fresh_heads_are_seeded(small_checkpoint):
  _, a = M.load_pretrained(small_checkpoint, heads=("lm", "helpfulness"), seed=3)
  _, b = M.load_pretrained(small_checkpoint, heads=("lm", "helpfulness"), seed=3)
  _, c = M.load_pretrained(small_checkpoint, heads=("lm", "helpfulness"), seed=4)
  ka, kb, kc = (np.asarray(p["helpfulness_head"]["kernel"]) for p in (a, b, c))
  np.testing.assert_array_equal(ka, kb)
  assert not np.array_equal(ka, kc)
