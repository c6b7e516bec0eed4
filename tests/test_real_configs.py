"""Configs for real runs: public architectures, demo-compatible keys, steps that lower and compile.

Nothing is downloaded and no weights are allocated. In this process the SFT step and the PPO update
of each config are lowered for its target platform against an AbstractMesh of the right shape; a
separate process with 64 simulated CPU devices compiles each SFT step and reads its memory analysis.
The LoRA variants (adapters on a frozen bfloat16 base) go through the same checks, and change nothing
of their base config but what adapters need.
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import pytest

from safecomp import memory, models, parallel
from safecomp.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]

# Public config.json values (google/gemma-2b, meta-llama/Meta-Llama-3-8B, Qwen/Qwen2-0.5B).
CONFIGS = {
    "configs/gemma_2b_v4_8.py": dict(
        platform="tpu", accelerator="v4", mesh={"data": 1, "fsdp": 4, "tensor": 1},
        params=2.506e9,
        arch=dict(family="gemma", vocab_size=256000, hidden_size=2048, num_layers=18, num_heads=8,
                  num_kv_heads=1, head_dim=256, intermediate_size=16384,
                  max_position_embeddings=8192, rope_theta=10000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, hidden_act="gelu_pytorch_tanh",
                  scale_embeddings=True, norm_unit_offset=True)),
    "configs/llama3_8b_v5e_64.py": dict(
        platform="tpu", accelerator="v5e", mesh={"data": 1, "fsdp": 16, "tensor": 4},
        params=8.030e9,
        arch=dict(family="llama", vocab_size=128256, hidden_size=4096, num_layers=32,
                  num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336,
                  max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, hidden_act="silu")),
    "configs/qwen2_0_5b_gpu.py": dict(
        platform="cuda", accelerator="h100", mesh={"data": 1, "fsdp": 1, "tensor": 1},
        params=0.494e9,
        arch=dict(family="qwen2", vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                  num_kv_heads=2, head_dim=64, intermediate_size=4864,
                  max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, attention_bias=True, attention_out_bias=False,
                  sliding_window=None)),
}
# LoRA variants: each loads a config above (`base`) and changes only what adapters on a bfloat16 base need.
LORA_CONFIGS = {
    "configs/gemma_2b_lora_v4_8.py": dict(base="configs/gemma_2b_v4_8.py", mesh={"data": 1, "fsdp": 4, "tensor": 1}),
    "configs/llama3_8b_lora_gpu.py": dict(base="configs/llama3_8b_v5e_64.py", platform="cuda", accelerator="h100",
                                          mesh={"data": 1, "fsdp": 1, "tensor": 1}),
    "configs/qwen2_0_5b_lora_gpu.py": dict(base="configs/qwen2_0_5b_gpu.py", mesh={"data": 1, "fsdp": 1, "tensor": 1}),
}
# Compiled on simulated devices: the full fine-tuning configs (the LoRA variants' steps are the same
# programs with adapters; they are lowered and planned below, which keeps the suite's time down).
COMPILED = tuple(CONFIGS)
for _path, _spec in LORA_CONFIGS.items():
  CONFIGS[_path] = {**CONFIGS[_spec["base"]], **_spec, "lora": True}
# The keys a LoRA variant may change from its base config.
LORA_KEYS = ("lora.", "model.param_dtype", "sft.learning_rate", "rm.learning_rate", "ppo.learning_rate",
             "sft.microbatches", "rm.microbatches", "ppo.prompts_per_iteration",
             "ppo.score_chunk_rows", "ppo.num_minibatches", "eval.batch_size", "mesh.", "distributed.initialize")


@pytest.fixture(scope="module")
def compile_process():
  """Starts compiling every SFT step in a 64-device process while the lowering tests run."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.Popen(
      [sys.executable, str(REPO / "tests" / "parallel_helpers" / "compile_real_configs.py"),
       *COMPILED], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  yield proc
  if proc.poll() is None:
    proc.kill()


@pytest.fixture(scope="module")
def compiled(compile_process) -> dict:
  out, err = compile_process.communicate(timeout=400)
  assert compile_process.returncode == 0, err[-4000:]
  return json.loads(out.strip().splitlines()[-1])


