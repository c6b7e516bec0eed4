"""Model heads, padding invariance of reward heads, bf16 compute, logical axes, remat, config."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp import models as M
from safecomp.errors import ConfigError

ALL_HEADS = ("lm", "value", "severity", "helpfulness")
AXIS_NAMES = {"batch", "length", "embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "layers"}


def _abstract_outputs(cfg, ids, mask):
  model = M.Transformer(cfg)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)
  out = jax.eval_shape(lambda v: model.apply(v, ids, attention_mask=mask), variables)
  return variables["params"], out


@pytest.mark.parametrize("heads", [("lm",), ("value",), ("severity", "helpfulness"),
                                   ("helpfulness",), ALL_HEADS])
@pytest.mark.parametrize("tied", [False, True])
def test_each_head_subset_builds(heads, tied):
  cfg = M.tiny(heads=heads, tie_word_embeddings=tied)
  ids = jnp.zeros((3, 7), jnp.int32)
  params, out = _abstract_outputs(cfg, ids, jnp.ones((3, 7), bool))
  expected = {"hidden": (3, 7, 32)}
  if "lm" in heads:
    expected["logits"] = (3, 7, 64)
  if "value" in heads:
    expected["values"] = (3, 7)
  if "severity" in heads:
    expected["severity_logits"] = (3, 4)
  if "helpfulness" in heads:
    expected["helpfulness_logit"] = (3,)
  assert {k: v.shape for k, v in out.items()} == expected
  assert out.get("logits", jnp.zeros((), jnp.float32)).dtype == jnp.float32
  modules = set(params)
  assert ("lm_head" in modules) == ("lm" in heads and not tied)
  for head, module in (("value", "value_head"), ("severity", "severity_head"),
                       ("helpfulness", "helpfulness_head")):
    assert (module in modules) == (head in heads)


@pytest.fixture(scope="module")
def all_heads():
  cfg = M.tiny(heads=ALL_HEADS, initializer_range=0.2)
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  # Heads start near zero; give them unit weights so a wrong read would show.
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 8))
  for m in ("value_head", "severity_head", "helpfulness_head"):
    params[m] = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape), params[m])
  return cfg, params


def test_reward_heads_read_last_real_token(all_heads):
  cfg, params = all_heads
  row = [5, 6, 7, 8]
  ids = np.array([[0, 0, 0] + row,        # left padded, pad id 0
                  row + [0, 0, 0],        # right padded
                  [9, 9, 9] + row,        # left padded, other pad id
                  row + [33, 44, 55],     # right padded, junk in pad slots
                  [0, 0, 0, 5, 6, 7, 9]],  # different last token
                 np.int32)
  mask = np.array([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1],
                   [1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]], np.int32)
  out = M.forward(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
  sev, helpful = np.asarray(out["severity_logits"]), np.asarray(out["helpfulness_logit"])
  for i in (1, 2, 3):
    np.testing.assert_allclose(sev[i], sev[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(helpful[i], helpful[0], atol=1e-5, rtol=0)
  assert np.abs(sev[4] - sev[0]).max() > 1e-3
  assert abs(helpful[4] - helpful[0]) > 1e-3
  # Per-token values and logits of the real tokens do not depend on padding either.
  values, logits = np.asarray(out["values"]), np.asarray(out["logits"])
  for i, sl in ((1, slice(0, 4)), (2, slice(3, 7)), (3, slice(0, 4))):
    np.testing.assert_allclose(values[i, sl], values[0, 3:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[i, sl], logits[0, 3:], atol=1e-4, rtol=0)


def test_bf16_compute_close_to_fp32(all_heads):
  cfg, params = all_heads
  ids = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 1, 64)
  ref = M.forward(cfg, params, ids)
  out = M.forward(cfg.replace(dtype="bfloat16"), params, ids)
  assert out["hidden"].dtype == jnp.bfloat16
  assert out["logits"].dtype == jnp.float32 and out["values"].dtype == jnp.float32
  for key in ("logits", "values", "severity_logits", "helpfulness_logit"):
    a, b = np.asarray(out[key]), np.asarray(ref[key])
    assert np.all(np.isfinite(a))
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max() + 1e-3, key
  p_ref = jax.nn.softmax(ref["logits"])
  p_bf16 = jax.nn.softmax(out["logits"])
  assert float(jnp.abs(p_ref - p_bf16).max()) < 0.02
  assert not np.array_equal(np.asarray(out["logits"]), np.asarray(ref["logits"]))


def test_logical_axis_names_on_every_param():
  cfg = M.tiny(heads=ALL_HEADS, attention_bias=True, attention_out_bias=True, mlp_bias=True)
  variables = jax.eval_shape(M.Transformer(cfg).init, jax.random.PRNGKey(0),
                             jnp.zeros((1, 2), jnp.int32))
  specs = nn.get_partition_spec(variables)["params"]
  shapes = nn.meta.unbox(variables)["params"]
  flat_specs = dict(jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0])
  flat_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
  assert flat_specs.keys() == flat_shapes.keys()
  # embed, final norm, lm head, 3 scalar heads x2, per layer: 2 norms + 4 attn x2 + 3 mlp x2.
  assert len(flat_shapes) == 3 + 6 + 16
  for path, spec in flat_specs.items():
    name = jax.tree_util.keystr(path)
    assert isinstance(spec, jax.sharding.PartitionSpec), name
    assert len(spec) == len(flat_shapes[path].shape), name
    assert set(spec) - {None} <= AXIS_NAMES, name
    scalar_head = name.split("'")[1] in ("value_head", "severity_head", "helpfulness_head")
    if scalar_head and name.endswith("['kernel']"):
      assert tuple(spec) == ("embed", None), name  # scalar heads: output axis replicated
    elif scalar_head:
      assert tuple(spec) == (None,), name
    else:
      assert None not in spec, name
    assert (spec[0] == "layers") == name.startswith("['layers']"), name
  assert M.param_specs(cfg)["layers"]["attn"]["q"]["kernel"] == jax.sharding.PartitionSpec(
      "layers", "embed", "heads", "head_dim")


def _loss_and_grads(cfg, params, ids):
  def loss(p):
    out = M.Transformer(cfg).apply({"params": p}, ids)
    return jnp.mean(out["logits"] ** 2) + jnp.mean(out["values"] ** 2)
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_policy_keeps_values_and_grads(all_heads, policy):
  cfg, params = all_heads
  cfg = cfg.replace(heads=("lm", "value"))
  params = {k: v for k, v in params.items() if k not in ("severity_head", "helpfulness_head")}
  ids = jax.random.randint(jax.random.PRNGKey(3), (2, 6), 1, 64)
  ref_loss, ref_grads = _loss_and_grads(cfg, params, ids)
  loss, grads = _loss_and_grads(cfg.replace(remat=policy), params, ids)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  # Recomputation may reassociate float32 sums: compare at 1e-5 of each gradient's scale.
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max(), rtol=0)


def test_init_is_seeded(all_heads):
  cfg, _ = all_heads
  a = M.init_params(cfg, jax.random.PRNGKey(0))
  b = M.init_params(cfg, jax.random.PRNGKey(0))
  c = M.init_params(cfg, jax.random.PRNGKey(1))
  leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]
  assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
  embedding = lambda p: np.asarray(p["embed"]["embedding"])
  assert not np.array_equal(embedding(a), embedding(c))
  # Scalar heads start near zero: output std ~0.01 on unit-RMS hidden states.
  assert float(jnp.abs(a["value_head"]["kernel"]).max()) < 0.01


def test_config_hashable_static_and_validated():
  cfg = M.tiny(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
  assert hash(cfg) == hash(M.tiny(rope_scaling=dict(cfg.rope_scaling)))
  f = jax.jit(lambda c, x: x * c.num_layers, static_argnums=0)
  assert int(f(cfg, jnp.int32(3))) == 6
  assert cfg.replace(num_layers=3).num_layers == 3 and cfg.num_layers == 2
  with pytest.raises(ConfigError, match="unknown model config keys"):
    cfg.replace(num_layer=3)
  with pytest.raises(ConfigError, match="heads"):
    M.tiny(heads=("lm", "reward"))
  with pytest.raises(ConfigError, match="num_kv_heads"):
    M.tiny(num_heads=4, num_kv_heads=3)
  with pytest.raises(ConfigError, match="remat"):
    M.tiny(remat="sometimes")
  with pytest.raises(ConfigError, match="llama3"):
    M.tiny(rope_scaling={"rope_type": "llama3", "factor": 8.0})
  assert M.parse_heads("lm, value") == ("lm", "value")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma"])
def test_config_hf_round_trip(family):
  extra = {"qwen2": dict(attention_bias=True), "mistral": dict(sliding_window=16),
           "gemma": dict(scale_embeddings=True, norm_unit_offset=True, tie_word_embeddings=True,
                         hidden_act="gelu_pytorch_tanh", head_dim=16)}.get(family, {})
  cfg = M.tiny(family=family, eos_token_id=(2, 3), **extra)
  back = M.ModelConfig.from_hf(cfg.to_hf())
  assert back == cfg
  assert cfg.to_hf()["architectures"][0].lower().startswith(family)
  assert back.eos_ids == (2, 3)


def test_from_hf_rejects_unsupported():
  hf = M.tiny().to_hf()
  with pytest.raises(ConfigError, match="model_type"):
    M.ModelConfig.from_hf({**hf, "model_type": "gpt2"})
  with pytest.raises(ConfigError, match="rope type"):
    M.ModelConfig.from_hf({**hf, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
  with pytest.raises(ConfigError, match="vocab_size"):
    M.ModelConfig.from_hf({k: v for k, v in hf.items() if k != "vocab_size"})
  legacy = {**hf, "model_type": "gemma", "hidden_act": "gelu", "tie_word_embeddings": True}
  assert M.ModelConfig.from_hf(legacy).hidden_act == "gelu_pytorch_tanh"
