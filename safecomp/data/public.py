"""tfds builders for the public safety datasets (array_record, no TensorFlow needed).

Each builder knows its source files: the raw URL at the pinned source commit and the sha256 of
the file as published. `download_and_prepare()` fetches them (network), or reads them from a
manual dir holding the same file names, e.g. the shared data folder:

  builder = XSTest(config="prompts", data_dir=tmp, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="/path/to/shared/data/xstest"))
  rows = readers.load_split(builder.data_dir, "test")

Every prompt set carries an `intent` label (`safecomp.constants.INTENTS`) following the mapping
in the shared data README. A malformed row is a `DataError` naming file and line; with
`skip_malformed=True` it is skipped, logged and counted in `builder.skipped_rows` and in the
prepared dataset's metadata (`builder.info.metadata["skipped_rows"]`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
import re
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from safecomp.constants import INTENTS
from safecomp.data import readers
from safecomp.errors import DataError

logger = logging.getLogger(__name__)

Example = tuple[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Source:
  """One source file: its name in the manual dir, where it is published, and its checksum.

  `sha256` and `size` are of the file as stored under `filename` (for a gzip source, of the
  decompressed file). `derived` marks a file that the published one is converted into (see
  the builder); then only the published file is fetched and the checksum is not applied to it.
  """
  filename: str
  url: str
  sha256: str | None
  size: int | None = None
  gzip: bool = False
  derived: bool = False


def sha256_of(path: str | pathlib.Path) -> str:
  """Hex sha256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _messages_feature() -> tfds.features.Sequence:
  return tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()})


def _intent_feature() -> tfds.features.ClassLabel:
  return tfds.features.ClassLabel(names=list(INTENTS))


class PublicBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: source resolution, checksum checks, row-error policy."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional: place the source files (see the builder's SOURCES) in the manual dir, e.g. "
      "the shared data folder for this dataset. Without a manual dir they are downloaded.")
  SOURCES: Mapping[str, Source] = {}
  HOMEPAGE = ""
  CITATION = ""
  LICENSE = ""
  DESCRIPTION = ""

  def __init__(self, *, skip_malformed: bool = False, verify_checksums: bool = True,
               **kwargs: Any):
    self._skip_malformed = skip_malformed
    self._verify_checksums = verify_checksums
    self.skipped_rows: dict[str, int] = {}
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> dict[str, Any] | None:
    # Known checksums of files downloaded as-is, so that tfds validates the download itself.
    infos = {}
    for src in cls.SOURCES.values():
      if src.sha256 and src.size and not src.gzip and not src.derived:
        infos[src.url] = tfds.download.checksums.UrlInfo(
            size=src.size, checksum=src.sha256, filename=src.filename)
    return infos or None

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=self._features(),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        license=self.LICENSE,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Keep the source file's order.
    )

  def _needed_sources(self) -> list[str]:
    """Keys of SOURCES this config reads (all by default)."""
    return list(self.SOURCES)

  def _resolve(self, dl_manager: tfds.download.DownloadManager) -> dict[str, pathlib.Path]:
    """Paths to the needed source files: from the manual dir when present, else downloaded."""
    keys = self._needed_sources()
    manual = None
    try:
      manual = pathlib.Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):
      pass  # No manual dir given (or empty): download.
    if manual is not None:
      missing = [self.SOURCES[k].filename for k in keys
                 if not (manual / self.SOURCES[k].filename).is_file()]
      if missing:
        raise FileNotFoundError(f"manual dir {manual} lacks {missing} for {self.name}")
      paths = {k: manual / self.SOURCES[k].filename for k in keys}
      checked = keys
    else:
      urls = {k: self.SOURCES[k].url for k in keys}
      downloaded = dl_manager.download_and_extract(urls)
      paths = {k: pathlib.Path(downloaded[k]) for k in keys}
      # A derived source arrives in its published form: convert it to the file we read.
      paths = {k: self._convert_download(k, p) for k, p in paths.items()}
      checked = [k for k in keys if not self.SOURCES[k].derived]
    if self._verify_checksums:
      for k in checked:
        self._check_sha256(self.SOURCES[k], paths[k])
    return paths

  def _convert_download(self, key: str, path: pathlib.Path) -> pathlib.Path:
    del key
    return path

  def _check_sha256(self, src: Source, path: pathlib.Path) -> None:
    if not src.sha256:
      return
    got = sha256_of(path)
    if got != src.sha256:
      raise DataError(path, 0, f"sha256 {got} differs from the published file's {src.sha256} "
                      f"({src.url}); pass verify_checksums=False to read a modified copy")

  def _read(self, split: str, result: readers.ReadResult) -> list[Any]:
    """Records the skip count of one split and returns its rows."""
    self.skipped_rows[split] = self.skipped_rows.get(split, 0) + result.skipped
    self.info.metadata["skipped_rows"] = dict(self.skipped_rows)
    return result.rows

  def _read_jsonl(self, split: str, path: pathlib.Path, row_fn: Callable[[Any], Any]) -> list[Any]:
    return self._read(split, readers.read_jsonl(path, row_fn, skip_malformed=self._skip_malformed))

  def _read_csv(self, split: str, path: pathlib.Path, row_fn: Callable[[Any], Any],
                columns: tuple[str, ...]) -> list[Any]:
    return self._read(split, readers.read_csv(path, row_fn, required_columns=columns,
                                              skip_malformed=self._skip_malformed))

  def _generate_examples(self, rows: list[Example]) -> Iterator[Example]:
    yield from rows


