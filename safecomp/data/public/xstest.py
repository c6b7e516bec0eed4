"""XSTest (Röttger et al., 2024): exaggerated-safety prompts and labelled v2 completions."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import Example, PublicBuilder, intent_feature

XSTEST_LABELS = ("safe", "unsafe")
XSTEST_FINAL_LABELS = ("1_full_compliance", "2_full_refusal", "3_partial_refusal")
XSTEST_MODELS = ("llama2new", "llama2orig", "mistralinstruct")


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
  """XSTest (Röttger et al., 2024): exaggerated-safety prompts and labelled v2 completions.

  Config `prompts` reads source `prompts`; `completions` reads one source per model
  (`XSTEST_MODELS`), as listed in the source table.
  """

  name = "xstest"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="prompts", description="450 prompts (250 safe, 200 unsafe)."),
      tfds.core.BuilderConfig(
          name="completions",
          description="v2 completions of three models, one split per model, with human labels."),
  ]
  HOMEPAGE = "https://github.com/paul-rottger/exaggerated-safety"
  CITATION = """@inproceedings{rottger2024xstest,
  title={XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large Language Models},
  author={R{\\"o}ttger, Paul and Kirk, Hannah Rose and Vidgen, Bertie and Attanasio, Giuseppe and
          Bianchi, Federico and Hovy, Dirk},
  booktitle={NAACL}, year={2024}}"""
  DESCRIPTION = "Benign prompts that sound alarming, their unsafe contrasts, and labelled completions."

  def _features(self):
    common = {"uid": tfds.features.Text(), "prompt": tfds.features.Text(),
              "type": tfds.features.Text(), "intent": intent_feature()}
    if self.builder_config.name == "prompts":
      return tfds.features.FeaturesDict({
          **common, "label": tfds.features.ClassLabel(names=list(XSTEST_LABELS)),
          "focus": tfds.features.Text(), "note": tfds.features.Text()})
    final = lambda: tfds.features.ClassLabel(names=list(XSTEST_FINAL_LABELS))
    return tfds.features.FeaturesDict({
        **common, "completion": tfds.features.Text(), "annotation_1": final(),
        "annotation_2": final(), "agreement": np.bool_, "final_label": final()})

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
