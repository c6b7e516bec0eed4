"""What the configs for pretrained checkpoints share: the prompts task over public sets, a judge.

The policy trains on real prompts with intent labels (`task.train_prompts`) and is evaluated on others
(`task.eval_prompts`): training prompts that repeat an eval prompt are dropped. SFT data comes from
`python -m safecomp.datagen` (a teacher model sees the spec; a judge filters); the reward model learns
from the judge's grades of the SFT policy's own samples; PPO optimises the reward model's r = h x s
inside the compiled rollout; the judge grades the eval stage and PPO's gold monitoring.
"""
import pathlib

import ml_collections

# Public sets by intent: train on CoCoNot (malicious and benign requests, and benign requests that look
# risky) and CyberSecEval's false-refusal set (dual-use); evaluate on XSTest (benign / malicious),
# JailbreakBench (dual-use twins / malicious) and SimpleSafetyTests (malicious).
TRAIN_PROMPTS = "public:coconot,public:coconot_contrast,public:cyberseceval_frr"
EVAL_PROMPTS = "public:xstest,public:jailbreakbench,public:simplesafetytests"


def use_prompts_task(c: ml_collections.ConfigDict, *, judge_checkpoint: str, judge_family: str) -> None:
  """Switches a demo-derived config `c` to real prompts graded by the judge at `judge_checkpoint`."""
  c.task.kind = "prompts"
  c.task.train_prompts = TRAIN_PROMPTS
  c.task.eval_prompts = EVAL_PROMPTS
  c.sft.train_file = "data/sft_rows.jsonl"  # `python -m safecomp.datagen ... --out data/sft_rows.jsonl`
  c.rm.labeler = "judge"
  c.rm.policy_samples_per_prompt = 2
  c.reward.grader = "rm"  # "judge" scores every PPO sample with the judge instead (slower, no proxy gap)
  c.eval.grader = "judge"
  c.judge.checkpoint = judge_checkpoint
  c.judge.family = judge_family
  c.judge.dtype = "bfloat16"


def with_adapters(base_config: str, *, rank: int = 16, alpha: float = 32.0) -> ml_collections.ConfigDict:
  """The config of `configs/<base_config>` training LoRA adapters instead of every weight: rank `rank`
  (alpha `alpha`) on every projection, the frozen base stored in bfloat16 (adapters, their AdamW moments
  and the fresh heads keep float32), and about ten times full fine-tuning's learning rates (common
  LoRA practice)."""
  from safecomp.config import config_from_file  # pylint: disable=import-outside-toplevel
  c = config_from_file(pathlib.Path(__file__).with_name(base_config))
  c.lora.update(rank=rank, alpha=alpha)
  for section in (c.sft, c.rm, c.ppo):
    section.learning_rate *= 10
  c.model.param_dtype = "bfloat16"
  return c
