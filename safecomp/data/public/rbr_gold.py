"""The Safety RBR gold set (Mu et al., 2024): completions with human proposition judgments."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import PublicBuilder, messages_feature, numbered

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
  HOMEPAGE = "https://github.com/openai/safety-rbr-code-and-data"
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
        "prompt": messages_feature(), "completion": tfds.features.Text(),
        "propositions": tfds.features.FeaturesDict({p: np.bool_ for p in RBR_PROPOSITIONS}),
    })

  def _split_generators(self, dl_manager):
    paths = self._resolve(dl_manager)
    rows = self._read_jsonl("train", paths["train"], rbr_gold_row)
    return {"train": self._generate_examples(numbered(rows, "rbr"))}
