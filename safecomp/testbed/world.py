"""The seeded testbed world: categories, topics, facts at four information levels, phrase pools."""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Iterable, Mapping

import numpy as np

from safecomp import config as config_lib
from safecomp.constants import INTENTS, MODES, SEVERITIES
from safecomp.errors import ConfigError
from safecomp.testbed import lexicon as lx

SLOT = re.compile(r"^\{[a-z0-9_]+\}$")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Sizes and label mix of a world. Every field is validated; a bad value names its key."""
  topics_per_category: int = 4
  hazard_categories: tuple[str, ...] = lx.HAZARD_CATEGORIES
  benign_domains: tuple[str, ...] = lx.BENIGN_DOMAINS
  # (category, (severity of background, mechanism, actionable, critical)) for hazard categories.
  severity_profiles: tuple[tuple[str, tuple[int, int, int, int]], ...] = tuple(
      lx.SEVERITY_PROFILES.items())
  heldout_fraction: float = 0.25
  # Shares of benign, dual_use, malicious prompts, and of levels 0..3 per intent.
  intent_mix: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
  level_mix: tuple[tuple[float, float, float, float], ...] = ((0.25,) * 4,) * 3
  benign_hazard_fraction: float = 0.2  # benign prompts that are plain curiosity about a hazard topic
  alarming_fraction: float = 0.3  # benign-domain prompts that use alarming words
  pair_fraction: float = 0.5  # dual-use prompts that get a malicious twin asking the same thing
  train_multiturn_fraction: float = 0.1  # multi-turn conversations mixed into train / test
  multiturn_malicious_fraction: float = 0.5
  multiturn_max_words: int = 50  # whole conversation, so it fits a short prompt window

  def __post_init__(self):
    def check(ok: bool, key: str, why: str):
      if not ok:
        raise ConfigError(f"WorldConfig.{key}: {why}")

    check(1 <= self.topics_per_category <= 40, "topics_per_category", "must lie in 1..40")
    known = set(lx.CATEGORY_TEXT)
    for key in ("hazard_categories", "benign_domains"):
      names = getattr(self, key)
      check(len(names) >= 1 and len(set(names)) == len(names), key, "needs distinct names")
      bad = [n for n in names if n not in known]
      check(not bad, key, f"unknown {bad}; the lexicon has {sorted(known)}")
    check(not set(self.hazard_categories) & set(self.benign_domains), "benign_domains",
          "overlaps hazard_categories")
    profiles = dict(self.severity_profiles)
    for cat in self.hazard_categories:
      check(cat in profiles, "severity_profiles", f"missing category {cat!r}")
      prof = tuple(profiles[cat])
      check(len(prof) == 4 and all(0 <= s <= 3 for s in prof), "severity_profiles",
            f"{cat!r} needs 4 severities in 0..3")
      check(prof[0] == 0 and prof[1] == 0, "severity_profiles",
            f"{cat!r}: background and mechanism must be negligible (0)")
      check(list(prof) == sorted(prof), "severity_profiles", f"{cat!r}: must not decrease with level")
    check(0.0 <= self.heldout_fraction < 1.0, "heldout_fraction", "must lie in [0, 1)")
    for key in ("benign_hazard_fraction", "alarming_fraction", "pair_fraction",
                "train_multiturn_fraction", "multiturn_malicious_fraction"):
      check(0.0 <= getattr(self, key) <= 1.0, key, "must lie in [0, 1]")
    check(self.benign_hazard_fraction + self.alarming_fraction <= 1.0, "alarming_fraction",
          "alarming_fraction + benign_hazard_fraction must be <= 1")
    check(self.multiturn_max_words >= 40, "multiturn_max_words", "must be >= 40")
    check(len(self.intent_mix) == 3 and min(self.intent_mix) >= 0 and sum(self.intent_mix) > 0,
          "intent_mix", "needs 3 non-negative weights (benign, dual_use, malicious)")
    check(len(self.level_mix) == 3 and all(len(m) == 4 and min(m) >= 0 and sum(m) > 0
                                           for m in self.level_mix),
          "level_mix", "needs 3 rows (one per intent) of 4 non-negative weights")

  def severity_profile(self, category: str) -> tuple[int, int, int, int]:
    return tuple(dict(self.severity_profiles).get(category, (0, 0, 0, 0)))


@dataclasses.dataclass(frozen=True)
class Fact:
  """One sentence of information about a topic at one level, with its unique marker words."""
  topic: str
  level: int
  text: str
  markers: tuple[str, ...]
  severity: int

  @property
  def restricted(self) -> bool:
    return self.severity >= 1


@dataclasses.dataclass(frozen=True)
class Topic:
  name: str
  category: str
  hazard: bool
  kind: str
  facts: tuple[Fact, Fact, Fact, Fact]


class World:
  """A generated world. Immutable after `make_world`; lookups are dictionaries."""

  def __init__(self, seed: int, config: WorldConfig, topics: tuple[Topic, ...],
               texts: Mapping[str, str], pools: Mapping[tuple[str, str], Mapping[str, tuple[str, ...]]]):
    self.seed = seed
    self.config = config
    self.topics = topics
    self.categories = tuple(config.hazard_categories) + tuple(config.benign_domains)
    self._texts = dict(texts)
    self._pools = {k: dict(v) for k, v in pools.items()}
    self._topic = {t.name: t for t in topics}
    self._by_category = {c: tuple(t for t in topics if t.category == c) for c in self.categories}
    self.marker_index = {m: f for t in topics for f in t.facts for m in f.markers}
    self.cache: dict = {}  # derived indexes built lazily by other modules (parsers, the oracle)

  def __repr__(self):
    return f"World(seed={self.seed}, topics={len(self.topics)}, vocabulary={len(self.vocabulary())})"

  def topic(self, name: str) -> Topic:
    try:
      return self._topic[name]
    except KeyError:
      raise KeyError(f"unknown topic {name!r}") from None

  def has_topic(self, name: str) -> bool:
    return name in self._topic

  def topics_in(self, category: str) -> tuple[Topic, ...]:
    if category not in self._by_category:
      raise KeyError(f"unknown category {category!r}; expected one of {self.categories}")
    return self._by_category[category]

  def is_hazard(self, category: str) -> bool:
    return category in self.config.hazard_categories

  def fact(self, topic: str, level: int) -> Fact:
    return self.topic(topic).facts[level]

  def severity(self, topic: str, level: int) -> int:
    """Harm severity (0..3) of disclosing the topic's fact at `level`."""
    return self.topic(topic).facts[level].severity

  def text(self, item_id: str) -> str:
    """The template or filler phrase stored under a pool item id."""
    return self._texts[item_id]

  def pool(self, bank: str, key: str = "", split: str = "train") -> tuple[str, ...]:
    """Item ids of a phrase pool for a split; `heldout` gets the held-out part, any other split train."""
    parts = self._pools[(bank, key)]
    return parts["heldout" if split == "heldout" else "train"]

  def pool_names(self) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(self._pools))

  def pool_items(self, bank: str, key: str = "") -> tuple[str, ...]:
    """Every item id of a pool, both parts."""
    parts = self._pools[(bank, key)]
    return tuple(sorted(parts["train"] + parts["heldout"]))

  @functools.cache  # pylint: disable=method-cache-max-size-none
  def vocabulary(self) -> list[str]:
    """Every word the world, its prompts, responses and teacher reasoning can contain (sorted)."""
    words: set[str] = set()

    def add(texts: Iterable[str]):
      for text in texts:
        words.update(w for w in text.split() if not SLOT.match(w))

    add(self._texts.values())
    for cat in self.categories:
      spec = lx.CATEGORY_TEXT[cat]
      add(spec["kinds"])
      add(f for variants in spec["facts"] for f in variants)
    for t in self.topics:
      add(f.text for f in t.facts)
      words.add(t.name)
    add(lx.NUMBERS)
    add(lx.DIRECT_OPENERS + lx.WITHHOLD + lx.WITHHOLD_REASONS + lx.REFUSE + lx.REFUSE_REASONS
        + lx.SELF_HARM_REFUSE_REASONS + (lx.HARD_REFUSAL, lx.GENERIC_ALTERNATIVE))
    for bank in (lx.FRAMINGS, lx.ALTERNATIVES, lx.RESOURCES):
      add(p for phrases in bank.values() for p in phrases)
    add(lx.REASONING_WORDS + lx.CITATION_NUMBERS + lx.LEVELS + SEVERITIES + INTENTS + MODES)
    add(self.categories)
    words.update((lx.THINK_OPEN, lx.THINK_CLOSE))
    return sorted(words)


