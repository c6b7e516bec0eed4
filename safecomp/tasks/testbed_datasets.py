"""tfds datasets of the testbed task's data for one run config (array_record, no TensorFlow needed).

What a run trains and evaluates on, exactly as `TestbedTask(config)` produces it:

  testbed_sft    "train", "eval": every teacher row of `sft_rows` (`kept` false where the judge dropped
                 it); the kept rows' `messages` are `sft_conversations(split)[0]`
  testbed_rm     "train", "eval": `rm_rows(split)` with their oracle labels (severity, helpfulness)
  testbed_rl     "train": `train_prompts()`
  testbed_eval   one split per eval set (`eval.splits`): `eval_set_prompts(split)`, with the gold
                 policy's mode and ideal response

The builder config carries the run config (`TestbedDatasetConfig.of(config)`). Its name is a hash of the
sections that decide the data (`DATA_KEYS`), so different run configs never share a directory, and
`info.metadata["config"]` records those sections.

  builders = build_testbed_datasets(config, "/data/tfds")
  rows = readers.load_split(builders["testbed_sft"].data_dir, "train")  # dicts of str / numbers
  example = example_from_record(rows[0]["example"])                    # back to a testbed Example
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from typing import Any, Iterator, Mapping, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from safecomp import config as config_lib
from safecomp import testbed
from safecomp.constants import INTENTS, MODES
from safecomp.errors import ConfigError
from safecomp.prompts import Prompt
from safecomp.tasks.testbed import TestbedTask

# The run config's sections that decide the testbed data: hashed into the dataset's config name.
DATA_KEYS = ("seed", "spec", "sft_style", "reasoning", "testbed", "oracle", "reward", "eval")
# Task splits of the SFT and reward-model data.
TRAINING_SPLITS = ("train", "eval")


def data_sections(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `DATA_KEYS` sections of a run config, as plain JSON values."""
  return config_lib.fingerprint_keys(config, [k for k in DATA_KEYS if k in config])


def config_name(config: ml_collections.ConfigDict) -> str:
  """The dataset config name of a run config: a short hash of its `data_sections`."""
  text = json.dumps(data_sections(config), sort_keys=True)
  return "run_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class TestbedDatasetConfig(tfds.core.BuilderConfig):
  """The testbed data of one run config; make it with `TestbedDatasetConfig.of(config)`."""
  run_config: ml_collections.ConfigDict | None = dataclasses.field(default=None, repr=False)

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> TestbedDatasetConfig:
    """The builder config of `config` (a copy, so later edits to `config` do not reach it)."""
    if not isinstance(config, ml_collections.ConfigDict):
      raise ConfigError(f"testbed datasets need a run config (ConfigDict), got {type(config).__name__}")
    if "task" in config and config.task.get("kind", "testbed") != "testbed":
      raise ConfigError(f"config key 'task.kind': testbed datasets need the testbed task, got "
                        f"{config.task.kind!r}")
    for key in ("sft", "rm"):
      if key in config and config[key].get("train_file"):
        raise ConfigError(f"config key '{key}.train_file': testbed datasets hold the testbed's own "
                          f"data; a run that trains on {config[key].train_file} reads that file")
    config = config.copy_and_resolve_references()
    return cls(name=config_name(config), run_config=config,
               description=(f"Testbed data of the run config with seed {config.seed}, spec {config.spec}, "
                            f"sft_style {config.sft_style}, reasoning {config.reasoning}."))


# ---------------------------------------------------------------------------------------------
# Example <-> record

_INT32 = np.int32
# float64 stored as its bytes: the task's labels come back exactly (the default encoding is float32).
_FLOAT64 = tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES)


def _messages_feature() -> tfds.features.Sequence:
  return tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()})


def example_features() -> tfds.features.FeaturesDict:
  """Every field of a testbed `Example` (`pair_id` None is stored as "")."""
  return tfds.features.FeaturesDict({
      "uid": tfds.features.Text(), "split": tfds.features.Text(),
      "messages": _messages_feature(), "intent": tfds.features.ClassLabel(names=list(INTENTS)),
      "category": tfds.features.Text(), "is_hazard_category": np.bool_,
      "topic": tfds.features.Text(), "requested_level": _INT32,
      "template_id": tfds.features.Text(), "pair_id": tfds.features.Text(),
      "alarming_benign": np.bool_, "multiturn": np.bool_,
      "filler_ids": tfds.features.Sequence(tfds.features.Text()),
  })