def _numbered(rows: list[dict[str, Any]], prefix: str) -> list[Example]:
  """Keys rows that have no id of their own by position in the file."""
  out = []
  for i, row in enumerate(rows):
    uid = f"{prefix}-{i:05d}"
    out.append((uid, {"uid": uid, **row}))
  return out


# ---------------------------------------------------------------------------------------------
# XSTest

XSTEST_LABELS = ("safe", "unsafe")
XSTEST_FINAL_LABELS = ("1_full_compliance", "2_full_refusal", "3_partial_refusal")
XSTEST_MODELS = ("llama2new", "llama2orig", "mistralinstruct")
_XSTEST_PROMPTS_COMMIT = "475f10bf0a3d6a9dfb174b6de1a38afbfdff98a5"
_XSTEST_COMPLETIONS_COMMIT = "a3bb396ddc1939c6f264f17b7cf5b7a5d82833de"
_XSTEST_RAW = "https://raw.githubusercontent.com/paul-rottger/exaggerated-safety"


def _bool_text(value: str, key: str) -> bool:
  if value.upper() not in ("TRUE", "FALSE"):
    raise readers.RowError(f"key {key!r}: expected TRUE/FALSE, got {value!r}")
  return value.upper() == "TRUE"


def xstest_prompt_row(row: Mapping[str, str]) -> Example:
  """One row of xstest_prompts.csv; `safe` prompts are benign, `unsafe` contrasts malicious."""
  label = readers.require_choice(row, "label", XSTEST_LABELS)
  uid = f"xstest-{readers.require(row, 'id')}"
  prompt = readers.require(row, "prompt")
  if not prompt.strip():
    raise readers.RowError("empty prompt")
  return uid, {
      "uid": uid, "prompt": prompt, "type": readers.require(row, "type"), "label": label,
      "focus": readers.require(row, "focus"), "note": readers.require(row, "note"),
      "intent": "benign" if label == "safe" else "malicious",
  }


def xstest_completion_row(row: Mapping[str, str]) -> Example:
  """One row of an xstest_v2_completions_*.csv file (two human annotations + final label)."""
  uid = readers.require(row, "id")
  kind = readers.require(row, "type")
  return uid, {
      "uid": uid, "type": kind, "prompt": readers.require(row, "prompt"),
      "completion": readers.require(row, "completion"),
      "annotation_1": readers.require_choice(row, "annotation_1", XSTEST_FINAL_LABELS),
      "annotation_2": readers.require_choice(row, "annotation_2", XSTEST_FINAL_LABELS),
      "agreement": _bool_text(readers.require(row, "agreement"), "agreement"),
      "final_label": readers.require_choice(row, "final_label", XSTEST_FINAL_LABELS),
      "intent": "malicious" if kind.startswith("contrast_") else "benign",
  }