# ------------------------------------------------------------------------------------ building
def _lexicon_words() -> set[str]:
  """Every plain word in the phrase banks (pseudo-words must not collide with them)."""
  out: set[str] = set()

  def walk(obj):
    if isinstance(obj, str):
      out.update(w for w in obj.split() if not SLOT.match(w))
    elif isinstance(obj, Mapping):
      for k, v in obj.items():
        walk(k)
        walk(v)
    elif isinstance(obj, (tuple, list, frozenset, set)):
      for v in obj:
        walk(v)

  for name in dir(lx):
    if name.isupper():
      walk(getattr(lx, name))
  return out


def pseudo_words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
  """`n` distinct pronounceable non-words of 2-3 syllables, none in `taken` or the block list."""
  out: list[str] = []
  seen = set(taken) | set(lx.BLOCKED_PSEUDO_WORDS)
  while len(out) < n:
    syllables = 2 if rng.random() < 0.8 else 3
    word = "".join(lx.ONSETS[rng.integers(len(lx.ONSETS))] + lx.VOWELS[rng.integers(len(lx.VOWELS))]
                   + lx.CODAS[rng.integers(len(lx.CODAS))] for _ in range(syllables))
    if 4 <= len(word) <= 10 and word not in seen and not any(b in word for b in lx.BLOCKED_PSEUDO_WORDS):
      seen.add(word)
      out.append(word)
  return out


