"""CoCoNot (Brahman et al., 2024): contextual non-compliance, its contrast set and pairs."""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import Example, PublicBuilder, intent_feature

COCONOT_SAFETY_CATEGORY = "Requests with safety concerns"


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
  """CoCoNot (Brahman et al., 2024): contextual non-compliance, its contrast set and pairs.

  Each config reads the source of the same name (see the source table).
  """

  name = "coconot"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="eval", description="1001 prompts that should get "
                              "non-compliance (395 for safety reasons)."),
      tfds.core.BuilderConfig(name="contrast", description="379 prompts that look risky but "
                              "should be answered (over-refusal test)."),
      tfds.core.BuilderConfig(name="pref", description="927 preference pairs: compliant "
                              "(chosen) vs refusing (rejected) answers to contrast prompts."),
  ]
  HOMEPAGE = "https://github.com/allenai/noncompliance"
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
    return tfds.features.FeaturesDict({**base, "intent": intent_feature()})

  def _split_generators(self, dl_manager):
    name = self.builder_config.name
    path = self._resolve(dl_manager)[name]
    row_fn = {"eval": coconot_eval_row, "contrast": coconot_contrast_row,
              "pref": coconot_pref_row}[name]
    split = "train" if name == "pref" else "test"
    return {split: self._generate_examples(self._read_jsonl(split, path, row_fn))}
