"""The prompts task: real prompts from JSONL files and public sets, graded by a real grader.

Training prompts (`task.train_prompts`) drive the reward model's policy samples and PPO; eval prompts
(`task.eval_prompts`) are answered by the eval stage, each source reported as its own set. Training
prompts that repeat an eval prompt (compared by normalised text) or an earlier training prompt are
dropped, and the counts are reported. There is no teacher and no gold oracle here: SFT data comes from
`sft.train_file` (`safecomp.datagen` output), labels from `rm.train_file` and from `rm.labeler`
grading the SFT policy's own samples, rewards from `reward.grader`.
"""
from __future__ import annotations

import functools

import numpy as np

from safecomp.errors import ConfigError
from safecomp.prompts import Prompt, normalized_text
from safecomp.tasks import files
from safecomp.tasks import sources


class PromptsTask:
  """See module docstring; `config` is the run config (sections `task`, `sft`, `rm`)."""
  kind = "prompts"

  def __init__(self, config):
    self.config = config
    t = config.task
    self.train_items = sources.parse_sources(t.train_prompts, "task.train_prompts")
    self.eval_items = sources.parse_sources(t.eval_prompts, "task.eval_prompts")

  def _load(self, items, key) -> dict[str, list[Prompt]]:
    t = self.config.task
    return sources.load_sources(items, key, t.data_dir or None, t.public_manual_dir or None)

  @functools.cached_property
  def eval_by_set(self) -> dict[str, list[Prompt]]:
    if not self.eval_items:
      raise ConfigError("config key 'task.eval_prompts': the prompts task needs eval prompts (JSONL files "
                        "or public:NAME, comma-separated)")
    return self._load(self.eval_items, "task.eval_prompts")

  @functools.cached_property
  def _train(self) -> sources.Deduplicated:
    if not self.train_items:
      raise ConfigError("config key 'task.train_prompts': the prompts task needs training prompts for the "
                        "reward model's samples and PPO (JSONL files or public:NAME, comma-separated)")
    loaded = self._load(self.train_items, "task.train_prompts")
    held_out = [p for ps in self.eval_by_set.values() for p in ps] if self.eval_items else []
    result = sources.deduplicate([p for ps in loaded.values() for p in ps], held_out)
    if not result.prompts:
      raise ConfigError("config key 'task.train_prompts': every training prompt repeats an eval prompt")
    return result

  # -- prompts -------------------------------------------------------------------------------------
  def train_prompts(self) -> list[Prompt]:
    return list(self._train.prompts)

  def dedup_report(self) -> dict[str, int]:
    d = self._train
    return {"train_prompts": len(d.prompts), "dropped_as_eval": d.dropped_as_eval,
            "dropped_repeats": d.dropped_repeats}

  def eval_sets(self) -> tuple[str, ...]:
    return tuple(self.eval_by_set)

  def eval_set_prompts(self, name: str, n: int | None = None) -> list[Prompt]:
    prompts = self.eval_by_set[name]
    if n is not None and n < len(prompts):
      keep = np.sort(np.random.default_rng([self.config.seed, len(name)]).choice(len(prompts), n, replace=False))
      prompts = [prompts[i] for i in keep]
    return list(prompts)

  def eval_prompts(self) -> list[Prompt]:
    return [p for name in self.eval_sets() for p in self.eval_set_prompts(name)]

  def rm_prompts(self, split: str) -> list[Prompt]:
    """Training prompts whose policy samples the labeler grades: `rm.holdout_fraction` held out for
    the reward model's eval, at most `rm.policy_prompts` in all (0 = every training prompt)."""
    c = self.config
    prompts = self.train_prompts()
    if c.rm.policy_prompts and c.rm.policy_prompts < len(prompts):
      keep = np.sort(np.random.default_rng([c.seed, 17]).choice(len(prompts), c.rm.policy_prompts, replace=False))
      prompts = [prompts[i] for i in keep]
    train, held = files.split_holdout(prompts, c.rm.holdout_fraction, c.seed + 17)
    return train if split == "train" else held

  # -- supervised data -----------------------------------------------------------------------------
  def sft_conversations(self, split: str) -> tuple[list[list[dict]], dict]:
    if not self.config.sft.train_file:
      raise ConfigError("config key 'sft.train_file': the prompts task has no teacher of its own; generate SFT "
                        "data with `python -m safecomp.datagen` and pass its output file")
    conversations, stats = files.config_sft_conversations(self.config, split)
    kept = [m for m in conversations if normalized_text(m) not in self._eval_texts]
    return kept, dict(stats, dropped_as_eval=len(conversations) - len(kept))

  def rm_rows(self, split: str) -> list[dict]:
    if not self.config.rm.train_file:
      return []
    return [r for r in files.config_rm_rows(self.config, split) if normalized_text(r["messages"]) not in self._eval_texts]

  @functools.cached_property
  def _eval_texts(self) -> frozenset[str]:
    return frozenset(normalized_text(p.messages) for ps in self.eval_by_set.values() for p in ps) \
        if self.eval_items else frozenset()

  def data_report(self) -> dict[str, int]:
    """How the eval prompts relate to the training prompts and files (the eval stage reports it).

    Training prompts, SFT conversations and reward-model rows that repeat an eval prompt are dropped.
    """
    c = self.config
    report = {"eval_prompts": len(self.eval_prompts()), **self.dedup_report()}
    training = {normalized_text(p.messages) for p in self.train_prompts()}
    if c.sft.train_file:
      conversations, stats = files.config_sft_conversations(c, "train")
      report["sft_dropped_as_eval"] = sum(normalized_text(m) in self._eval_texts for m in conversations)
      training.update(normalized_text(m) for m in self.sft_conversations("train")[0])
    if c.rm.train_file:
      rows = files.config_rm_rows(c, "train")
      report["rm_dropped_as_eval"] = sum(normalized_text(r["messages"]) in self._eval_texts for r in rows)
      training.update(normalized_text(r["messages"]) for r in self.rm_rows("train"))
    eval_texts = {normalized_text(p.messages) for p in self.eval_prompts()}
    report["eval_training_overlap"] = len(eval_texts & training)
    return report

  # -- grading -------------------------------------------------------------------------------------
  def host_grader(self):
    raise ConfigError("the prompts task has no grader of its own (the oracle knows only testbed prompts); "
                      "use judge or http (reward.grader, rm.labeler, eval.grader)")

  def describe(self) -> str:
    return (f"prompts: train {', '.join(self.train_items) or '-'}; eval {', '.join(self.eval_items) or '-'}")