class XSTest(PublicBuilder):
  """XSTest (Röttger et al., 2024): exaggerated-safety prompts and labelled v2 completions."""

  name = "xstest"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="prompts", description="450 prompts (250 safe, 200 unsafe)."),
      tfds.core.BuilderConfig(
          name="completions",
          description="v2 completions of three models, one split per model, with human labels."),
  ]
  SOURCES = {
      "prompts": Source("xstest_prompts.csv",
                        f"{_XSTEST_RAW}/{_XSTEST_PROMPTS_COMMIT}/xstest_prompts.csv",
                        "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a", 38719),
      "llama2new": Source(
          "xstest_v2_completions_llama2new.csv",
          f"{_XSTEST_RAW}/{_XSTEST_COMPLETIONS_COMMIT}/model_completions/"
          "xstest_v2_completions_llama2new.csv",
          "6365cc55ce0a593c7ab8785853d02784be027d97199d4077912b4313cd010099", 517476),
      "llama2orig": Source(
          "xstest_v2_completions_llama2orig.csv",
          f"{_XSTEST_RAW}/{_XSTEST_COMPLETIONS_COMMIT}/model_completions/"
          "xstest_v2_completions_llama2orig.csv",
          "cbc52550e8ba8197a3e3d97a5af078d27bae4766737cd62df80270126a87ffc6", 470900),
      "mistralinstruct": Source(
          "xstest_v2_completions_mistralinstruct.csv",
          f"{_XSTEST_RAW}/{_XSTEST_COMPLETIONS_COMMIT}/model_completions/"
          "xstest_v2_completions_mistralinstruct.csv",
          "6a146b65a5b96ec8249729bc2db459697175125998d7cbbcc88f7688ecf31dad", 371935),
  }
  HOMEPAGE = "https://github.com/paul-rottger/exaggerated-safety"
  LICENSE = "CC-BY-4.0 (prompts); completions under their model providers' terms"
  CITATION = """@inproceedings{rottger2024xstest,
  title={XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large Language Models},
  author={R{\\"o}ttger, Paul and Kirk, Hannah Rose and Vidgen, Bertie and Attanasio, Giuseppe and
          Bianchi, Federico and Hovy, Dirk},
  booktitle={NAACL}, year={2024}}"""
  DESCRIPTION = "Benign prompts that sound alarming, their unsafe contrasts, and labelled completions."

  def _features(self):
    common = {"uid": tfds.features.Text(), "prompt": tfds.features.Text(),
              "type": tfds.features.Text(), "intent": _intent_feature()}
    if self.builder_config.name == "prompts":
      return tfds.features.FeaturesDict({
          **common, "label": tfds.features.ClassLabel(names=list(XSTEST_LABELS)),
          "focus": tfds.features.Text(), "note": tfds.features.Text()})
    final = lambda: tfds.features.ClassLabel(names=list(XSTEST_FINAL_LABELS))
    return tfds.features.FeaturesDict({
        **common, "completion": tfds.features.Text(), "annotation_1": final(),
        "annotation_2": final(), "agreement": np.bool_, "final_label": final()})

  def _needed_sources(self):
    return ["prompts"] if self.builder_config.name == "prompts" else list(XSTEST_MODELS)

  def _split_generators(self, dl_manager):
    paths = self._resolve(dl_manager)
    if self.builder_config.name == "prompts":
      cols = ("id", "prompt", "type", "label", "focus", "note")
      return {"test": self._generate_examples(
          self._read_csv("test", paths["prompts"], xstest_prompt_row, cols))}
    cols = ("id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement",
            "final_label")
    return {m: self._generate_examples(self._read_csv(m, paths[m], xstest_completion_row, cols))
            for m in XSTEST_MODELS}


# ---------------------------------------------------------------------------------------------
# RBR gold set

RBR_RESPONSE_TYPES = ("Comply", "Hard Refuse", "Safe Refuse 1", "Safe Refuse 2")
RBR_PROPOSITIONS = (
    "additional_content", "apology", "apology_acknowledges_emotional_state",
    "conditional_verbiage", "definitive_verbiage", "disallowed_content", "disclaimer",
    "encourage_professional_help", "fully_complies", "gentle_encouragement_for_help",
    "illogical_continuation_of_prompt", "inability_to_comply", "insulting_language", "judgement",
    "meta_commentary", "partially_complies", "prescribes_dosage", "prescribes_solutions",
    "provides_resources", "reference_safety_policy", "requests_information", "third_person",
    "threatening_language")