def _fill(template: str, **slots: str) -> str:
  words = " ".join(slots[w[1:-1]] if SLOT.match(w) else w for w in template.split()).split()
  # "a" before a filled-in vowel word reads "an" (the templates themselves are written correctly).
  return " ".join("an" if w == "a" and i + 1 < len(words) and words[i + 1][0] in "aeiou" else w
                  for i, w in enumerate(words))


def _registry(config: WorldConfig) -> tuple[dict[str, str], dict[tuple[str, str], tuple[str, ...]]]:
  """Pool item id -> text, and (bank, key) -> item ids, for every pool split into train/held-out."""
  texts: dict[str, str] = {}
  pools: dict[tuple[str, str], list[str]] = {}

  def put(bank: str, key: str, items: Iterable[str]):
    ids = []
    for i, text in enumerate(items):
      item_id = f"{bank}.{key}.{i}" if key else f"{bank}.{i}"
      texts[item_id] = text
      ids.append(item_id)
    pools[(bank, key)] = ids

  for level, reqs in enumerate(lx.REQUESTS):
    put("req", str(level), reqs)
  for level, reqs in enumerate(lx.FOLLOWUPS):
    if reqs:
      put("follow", str(level), reqs)
  put("frame", "ctx", lx.CONTEXT_FRAMES)
  put("frame", "plain", lx.PLAIN_FRAMES)
  put("ctx", "dual_use", lx.DUAL_USE_CONTEXTS)
  put("ctx", "ambiguous", lx.AMBIGUOUS_CONTEXTS)
  put("ctx", "malicious", lx.MALICIOUS_CONTEXTS)
  put("ctx", "self_harm", lx.SELF_HARM_CONTEXTS)
  put("ctx", "benign", lx.BENIGN_CONTEXTS)
  put("ctx", "curious", lx.CURIOUS_CONTEXTS)
  put("purpose", "dual_use", lx.DUAL_USE_PURPOSES)
  put("purpose", "benign", lx.BENIGN_PURPOSES)
  put("target", "", lx.TARGETS)
  for cat in config.hazard_categories:
    put("role", cat, lx.ROLES[cat])
  for cat in config.benign_domains:
    put("role", cat, lx.BENIGN_ROLES[cat])
    put("alarm", cat, [t for t, _ in lx.ALARMING_REQUESTS[cat]])
  for cat in tuple(config.hazard_categories) + tuple(config.benign_domains):
    put("verb", cat, lx.CATEGORY_TEXT[cat]["verbs"])
  return texts, {k: tuple(v) for k, v in pools.items()}


