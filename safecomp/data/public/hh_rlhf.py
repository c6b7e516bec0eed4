"""Anthropic HH-RLHF harmless-base test pairs (Bai et al., 2022)."""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import PublicBuilder, messages_feature, numbered

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
  HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
  CITATION = """@article{bai2022training,
  title={Training a Helpful and Harmless Assistant with Reinforcement Learning from Human Feedback},
  author={Bai, Yuntao and others}, journal={arXiv preprint arXiv:2204.05862}, year={2022}}"""
  DESCRIPTION = "2312 human preference pairs for reward-model validation (pairwise accuracy)."

  def _features(self):
    return tfds.features.FeaturesDict({
        "uid": tfds.features.Text(), "chosen": tfds.features.Text(),
        "rejected": tfds.features.Text(), "prompt": messages_feature(),
        "chosen_response": tfds.features.Text(), "rejected_response": tfds.features.Text(),
        "same_prompt": np.bool_})

  def _split_generators(self, dl_manager):
    path = self._resolve(dl_manager)["test"]
    rows = self._read_jsonl("test", path, hh_rlhf_row)
    return {"test": self._generate_examples(numbered(rows, "hh"))}