def example_to_record(example: testbed.Example) -> dict[str, Any]:
  d = example.to_dict()
  d["pair_id"] = d["pair_id"] or ""
  return d


def example_from_record(record: Mapping[str, Any]) -> testbed.Example:
  """A decoded `example` record (see `readers.load_split`) back to a testbed `Example`."""
  d = dict(record)
  d["pair_id"] = d.get("pair_id") or None
  return testbed.Example.from_dict(d, where="testbed record")


def _messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
  return [{"role": m["role"], "content": m["content"]} for m in messages]


# ---------------------------------------------------------------------------------------------
# Builders


class TestbedDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: the task of the builder config's run config, info and metadata."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The testbed task's own data for a run config."}
  HOMEPAGE = "https://github.com/safecomp/safecomp"
  DESCRIPTION = ""

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> None:
    return None  # Generated data: nothing to download, no checksums file.

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    metadata = tfds.core.MetadataDict(config=data_sections(self.builder_config.run_config))
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=self._features(), homepage=self.HOMEPAGE,
                                 metadata=metadata, disable_shuffling=True)

  @functools.cached_property
  def task(self) -> TestbedTask:
    return TestbedTask(self.builder_config.run_config)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._splits()}

  def _splits(self) -> Sequence[str]:
    return TRAINING_SPLITS

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    raise NotImplementedError


class TestbedSft(TestbedDataset):
  """SFT rows: the prompt, the teacher's reasoning and answer, the judge verdict.

  Every teacher row is kept in the data (`kept` false where the judge dropped it); the run trains on
  the `messages` of the rows with `kept`.
  """
  name = "testbed_sft"
  DESCRIPTION = "The testbed task's SFT rows: teacher conversations with reasoning and judge verdicts."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "messages": _messages_feature(),
        "prompt": _messages_feature(), "reasoning": tfds.features.Text(),
        "answer": tfds.features.Text(), "mode": tfds.features.ClassLabel(names=list(MODES)),
        "teacher_error": tfds.features.Text(), "kept": np.bool_,
        "filter_reason": tfds.features.Text(), "style": tfds.features.Text(),
        "spec": tfds.features.Text(), "spec_version": tfds.features.Text(),
        "example": example_features(),
    })

  def _generate_examples(self, split):
    rows = self.task.sft_rows(split)
    kept = sum(bool(row.get("kept", True)) for _, row in rows)
    self.info.metadata.setdefault("stats", {})[split] = {"generated": len(rows), "kept": kept}
    for i, (ex, row) in enumerate(rows):
      yield i, {
          "uid": row["uid"], "messages": _messages(row["messages"]), "prompt": _messages(ex.messages),
          "reasoning": row["reasoning"], "answer": row["answer"], "mode": row["mode"],
          "teacher_error": row["error"] or "", "kept": bool(row.get("kept", True)),
          "filter_reason": row["filter_reason"] or "", "style": row["style"], "spec": row["spec"],
          "spec_version": row["spec_version"], "example": example_to_record(ex)}


