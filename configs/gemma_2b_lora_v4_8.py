"""Gemma-2B with LoRA adapters on a Cloud TPU v4-8 (4 chips, 32 GiB HBM each), with room to spare.

    python -m safecomp.train --config configs/gemma_2b_lora_v4_8.py --workdir gs://bucket/safecomp/gemma_2b_lora \
        --config.model.init_from=/data/gemma-2b --config.judge.checkpoint=/data/gemma-7b-it

configs/gemma_2b_v4_8.py (same model, task, judge, mesh and batches) with rank-16 adapters (alpha 32)
on every attention and MLP projection; the base stays frozen in bfloat16 (the adapters and their AdamW
moments stay float32), so the optimizer state is the adapters' alone, and PPO holds the base once under
the policy, its separate critic, the reference (the base with the SFT adapters) and the reward model
(its adapters and heads on the same base). The planner puts the PPO step at about a fifth of a chip's
32 GiB by its estimate and under 60% by XLA:CPU's compiled buffers. Check it before renting the slice:

    python -m safecomp.memory --config configs/gemma_2b_lora_v4_8.py --stage ppo --accelerator v4
"""
import pathlib

import ml_collections

from safecomp.config import load_module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  real_task = load_module(pathlib.Path(__file__).with_name("real_task.py"), "safecomp_configs_real_task")
  return real_task.with_adapters("gemma_2b_v4_8.py")
