"""tfds builders for the public safety datasets (array_record, no TensorFlow needed).

One module per dataset (`xstest`, `rbr_gold`, `simplesafetytests`, `coconot`, `jailbreakbench`,
`cyberseceval_frr`, `hh_rlhf`, `openai_moderation`) holds its row parsers and builder; `base`
holds the shared machinery. Importing this package registers every builder with tfds.

Each builder reads its source files from the source table `third_party/public_datasets.json`
(`base.sources_for`): the raw URL at the pinned source commit and the sha256 of the file as
published. `download_and_prepare()` fetches them (network), or reads them from a manual dir
holding the same file names, e.g. the shared data folder:

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

import pathlib

import tensorflow_datasets as tfds

from safecomp.data.public.base import (Example, PublicBuilder, Source, configs_for, license_for,
                                       sha256_of, sources_for)
from safecomp.data.public.coconot import (COCONOT_SAFETY_CATEGORY, Coconot, coconot_contrast_row,
                                          coconot_eval_row, coconot_pref_row)
from safecomp.data.public.cyberseceval_frr import CybersecevalFrr, cyberseceval_frr_row
from safecomp.data.public.hh_rlhf import HhRlhfHarmlessBase, hh_rlhf_row, parse_hh_transcript
from safecomp.data.public.jailbreakbench import JailbreakBench, jbb_benign_row, jbb_harmful_row
from safecomp.data.public.openai_moderation import (MODERATION_LABELS, OpenaiModeration,
                                                    moderation_row)
from safecomp.data.public.rbr_gold import (RBR_PROPOSITIONS, RBR_RESPONSE_TYPES, RbrGold,
                                           rbr_gold_row)
from safecomp.data.public.simplesafetytests import SimpleSafetyTests, simplesafetytests_row
from safecomp.data.public.xstest import (XSTEST_FINAL_LABELS, XSTEST_LABELS, XSTEST_MODELS, XSTest,
                                         xstest_completion_row, xstest_prompt_row)

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


__all__ = [
    "COCONOT_SAFETY_CATEGORY", "Coconot", "CybersecevalFrr", "Example", "HhRlhfHarmlessBase",
    "JailbreakBench", "MODERATION_LABELS", "OpenaiModeration", "PUBLIC_BUILDERS", "PublicBuilder",
    "RBR_PROPOSITIONS", "RBR_RESPONSE_TYPES", "RbrGold", "SimpleSafetyTests", "Source",
    "XSTEST_FINAL_LABELS", "XSTEST_LABELS", "XSTEST_MODELS", "XSTest", "build_public",
    "coconot_contrast_row", "coconot_eval_row", "coconot_pref_row", "configs_for",
    "cyberseceval_frr_row", "hh_rlhf_row", "jbb_benign_row", "jbb_harmful_row", "license_for",
    "moderation_row", "parse_hh_transcript", "rbr_gold_row", "sha256_of",
    "simplesafetytests_row", "sources_for", "xstest_completion_row", "xstest_prompt_row",
]
