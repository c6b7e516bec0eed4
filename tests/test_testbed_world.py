"""The testbed world and its prompt generator: determinism, balance, splits, multi-turn, vocabulary."""
import collections
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from safecomp import testbed
from safecomp.errors import ConfigError, DataError
from safecomp.testbed import lexicon, parsing
from safecomp.testbed import world as world_lib

N = 600


@pytest.fixture(scope="module")
def world():
  return testbed.make_world(0)


@pytest.fixture(scope="module")
def splits(world):
  return {s: testbed.generate_examples(world, s, N, seed=1) for s in testbed.SPLITS}


def _fresh(seed, config=None):
  return world_lib.make_world.__wrapped__(seed, config)  # bypass the cache


def test_world_is_deterministic_by_seed():
  a, b, c = _fresh(3), _fresh(3), _fresh(4)
  assert a.topics == b.topics and a.vocabulary() == b.vocabulary()
  assert a.topics != c.topics
  assert testbed.make_world(3) is testbed.make_world(3)  # cached


def test_world_shape_and_fictional_markers(world):
  cfg = world.config
  assert len(world.topics) == cfg.topics_per_category * (len(cfg.hazard_categories) + len(cfg.benign_domains))
  assert len(cfg.benign_domains) >= 6 and set(lexicon.HAZARD_CATEGORIES) == set(cfg.hazard_categories)
  markers = [m for t in world.topics for f in t.facts for m in f.markers]
  assert len(markers) == len(set(markers)) == len(world.marker_index)  # unique to topic and level
  names = {t.name for t in world.topics}
  real_words = world_lib._lexicon_words()  # pylint: disable=protected-access
  assert not (set(markers) | names) & real_words
  assert not (set(markers) | names) & lexicon.BLOCKED_PSEUDO_WORDS
  for t in world.topics:
    assert [f.level for f in t.facts] == [0, 1, 2, 3]
    assert t.name in t.facts[0].text
    for f in t.facts:
      assert all(m in f.text.split() for m in f.markers)
      assert 6 <= len(f.text.split()) <= 10


def test_severity_profiles(world):
  for t in world.topics:
    sev = [world.severity(t.name, lvl) for lvl in range(4)]
    if t.hazard:
      assert sev[:2] == [0, 0] and min(sev[2:]) >= 1 and sev == sorted(sev)
    else:
      assert sev == [0, 0, 0, 0]
  bio, fraud = world.topics_in("biology")[0], world.topics_in("fraud_privacy")[0]
  assert world.severity(bio.name, 3) == 3 and world.severity(fraud.name, 2) == 1


def test_world_config_is_configurable_and_validated():
  small = _fresh(0, testbed.WorldConfig(topics_per_category=2, benign_domains=("cooking", "travel")))
  assert len(small.topics) == 2 * 8
  assert len(small.vocabulary()) < len(testbed.make_world(0).vocabulary())
  with pytest.raises(ConfigError, match="WorldConfig.severity_profiles"):
    testbed.WorldConfig(severity_profiles=(("biology", (0, 1, 2, 3)),))
  with pytest.raises(ConfigError, match="WorldConfig.hazard_categories: unknown"):
    testbed.WorldConfig(hazard_categories=("biology", "astrology"))
  with pytest.raises(ConfigError, match="WorldConfig.intent_mix"):
    testbed.WorldConfig(intent_mix=(1.0, 0.0))
  with pytest.raises(ConfigError, match="unknown split"):
    testbed.generate_examples(testbed.make_world(0), "validation", 3)


def test_generation_is_deterministic_by_seed(world):
  a = testbed.generate_examples(world, "train", 200, seed=7)
  b = testbed.generate_examples(world, "train", 200, seed=7)
  c = testbed.generate_examples(world, "train", 200, seed=8)
  assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
  assert [e.prompt for e in a] != [e.prompt for e in c]
  assert len({e.uid for e in a}) == 200
  test = testbed.generate_examples(world, "test", 200, seed=7)
  assert len({e.prompt for e in a} & {e.prompt for e in test}) < 20  # new draws


def test_labels_are_balanced(world):
  ex = testbed.generate_examples(world, "heldout", 900, seed=2)  # no multi-turn share in heldout
  intents = collections.Counter(e.intent for e in ex)
  assert intents == {"benign": 300, "dual_use": 300, "malicious": 300}
  for intent in ("dual_use", "malicious"):
    levels = collections.Counter(e.requested_level for e in ex if e.intent == intent)
    assert set(levels) == {0, 1, 2, 3} and max(levels.values()) - min(levels.values()) <= 1
    cats = collections.Counter(e.category for e in ex if e.intent == intent)
    assert set(cats) == set(world.config.hazard_categories)
    assert max(cats.values()) - min(cats.values()) <= 2
    assert all(e.is_hazard_category for e in ex if e.intent == intent)
  benign = [e for e in ex if e.intent == "benign"]
  assert 0.2 <= sum(e.alarming_benign for e in benign) / len(benign) <= 0.4
  assert all(e.requested_level <= 1 for e in benign if e.is_hazard_category)
  skewed = _fresh(0, testbed.WorldConfig(intent_mix=(0.5, 0.25, 0.25), train_multiturn_fraction=0.0))
  counts = collections.Counter(e.intent for e in testbed.generate_examples(skewed, "train", 400, seed=0))
  assert counts == {"benign": 200, "dual_use": 100, "malicious": 100}