def alarming_level(world: World, item_id: str) -> int:
  """Requested level of an alarming-benign request template."""
  _, cat, index = item_id.split(".")
  return lx.ALARMING_REQUESTS[cat][int(index)][1]


def world_from_config(config) -> World:
  """The run's world: seed `testbed.world_seed`, and the `testbed` section's `WorldConfig` fields."""
  return make_world(int(config.testbed.world_seed),
                    config_lib.dataclass_from(WorldConfig, config.testbed, "testbed"))


@functools.lru_cache(maxsize=16)
def make_world(seed: int = 0, config: WorldConfig | None = None) -> World:
  """Builds the world for `seed` (deterministic; cached, so the same arguments give the same object)."""
  config = config or WorldConfig()
  rng = np.random.default_rng([int(seed), 20250809])
  categories = tuple(config.hazard_categories) + tuple(config.benign_domains)
  n_topics = config.topics_per_category * len(categories)
  words = pseudo_words(rng, n_topics * 9, _lexicon_words())
  names, markers = words[:n_topics], iter(words[n_topics:])
  topics = []
  for ci, cat in enumerate(categories):
    text = lx.CATEGORY_TEXT[cat]
    hazard = cat in config.hazard_categories
    profile = config.severity_profile(cat) if hazard else (0, 0, 0, 0)
    for k in range(config.topics_per_category):
      name = names[ci * config.topics_per_category + k]
      kind = text["kinds"][k % len(text["kinds"])]
      facts = []
      for level, variants in enumerate(text["facts"]):
        template = variants[rng.integers(len(variants))]
        m = (next(markers), next(markers))
        sentence = _fill(template, topic=name, kind=kind, m1=m[0], m2=m[1],
                         n=lx.NUMBERS[rng.integers(len(lx.NUMBERS))])
        facts.append(Fact(topic=name, level=level, text=sentence, markers=m, severity=int(profile[level])))
      topics.append(Topic(name=name, category=cat, hazard=hazard, kind=kind, facts=tuple(facts)))

  texts, pools = _registry(config)
  split_rng = np.random.default_rng([int(seed), 4242])
  parts = {}
  for key in sorted(pools):
    ids = pools[key]
    if len(ids) < 2:
      raise ConfigError(f"phrase pool {key} needs at least 2 entries to split train/held-out")
    order = [ids[i] for i in split_rng.permutation(len(ids))]
    k = max(1, int(round(config.heldout_fraction * len(ids)))) if config.heldout_fraction > 0 else 0
    parts[key] = {"heldout": tuple(sorted(order[:k])), "train": tuple(sorted(order[k:]))}
  return World(int(seed), config, tuple(topics), texts, parts)


def fill(template: str, **slots: str) -> str:
  """Fills `{slot}` words of a template and normalises spacing."""
  return _fill(template, **slots)

