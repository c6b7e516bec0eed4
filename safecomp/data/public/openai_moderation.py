"""OpenAI moderation evaluation set (Markov et al., 2022): texts with 8 harm labels."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import PublicBuilder, numbered

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
  HOMEPAGE = "https://github.com/openai/moderation-api-release"
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
    return {"test": self._generate_examples(numbered(rows, "mod"))}
