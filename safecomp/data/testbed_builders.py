"""tfds builders for the procedurally generated testbed (array_record, no TensorFlow needed).

  testbed_sft/safe_completion, testbed_sft/refusal   SFT conversations with reasoning, judge verdict
  testbed_rm                                         candidate responses with gold oracle labels
  testbed_rl                                         RL prompts with their labels
  testbed_eval                                       test, heldout and multiturn prompts, ideal responses

Sizes, seeds, the world seed, the spec and the teacher's error rates come from the builder config
(`TestbedConfig`); the same config always gives the same records. For other sizes, build with
`build_testbed("testbed_sft", data_dir, config="safe_completion", sizes={"train": 50000})`.

  builder = build_testbed("testbed_rm", "/data/tfds")
  rows = readers.load_split(builder.data_dir, "train")   # dicts of str / numbers
  example = example_from_record(rows[0]["example"])      # back to a testbed Example
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from safecomp.constants import INTENTS, MODES
from safecomp.errors import ConfigError
from safecomp.testbed.candidates import CANDIDATE_SOURCES, make_candidate

DEFAULT_SPEC = "safe_completion_fine"



@dataclasses.dataclass(eq=False)
class TestbedConfig(tfds.core.BuilderConfig):
  """What to generate. `sizes` maps each split to its number of prompts."""
  world_seed: int = 0
  seed: int = 0
  spec: str = DEFAULT_SPEC
  style: str = "safe_completion"
  sizes: tuple[tuple[str, int], ...] = (("train", 2000), ("test", 200))
  error_rate: float = 0.1  # teacher mistakes
  judge_miss_rate: float = 0.0  # judge drops that are missed (kept anyway)
  over_refusal_rate: float = 0.5  # refusal teacher refusing alarming-but-benign prompts
  caution_rate: float = 0.0  # safe-completion teacher giving only the most general allowed fact
  reasoning: bool = True  # keep the <think> block in SFT conversations
  candidates_per_prompt: int = 4  # reward-model candidates per prompt

  def __post_init__(self):
    def check(ok: bool, key: str, why: str):
      if not ok:
        raise ConfigError(f"TestbedConfig.{key}: {why} (config {self.name!r})")

    from safecomp.testbed import SPLITS  # pylint: disable=g-import-not-at-top
    check(len(self.sizes) >= 1, "sizes", "needs at least one split")
    for split, n in self.sizes:
      check(split in SPLITS, "sizes", f"unknown split {split!r}; expected one of {SPLITS}")
      check(isinstance(n, int) and n >= 1, "sizes", f"split {split!r} needs a size >= 1, got {n!r}")
    check(len({s for s, _ in self.sizes}) == len(self.sizes), "sizes", "repeats a split")
    check(self.style in ("safe_completion", "refusal"), "style",
          f"unknown style {self.style!r}; expected safe_completion or refusal")
    for key in ("error_rate", "judge_miss_rate", "over_refusal_rate", "caution_rate"):
      check(0.0 <= getattr(self, key) <= 1.0, key, "must lie in [0, 1]")
    check(1 <= self.candidates_per_prompt <= len(CANDIDATE_SOURCES), "candidates_per_prompt",
          f"must lie in 1..{len(CANDIDATE_SOURCES)}")


# ---------------------------------------------------------------------------------------------
# Example <-> record

_INT32 = np.int32


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


def example_to_record(example: Any) -> dict[str, Any]:
  d = example.to_dict()
  d["pair_id"] = d["pair_id"] or ""
  return d


def example_from_record(record: Mapping[str, Any]) -> Any:
  """A decoded `example` record (see `readers.load_split`) back to a testbed `Example`."""
  from safecomp.testbed import Example  # pylint: disable=g-import-not-at-top
  d = dict(record)
  d["pair_id"] = d.get("pair_id") or None
  return Example.from_dict(d, where="testbed record")


def _messages_feature() -> tfds.features.Sequence:
  return tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()})


def _grade_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "severity": _INT32, "unsafe": np.bool_, "safety": np.float32, "helpfulness": np.float32,
      "helpfulness_direct": np.float32, "helpfulness_indirect": np.float32, "reward": np.float32,
      "safety_score": _INT32, "helpfulness_score": _INT32, "direct_score": _INT32,
      "indirect_score": _INT32, "mode": tfds.features.ClassLabel(names=list(MODES)),
      "intended_mode": tfds.features.ClassLabel(names=list(MODES)),
      "flags": tfds.features.Sequence(tfds.features.Text()),
      "disclosed": tfds.features.Sequence(tfds.features.Text()),
  })


def grade_record(grade: Any) -> dict[str, Any]:
  """The oracle grade's fields kept in reward-model records."""
  d = grade.to_dict()
  keys = _grade_features().keys()
  return {k: d[k] for k in keys}


def _rng(config: TestbedConfig, *salt: Any) -> np.random.Generator:
  """A generator keyed by the config seed and a stable salt (uid, split), not by call order."""
  words = [zlib.crc32(str(s).encode("utf-8")) for s in salt]
  return np.random.default_rng([config.seed, config.world_seed, *words])


