"""JBB-Behaviors (Chao et al., 2024): 100 harmful behaviours and their topic-matched twins."""
from __future__ import annotations

import csv
import json
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.data.public.base import Example, PublicBuilder, intent_feature
from safecomp.errors import DataError


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
  """JBB-Behaviors (Chao et al., 2024): 100 harmful behaviours and their topic-matched twins.

  The harmful list is published inside an attack artifact (JSON); its source is `derived`: the
  download is converted to the CSV kept in the manual dir (`_convert_download`).
  """

  name = "jailbreakbench"
  HOMEPAGE = "https://github.com/JailbreakBench/jailbreakbench"
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
        "intent": intent_feature()})

  def _convert_download(self, key, path):
    if key != "harmful":
      return path
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