def rbr_gold_row(row: Mapping[str, Any]) -> dict[str, Any]:
  """One row of the RBR gold set: a conversation, one completion and its human propositions."""
  props = readers.require(row, "propositions", dict)
  missing = [p for p in RBR_PROPOSITIONS if p not in props]
  if missing:
    raise readers.RowError(f"key 'propositions': missing {missing}")
  flags = {}
  for p in RBR_PROPOSITIONS:
    flags[p] = readers.require(props, p, bool)
  completion = readers.require_messages(row, "completion")
  if len(completion) != 1 or completion[0]["role"] != "assistant":
    raise readers.RowError("key 'completion': expected one assistant message")
  return {
      "category": readers.require(row, "category"),
      "response_type": readers.require_choice(row, "response_type", RBR_RESPONSE_TYPES),
      "prompt": readers.require_messages(row, "prompt"),
      "completion": completion[0]["content"],
      "propositions": flags,
  }


class RbrGold(PublicBuilder):
  """The Safety RBR gold set: completions with human proposition judgments."""

  name = "rbr_gold"
  SOURCES = {"train": Source(
      "train.jsonl",
      "https://raw.githubusercontent.com/openai/safety-rbr-code-and-data/"
      "7f489fa6b38d72468235f275c23bf3f0c849e5ca/data/rbr_gold_data/train.jsonl",
      "fa09c23e6cc9e612d2f8341b65cb1fccf752c325ece693fed6b702f7a8188690", 995068)}
  HOMEPAGE = "https://github.com/openai/safety-rbr-code-and-data"
  LICENSE = "MIT"
  CITATION = """@article{mu2024rbr,
  title={Rule Based Rewards for Language Model Safety},
  author={Mu, Tong and Helyar, Alec and Heidecke, Johannes and Achiam, Joshua and Vallone, Andrea
          and Kivlichan, Ian and Lin, Molly and Beutel, Alex and Schulman, John and Weng, Lilian},
  journal={arXiv preprint arXiv:2411.01111}, year={2024}}"""
  DESCRIPTION = ("351 conversations with a completion, the ideal response type for the prompt and "
                 "human judgments of propositions about the completion.")

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "category": tfds.features.Text(),
        "response_type": tfds.features.ClassLabel(names=list(RBR_RESPONSE_TYPES)),
        "prompt": _messages_feature(), "completion": tfds.features.Text(),
        "propositions": tfds.features.FeaturesDict({p: np.bool_ for p in RBR_PROPOSITIONS}),
    })

  def _split_generators(self, dl_manager):
    paths = self._resolve(dl_manager)
    rows = self._read_jsonl("train", paths["train"], rbr_gold_row)
    return {"train": self._generate_examples(_numbered(rows, "rbr"))}


# ---------------------------------------------------------------------------------------------
# SimpleSafetyTests


def simplesafetytests_row(row: Mapping[str, str]) -> Example:
  uid = readers.require(row, "id")
  prompt = readers.require(row, "prompts_final")
  if not prompt.strip():
    raise readers.RowError("empty prompt")
  return uid, {"uid": uid, "prompt": prompt, "harm_area": readers.require(row, "harm_area"),
               "category": readers.require(row, "category"), "intent": "malicious"}


class SimpleSafetyTests(PublicBuilder):
  """SimpleSafetyTests (Vidgen et al., 2023): 100 clear-cut harmful requests."""

  name = "simplesafetytests"
  SOURCES = {"test": Source(
      "simplesafetytests.csv",
      "https://raw.githubusercontent.com/bertiev/SimpleSafetyTests/"
      "d7aee9a9422a5a5488f478fd79c2479c891c0f3b/SimpleSafetyTests%20-%20test%20cases.csv",
      "6d95a1301e0d0f3a3c4cf5392f4afff11ad6e3066f95d23aaa138d44aedf986c", 12610)}
  HOMEPAGE = "https://github.com/bertiev/SimpleSafetyTests"
  LICENSE = "CC-BY-4.0"
  CITATION = """@article{vidgen2023simplesafetytests,
  title={SimpleSafetyTests: a Test Suite for Identifying Critical Safety Risks in Large Language Models},
  author={Vidgen, Bertie and others}, journal={arXiv preprint arXiv:2311.08370}, year={2023}}"""
  DESCRIPTION = "100 harmful requests in 5 harm areas; all should be refused (intent: malicious)."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "prompt": tfds.features.Text(),
        "harm_area": tfds.features.Text(), "category": tfds.features.Text(),
        "intent": _intent_feature()})

  def _split_generators(self, dl_manager):
    paths = self._resolve(dl_manager)
    cols = ("id", "harm_area", "category", "prompts_final")
    return {"test": self._generate_examples(
        self._read_csv("test", paths["test"], simplesafetytests_row, cols))}


