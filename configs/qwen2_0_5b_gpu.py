"""Qwen2-0.5B on one GPU (an 80 GB H100 or A100): SFT -> reward model -> PPO -> eval.

    python -m safecomp.train --config configs/qwen2_0_5b_gpu.py \
        --config.model.init_from=/data/Qwen2-0.5B --workdir runs/qwen2_0_5b

`model.init_from` must name a local Hugging Face directory of Qwen/Qwen2-0.5B; the architecture
below repeats its public config.json so the run can be planned
(`python -m safecomp.memory --config configs/qwen2_0_5b_gpu.py --accelerator h100`) without it.
One device (mesh 1 x 1 x 1); bfloat16 compute with float32 master weights; the large vocabulary
(151936) makes float32 logits the biggest activation, hence micro-batches of 8 rows.
"""
import pathlib

import ml_collections

from safecomp.config import config_from_file


def _demo_config() -> ml_collections.ConfigDict:
  """configs/demo.py's config: every section and key the pipeline reads."""
  return config_from_file(pathlib.Path(__file__).with_name("demo.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = _demo_config()
  c.testbed.update(n_sft=10000, n_sft_eval=500, n_rm=10000, n_rm_eval=1000, n_rl_prompts=10000)

  # Qwen/Qwen2-0.5B config.json.
  c.model.init_from = "checkpoints/Qwen2-0.5B"
  c.model.family = "qwen2"
  c.chat_template = "qwen2"
  c.model.vocab_size = 151936
  c.model.hidden_size = 896
  c.model.num_layers = 24
  c.model.num_heads = 14
  c.model.num_kv_heads = 2
  c.model.head_dim = 64
  c.model.intermediate_size = 4864
  c.model.max_position_embeddings = 131072
  c.model.rope_theta = 1000000.0
  c.model.rms_norm_eps = 1e-6
  c.model.tie_word_embeddings = True
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "dots_with_no_batch_dims_saveable"
  c.max_prompt_len = 512
  c.max_seq_len = 1024

  c.sft.update(steps=2000, batch_size=32, learning_rate=2e-5, warmup_steps=100, eval_every=500,
               checkpoint_every=250, log_every=10)
  c.sft.microbatches = 4
  c.rm.update(steps=1500, batch_size=32, learning_rate=1e-5, warmup_steps=50, checkpoint_every=250,
              log_every=10)
  c.rm.microbatches = 2
  c.ppo.update(iterations=300, prompts_per_iteration=64, max_new_tokens=256, learning_rate=1e-6,
               epochs=2, num_minibatches=8, kl_coef=0.05, checkpoint_every=20, gold_every=10)
  c.eval.update(n_per_split=500, max_new_tokens=256, batch_size=64)

  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
  c.distributed = ml_collections.ConfigDict({
      "initialize": False, "coordinator_address": "", "num_processes": -1, "process_id": -1,
      "local_device_ids": "", "cpu_collectives": "gloo"})
  return c
