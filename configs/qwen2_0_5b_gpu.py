"""Qwen2-0.5B on one GPU (an 80 GB H100 or A100): SFT -> reward model -> PPO -> eval on real prompts.

    huggingface-cli download Qwen/Qwen2-0.5B --local-dir /data/Qwen2-0.5B
    huggingface-cli download Qwen/Qwen2-7B-Instruct --local-dir /data/Qwen2-7B-Instruct
    python -m safecomp.datagen --prompts train_prompts.jsonl --teacher http --base-url http://127.0.0.1:8000 \
        --model TEACHER --judge judge --judge-model /data/Qwen2-7B-Instruct --out data/sft_rows.jsonl
    python -m safecomp.train --config configs/qwen2_0_5b_gpu.py --workdir runs/qwen2_0_5b \
        --config.model.init_from=/data/Qwen2-0.5B --config.judge.checkpoint=/data/Qwen2-7B-Instruct

The task is the public prompt sets (configs/real_task.py) graded by a judge. Judges that fit beside the
policy on one 80 GB GPU: Qwen/Qwen2-7B-Instruct (7.6B, Apache-2.0, 15 GB in bfloat16) or
Qwen/Qwen2-1.5B-Instruct (1.5B, Apache-2.0, 3 GB). Both share Qwen2-0.5B's tokenizer, so with
`--config.reward.grader=judge` the judge can score PPO's samples inside the compiled rollout.
`model.init_from` must name a local Hugging Face directory of Qwen/Qwen2-0.5B; the architecture
below repeats its public config.json so the run can be planned
(`python -m safecomp.memory --config configs/qwen2_0_5b_gpu.py --accelerator h100`) without it.
One device (mesh 1 x 1 x 1); bfloat16 compute with float32 master weights; the large vocabulary
(151936) makes float32 logits the biggest activation, hence micro-batches of 8 rows.
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
  # The 152k-token vocabulary makes float32 logits of the whole rollout too large for one GPU: score
  # it 8 rows at a time (`safecomp.memory --stage ppo` shows the difference).
  c.ppo.update(iterations=300, prompts_per_iteration=64, max_new_tokens=256, learning_rate=1e-6,
               epochs=2, num_minibatches=8, kl_coef=0.05, checkpoint_every=20, gold_every=10,
               score_chunk_rows=8)
  c.eval.update(n_per_split=500, max_new_tokens=256, batch_size=64)

  _real_task().use_prompts_task(c, judge_checkpoint="checkpoints/Qwen2-7B-Instruct", judge_family="qwen2")

  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.distributed = ml_collections.ConfigDict({
      "initialize": False, "coordinator_address": "", "num_processes": -1, "process_id": -1,
      "local_device_ids": "", "cpu_collectives": "gloo"})
  return c