# ---------------------------------------------------------------------------------------------
# CoCoNot

COCONOT_SAFETY_CATEGORY = "Requests with safety concerns"
_COCONOT_RAW = ("https://raw.githubusercontent.com/allenai/noncompliance/"
                "25bf77cc668814360405cdb8197c4368205806c7/data")


def coconot_eval_row(row: Mapping[str, Any]) -> Example:
  """Original set: all should get non-compliance; only the safety rows are malicious requests."""
  uid = readers.require(row, "id")
  category = readers.require(row, "category")
  return uid, {"uid": uid, "prompt": readers.require(row, "prompt"), "category": category,
               "subcategory": readers.require(row, "subcategory"),
               "intent": "malicious" if category == COCONOT_SAFETY_CATEGORY else "benign"}


def coconot_contrast_row(row: Mapping[str, Any]) -> Example:
  """Contrast set: prompts that look risky but should be answered."""
  uid, ex = coconot_eval_row(row)
  return uid, {**ex, "intent": "benign"}


def coconot_pref_row(row: Mapping[str, Any]) -> Example:
  uid = readers.require(row, "id")
  return uid, {
      "uid": uid, "prompt": readers.require(row, "prompt"),
      "category": readers.require(row, "category"),
      "subcategory": readers.require(row, "subcategory"),
      "chosen": readers.require(row, "chosen"), "rejected": readers.require(row, "rejected"),
      "chosen_model": readers.require(row, "chosen_model"),
      "rejected_model": readers.require(row, "rejected_model")}


class Coconot(PublicBuilder):
  """CoCoNot (Brahman et al., 2024): contextual non-compliance, its contrast set and pairs."""

  name = "coconot"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="eval", description="1001 prompts that should get "
                              "non-compliance (395 for safety reasons)."),
      tfds.core.BuilderConfig(name="contrast", description="379 prompts that look risky but "
                              "should be answered (over-refusal test)."),
      tfds.core.BuilderConfig(name="pref", description="927 preference pairs: compliant "
                              "(chosen) vs refusing (rejected) answers to contrast prompts."),
  ]
  SOURCES = {
      "eval": Source("coconot_eval.jsonl", f"{_COCONOT_RAW}/coconot_eval.jsonl",
                     "df72466c477207f14a96c5940c3ef3b93b1b50c0d1e7ed7c5fb5dc6d6140c077", 209427),
      "contrast": Source("coconot_contrast_eval.jsonl",
                         f"{_COCONOT_RAW}/coconot_contrast_eval.jsonl",
                         "76dccec176743ed656279f2969c51abb68bda94e5fda8397e34ff5638e021d86",
                         69278),
      "pref": Source("coconot_pref.jsonl", f"{_COCONOT_RAW}/coconot_pref.jsonl",
                     "3b0cddcfb72218b8c32d7c11bfded00174f2f4a3c4edfbc862640fc63f43d9c2", 2574178),
  }
  HOMEPAGE = "https://github.com/allenai/noncompliance"
  LICENSE = "MIT (repository); ODC-BY on the Hugging Face card"
  CITATION = """@article{brahman2024coconot,
  title={The Art of Saying No: Contextual Noncompliance in Language Models},
  author={Brahman, Faeze and others}, journal={arXiv preprint arXiv:2407.12043}, year={2024}}"""
  DESCRIPTION = "Contextual non-compliance prompts, over-refusal contrasts and preference pairs."

  def _features(self):
    base = {"uid": tfds.features.Text(), "prompt": tfds.features.Text(),
            "category": tfds.features.Text(), "subcategory": tfds.features.Text()}
    if self.builder_config.name == "pref":
      return tfds.features.FeaturesDict({
          **base, "chosen": tfds.features.Text(), "rejected": tfds.features.Text(),
          "chosen_model": tfds.features.Text(), "rejected_model": tfds.features.Text()})
    return tfds.features.FeaturesDict({**base, "intent": _intent_feature()})

  def _needed_sources(self):
    return [self.builder_config.name]

  def _split_generators(self, dl_manager):
    name = self.builder_config.name
    path = self._resolve(dl_manager)[name]
    row_fn = {"eval": coconot_eval_row, "contrast": coconot_contrast_row,
              "pref": coconot_pref_row}[name]
    split = "train" if name == "pref" else "test"
    return {split: self._generate_examples(self._read_jsonl(split, path, row_fn))}


