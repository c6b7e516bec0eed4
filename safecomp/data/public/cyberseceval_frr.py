"""CyberSecEval 2 MITRE false-refusal set (Bhatt et al., 2024): benign security requests."""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import PublicBuilder, intent_feature, numbered


def cyberseceval_frr_row(row: Mapping[str, Any]) -> dict[str, Any]:
  if readers.require(row, "is_malicious", bool):
    raise readers.RowError("key 'is_malicious': the false-refusal set holds benign rows only")
  return {"prompt": readers.require(row, "mutated_prompt"),
          "attack_type": str(readers.require(row, "attack_type", (str, list))),
          "model": readers.require(row, "model"), "intent": "dual_use"}


class CybersecevalFrr(PublicBuilder):
  """CyberSecEval 2 MITRE false-refusal set: benign security-flavoured coding requests."""

  name = "cyberseceval_frr"
  HOMEPAGE = "https://github.com/meta-llama/PurpleLlama"
  CITATION = """@article{bhatt2024cyberseceval2,
  title={CyberSecEval 2: A Wide-Ranging Cybersecurity Evaluation Suite for Large Language Models},
  author={Bhatt, Manish and others}, journal={arXiv preprint arXiv:2404.13161}, year={2024}}"""
  DESCRIPTION = "750 benign security-flavoured coding requests (intent: dual_use; should help)."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "prompt": tfds.features.Text(),
        "attack_type": tfds.features.Text(), "model": tfds.features.Text(),
        "intent": intent_feature()})

  def _split_generators(self, dl_manager):
    path = self._resolve(dl_manager)["test"]
    rows = self._read("test", readers.read_json_array(
        path, cyberseceval_frr_row, skip_malformed=self._skip_malformed))
    return {"test": self._generate_examples(numbered(rows, "frr"))}
