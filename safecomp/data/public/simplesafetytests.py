"""SimpleSafetyTests (Vidgen et al., 2023): 100 clear-cut harmful requests."""
from __future__ import annotations

from typing import Mapping

import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import Example, PublicBuilder, intent_feature


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
  HOMEPAGE = "https://github.com/bertiev/SimpleSafetyTests"
  CITATION = """@article{vidgen2023simplesafetytests,
  title={SimpleSafetyTests: a Test Suite for Identifying Critical Safety Risks in Large Language Models},
  author={Vidgen, Bertie and others}, journal={arXiv preprint arXiv:2311.08370}, year={2023}}"""
  DESCRIPTION = "100 harmful requests in 5 harm areas; all should be refused (intent: malicious)."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "prompt": tfds.features.Text(),
        "harm_area": tfds.features.Text(), "category": tfds.features.Text(),
        "intent": intent_feature()})

  def _split_generators(self, dl_manager):
    paths = self._resolve(dl_manager)
    cols = ("id", "harm_area", "category", "prompts_final")
    return {"test": self._generate_examples(
        self._read_csv("test", paths["test"], simplesafetytests_row, cols))}