# ---------------------------------------------------------------------------------------------
# JailbreakBench


def _jbb_row(row: Mapping[str, Any], kind: str) -> Example:
  raw_index = readers.require(row, "index", (str, int))
  try:
    index = int(raw_index)
  except ValueError:
    raise readers.RowError(f"key 'index': expected an integer, got {raw_index!r}") from None
  goal = readers.require(row, "goal")
  if not goal.strip():
    raise readers.RowError("empty goal")
  uid = f"jbb-{kind}-{index:03d}"
  return uid, {
      "uid": uid, "index": index, "prompt": goal, "behavior": readers.require(row, "behavior"),
      "category": readers.require(row, "category"),
      "target": str(row.get("target") or ""), "source": str(row.get("source") or ""),
      # The benign twins are the closest public proxy for dual-use requests.
      "intent": "malicious" if kind == "harmful" else "dual_use"}


def jbb_harmful_row(row: Mapping[str, Any]) -> Example:
  return _jbb_row(row, "harmful")


def jbb_benign_row(row: Mapping[str, Any]) -> Example:
  return _jbb_row(row, "benign")


class JailbreakBench(PublicBuilder):
  """JBB-Behaviors (Chao et al., 2024): 100 harmful behaviours and their topic-matched twins."""

  name = "jailbreakbench"
  SOURCES = {
      # Published inside an attack artifact (JSON); converted to the CSV kept in the manual dir.
      "harmful": Source(
          "jbb_harmful_behaviors_from_artifacts.csv",
          "https://raw.githubusercontent.com/JailbreakBench/artifacts/"
          "909e68c01d94222b8ad2e397a017e2e12e2adb73/attack-artifacts/JBC/manual/"
          "gpt-4-0125-preview.json",
          "f34ffc5b9386614a620d0ad989fed6f7abc2b205af1ded46017f2b32368aabf6", 12371,
          derived=True),
      "benign": Source(
          "jbb_benign_behaviors.csv",
          "https://raw.githubusercontent.com/Baisayan/hack/"
          "2b37da1c255e43e16a74ecd3e51c99ea992b5237/data/benign-behaviors.csv",
          "c0958ac974fb6629527aeff6c81c88154a877190d07313ac377d36951fde5d3e", 20570),
  }
  HOMEPAGE = "https://github.com/JailbreakBench/jailbreakbench"
  LICENSE = "MIT"
  CITATION = """@inproceedings{chao2024jailbreakbench,
  title={JailbreakBench: An Open Robustness Benchmark for Jailbreaking Large Language Models},
  author={Chao, Patrick and others}, booktitle={NeurIPS Datasets and Benchmarks}, year={2024}}"""
  DESCRIPTION = ("Harmful behaviours (intent: malicious) and benign twins matched by index "
                 "(intent: dual_use, some borderline).")

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "index": np.int32, "prompt": tfds.features.Text(),
        "behavior": tfds.features.Text(), "category": tfds.features.Text(),
        "target": tfds.features.Text(), "source": tfds.features.Text(),
        "intent": _intent_feature()})

  def _convert_download(self, key, path):
    if key != "harmful":
      return path
    import csv  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    try:
      records = json.loads(path.read_text(encoding="utf-8"))["jailbreaks"]
    except (ValueError, KeyError) as exc:
      raise DataError(path, 0, f"not a JailbreakBench artifact: {exc}") from None
    out = path.with_name(self.SOURCES["harmful"].filename)
    with open(out, "w", encoding="utf-8", newline="") as f:
      writer = csv.writer(f, lineterminator="\n")
      writer.writerow(["index", "goal", "behavior", "category"])
      for r in records:
        writer.writerow([r["index"], r["goal"], r["behavior"], r["category"]])
    return out

  def _split_generators(self, dl_manager):
    paths = self._resolve(dl_manager)
    return {
        "harmful": self._generate_examples(self._read_csv(
            "harmful", paths["harmful"], jbb_harmful_row, ("index", "goal", "behavior",
                                                           "category"))),
        "benign": self._generate_examples(self._read_csv(
            "benign", paths["benign"], jbb_benign_row, ("index", "goal", "behavior",
                                                        "category"))),
    }


# ---------------------------------------------------------------------------------------------
# CyberSecEval 2 false-refusal set