# ---------------------------------------------------------------------------------------------
# Builders


class TestbedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: the world, the spec and per-split example generation."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = "https://github.com/safecomp/safecomp"
  DESCRIPTION = ""

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> None:
    return None  # Generated data: nothing to download, no checksums file.

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    params = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TestbedConfig)
              if f.name not in ("name", "version", "release_notes", "supported_versions",
                                "description", "tags")}
    metadata = tfds.core.MetadataDict(config=json.loads(json.dumps(params)))
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=self._features(), homepage=self.HOMEPAGE,
                                 metadata=metadata, disable_shuffling=True)

  def _setup(self) -> tuple[Any, Any]:
    from safecomp import spec as spec_lib  # pylint: disable=g-import-not-at-top
    from safecomp import testbed  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    return testbed.make_world(cfg.world_seed, testbed.WorldConfig()), spec_lib.load_spec(cfg.spec)

  def _examples(self, world: Any, split: str, n: int) -> list[Any]:
    from safecomp import testbed  # pylint: disable=g-import-not-at-top
    return testbed.generate_examples(world, split, n, self.builder_config.seed)

  def _split_generators(self, dl_manager):
    del dl_manager
    world, spec = self._setup()
    return {split: self._generate_examples(world, spec, split, n)
            for split, n in self.builder_config.sizes}

  def _generate_examples(self, world: Any, spec: Any, split: str,
                         n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    raise NotImplementedError


class TestbedSft(TestbedBuilder):
  """SFT conversations: the plain prompt, the teacher's reasoning and answer, the judge verdict.

  Every teacher output is kept in the data (`kept` false where the judge dropped it); train on
  the rows with `kept`.
  """
  name = "testbed_sft"
  DESCRIPTION = "Testbed SFT conversations with reasoning, in safe-completion or refusal style."
  BUILDER_CONFIGS = [
      TestbedConfig(name="safe_completion", style="safe_completion",
                    description="Spec-guided teacher: direct, safe-completion or refusal with "
                    "redirection, with reasoning citing the spec."),
      TestbedConfig(name="refusal", style="refusal",
                    description="Refusal-training baseline: comply fully or hard-refuse by "
                    "surface cues."),
      TestbedConfig(name="safe_completion_no_reasoning", style="safe_completion",
                    reasoning=False, description="Safe-completion style without <think>."),
  ]

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

  def _generate_examples(self, world, spec, split, n):
    from safecomp import testbed  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    kept = 0
    for ex in self._examples(world, split, n):
      row = testbed.make_sft_example(
          world, spec, ex, cfg.style, _rng(cfg, "sft", ex.uid), error_rate=cfg.error_rate,
          judge_miss_rate=cfg.judge_miss_rate, reasoning=cfg.reasoning,
          over_refusal_rate=cfg.over_refusal_rate, caution_rate=cfg.caution_rate)
      kept += bool(row["kept"])
      yield ex.uid, {
          "uid": ex.uid, "messages": row["messages"], "prompt": [dict(m) for m in ex.messages],
          "reasoning": row["reasoning"], "answer": row["answer"], "mode": row["mode"],
          "teacher_error": row["error"] or "", "kept": bool(row["kept"]),
          "filter_reason": row["filter_reason"], "style": row["style"], "spec": row["spec"],
          "spec_version": row["spec_version"], "example": example_to_record(ex)}
    self.info.metadata.setdefault("kept", {})[split] = kept




class TestbedRm(TestbedBuilder):
  """Reward-model examples: varied candidate responses per prompt with gold oracle labels."""
  name = "testbed_rm"
  DESCRIPTION = ("Prompt / completion pairs with gold labels (severity, safety, direct and indirect "
                 "helpfulness, mode, intent) from the testbed oracle.")
  BUILDER_CONFIGS = [TestbedConfig(name="default", description="4 candidates per prompt.")]

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "prompt_uid": tfds.features.Text(),
        "prompt": _messages_feature(), "completion": tfds.features.Text(),
        "source": tfds.features.ClassLabel(names=list(CANDIDATE_SOURCES)),
        "teacher_error": tfds.features.Text(),
        "intent": tfds.features.ClassLabel(names=list(INTENTS)), "gold": _grade_features(),
        "example": example_features(),
    })

  def _generate_examples(self, world, spec, split, n):
    from safecomp import testbed  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    for ex in self._examples(world, split, n):
      rng = _rng(cfg, "rm", ex.uid)
      picks = rng.choice(len(CANDIDATE_SOURCES), size=cfg.candidates_per_prompt, replace=False)
      for j, k in enumerate(sorted(int(p) for p in picks)):
        source = CANDIDATE_SOURCES[k]
        answer, error = make_candidate(world, spec, ex, source, rng, error_rate=cfg.error_rate,
                                       over_refusal_rate=cfg.over_refusal_rate)
        grade = testbed.grade(ex.messages, answer, world, example=ex)
        uid = f"{ex.uid}-c{j}"
        yield uid, {"uid": uid, "prompt_uid": ex.uid, "prompt": [dict(m) for m in ex.messages],
                    "completion": answer, "source": source, "teacher_error": error,
                    "intent": ex.intent, "gold": grade_record(grade),
                    "example": example_to_record(ex)}


