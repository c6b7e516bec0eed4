"""`python -m safecomp.memory`: per-device memory plans from abstract shapes and compiled steps."""
import json
import os
import pathlib
import subprocess
import sys

from flax import traverse_util
import jax
import pytest

from safecomp import memory, models, parallel
from safecomp.config import load_config
from safecomp.models import lora

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = "configs/demo.py:size=tiny"
VOCAB = 128


@pytest.fixture(scope="module")
def demo():
  return load_config(f"{REPO}/{DEMO}")


def test_cli_compiles_on_simulated_devices(demo):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, "-m", "safecomp.memory", "--config", DEMO, "--vocab_size", str(VOCAB),
       "--mesh", "data=2,fsdp=2,tensor=2", "--json"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  assert result["devices"] == 8 and result["lowered_for"] == "cpu"
  assert "compiled" in result and result["activation_bytes"] == result["compiled"]["temp_bytes"]
  assert result["activation_bytes"] > 0
  # Parameters, optimizer state and batch counted from shapes agree with this process's count.
  here = memory.plan(demo, {"data": 2, "fsdp": 2, "tensor": 2}, compile_step=False,
                     vocab_size=VOCAB)
  for key in ("params_bytes", "optimizer_bytes", "batch_bytes"):
    assert result[key] == here[key], key
  # The compiled arguments are the state and the batch of one device.
  assert result["compiled"]["argument_bytes"] >= result["params_bytes"] + result["batch_bytes"]
  assert all(fit["fits"] for fit in result["fits"].values())


def test_plan_counts_sharded_bytes(demo):
  sizes = {"data": 1, "fsdp": 4, "tensor": 2}
  result = memory.plan(demo, sizes, stage="ppo", compile_step=False, vocab_size=VOCAB)
  assert demo.ppo.critic == "separate" and result["critic"] == "separate"
  lm = models.model_config_from(demo, ("lm",), vocab_size=VOCAB)
  value = models.model_config_from(demo, ("value",), vocab_size=VOCAB)
  trained = memory.count_params(lm) + memory.count_params(value)
  total = trained * 4
  assert result["model"]["params"] == memory.count_params(lm)
  assert result["trained_params"] == trained  # the policy and the critic's own trunk
  # Every parameter is split at least over fsdp (4); matrices also over tensor where it divides.
  assert total / 8 <= result["params_bytes"] <= total / 4 + 4096
  # AdamW keeps two float32 moments per parameter (plus a step count).
  assert result["optimizer_bytes"] == pytest.approx(2 * result["params_bytes"], rel=0.01)
  assert result["frozen_bytes"] > 0  # reference policy + reward model
  p = demo.ppo
  width = demo.max_prompt_len + p.max_new_tokens
  kv = 2 * lm.num_layers * p.prompts_per_iteration * width * lm.num_kv_heads * lm.head_dim * 4
  assert result["kv_cache_bytes"] == kv // 4 // min(2, lm.num_kv_heads)  # batch / 4, kv / 1
  step = result["programs"]["rollout+update"]  # rollout, reward model and update: one program
  assert step["activation_bytes"] >= result["kv_cache_bytes"]
  assert result["total_bytes"] == step["total_bytes"] == (
      result["params_bytes"] + result["optimizer_bytes"] + result["frozen_bytes"] + result["batch_bytes"] +
      result["activation_bytes"])
  assert result["activation_source"] == "estimate"


def test_remat_lowers_the_activation_estimate():
  kw = dict(local_batch=4, length=256, tensor=1)
  full = memory.estimate_activation_bytes(models.tiny(remat="full"), **kw)
  dots = memory.estimate_activation_bytes(models.tiny(remat="dots_saveable"), **kw)
  none = memory.estimate_activation_bytes(models.tiny(remat="none"), **kw)
  assert full < dots < none


def test_accelerator_verdict_sets_the_exit_code(capsys):
  code = memory.main(["--config", "configs/qwen2_0_5b_gpu.py", "--accelerator", "v5e",
                      "--no-compile"])
  out = capsys.readouterr().out
  assert code == 3 and "v5e" in out and "does NOT fit" in out
  code = memory.main(["--config", "configs/qwen2_0_5b_gpu.py", "--accelerator", "h100",
                      "--no-compile"])
  out = capsys.readouterr().out
  assert code == 0 and "h100" in out and "fits" in out and "KV cache" not in out


def run_cli(monkeypatch, args):
  """`memory.main` as the command line runs it (config overrides are read from sys.argv)."""
  monkeypatch.setattr(sys, "argv", ["safecomp.memory", *args])
  return memory.main(args)


