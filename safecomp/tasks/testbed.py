"""The testbed task: the procedural world's prompts, its teachers' SFT data, its labelled reward-model
candidates and its gold oracle. Seeds are those the pipeline has always used, so a seed gives the
same data (and the demo the same figures) as before the task interface existed."""
from __future__ import annotations

import functools

import numpy as np

from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp.constants import INTENTS
from safecomp.errors import ConfigError
from safecomp.graders.oracle import OracleGrader
from safecomp.prompts import Prompt, as_prompt, normalized_text
from safecomp.tasks import files
from safecomp.testbed import lexicon
from safecomp.testbed import teachers

EVAL_SPLITS = ("test", "heldout", "multiturn")
# The testbed split each task split draws from, and its id in the seeds.
_SPLIT = {"train": "train", "eval": "test"}
SPLIT_IDS = {"train": 0, "test": 1, "heldout": 2, "multiturn": 3}


class TestbedTask:
  """See module docstring; `config` is the run config (sections `testbed`, `sft`, `rm`, `eval`)."""
  kind = "testbed"

  def __init__(self, config):
    self.config = config

  @functools.cached_property
  def world(self) -> testbed.World:
    return testbed.world_from_config(self.config)

  @functools.cached_property
  def oracle_config(self) -> testbed.OracleConfig:
    return testbed.oracle_config_from(self.config)

  @functools.cached_property
  def spec(self):
    return spec_lib.load_spec(self.config.spec)

  def examples(self, split: str, n: int, seed_offset: int = 0) -> list[testbed.Example]:
    return testbed.generate_examples(self.world, split, n, seed=self.config.seed * 7919 + seed_offset)

  def _prompts(self, split: str, n: int, seed_offset: int) -> list[Prompt]:
    return [as_prompt(e) for e in self.examples(split, n, seed_offset)]

  # -- prompts -------------------------------------------------------------------------------------
  def train_prompts(self) -> list[Prompt]:
    """The RL prompts."""
    return self._prompts("train", self.config.testbed.n_rl_prompts, 3)

  def eval_sets(self) -> tuple[str, ...]:
    return tuple(self.config.eval.splits)

  def eval_set_prompts(self, split: str, n: int | None = None) -> list[Prompt]:
    """The prompts of one eval split, as the eval stage draws them (same seed), none seen in training.

    A drawn prompt whose text a training stage also sees is replaced by the first prompt of a reserve
    draw with the same intent, category and turn structure, so the split keeps its size and balance
    and every other prompt stays as drawn.
    """
    splits = self.eval_sets()
    offset = 20 + (splits.index(split) if split in splits else EVAL_SPLITS.index(split))
    n = self.config.eval.n_per_split if n is None else n
    drawn = self.examples(split, n, offset)
    seen = self.training_texts
    if not any(normalized_text(e.messages) in seen for e in drawn):
      return [as_prompt(e) for e in drawn]
    reserve = [e for e in self.examples(split, 4 * n, offset + 1000) if normalized_text(e.messages) not in seen]
    taken = {normalized_text(e.messages) for e in drawn}
    out = []
    for e in drawn:
      if normalized_text(e.messages) in seen:
        free = [r for r in reserve if normalized_text(r.messages) not in taken]
        e = next((r for r in free if (r.intent, r.category, len(r.messages)) == (e.intent, e.category, len(e.messages))),
                 next((r for r in free if (r.intent, r.category) == (e.intent, e.category)), free[0]))
        taken.add(normalized_text(e.messages))
      out.append(as_prompt(e))
    return out

  def eval_prompts(self) -> list[Prompt]:
    return [p for split in self.eval_sets() for p in self.eval_set_prompts(split)]

  @functools.cached_property
  def training_texts(self) -> frozenset[str]:
    """Normalised text of every prompt a training stage sees: SFT's, the reward model's and RL's."""
    c = self.config
    texts = {normalized_text(p.messages) for p in self.train_prompts() + self.rm_prompts("train")}
    if c.sft.train_file:
      texts.update(normalized_text(m) for m in self.sft_conversations("train")[0])
    else:
      texts.update(normalized_text(e.messages) for e in self.examples("train", c.testbed.n_sft, 1))
    if c.rm.train_file:
      texts.update(normalized_text(r["messages"]) for r in self.rm_rows("train"))
    return frozenset(texts)

  def data_report(self) -> dict[str, int]:
    """How the eval prompts relate to the training prompts (the eval stage reports it)."""
    eval_texts = {normalized_text(p.messages) for p in self.eval_prompts()}
    return {"eval_prompts": len(self.eval_prompts()), "training_prompt_texts": len(self.training_texts),
            "eval_training_overlap": len(eval_texts & self.training_texts)}

  def rm_prompts(self, split: str) -> list[Prompt]:
    """The prompts whose answers the reward model learns from ("train" or "eval")."""
    c = self.config.testbed
    n = c.n_rm if split == "train" else c.n_rm_eval
    return self._prompts(_SPLIT[split], n, 4 if split == "train" else 5)

  # -- supervised data -----------------------------------------------------------------------------
  def sft_conversations(self, split: str) -> tuple[list[list[dict]], dict]:
    """Teacher-written, judge-filtered conversations ("train" or "eval"), or `sft.train_file`'s."""
    c = self.config
    if c.sft.train_file:
      return files.config_sft_conversations(c, split)
    rows = [row for _, row in self.sft_rows(split)]
    conversations = [row["messages"] for row in rows if row.get("kept", True)]
    return conversations, {"generated": len(rows), "kept": len(conversations)}

  def sft_rows(self, split: str) -> list[tuple[testbed.Example, dict]]:
    """Every testbed teacher row behind `sft_conversations(split)`, kept or dropped by the judge.

    Returns (prompt example, `teachers.make_sft_example`'s row) pairs in generation order; the rows
    with `kept` are the conversations. Raises `ConfigError` when `sft.train_file` supplies the SFT
    data instead of the teacher.
    """
    c = self.config
    if c.sft.train_file:
      raise ConfigError("config key 'sft.train_file': the SFT data is the file's, not the testbed "
                        "teacher's (read it with sft_conversations)")
    testbed_split = _SPLIT[split]
    n = c.testbed.n_sft if split == "train" else c.testbed.n_sft_eval
    rng = np.random.default_rng([c.seed, 11, SPLIT_IDS[testbed_split]])
    rows = []
    for example in self.examples(testbed_split, n, seed_offset=1 if split == "train" else 2):
      row = teachers.make_sft_example(
          self.world, self.spec, example, c.sft_style, rng, error_rate=c.testbed.teacher_error_rate,
          judge_miss_rate=c.testbed.judge_miss_rate, reasoning=c.reasoning,
          caution_rate=c.testbed.teacher_caution_rate)
      rows.append((example, row))
    return rows

  def rm_rows(self, split: str) -> list[dict]:
    """Labelled reward-model rows: `rm.train_file`'s, or oracle-labelled candidates of every kind.

    When the policy writes reasoning, candidates carry a `<think>` block too (its intent drawn at
    random, so the reward model must judge the answer rather than the reasoning).
    """
    c = self.config
    if c.rm.train_file:
      return files.config_rm_rows(c, split)
    rng = np.random.default_rng([c.seed, 13, SPLIT_IDS[_SPLIT[split]]])
    rows = []
    for prompt in self.rm_prompts(split):
      example = prompt.example
      picks = rng.choice(len(testbed.CANDIDATE_SOURCES), size=c.testbed.rm_candidates_per_prompt, replace=False)
      for k in sorted(int(i) for i in picks):
        answer, _ = testbed.make_candidate(self.world, self.spec, example, testbed.CANDIDATE_SOURCES[k], rng,
                                           error_rate=c.testbed.teacher_error_rate)
        grade = testbed.grade(example.messages, answer, world=self.world, example=example, config=self.oracle_config)
        if c.reasoning:
          reasoning, _ = teachers.spec_reasoning(self.spec, example, intent=str(rng.choice(INTENTS)))
          answer = f"{lexicon.THINK_OPEN} {reasoning} {lexicon.THINK_CLOSE} {answer}"
        rows.append({"messages": list(example.messages) + [{"role": "assistant", "content": answer}],
                     "severity": grade.severity, "helpfulness": grade.helpfulness})
    return rows

  # -- grading -------------------------------------------------------------------------------------
  def host_grader(self):
    """The gold oracle over this world."""
    return OracleGrader(self.world, unknown_prompts=self.config.oracle.unknown_prompts, config=self.oracle_config)

  def describe(self) -> str:
    return f"testbed world {self.config.testbed.world_seed}"