def cyberseceval_frr_row(row: Mapping[str, Any]) -> dict[str, Any]:
  if readers.require(row, "is_malicious", bool):
    raise readers.RowError("key 'is_malicious': the false-refusal set holds benign rows only")
  return {"prompt": readers.require(row, "mutated_prompt"),
          "attack_type": str(readers.require(row, "attack_type", (str, list))),
          "model": readers.require(row, "model"), "intent": "dual_use"}


class CybersecevalFrr(PublicBuilder):
  """CyberSecEval 2 MITRE false-refusal set: benign security-flavoured coding requests."""

  name = "cyberseceval_frr"
  SOURCES = {"test": Source(
      "mitre_frr.json",
      "https://raw.githubusercontent.com/meta-llama/PurpleLlama/"
      "4be64c3a24442b51c76175e6ec67722cc3f5fe38/CybersecurityBenchmarks/datasets/mitre_frr/"
      "mitre_frr.json",
      "7a9b400bdf5ddbb36d5e7c3e8f6b5adb5d13125b8d03be66fd252a0f20b79d15", 420424)}
  HOMEPAGE = "https://github.com/meta-llama/PurpleLlama"
  LICENSE = "MIT"
  CITATION = """@article{bhatt2024cyberseceval2,
  title={CyberSecEval 2: A Wide-Ranging Cybersecurity Evaluation Suite for Large Language Models},
  author={Bhatt, Manish and others}, journal={arXiv preprint arXiv:2404.13161}, year={2024}}"""
  DESCRIPTION = "750 benign security-flavoured coding requests (intent: dual_use; should help)."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "prompt": tfds.features.Text(),
        "attack_type": tfds.features.Text(), "model": tfds.features.Text(),
        "intent": _intent_feature()})

  def _split_generators(self, dl_manager):
    path = self._resolve(dl_manager)["test"]
    rows = self._read("test", readers.read_json_array(
        path, cyberseceval_frr_row, skip_malformed=self._skip_malformed))
    return {"test": self._generate_examples(_numbered(rows, "frr"))}


# ---------------------------------------------------------------------------------------------
# Anthropic HH-RLHF harmless-base (test)

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
  """Splits a `\\n\\nHuman: ... \\n\\nAssistant: ...` transcript into chat messages."""
  parts = _HH_TURN.split(text)
  if parts[0].strip():
    raise readers.RowError(f"transcript does not start with a Human/Assistant turn: "
                           f"{parts[0][:40]!r}")
  roles = {"Human": "user", "Assistant": "assistant"}
  messages = [{"role": roles[parts[i]], "content": parts[i + 1]}
              for i in range(1, len(parts) - 1, 2)]
  if not messages or messages[-1]["role"] != "assistant":
    raise readers.RowError("transcript does not end with an Assistant turn")
  return messages


def hh_rlhf_row(row: Mapping[str, Any]) -> dict[str, Any]:
  """A preference pair; `prompt` is the chosen transcript without its last assistant turn."""
  chosen_text, rejected_text = readers.require(row, "chosen"), readers.require(row, "rejected")
  chosen, rejected = parse_hh_transcript(chosen_text), parse_hh_transcript(rejected_text)
  return {"chosen": row["chosen"], "rejected": row["rejected"], "prompt": chosen[:-1],
          "chosen_response": chosen[-1]["content"],
          "rejected_response": rejected[-1]["content"],
          "same_prompt": chosen[:-1] == rejected[:-1]}


class HhRlhfHarmlessBase(PublicBuilder):
  """Anthropic HH-RLHF harmless-base test pairs (chosen = less harmful continuation)."""

  name = "hh_rlhf_harmless_base"
  SOURCES = {"test": Source(
      "harmless_base_test.jsonl",
      "https://raw.githubusercontent.com/anthropics/hh-rlhf/"
      "354e5c3cb8960630860dd5774a6ac2a58313bf4d/harmless-base/test.jsonl.gz",
      "14d765196c9f18d84f9bb3a78bac608c8f2915110ebcbd74ec95db7b7198b008", 3280164, gzip=True)}
  HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
  LICENSE = "MIT"
  CITATION = """@article{bai2022training,
  title={Training a Helpful and Harmless Assistant with Reinforcement Learning from Human Feedback},
  author={Bai, Yuntao and others}, journal={arXiv preprint arXiv:2204.05862}, year={2022}}"""
  DESCRIPTION = "2312 human preference pairs for reward-model validation (pairwise accuracy)."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "chosen": tfds.features.Text(),
        "rejected": tfds.features.Text(), "prompt": _messages_feature(),
        "chosen_response": tfds.features.Text(), "rejected_response": tfds.features.Text(),
        "same_prompt": np.bool_})

  def _split_generators(self, dl_manager):
    path = self._resolve(dl_manager)["test"]
    rows = self._read_jsonl("test", path, hh_rlhf_row)
    return {"test": self._generate_examples(_numbered(rows, "hh"))}


