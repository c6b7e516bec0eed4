"""Qwen2-0.5B with LoRA adapters on one GPU (an 80 GB H100 or A100).

    python -m safecomp.train --config configs/qwen2_0_5b_lora_gpu.py --workdir runs/qwen2_0_5b_lora \
        --config.model.init_from=/data/Qwen2-0.5B --config.judge.checkpoint=/data/Qwen2-7B-Instruct

configs/qwen2_0_5b_gpu.py (same model, task, judge, batches and mesh 1 x 1 x 1) with rank-16 adapters
(alpha 32) on every attention and MLP projection; the base stays frozen in bfloat16 (the adapters and
their AdamW moments stay float32), so the optimizer state is the adapters' alone, and PPO holds the
base once under the policy, its separate critic, the reference (the base with the SFT adapters) and
the reward model (its adapters and heads on the same base). Check it before renting the GPU:

    python -m safecomp.memory --config configs/qwen2_0_5b_lora_gpu.py --stage ppo --accelerator h100
"""
import pathlib

import ml_collections

from safecomp.config import load_module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  real_task = load_module(pathlib.Path(__file__).with_name("real_task.py"), "safecomp_configs_real_task")
  return real_task.with_adapters("qwen2_0_5b_gpu.py")
