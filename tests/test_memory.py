"""`python -m safecomp.memory`: per-device memory plans from abstract shapes and compiled steps."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from safecomp import memory, models, parallel
from safecomp.config import load_config

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