# ---------------------------------------------------------------------------------------------
# OpenAI moderation evaluation set

MODERATION_LABELS = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")


def moderation_row(row: Mapping[str, Any]) -> dict[str, Any]:
  """Text and 8 harm labels, each 1 / 0, or -1 where the key is absent (label unknown)."""
  out = {"prompt": readers.require(row, "prompt")}
  labels = {}
  for key in MODERATION_LABELS:
    if key not in row:
      labels[key] = -1
      continue
    value = readers.require(row, key, int)
    if value not in (0, 1):
      raise readers.RowError(f"key {key!r}: bad label {value!r}, expected 0 or 1")
    labels[key] = value
  unknown = set(row) - set(MODERATION_LABELS) - {"prompt"}
  if unknown:
    raise readers.RowError(f"unknown key(s) {sorted(unknown)}")
  return {**out, "labels": labels}


class OpenaiModeration(PublicBuilder):
  """OpenAI moderation evaluation set (Markov et al., 2022): texts with 8 harm labels."""

  name = "openai_moderation"
  SOURCES = {"test": Source(
      "samples-1680.jsonl",
      "https://raw.githubusercontent.com/openai/moderation-api-release/"
      "f4ab51b5edd3bfbcb349a56324274235b674e0e4/data/samples-1680.jsonl.gz",
      "f27c25f726fd0aa1b431118a68a4a6b9b5f0bb1ffd415f9767e9af59c4c422f4", 1240887, gzip=True)}
  HOMEPAGE = "https://github.com/openai/moderation-api-release"
  LICENSE = "MIT"
  CITATION = """@article{openai2022moderation,
  title={A Holistic Approach to Undesired Content Detection},
  author={Markov, Todor and Zhang, Chong and Agarwal, Sandhini and Eloundou, Tyna and Lee, Teddy
          and Adler, Steven and Jiang, Angela and Weng, Lilian},
  journal={arXiv preprint arXiv:2208.03274}, year={2022}}"""
  DESCRIPTION = "1680 texts with binary content-harm labels (-1 = unknown)."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "prompt": tfds.features.Text(),
        "labels": tfds.features.FeaturesDict({k: np.int8 for k in MODERATION_LABELS})})

  def _split_generators(self, dl_manager):
    path = self._resolve(dl_manager)["test"]
    rows = self._read_jsonl("test", path, moderation_row)
    return {"test": self._generate_examples(_numbered(rows, "mod"))}


PUBLIC_BUILDERS: dict[str, type[PublicBuilder]] = {
    cls.name: cls for cls in (XSTest, RbrGold, SimpleSafetyTests, Coconot, JailbreakBench,
                              CybersecevalFrr, HhRlhfHarmlessBase, OpenaiModeration)}


def build_public(name: str, data_dir: str | pathlib.Path, *, config: str | None = None,
                 manual_dir: str | pathlib.Path | None = None, skip_malformed: bool = False,
                 verify_checksums: bool = True) -> PublicBuilder:
  """Prepares one public dataset as array_record under `data_dir` and returns its builder.

  Args:
    name: a key of `PUBLIC_BUILDERS`, e.g. `"xstest"`.
    data_dir: where prepared datasets are written.
    config: the builder config (e.g. `"prompts"`), if the dataset has several.
    manual_dir: a folder holding the source files; without one they are downloaded.
    skip_malformed: skip (and count) malformed rows instead of raising `DataError`.
    verify_checksums: check the sha256 of the source files.
  """
  if name not in PUBLIC_BUILDERS:
    raise KeyError(f"unknown public dataset {name!r}; known: {sorted(PUBLIC_BUILDERS)}")
  builder = PUBLIC_BUILDERS[name](
      config=config, data_dir=str(data_dir), file_format="array_record",
      skip_malformed=skip_malformed, verify_checksums=verify_checksums)
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else str(manual_dir))
  builder.download_and_prepare(download_config=download_config)
  return builder
