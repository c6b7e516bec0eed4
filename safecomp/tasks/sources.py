"""Prompt sources: JSONL prompt files and the public prompt sets by name, read through their builders.

A source list is comma-separated: paths to JSONL prompt files (see `safecomp.tasks.files`) and
`public:NAME` for a public set. Public sets are read through their tfds builders
(`safecomp.data.public`): prepared under `data_dir` on first use, from the source files in
`manual_dir/<dataset>/` when given (e.g. the shared data folder), else downloaded from their pinned
public URLs and checked against their sha256.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Sequence

from safecomp.errors import ConfigError
from safecomp.prompts import Prompt, normalized_text
from safecomp.tasks.files import read_prompts

logger = logging.getLogger(__name__)
DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")  # tfds' own default


@dataclasses.dataclass(frozen=True)
class PublicPromptSet:
  """A public prompt set: its builder (dataset, config), the splits read and what the set is."""
  dataset: str
  config: str | None
  splits: tuple[str, ...]
  description: str


PUBLIC_PROMPT_SETS = {
    "xstest": PublicPromptSet("xstest", "prompts", ("test",),
                              "XSTest: 250 benign prompts that sound alarming, 200 malicious contrasts"),
    "coconot": PublicPromptSet("coconot", "eval", ("test",),
                               "CoCoNot: 1,001 requests that should get non-compliance (safety rows malicious, "
                               "the rest benign)"),
    "coconot_contrast": PublicPromptSet("coconot", "contrast", ("test",),
                                        "CoCoNot contrast: 379 benign requests that look risky"),
    "jailbreakbench": PublicPromptSet("jailbreakbench", None, ("harmful", "benign"),
                                      "JBB-Behaviors: 100 harmful (malicious) and 100 topic-matched twins "
                                      "(dual-use)"),
    "cyberseceval_frr": PublicPromptSet("cyberseceval_frr", None, ("test",),
                                        "CyberSecEval 2 false-refusal set: 750 security coding requests "
                                        "(dual-use)"),
    "simplesafetytests": PublicPromptSet("simplesafetytests", None, ("test",),
                                         "SimpleSafetyTests: 100 clear-cut harmful requests (malicious)"),
}


def parse_sources(text: str | Sequence[str], key: str) -> list[str]:
  """The items of a comma-separated source list (empty items dropped); unknown public names are a
  `ConfigError` naming `key`."""
  items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s and s.strip()]
  for item in items:
    if item.startswith("public:") and item[len("public:"):] not in PUBLIC_PROMPT_SETS:
      raise ConfigError(f"config key {key!r}: unknown public prompt set {item!r}; known: "
                        f"{', '.join('public:' + n for n in PUBLIC_PROMPT_SETS)}")
  return items


def source_name(item: str) -> str:
  """The name a source's prompts are reported under: the public set's name or the file's stem."""
  return item[len("public:"):] if item.startswith("public:") else pathlib.Path(item).stem


def public_prompts(name: str, data_dir: str | pathlib.Path | None, manual_dir: str | pathlib.Path | None
                   ) -> list[Prompt]:
  """The prompts of public set `name` with their intent labels, through its tfds builder."""
  from safecomp.data import public as public_lib  # pylint: disable=import-outside-toplevel
  from safecomp.data import readers  # pylint: disable=import-outside-toplevel
  spec = PUBLIC_PROMPT_SETS[name]
  root = str(data_dir) if data_dir else DEFAULT_DATA_DIR
  builder = public_lib.PUBLIC_BUILDERS[spec.dataset](config=spec.config, data_dir=root,
                                                     file_format="array_record")
  if not (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file():
    manual = pathlib.Path(manual_dir) / spec.dataset if manual_dir else None
    logger.warning("preparing public set %s under %s (%s)", name, builder.data_dir,
                   f"from {manual}" if manual else "downloading its pinned sources")
    builder = public_lib.build_public(spec.dataset, root, config=spec.config, manual_dir=manual)
  prompts = []
  for split in spec.splits:
    for row in readers.load_split(builder.data_dir, split):
      category = row.get("category") or row.get("type") or row.get("harm_area")
      prompts.append(Prompt(uid=str(row["uid"]), messages=({"role": "user", "content": row["prompt"]},),
                            intent=row["intent"], category=category or None, source=name))
  return prompts


def load_source(item: str, data_dir: str | None = None, manual_dir: str | None = None) -> list[Prompt]:
  """The prompts of one source (a JSONL path or `public:NAME`)."""
  if item.startswith("public:"):
    return public_prompts(item[len("public:"):], data_dir, manual_dir)
  return read_prompts(item, source_name(item))


def load_sources(items: Sequence[str], key: str, data_dir: str | None = None,
                 manual_dir: str | None = None) -> dict[str, list[Prompt]]:
  """{source name: prompts} for a list of sources; two sources of one name are a `ConfigError`."""
  out: dict[str, list[Prompt]] = {}
  for item in items:
    name = source_name(item)
    if name in out:
      raise ConfigError(f"config key {key!r}: two sources are named {name!r}; rename one file")
    if not item.startswith("public:") and not pathlib.Path(item).is_file():
      raise ConfigError(f"config key {key!r}: prompt file {item} not found")
    out[name] = load_source(item, data_dir, manual_dir)
  uids: dict[str, str] = {}
  for name, prompts in out.items():
    for p in prompts:
      if p.uid in uids and uids[p.uid] != name:
        raise ConfigError(f"config key {key!r}: uid {p.uid!r} appears in both {uids[p.uid]!r} and {name!r}")
      uids[p.uid] = name
  return out


@dataclasses.dataclass(frozen=True)
class Deduplicated:
  prompts: list[Prompt]
  dropped_as_eval: int  # training prompts whose text is an eval prompt's
  dropped_repeats: int  # repeats within the training prompts


def deduplicate(train: Sequence[Prompt], held_out: Sequence[Prompt]) -> Deduplicated:
  """Training prompts with those that repeat an eval prompt, or an earlier training prompt, removed
  (compared by `normalized_text`)."""
  eval_texts = {normalized_text(p.messages) for p in held_out}
  kept, seen, as_eval, repeats = [], set(), 0, 0
  for p in train:
    text = normalized_text(p.messages)
    if text in eval_texts:
      as_eval += 1
    elif text in seen:
      repeats += 1
    else:
      seen.add(text)
      kept.append(p)
  return Deduplicated(kept, as_eval, repeats)
