"""Sharded steps on a device mesh: equivalence with one device, real parameter splitting, helpers.

The 8-device checks run `tests/parallel_helpers/sharded_equivalence.py` in a fresh process with 8
simulated CPU devices (the device count is fixed when JAX creates its backend, and the rest of the
suite runs on one). Everything else runs here, on abstract meshes or a 1-device mesh.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from safecomp import models, parallel
from safecomp.errors import ConfigError
from safecomp.training import sft as sft_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "parallel_helpers"
TOL = 1e-5


def subprocess_env(**extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.update(extra)
  return env


@pytest.fixture(scope="module", autouse=True)
def eight_device_runs():
  """Starts the SFT and PPO 8-device processes at once; the tests here run while they work."""
  commands = [[str(HELPERS / "sharded_equivalence.py"), part] for part in ("sft", "ppo")]
  commands.append([str(HELPERS / "sharded_generation.py")])
  procs = [subprocess.Popen([sys.executable, *command], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for command in commands]
  yield procs
  for proc in procs:
    if proc.poll() is None:
      proc.kill()


@pytest.fixture(scope="module")
def eight_devices(eight_device_runs) -> dict:
  results = {}
  for proc in eight_device_runs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    results.update(json.loads(out.strip().splitlines()[-1]))
  return results


MESH_NAMES = ("8x1x1", "2x4x1", "2x2x2")


# ------------------------------------------------------------------------------------ mesh config
def test_mesh_shape_resolves_the_rest():
  assert parallel.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 16) == {
      "data": 4, "fsdp": 2, "tensor": 2}
  assert parallel.mesh_shape(ml_collections.ConfigDict({"fsdp": -1}), 8) == {
      "data": 1, "fsdp": 8, "tensor": 1}
  assert parallel.mesh_shape(None, 4) == {"data": 4, "fsdp": 1, "tensor": 1}
  assert parallel.parse_mesh("data=1,fsdp=8,tensor=1") == {"data": 1, "fsdp": 8, "tensor": 1}


@pytest.mark.parametrize("section,devices,key", [
    ({"data": -1, "fsdp": -1}, 8, "mesh.fsdp"),
    ({"data": 3, "fsdp": -1}, 8, "mesh.fsdp"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, 8, "'mesh'"),
    ({"data": 0}, 8, "mesh.data"),
    ({"data": 2, "fsdp": -1}, None, "mesh.fsdp"),
    ({"dp": 2}, 2, "'mesh'"),
])
def test_mesh_errors_name_the_key(section, devices, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    parallel.mesh_shape(section, devices)


def test_parse_mesh_rejects_unknown_axes():
  with pytest.raises(ConfigError, match="mesh"):
    parallel.parse_mesh("data=2,model=4")


def test_make_mesh_keeps_automatic_axis_types():
  mesh = parallel.make_mesh({"data": -1})
  assert mesh.axis_names == parallel.MESH_AXES
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_batch_size_check_names_the_key():
  mesh = parallel.abstract_mesh({"data": 2, "fsdp": 4, "tensor": 2})
  assert parallel.batch_divisor(mesh) == 8
  parallel.check_batch_size(16, mesh, "sft.batch_size")
  with pytest.raises(ConfigError, match="sft.batch_size"):
    parallel.check_batch_size(12, mesh, "sft.batch_size")


# ------------------------------------------------------------------------------------- shardings
def test_param_shardings_on_abstract_mesh():
  mesh = parallel.abstract_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  sh = parallel.param_shardings(models.tiny(), mesh)
  assert sh["embed"]["embedding"].spec == P("tensor", "fsdp")
  assert sh["layers"]["attn"]["q"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert sh["layers"]["attn"]["o"]["kernel"].spec == P(None, "tensor", None, "fsdp")
  assert sh["layers"]["mlp"]["gate"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert sh["final_norm"]["scale"].spec == P("fsdp")


def test_axes_that_do_not_divide_are_dropped():
  # One KV head (Gemma-style MQA) cannot be split over tensor=2; 4 query heads can.
  cfg = models.tiny(num_heads=4, num_kv_heads=1)
  mesh = parallel.abstract_mesh({"data": 1, "fsdp": 2, "tensor": 2})
  sh = parallel.param_shardings(cfg, mesh)
  assert sh["layers"]["attn"]["k"]["kernel"].spec == P(None, "fsdp")
  assert sh["layers"]["attn"]["q"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert parallel.fit_spec(P(("data", "fsdp")), (6,), parallel.abstract_mesh(
      {"data": 2, "fsdp": 4, "tensor": 1})) == P("data")


def test_state_shardings_follow_params_through_optimizer_wrappers():
  cfg = models.tiny()
  mesh = parallel.abstract_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  psh = parallel.param_shardings(cfg, mesh)
  shapes, _ = parallel.abstract_params(cfg)
  tx = parallel.accumulating_optimizer(
      optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), every_k=2)
  abstract = jax.eval_shape(
      lambda p: train_state.TrainState.create(apply_fn=None, params=p, tx=tx), shapes)
  ssh = parallel.state_shardings(abstract, psh, mesh)
  flat_params = jax.tree.leaves(psh)
  opt_leaves = jax.tree.leaves(ssh.opt_state)
  q_spec = psh["layers"]["attn"]["q"]["kernel"].spec
  # MultiSteps keeps an accumulator plus adam's mu and nu: three copies of each parameter sharding.
  assert sum(s.spec == q_spec for s in opt_leaves) == 3 * sum(s.spec == q_spec for s in flat_params)
  assert len(opt_leaves) >= 3 * len(flat_params)
  assert ssh.step.spec == P()
  # Parameters are split 8 ways (fsdp x tensor), except norms (fsdp only).
  total = sum(np.prod(x.shape) * 4 for x in jax.tree.leaves(shapes))
  assert parallel.shard_bytes(abstract.params, ssh.params) < total / 2


# ------------------------------------------------------------------------- steps on a 1-device mesh
def _sft_setup(batch_rows=8, length=12):
  cfg = models.tiny()
  model = models.Transformer(cfg)
  params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
  rng = np.random.default_rng(0)
  attention = np.ones((batch_rows, length), np.int32)
  attention[::2, -3:] = 0
  loss_mask = attention.copy()
  loss_mask[:, :4] = 0
  loss_mask[1, :] = 0  # a row without targets
  batch = {"tokens": rng.integers(3, 64, (batch_rows, length)).astype(np.int32),
           "attention_mask": attention, "loss_mask": loss_mask}
  tx = optax.adamw(1e-3)
  create = lambda p: train_state.TrainState.create(apply_fn=None, params=p, tx=tx)
  return cfg, model, params, batch, create


def test_split_microbatches_is_strided():
  x = np.arange(8)
  micro = parallel.split_microbatches({"x": x}, 2)["x"]
  np.testing.assert_array_equal(micro, [[0, 2, 4, 6], [1, 3, 5, 7]])
  with pytest.raises(ValueError, match="micro-batches"):
    parallel.split_microbatches({"x": x}, 3)


def test_shard_step_with_accumulation_matches_plain_step():
  """A 1-device mesh, 4 token-weighted micro-batches (one without targets) vs one plain pass."""
  cfg, model, params, batch, create = _sft_setup()
  plain = jax.jit(parallel.unjit(sft_lib.make_sft_step(model)))
  ref_state, ref_metrics = plain(create(params), batch)
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  state, shardings = parallel.init_sharded_state(
      create, params, parallel.param_shardings(cfg, mesh), mesh)
  batch_sh = parallel.batch_shardings(batch, mesh)
  assert parallel.host_rows(batch_sh["tokens"], 8).tolist() == list(range(8))
  step = parallel.shard_step(sft_lib.sft_step_fn(model, microbatches=4), mesh,
                             parallel.DEFAULT_RULES, shardings, batch_sh)
  new_state, metrics = step(state, batch)
  for key in ("loss", "token_accuracy", "target_tokens", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
  # Four partial sums round differently from one: parameters agree to float32 accumulation noise.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=TOL),
               jax.device_get(new_state.params), jax.device_get(ref_state.params))
  assert state.params["embed"]["embedding"].is_deleted()  # donated
  target = parallel.abstract_like(new_state.params)  # e.g. a checkpoint restore target
  assert target["embed"]["embedding"].sharding == new_state.params["embed"]["embedding"].sharding
  # Lowered under the rules, the model's logical constraints become sharding annotations.
  text = step.lower(new_state, batch).as_text()
  assert "sharding" in text


def test_abstract_mesh_step_lowers_but_does_not_run():
  cfg, model, _, batch, create = _sft_setup()
  mesh = parallel.abstract_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shapes, _ = parallel.abstract_params(cfg)
  abstract = jax.eval_shape(create, shapes)
  ssh = parallel.state_shardings(abstract, parallel.param_shardings(cfg, mesh), mesh)
  bsh = parallel.batch_shardings(batch, mesh)
  step = parallel.shard_step(sft_lib.sft_step_fn(model, microbatches=2), mesh,
                             parallel.DEFAULT_RULES, ssh, bsh)
  lowered = step.lower(parallel.with_shardings(abstract, ssh),
                       parallel.with_shardings(jax.tree.map(
                           lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch), bsh),
                       platform="tpu")
  text = lowered.as_text()
  assert '"data"=2, "fsdp"=2, "tensor"=2' in text
  assert '{"fsdp"}, {"tensor"}' in text  # q/k/v kernels split over fsdp and tensor
  with pytest.raises(TypeError, match="AbstractMesh"):
    step(abstract, batch)


def test_batch_shardings_replicate_keys_and_scalars():
  mesh = parallel.abstract_mesh({"data": 2, "fsdp": 1, "tensor": 1})
  sh = parallel.batch_shardings({"x": jnp.zeros((4, 3)), "rng": jax.random.key(0),
                                 "step": np.int32(3)}, mesh)
  assert sh["x"].spec == P(("data", "fsdp"))
  assert sh["rng"].spec == P() and sh["step"].spec == P()


# ------------------------------------------------------------------------------------- multi-host
def test_distributed_is_off_unless_asked():
  assert not parallel.maybe_initialize_distributed(ml_collections.ConfigDict(
      {"distributed": {"initialize": False}}))
  assert not parallel.maybe_initialize_distributed(ml_collections.ConfigDict({"seed": 0}))


@pytest.mark.parametrize("section,key", [
    ({"initialize": True, "coordinator_address": "127.0.0.1:1", "num_processes": -1,
      "process_id": -1}, "distributed.coordinator_address"),
    ({"initialize": True, "num_processes": 0}, "distributed.num_processes"),
    ({"initialize": True, "num_processes": 2, "process_id": 2}, "distributed.process_id"),
    ({"initialize": True, "cpu_collectives": "nccl"}, "distributed.cpu_collectives"),
])
def test_distributed_config_errors_name_the_key(section, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    parallel.maybe_initialize_distributed(ml_collections.ConfigDict({"distributed": section}))


# ---------------------------------- 8 simulated devices (last: their processes ran meanwhile)
def test_eight_devices_are_simulated(eight_devices):
  assert eight_devices["devices"] == 8


@pytest.mark.parametrize("mesh", MESH_NAMES)
def test_sft_step_matches_one_device(eight_devices, mesh):
  sft = eight_devices["sft"]
  assert sft[f"{mesh}/loss"] == pytest.approx(sft["loss_single"], abs=TOL)
  assert sft[f"{mesh}/param_diff"] < TOL
  assert not sft[f"{mesh}/nonfinite"]
  assert sft[f"{mesh}/microbatches"] == (2 if mesh == "2x2x2" else 1)


@pytest.mark.parametrize("mesh", MESH_NAMES)
def test_ppo_update_matches_one_device(eight_devices, mesh):
  ppo = eight_devices["ppo"]
  assert ppo[f"{mesh}/loss"] == pytest.approx(ppo["loss_single"], abs=TOL)
  assert ppo[f"{mesh}/param_diff"] < TOL
  assert ppo[f"{mesh}/value_loss_diff"] < TOL
  assert ppo[f"{mesh}/kl_ref_diff"] < TOL
  assert ppo[f"{mesh}/state_donated"]


def test_parameters_are_split(eight_devices):
  sft, ppo = eight_devices["sft"], eight_devices["ppo"]
  # tiny(): vocab 64, hidden 32, 4 heads of 8, 2 layers (stacked), intermediate 64.
  expected = {
      "8x1x1": {"embed/embedding": [64, 32], "layers/attn/q/kernel": [2, 32, 4, 8],
                "layers/mlp/down/kernel": [2, 64, 32]},
      "2x4x1": {"embed/embedding": [64, 8], "layers/attn/q/kernel": [2, 8, 4, 8],
                "layers/mlp/down/kernel": [2, 64, 8]},
      "2x2x2": {"embed/embedding": [32, 16], "layers/attn/q/kernel": [2, 16, 2, 8],
                "layers/mlp/down/kernel": [2, 32, 16]},
  }
  for mesh, shapes in expected.items():
    for path, shape in shapes.items():
      assert sft[f"{mesh}/shard/{path}"] == shape, (mesh, path)
    assert sft[f"{mesh}/spec/layers/attn/q/kernel"] == "P(None, 'fsdp', 'tensor')"
    assert sft[f"{mesh}/devices_per_param"] == 8
    assert sft[f"{mesh}/opt_mu_spec_matches"]
    assert ppo[f"{mesh}/shard/q"] == shapes["layers/attn/q/kernel"]
  # The batch is split over data x fsdp.
  assert sft["8x1x1/batch_shard"] == [2, 24]
  assert sft["2x4x1/batch_shard"] == [2, 24]
  assert sft["2x2x2/batch_shard"] == [4, 24]


# ------------------------------------------------------------------------------------ generation
def test_sharded_generation_matches_one_device_token_for_token(eight_devices):
  """The eval stage, the eval CLI and the reward model's policy samples generate with the policy split
  over the training mesh and the batch over its data axes: greedy answers equal one device's."""
  out = eight_devices["generation"]
  assert out["tokens"] > 100
  for name in ("8x1x1", "2x2x2", "1x4x2"):
    assert out[name]["same"], name
  assert out["1x4x2"]["embedding_shard"][1] < 64 and out["2x2x2"]["embedding_shard"][0] < out["8x1x1"]["embedding_shard"][0]