def test_errors_name_the_key(capsys, monkeypatch):
  code = memory.main(["--config", DEMO, "--vocab_size", "64", "--mesh", "data=3", "--no-compile"])
  assert code == 1 and "sft.batch_size" in capsys.readouterr().err
  code = memory.main(["--config", DEMO, "--mesh", "data=1", "--no-compile"])
  assert code == 1 and "model.vocab_size" in capsys.readouterr().err
  code = memory.main(["--config", DEMO, "--vocab_size", "64", "--mesh", "fsdp=-1", "--no-compile"])
  assert code == 1 and "mesh.fsdp" in capsys.readouterr().err
  code = run_cli(monkeypatch, ["--config", DEMO, "--vocab_size", "64", "--no-compile",
                               "--config.sft.batch_sizes=3"])
  assert code == 1 and "batch_sizes" in capsys.readouterr().err


def test_overrides_reach_the_plan(capsys, monkeypatch):
  code = run_cli(monkeypatch, ["--config", "configs/qwen2_0_5b_gpu.py", "--no-compile", "--json",
                               "--config.model.remat=full", "--stage", "rm"])
  result = json.loads(capsys.readouterr().out)
  assert code == 0 and result["model"]["remat"] == "full" and result["stage"] == "rm"


# ------------------------------------------------------------------------------- LoRA adapters
ONE = {"data": 1, "fsdp": 1, "tensor": 1}  # one device: per-device bytes are whole trees


def _bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def lora_demo():
  return load_config(f"{REPO}/{DEMO}", ["--config.lora.rank=4"])


def test_lora_sft_plan_trains_the_adapters_only(demo, lora_demo):
  full = memory.plan(demo, ONE, compile_step=False, vocab_size=VOCAB)
  result = memory.plan(lora_demo, ONE, compile_step=False, vocab_size=VOCAB)
  cfg = models.model_config_from(lora_demo, ("lm",), vocab_size=VOCAB)
  frozen, trainable = lora.split(parallel.abstract_params(cfg)[0])
  assert jax.tree.leaves(trainable) and all(lora.is_adapter(k) for k in traverse_util.flatten_dict(trainable))
  # Parameters and AdamW's two moments (+ a step count) are the adapters'; the base is frozen, held once.
  assert result["params_bytes"] == _bytes(trainable)
  assert result["optimizer_bytes"] == pytest.approx(2 * _bytes(trainable), abs=64)
  assert result["frozen_bytes"] == result["frozen_parts"]["base"] == _bytes(frozen)
  assert result["optimizer_bytes"] < full["optimizer_bytes"] / 3
  assert full["frozen_bytes"] == 0 and not full["frozen_parts"] and "lora" not in full
  assert result["lora"] == {"rank": 4, "alpha": lora_demo.lora.alpha, "targets": "q,k,v,o,gate,up,down",
                            "base_quantization": "none",
                            "trainable_params": memory.tree_size(trainable),
                            "frozen_params": memory.tree_size(frozen)}
  # Gradients (in the estimate) are the adapters' too: the activations estimate is the same otherwise.
  assert (full["activation_estimate_bytes"] - result["activation_estimate_bytes"]
          == full["params_bytes"] - result["params_bytes"])
  total = result["params_bytes"] + result["optimizer_bytes"] + result["frozen_bytes"]
  assert result["total_bytes"] == total + result["batch_bytes"] + result["activation_bytes"]


