"""Llama-3-8B on a Cloud TPU v5e-64 (64 chips over 16 hosts, 16 GiB HBM each).

Run the same command on every host of the slice (`gcloud compute tpus tpu-vm ssh ... --worker=all`):

    python -m safecomp.train --config configs/llama3_8b_v5e_64.py \
        --config.model.init_from=/data/Meta-Llama-3-8B --workdir gs://bucket/safecomp/llama3_8b

The task is the public prompt sets (configs/real_task.py) graded by a judge
(`--config.judge.checkpoint`, present on every host): meta-llama/Meta-Llama-3-8B-Instruct (8B, Meta
Llama 3 Community License) shares the policy's tokenizer, so with `--config.reward.grader=judge` it scores
PPO's samples inside the compiled rollout; meta-llama/Llama-Guard-3-8B (8B, Llama 3.1 Community
License) reads the rubrics too but has Llama 3.1's token names, so it grades after a re-tokenisation
on the host. SFT data comes from `python -m safecomp.datagen` (`sft.train_file`).
`model.init_from` must name a local Hugging Face directory of meta-llama/Meta-Llama-3-8B present on
every host; the architecture below repeats its public config.json so the run can be planned
(`python -m safecomp.memory --config configs/llama3_8b_v5e_64.py`) without the weights.
Mesh: fsdp=16 x tensor=4 (heads, KV heads, MLP and vocabulary split 4 ways inside a host's chips,
parameters and optimizer state sharded 16 ways); bfloat16 compute, float32 master weights, full
rematerialisation. `distributed.initialize=True` auto-detects the pod's coordinator and processes.
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
  c.testbed.update(n_sft=50000, n_sft_eval=2000, n_rm=50000, n_rm_eval=4000, n_rl_prompts=50000)

  # meta-llama/Meta-Llama-3-8B config.json.
  c.model.init_from = "checkpoints/Meta-Llama-3-8B"
  c.model.family = "llama"
  c.chat_template = "llama3"
  c.model.vocab_size = 128256
  c.model.hidden_size = 4096
  c.model.num_layers = 32
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.head_dim = 128
  c.model.intermediate_size = 14336
  c.model.max_position_embeddings = 8192
  c.model.rope_theta = 500000.0
  c.model.rms_norm_eps = 1e-5
  c.model.tie_word_embeddings = False
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"
  c.max_prompt_len = 1024
  c.max_seq_len = 2048

  c.sft.update(steps=3000, batch_size=128, learning_rate=1e-5, warmup_steps=100, eval_every=500,
               checkpoint_every=250, log_every=10)
  c.sft.microbatches = 2  # 2 x 64 rows: 4 rows per batch shard
  c.rm.update(steps=2000, batch_size=128, learning_rate=5e-6, warmup_steps=50,
              checkpoint_every=250, log_every=10)
  c.rm.microbatches = 2
  c.ppo.update(iterations=400, prompts_per_iteration=256, max_new_tokens=1024, learning_rate=5e-7,
               epochs=2, num_minibatches=8, kl_coef=0.05, checkpoint_every=20, gold_every=10)
  c.eval.update(n_per_split=1000, max_new_tokens=1024, batch_size=256)
  _real_task().use_prompts_task(c, judge_checkpoint="checkpoints/Meta-Llama-3-8B-Instruct", judge_family="llama3")

  c.mesh.update(data=1, fsdp=16, tensor=4)
  c.distributed = ml_collections.ConfigDict({
      "initialize": True, "coordinator_address": "", "num_processes": -1, "process_id": -1,
      "local_device_ids": "", "cpu_collectives": "gloo"})
  return c