class TestbedRm(TestbedDataset):
  """Reward-model rows: candidate answers with the gold oracle's labels, per prompt in order."""
  name = "testbed_rm"
  DESCRIPTION = ("The testbed task's reward-model rows: candidate answers (of every kind) with the gold "
                 "oracle's severity and helpfulness.")

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "prompt_uid": tfds.features.Text(),
        "messages": _messages_feature(), "prompt": _messages_feature(),
        "completion": tfds.features.Text(), "severity": _INT32, "helpfulness": _FLOAT64,
        "intent": tfds.features.ClassLabel(names=list(INTENTS)), "example": example_features(),
    })

  def _generate_examples(self, split):
    rows = self.task.rm_rows(split)
    prompts = self.task.rm_prompts(split)
    per_prompt = len(rows) // max(len(prompts), 1)
    # `rm_rows` gives each of `rm_prompts(split)` the same number of candidates, in order.
    if per_prompt * len(prompts) != len(rows) or any(
        _messages(row["messages"][:-1]) != _messages(prompts[i // per_prompt].messages)
        for i, row in enumerate(rows)):
      raise ValueError(f"testbed_rm/{split}: rm_rows are not {per_prompt} candidates per rm_prompt")
    for i, row in enumerate(rows):
      prompt: Prompt = prompts[i // per_prompt]
      yield i, {
          "uid": f"{prompt.uid}-c{i % per_prompt}", "prompt_uid": prompt.uid,
          "messages": _messages(row["messages"]), "prompt": _messages(prompt.messages),
          "completion": row["messages"][-1]["content"], "severity": int(row["severity"]),
          "helpfulness": float(row["helpfulness"]), "intent": prompt.intent,
          "example": example_to_record(prompt.example)}


def _prompt_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "uid": tfds.features.Text(), "prompt": _messages_feature(),
      "intent": tfds.features.ClassLabel(names=list(INTENTS)), "category": tfds.features.Text(),
      "intended_mode": tfds.features.ClassLabel(names=list(MODES)),
      "ideal_response": tfds.features.Text(), "example": example_features(),
  })


def _prompt_records(world: testbed.World,
                    prompts: Sequence[Prompt]) -> Iterator[tuple[int, dict[str, Any]]]:
  for i, p in enumerate(prompts):
    ex = p.example
    yield i, {"uid": p.uid, "prompt": _messages(p.messages), "intent": p.intent,
              "category": p.category or "", "intended_mode": testbed.intended_mode(ex, world),
              "ideal_response": testbed.ideal_response(world, ex), "example": example_to_record(ex)}


class TestbedRl(TestbedDataset):
  """RL prompts (the policy samples its own answers; the oracle or a reward model scores them)."""
  name = "testbed_rl"
  DESCRIPTION = "The testbed task's RL prompts, with labels and the gold policy's mode."

  def _features(self):
    return _prompt_features()

  def _splits(self):
    return ("train",)

  def _generate_examples(self, split):
    del split
    return _prompt_records(self.task.world, self.task.train_prompts())


class TestbedEval(TestbedDataset):
  """Eval prompts, one split per eval set (test: training templates, heldout, multiturn)."""
  name = "testbed_eval"
  DESCRIPTION = "The testbed task's eval prompts with the ideal response and the gold policy's mode."

  def _features(self):
    return _prompt_features()

  def _splits(self):
    return self.task.eval_sets()

  def _generate_examples(self, split):
    return _prompt_records(self.task.world, self.task.eval_set_prompts(split))


TESTBED_DATASETS: dict[str, type[TestbedDataset]] = {
    cls.name: cls for cls in (TestbedSft, TestbedRm, TestbedRl, TestbedEval)}


def build_testbed(name: str, data_dir: str | pathlib.Path, *,
                  config: ml_collections.ConfigDict) -> TestbedDataset:
  """Prepares one testbed dataset of the run config `config` under `data_dir`; returns its builder.

  The data lands in `<data_dir>/<name>/<config_name(config)>/<version>`; a prepared one is reused.
  """
  if name not in TESTBED_DATASETS:
    raise ConfigError(f"unknown testbed dataset {name!r}; known: {sorted(TESTBED_DATASETS)}")
  builder = TESTBED_DATASETS[name](config=TestbedDatasetConfig.of(config), data_dir=str(data_dir),
                                   file_format="array_record")
  builder.download_and_prepare()
  return builder


def build_testbed_datasets(config: ml_collections.ConfigDict,
                           data_dir: str | pathlib.Path) -> dict[str, TestbedDataset]:
  """Prepares every testbed dataset of the run config `config` under `data_dir`, by name."""
  return {name: build_testbed(name, data_dir, config=config) for name in TESTBED_DATASETS}


def split_sizes(builder: TestbedDataset) -> dict[str, int]:
  return {s: info.num_examples for s, info in builder.info.splits.items()}


__all__: Sequence[str] = (
    "DATA_KEYS", "TESTBED_DATASETS", "TestbedDataset", "TestbedDatasetConfig", "TestbedEval",
    "TestbedRl", "TestbedRm", "TestbedSft", "build_testbed", "build_testbed_datasets",
    "config_name", "data_sections", "example_features", "example_from_record", "example_to_record",
    "split_sizes")
