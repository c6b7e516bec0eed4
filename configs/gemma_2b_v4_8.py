"""Gemma-2B on a Cloud TPU v4-8 (4 chips, 32 GiB HBM each): SFT -> reward model -> PPO -> eval.

    python -m safecomp.train --config configs/gemma_2b_v4_8.py \
        --config.model.init_from=/data/gemma-2b --workdir gs://bucket/safecomp/gemma_2b

The task is the public prompt sets (configs/real_task.py) graded by a judge (`--config.judge.checkpoint`):
google/gemma-7b-it (8.5B, Gemma Terms of Use, 17 GB in bfloat16, sharded with the policy over the 4
chips) or google/gemma-2b-it (2.5B, same terms); both share gemma-2b's tokenizer, so with
`--config.reward.grader=judge` the judge scores PPO's samples inside the compiled rollout. SFT data
comes from `python -m safecomp.datagen` (`sft.train_file`).
`model.init_from` must name a local Hugging Face directory (config.json, tokenizer, safetensors) of
google/gemma-2b; the architecture below repeats its public config.json so the run can be planned
(`python -m safecomp.memory --config configs/gemma_2b_v4_8.py`) before the weights are downloaded.
Mesh: parameters and optimizer state FSDP-sharded over the 4 chips (data=1, fsdp=4, tensor=1);
bfloat16 compute with float32 master weights, full rematerialisation of each decoder block.
"""
import pathlib

import ml_collections

from safecomp.config import config_from_file, load_module


def _demo_config() -> ml_collections.ConfigDict:
  """configs/demo.py's config: every section and key the pipeline reads."""
  return config_from_file(pathlib.Path(__file__).with_name("demo.py"))


def _real_task():
  """configs/real_task.py: the prompts task and judge shared by the configs for pretrained models."""
  return load_module(pathlib.Path(__file__).with_name("real_task.py"), "safecomp_configs_real_task")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = _demo_config()
  c.testbed.update(n_sft=20000, n_sft_eval=1000, n_rm=20000, n_rm_eval=2000, n_rl_prompts=20000)

  # google/gemma-2b config.json.
  c.model.init_from = "checkpoints/gemma-2b"
  c.model.family = "gemma"
  c.chat_template = "gemma"
  c.model.vocab_size = 256000
  c.model.hidden_size = 2048
  c.model.num_layers = 18
  c.model.num_heads = 8
  c.model.num_kv_heads = 1
  c.model.head_dim = 256
  c.model.intermediate_size = 16384
  c.model.max_position_embeddings = 8192
  c.model.rope_theta = 10000.0
  c.model.rms_norm_eps = 1e-6
  c.model.tie_word_embeddings = True
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"
  c.max_prompt_len = 512
  c.max_seq_len = 1024

  c.sft.update(steps=2000, batch_size=32, learning_rate=1e-5, warmup_steps=100, eval_every=500,
               checkpoint_every=250, log_every=10)
  c.sft.microbatches = 4  # gradient accumulation inside the step: 4 x 8 rows
  c.rm.update(steps=1500, batch_size=32, learning_rate=5e-6, warmup_steps=50, checkpoint_every=250,
              log_every=10)
  c.rm.microbatches = 2
  # 32 rollouts of 512 new tokens, scored 8 rows at a time: the fused step then fits a v4 chip's 32 GiB
  # next to the policy, its separate critic, the reference and the reward model (`safecomp.memory`).
  c.ppo.update(iterations=300, prompts_per_iteration=32, max_new_tokens=512, learning_rate=1e-6,
               epochs=2, num_minibatches=8, kl_coef=0.05, checkpoint_every=20, gold_every=10,
               score_chunk_rows=8)
  c.eval.update(n_per_split=500, max_new_tokens=512, batch_size=64)
  _real_task().use_prompts_task(c, judge_checkpoint="checkpoints/gemma-7b-it", judge_family="gemma")

  c.mesh.update(data=1, fsdp=4, tensor=1)
  # One host: nothing to initialise. (A v4-16 or larger has several hosts: set initialize=True.)
  c.distributed = ml_collections.ConfigDict({
      "initialize": False, "coordinator_address": "", "num_processes": -1, "process_id": -1,
      "local_device_ids": "", "cpu_collectives": "gloo"})
  return c