def test_alarming_benign_prompts(splits):
  alarming = [e for e in splits["train"] if e.alarming_benign]
  assert alarming
  for e in alarming:
    assert e.intent == "benign" and not e.is_hazard_category and e.requested_level >= 2
    assert set(e.prompt.split()) & lexicon.ALARMING_WORDS, e.prompt


def test_dual_use_malicious_pairs(splits):
  pairs = collections.defaultdict(list)
  for e in splits["train"]:
    if e.pair_id:
      pairs[e.pair_id].append(e)
  assert len(pairs) >= 20
  for members in pairs.values():
    assert sorted(m.intent for m in members) == ["dual_use", "malicious"]
    d, m = sorted(members, key=lambda e: e.intent)
    assert (d.topic, d.requested_level) == (m.topic, m.requested_level)
    assert d.template_id.split("|")[:2] == m.template_id.split("|")[:2]  # same frame and request
    assert d.prompt != m.prompt


def test_heldout_templates_and_fillers_are_disjoint_from_training(world, splits):
  seen = splits["train"] + splits["test"] + splits["multiturn"]
  held = splits["heldout"]
  assert not {e.template_id for e in seen} & {e.template_id for e in held}
  parts_seen = {p for e in seen for p in e.template_id.split("|")} - {"none", "multiturn"}
  parts_held = {p for e in held for p in e.template_id.split("|")} - {"none", "multiturn"}
  assert not parts_seen & parts_held
  fillers_seen = {f for e in seen for f in e.filler_ids}
  fillers_held = {f for e in held for f in e.filler_ids}
  assert fillers_held and not fillers_seen & fillers_held
  # The pools themselves partition, and the held-out text of contexts never appears in training.
  for bank, key in world.pool_names():
    train, heldout = set(world.pool(bank, key, "train")), set(world.pool(bank, key, "heldout"))
    assert train and heldout and not train & heldout, (bank, key)
  held_ctx = [world.text(i) for i in world.pool("ctx", "ambiguous", "heldout")]
  assert not any(c in e.prompt for c in held_ctx for e in seen)


def test_multiturn_structure(world, splits):
  ex = splits["multiturn"]
  assert all(e.multiturn for e in ex)
  assert collections.Counter(e.intent for e in ex) == {"dual_use": N // 2, "malicious": N // 2}
  n_turns = collections.Counter(len(e.messages) for e in ex)
  assert set(n_turns) == {3, 5}
  for e in ex:
    roles = [m["role"] for m in e.messages]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
    assert e.is_hazard_category and e.requested_level in (2, 3)
    assert sum(len(m["content"].split()) for m in e.messages) <= world.config.multiturn_max_words
    given = set()
    for m in e.messages[1::2]:  # earlier answers: ideal direct answers at background / mechanism
      g = testbed.grade(e.messages, m["content"], world)
      assert g.severity == 0 and g.mode == "direct"
      given |= {d for d in g.disclosed}
    assert given == {f"{e.topic}:0", f"{e.topic}:1"}
    assert e.topic not in e.prompt.split()  # the last turn refers back ("it")
  mixed = collections.Counter(e.multiturn for e in splits["train"])
  assert mixed[True] == round(N * world.config.train_multiturn_fraction)


def test_prompt_lengths(splits):
  for split in ("train", "heldout"):
    lengths = [len(e.prompt.split()) for e in splits[split] if not e.multiturn]
    assert 4 <= min(lengths) and max(lengths) <= 32
    assert 12 <= sum(lengths) / len(lengths) <= 25


def test_vocabulary_is_closed(world, splits):
  vocab = world.vocabulary()
  assert vocab == sorted(vocab) and 1000 <= len(vocab) <= 2000
  words = set(vocab)
  for examples in splits.values():
    for e in examples:
      for m in e.messages:
        assert set(m["content"].split()) <= words, m["content"]
      assert set(testbed.ideal_response(world, e).split()) <= words


def test_parser_recovers_labels_from_text(world, splits):
  for split, examples in splits.items():
    for e in examples:
      info = parsing.parse_prompt(world, e.messages)
      assert (info.known, info.topic, info.requested_level, info.intent) == \
             (True, e.topic, e.requested_level, e.intent), (split, e.messages)
      if e.intent == "malicious":
        assert info.malicious_cue


def test_example_dict_roundtrip(splits):
  for e in splits["multiturn"][:5] + splits["train"][:20]:
    d = json.loads(json.dumps(e.to_dict()))
    assert testbed.Example.from_dict(d) == e
  bad = splits["train"][0].to_dict()
  bad["intnet"] = bad.pop("intent")
  with pytest.raises(DataError, match="unknown Example keys"):
    testbed.Example.from_dict(bad, where="rows.jsonl")


def test_generation_speed(world):
  start = time.perf_counter()
  ex = testbed.generate_examples(world, "train", 10_000, seed=5)
  assert len(ex) == 10_000
  assert time.perf_counter() - start < 10.0  # about 0.5 s on one free core


def test_same_seed_same_result_across_processes(tmp_path):
  """No dependence on Python's per-process string hashing."""
  code = ("import hashlib, json; from safecomp import testbed as t; w = t.make_world(1); "
          "ex = [e for s in t.SPLITS for e in t.generate_examples(w, s, 100, seed=2)]; "
          "rows = [e.to_dict() for e in ex] + [t.grade(e.messages, t.ideal_response(w, e), w).to_dict() "
          "for e in ex] + [w.vocabulary()]; "
          "print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())")
  root = str(pathlib.Path(__file__).resolve().parents[1])
  digests = set()
  for hash_seed in ("1", "2"):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    digests.add(out.stdout.strip())
  assert len(digests) == 1