def _prompt_record(world: Any, ex: Any) -> dict[str, Any]:
  from safecomp import testbed  # pylint: disable=g-import-not-at-top
  return {"uid": ex.uid, "prompt": [dict(m) for m in ex.messages], "intent": ex.intent,
          "intended_mode": testbed.intended_mode(ex, world),
          "ideal_response": testbed.ideal_response(world, ex), "example": example_to_record(ex)}


def _prompt_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "uid": tfds.features.Text(), "prompt": _messages_feature(),
      "intent": tfds.features.ClassLabel(names=list(INTENTS)),
      "intended_mode": tfds.features.ClassLabel(names=list(MODES)),
      "ideal_response": tfds.features.Text(), "example": example_features(),
  })


class TestbedRl(TestbedBuilder):
  """RL prompts (the policy samples its own answers; the oracle or a reward model scores them)."""
  name = "testbed_rl"
  DESCRIPTION = "Testbed prompts for RL, with labels and the gold policy's mode."
  BUILDER_CONFIGS = [TestbedConfig(name="default", seed=1, sizes=(("train", 5000),),
                                   description="Train prompts, drawn apart from the SFT seed.")]

  def _features(self):
    return _prompt_features()

  def _generate_examples(self, world, spec, split, n):
    del spec
    for ex in self._examples(world, split, n):
      yield ex.uid, _prompt_record(world, ex)


class TestbedEval(TestbedBuilder):
  """Eval prompts: test (training templates), heldout (unseen templates) and multiturn."""
  name = "testbed_eval"
  DESCRIPTION = "Testbed eval prompts with the ideal response and the gold policy's mode."
  BUILDER_CONFIGS = [TestbedConfig(name="default", seed=2,
                                   sizes=(("test", 600), ("heldout", 600), ("multiturn", 300)),
                                   description="The standard eval sets.")]

  def _features(self):
    return _prompt_features()

  def _generate_examples(self, world, spec, split, n):
    del spec
    for ex in self._examples(world, split, n):
      yield ex.uid, _prompt_record(world, ex)


TESTBED_BUILDERS: dict[str, type[TestbedBuilder]] = {
    cls.name: cls for cls in (TestbedSft, TestbedRm, TestbedRl, TestbedEval)}


def build_testbed(name: str, data_dir: str | pathlib.Path, *, config: str | None = None,
                  **overrides: Any) -> TestbedBuilder:
  """Prepares one testbed dataset as array_record under `data_dir` and returns its builder.

  `overrides` change fields of the named config (e.g. `sizes={"train": 100}`, `seed=3`); the
  result gets its own config name (the base name plus a hash of the overrides), so differently
  sized builds never share a directory.
  """
  if name not in TESTBED_BUILDERS:
    raise ConfigError(f"unknown testbed dataset {name!r}; known: {sorted(TESTBED_BUILDERS)}")
  cls = TESTBED_BUILDERS[name]
  by_name = {c.name: c for c in cls.BUILDER_CONFIGS}
  base_name = config or cls.BUILDER_CONFIGS[0].name
  if base_name not in by_name:
    raise ConfigError(f"{name}: unknown config {base_name!r}; known: {sorted(by_name)}")
  base = by_name[base_name]
  if overrides:
    fields = {f.name for f in dataclasses.fields(TestbedConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ConfigError(f"TestbedConfig has no field(s) {unknown}; known: {sorted(fields)}")
    if isinstance(overrides.get("sizes"), Mapping):
      overrides["sizes"] = tuple((str(k), int(v)) for k, v in overrides["sizes"].items())
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode())
    overrides["name"] = f"{base_name}_{digest.hexdigest()[:8]}"
    builder_config = dataclasses.replace(base, **overrides)
  else:
    builder_config = base
  builder = cls(config=builder_config, data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder


def default_world(world_seed: int = 0) -> Any:
  """The testbed world with the default `WorldConfig`."""
  from safecomp import testbed  # pylint: disable=g-import-not-at-top
  return testbed.make_world(world_seed, testbed.WorldConfig())


def split_sizes(builder: TestbedBuilder) -> dict[str, int]:
  return {s: info.num_examples for s, info in builder.info.splits.items()}


__all__: Sequence[str] = (
    "CANDIDATE_SOURCES", "TESTBED_BUILDERS", "TestbedConfig", "TestbedEval", "TestbedRl",
    "TestbedRm", "TestbedSft", "build_testbed", "default_world", "example_features",
    "example_from_record", "example_to_record", "grade_record", "make_candidate", "split_sizes")