def _keys(config: ml_collections.ConfigDict, prefix=""):
  out = set()
  for key, value in config.items():
    out.add(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out |= _keys(value, f"{prefix}{key}.")
  return out


def _flat(config: ml_collections.ConfigDict, prefix="") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


@pytest.mark.parametrize("path", list(CONFIGS))
def test_architecture_is_the_public_one(path, compile_process):
  del compile_process  # started here so that it overlaps the tests below
  config = load_config(REPO / path)
  cfg = models.model_config_from(config)
  for key, value in CONFIGS[path]["arch"].items():
    assert getattr(cfg, key) == value, key
  assert memory.count_params(dataclasses.replace(cfg, lora_rank=0)) == pytest.approx(CONFIGS[path]["params"],
                                                                                      rel=1e-3)
  lora = CONFIGS[path].get("lora", False)
  # Full fine-tuning keeps float32 master weights; under adapters the frozen base is stored in bfloat16.
  assert cfg.dtype == "bfloat16" and cfg.param_dtype == ("bfloat16" if lora else "float32")
  assert bool(cfg.lora_rank) == lora
  assert config.model.init_from  # points at the user's local checkpoint directory
  assert {axis: config.mesh[axis] for axis in parallel.MESH_AXES} == CONFIGS[path]["mesh"]
  assert parallel.rules_from_config(config) == parallel.DEFAULT_RULES


@pytest.mark.parametrize("path", list(CONFIGS))
def test_same_sections_and_keys_as_demo(path):
  demo = load_config(REPO / "configs" / "demo.py")
  config = load_config(REPO / path)
  missing = _keys(demo) - _keys(config)
  assert not missing, missing
  new = {k.split(".")[0] if k.startswith(("mesh", "distributed")) else k
         for k in _keys(config) - _keys(demo)}
  assert new <= {"mesh", "distributed", "model.vocab_size", "model.rope_theta",
                 "model.rms_norm_eps", "model.tie_word_embeddings", "model.param_dtype",
                 "sft.microbatches", "rm.microbatches"}, new


@pytest.mark.parametrize("path", list(CONFIGS))
@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_steps_lower_for_the_target_mesh_and_fit(path, stage):
  spec = CONFIGS[path]
  config = load_config(REPO / path)
  low = memory.lower_stage(config, spec["mesh"], stage=stage, platform=spec["platform"])
  text = low.lowered.as_text()
  sizes = ", ".join(f'"{a}"={spec["mesh"][a]}' for a in parallel.MESH_AXES)
  assert f"sdy.mesh @mesh = <[{sizes}]>" in text
  n = spec["mesh"]["fsdp"] * spec["mesh"]["tensor"]
  state = low.abstract_state
  # The model's weights: all trained, or under adapters the frozen base (the adapters are small, and
  # those whose axes map to no mesh axis but the rank's stay whole).
  weights, weight_shardings = ((state.frozen, low.state_shardings.frozen) if spec.get("lora")
                               else (state.params, low.state_shardings.params))
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(weights))
  per_device = parallel.shard_bytes(weights, weight_shardings)
  # Parameters are split over fsdp x tensor (a few small or indivisible ones stay whole).
  assert per_device <= total / n * 1.05 + 2 ** 20
  if n > 1:
    assert '{"fsdp"}' in text
  result = memory.summarize(config, low)
  assert result["lowered_for"] == spec["platform"]
  assert result["fits"][spec["accelerator"]]["fits"], result["total_bytes"]
  if stage == "ppo":
    assert result["kv_cache_bytes"] > 0 and result["frozen_bytes"] > 0
  if spec.get("lora"):
    # Only the adapters and fresh heads train: AdamW's two moments of those, the base held frozen once.
    assert result["lora"]["rank"] == config.lora.rank > 0
    assert result["optimizer_bytes"] == pytest.approx(2 * result["params_bytes"], rel=0.01)
    assert result["frozen_parts"]["base"] == per_device > result["params_bytes"]


@pytest.mark.parametrize("path", list(LORA_CONFIGS))
def test_lora_configs_change_only_what_adapters_need(path):
  config, base = _flat(load_config(REPO / path)), _flat(load_config(REPO / LORA_CONFIGS[path]["base"]))
  assert config.keys() == base.keys()
  changed = {k for k in config if config[k] != base[k]}
  assert {k for k in changed if not k.startswith(LORA_KEYS)} == set(), changed
  assert {"lora.rank", "model.param_dtype"} <= changed


@pytest.mark.parametrize("path", COMPILED)
def test_compiled_sft_step_fits_the_target(path, compiled):
  spec = CONFIGS[path]
  result = compiled[path]
  assert result["lowered_for"] == "cpu" and "compiled" in result
  assert result["devices"] == spec["mesh"]["data"] * spec["mesh"]["fsdp"] * spec["mesh"]["tensor"]
  assert result["compiled"]["temp_bytes"] > 0
  assert result["fits"][spec["accelerator"]]["fits"], result["total_bytes"]