def test_lora_rm_plan_trains_adapters_and_heads(lora_demo):
  result = memory.plan(lora_demo, ONE, stage="rm", compile_step=False, vocab_size=VOCAB)
  cfg = models.model_config_from(lora_demo, ("severity", "helpfulness"), vocab_size=VOCAB)
  frozen, trainable = lora.split(parallel.abstract_params(cfg)[0])
  assert {"severity_head", "helpfulness_head"} <= set(trainable)
  assert result["params_bytes"] == _bytes(trainable) and result["frozen_bytes"] == _bytes(frozen)


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_lora_ppo_plan_holds_the_base_once(critic):
  config = load_config(f"{REPO}/{DEMO}", ["--config.lora.rank=4", f"--config.ppo.critic={critic}"])
  result = memory.plan(config, ONE, stage="ppo", compile_step=False, vocab_size=VOCAB)
  heads = ("lm",) if critic == "separate" else ("lm", "value")
  policy = parallel.abstract_params(models.model_config_from(config, heads, vocab_size=VOCAB))[0]
  base, policy_trainable = lora.split(policy)
  rm = parallel.abstract_params(models.model_config_from(config, ("severity", "helpfulness"), vocab_size=VOCAB))[0]
  trained = _bytes(policy_trainable)
  if critic == "separate":  # the critic's adapters and value head train on the same base
    critic_params = parallel.abstract_params(models.model_config_from(config, ("value",), vocab_size=VOCAB))[0]
    trained += _bytes(lora.split(critic_params)[1])
  assert result["params_bytes"] == trained
  assert result["optimizer_bytes"] == pytest.approx(2 * trained, abs=64)
  # Frozen: the policy's base once (not again for the critic, the reference or the reward model), the
  # reference's SFT adapters (the policy's trainable part: a shared critic's value head comes along),
  # and the reward model's adapters and heads (it scores on the same base).
  assert result["frozen_parts"] == {"base": _bytes(base), "reference": _bytes(policy_trainable),
                                    "reward_model": _bytes(lora.split(rm)[1])}
  assert result["frozen_bytes"] == sum(result["frozen_parts"].values())
  assert result["lora"]["frozen_params"] == memory.tree_size(base)
  assert result["lora"]["trainable_params"] == result["trained_params"]
  assert result["total_bytes"] == (result["params_bytes"] + result["optimizer_bytes"] + result["frozen_bytes"]
                                   + result["batch_bytes"] + result["activation_bytes"])
  full_config = load_config(f"{REPO}/{DEMO}", [f"--config.ppo.critic={critic}"])
  full = memory.plan(full_config, ONE, stage="ppo", compile_step=False, vocab_size=VOCAB)
  # Without adapters nothing is frozen in the state: the reference is a whole copy of the policy.
  full_policy = parallel.abstract_params(models.model_config_from(full_config, heads, vocab_size=VOCAB))[0]
  assert set(full["frozen_parts"]) == {"reference", "reward_model"}
  assert full["frozen_parts"]["reference"] == _bytes(full_policy) == _bytes(lora.adapters_off(policy))
  assert result["optimizer_bytes"] < full["optimizer_bytes"] / 3


def test_bfloat16_base_halves_the_frozen_bytes():
  f32, bf16 = (memory.plan(load_config(f"{REPO}/{DEMO}", ["--config.lora.rank=4", f"--config.model.param_dtype={d}"]),
                           ONE, compile_step=False, vocab_size=VOCAB) for d in ("float32", "bfloat16"))
  assert bf16["frozen_bytes"] * 2 == f32["frozen_bytes"] > 0
  assert bf16["params_bytes"] == f32["params_bytes"]  # adapters stay float32
  assert bf16["model"]["param_dtype"] == "bfloat16"


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_quantised_bases_shrink_the_frozen_bytes(stage):
  plans = {q: memory.plan(load_config(f"{REPO}/{DEMO}", ["--config.lora.rank=4", f"--config.lora.base_quantization={q}"]),
                          ONE, stage=stage, compile_step=False, vocab_size=VOCAB) for q in ("none", "int8", "nf4")}
  base = {q: plan["frozen_parts"]["base"] for q, plan in plans.items()}
  assert base["nf4"] < base["int8"] < base["none"]
  assert plans["nf4"]["lora"]["base_quantization"] == "nf4"
  assert plans["nf4"]["lora"]["frozen_params"] == plans["none"]["lora"]["frozen_params"]  # same weights, fewer bytes


def test_lora_json_and_text(capsys, monkeypatch):
  code = run_cli(monkeypatch, ["--config", DEMO, "--vocab_size", str(VOCAB), "--mesh", "data=1", "--no-compile",
                               "--json", "--stage", "ppo", "--config.lora.rank=4"])
  result = json.loads(capsys.readouterr().out)
  assert code == 0 and result["lora"]["rank"] == 4 and result["lora"]["trainable_params"] > 0
  assert result["lora"]["frozen_params"] > result["lora"]["trainable_params"]
  assert set(result["frozen_parts"]) == {"base", "reference", "reward_model"}
  text = memory.format_plan(result)
  assert sum(line.startswith("lora: rank 4") for line in text.splitlines()) == 1
  assert "frozen base (once)" in text and "reference (SFT adapters)" in text
  code = run_cli(monkeypatch, ["--config", DEMO, "--vocab_size", str(VOCAB), "--mesh", "data=1", "--no-compile"])
  assert code == 0 and "lora:" not in capsys.readouterr().out
