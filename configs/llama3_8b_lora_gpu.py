"""Llama-3-8B with LoRA adapters on ONE 80 GB GPU (H100 / A100): SFT -> reward model -> PPO -> eval.

    python -m safecomp.train --config configs/llama3_8b_lora_gpu.py --workdir runs/llama3_8b_lora \
        --config.model.init_from=/data/Meta-Llama-3-8B --config.judge.checkpoint=/data/Meta-Llama-3-8B-Instruct

configs/llama3_8b_v5e_64.py (same model, task, judge and schedule) with what one GPU needs: rank-16
adapters (alpha 32) on every attention and MLP projection train while the base stays frozen, stored
in bfloat16 (16 GB; the adapters and their AdamW moments stay float32), so the optimizer state is
the adapters' alone. PPO holds that base once under the policy, its separate critic, the reference
(the base with the SFT adapters) and the reward model scoring the rollout (its adapters and heads on
the same base), so about 16 GiB stay resident. Mesh 1 x 1 x 1; 16 rollouts of
1024 new tokens per iteration (the v5e-64 config has 256), scored 4 rows at a time and updated 2 rows
at a time (8 minibatches): the PPO step then fits by the analytic estimate and by XLA:CPU's compiled
buffers (32 rollouts fit by the estimate only). SFT and RM keep 128 rows per step, accumulated over 32
micro-batches of 4 rows; evaluation samples 64 prompts at a time. Check it before renting the GPU
(compiles the step on a simulated CPU device; --no-compile estimates):

    python -m safecomp.memory --config configs/llama3_8b_lora_gpu.py --stage ppo --accelerator h100
"""
import pathlib

import ml_collections

from safecomp.config import load_module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  real_task = load_module(pathlib.Path(__file__).with_name("real_task.py"), "safecomp_configs_real_task")
  c = real_task.with_adapters("llama3_8b_v5e_64.py")

  c.sft.microbatches = 32  # 128 rows as 32 x 4
  c.rm.microbatches = 32
  c.ppo.update(prompts_per_iteration=16, score_chunk_rows=4, num_minibatches=8)
  c.eval.batch_size = 64

  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.distributed.initialize = False  # one process
  return c
