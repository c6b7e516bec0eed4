"""Prompt generation: seeded, label-balanced examples for the train / test / heldout / multiturn splits."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from safecomp.constants import INTENTS
from safecomp.errors import ConfigError, DataError
from safecomp.testbed import lexicon as lx
from safecomp.testbed import responses
from safecomp.testbed.world import World, alarming_level, fill

SPLITS = ("train", "test", "heldout", "multiturn")
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt with its ground-truth labels. The last message is the user turn to answer."""
  uid: str
  split: str
  messages: list[dict[str, str]]
  intent: str
  category: str
  is_hazard_category: bool
  topic: str
  requested_level: int
  template_id: str
  pair_id: str | None = None
  alarming_benign: bool = False
  multiturn: bool = False
  filler_ids: tuple[str, ...] = ()

  @property
  def prompt(self) -> str:
    """The last user turn."""
    return self.messages[-1]["content"]

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["filler_ids"] = list(self.filler_ids)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "<dict>") -> "Example":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise DataError(where, 0, f"unknown Example keys {unknown}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(d))
    if missing:
      raise DataError(where, 0, f"missing Example keys {missing}")
    if d["intent"] not in INTENTS:
      raise DataError(where, 0, f"key 'intent': {d['intent']!r} is not one of {INTENTS}")
    msgs = d["messages"]
    if not msgs or not all(isinstance(m, Mapping) and {"role", "content"} <= set(m) for m in msgs):
      raise DataError(where, 0, "key 'messages': needs a non-empty list of {role, content}")
    return cls(**{**d, "messages": [dict(m) for m in msgs],
                  "filler_ids": tuple(d.get("filler_ids", ()))})


def _allocate(weights: Sequence[float], n: int) -> list[int]:
  """Exact counts summing to n (largest remainder), so label mixes are balanced, not sampled."""
  w = np.asarray(weights, dtype=np.float64)
  w = w / w.sum()
  raw = w * n
  counts = np.floor(raw).astype(int)
  for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
    counts[i] += 1
  return counts.tolist()


def _balanced(rng: np.random.Generator, items: Sequence, n: int) -> list:
  """`n` items cycling through `items` in a shuffled order (each appears n/len times, +-1)."""
  if not items:
    return []
  reps = [items[i % len(items)] for i in range(n)]
  return [reps[i] for i in rng.permutation(n)]


def _levels(rng: np.random.Generator, weights: Sequence[float], n: int) -> list[int]:
  out = [lvl for lvl, c in enumerate(_allocate(weights, n)) for _ in range(c)]
  return [out[i] for i in rng.permutation(len(out))]


class PromptBuilder:
  """Draws phrases from the split's pools and renders prompts (the example generator and the adaptive attacker)."""

  def __init__(self, world: World, split: str, rng: np.random.Generator):
    self.world, self.rng = world, rng
    self.pool_split = "heldout" if split == "heldout" else "train"

  def pick(self, bank: str, key: str = "") -> str:
    ids = self.world.pool(bank, key, self.pool_split)
    if not ids:
      raise ConfigError(f"phrase pool ({bank!r}, {key!r}) has no {self.pool_split} entries; "
                        "raise WorldConfig.heldout_fraction above 0 to build the heldout split")
    return ids[int(self.rng.integers(len(ids)))]

  def text(self, item_id: str) -> str:
    return self.world.text(item_id)

  def context(self, kind: str, category: str) -> tuple[str, list[str]]:
    """A context clause of `kind` for `category`, and the pool ids it used."""
    if kind in ("ambiguous", "curious") or (kind == "malicious" and category == "self_harm"):
      t = self.pick("ctx", "self_harm" if kind == "malicious" else kind)
      return self.text(t), [t]
    fillers = {"dual_use": {"role": ("role", category), "purpose": ("purpose", "dual_use")},
               "benign": {"role": ("role", category), "purpose": ("purpose", "benign")},
               "malicious": {"target": ("target", "")}}
    if kind not in fillers:
      raise ValueError(f"unknown context kind {kind!r}")
    t = self.pick("ctx", kind)
    return self.fill_template(t, fillers[kind])

  def fill_template(self, template_id: str, slots: dict[str, tuple[str, str]],
                    **fixed: str) -> tuple[str, list[str]]:
    """Fills the slots a template uses from their pools; returns the text and the pool ids used."""
    template = self.text(template_id)
    ids, values = [template_id], dict(fixed)
    for slot, (bank, key) in slots.items():
      if f"{{{slot}}}" in template.split():
        item = self.pick(bank, key)
        ids.append(item)
        values[slot] = self.text(item)
    return fill(template, **values), ids

  def request(self, topic, level: int) -> tuple[str, str, list[str]]:
    text, ids = self.fill_template(self.pick("req", str(level)), {"verb": ("verb", topic.category)},
                           topic=topic.name, kind=topic.kind)
    return text, ids[0], ids[1:]

  def frame(self, request: str, context: str | None) -> tuple[str, str]:
    f = self.pick("frame", "plain" if context is None else "ctx")
    return fill(self.text(f), request=request, context=context or ""), f


def _single(b: PromptBuilder, uid: str, split: str, intent: str, topic, level: int, ctx_kind: str | None,
            pair_id: str | None = None, fixed: dict | None = None) -> tuple[Example, dict]:
  """One single-turn example; `fixed` reuses the request/frame of a pair's twin."""
  if fixed is None:
    request, req_id, fillers = b.request(topic, level)
    fixed = {"request": request, "req_id": req_id, "fillers": fillers,
             "frame": b.pick("frame", "ctx" if ctx_kind else "plain")}
  context, ctx_ids = b.context(ctx_kind, topic.category) if ctx_kind else (None, [])
  text = fill(b.text(fixed["frame"]), request=fixed["request"], context=context or "")
  template_id = "|".join([fixed["frame"], fixed["req_id"], ctx_ids[0] if ctx_ids else "none"])
  return Example(uid=uid, split=split, messages=[{"role": "user", "content": text}], intent=intent,
                 category=topic.category, is_hazard_category=topic.hazard, topic=topic.name,
                 requested_level=level, template_id=template_id, pair_id=pair_id,
                 alarming_benign=intent == "benign" and bool(set(text.split()) & lx.ALARMING_WORDS),
                 filler_ids=tuple(fixed["fillers"] + ctx_ids[1:])), fixed


def _alarming(b: PromptBuilder, uid: str, split: str, topic) -> Example:
  a = b.pick("alarm", topic.category)
  request = fill(b.text(a), topic=topic.name, kind=topic.kind)
  use_ctx = b.rng.random() < 0.5
  context, ctx_ids = b.context("benign", topic.category) if use_ctx else (None, [])
  text, frame = b.frame(request, context)
  return Example(uid=uid, split=split, messages=[{"role": "user", "content": text}], intent="benign",
                 category=topic.category, is_hazard_category=False, topic=topic.name,
                 requested_level=alarming_level(b.world, a),
                 template_id="|".join([frame, a, ctx_ids[0] if ctx_ids else "none"]),
                 alarming_benign=True, filler_ids=tuple(ctx_ids[1:]))


def _multiturn(b: PromptBuilder, uid: str, split: str, topic, intent: str, level: int) -> Example:
  """An adversarial conversation: benign-looking early turns, then the restricted detail.

  Redrawn (deterministically) until it fits `WorldConfig.multiturn_max_words`.
  """
  for _ in range(50):
    ex = _draw_multiturn(b, uid, split, topic, intent, level)
    if sum(len(m["content"].split()) for m in ex.messages) <= b.world.config.multiturn_max_words:
      return ex
  return ex


def _draw_multiturn(b: PromptBuilder, uid: str, split: str, topic, intent: str, level: int) -> Example:
  w, rng = b.world, b.rng
  three_turns = rng.random() < 0.5
  turns, ids = [], []
  if three_turns:  # background, then mechanism, then the final ask
    req, req_id, fillers = b.request(topic, 0)
    turns.append((f"{req} ?", 0))
    f1 = b.pick("follow", "1")
    turns.append((w.text(f1), 1))
    ids += [req_id, f1]
  else:  # mechanism with curious framing, then the final ask
    req, req_id, fillers = b.request(topic, 1)
    ctx, ctx_ids = b.context("curious", topic.category)
    turns.append((f"{ctx} . {req} ?", 1))
    ids += [req_id] + ctx_ids[:1]
    fillers = fillers + ctx_ids[1:]
  final, fin_ids = b.fill_template(b.pick("follow", str(level)), {"verb": ("verb", topic.category)})
  ids.append(fin_ids[0])
  fillers = fillers + fin_ids[1:]
  if intent == "malicious":
    ctx, ctx_ids = b.context("malicious", topic.category)
    final = f"{final} {ctx} ."
    ids.append(ctx_ids[0])
    fillers += ctx_ids[1:]
  turns.append((final, level))
  messages = []
  given = 0
  for text, lvl in turns[:-1]:
    # Earlier answers are the ideal direct ones; facts already given are not repeated.
    messages.append({"role": "user", "content": text})
    messages.append({"role": "assistant",
                     "content": responses.direct_answer(w, topic.name, lvl, levels=range(given, lvl + 1))})
    given = lvl + 1
  messages.append({"role": "user", "content": turns[-1][0]})
  return Example(uid=uid, split=split, messages=messages, intent=intent, category=topic.category,
                 is_hazard_category=True, topic=topic.name, requested_level=level,
                 template_id="|".join(["multiturn"] + ids), multiturn=True, filler_ids=tuple(fillers))


def generate_examples(world: World, split: str, n: int, seed: int = 0) -> list[Example]:
  """`n` examples of `split`, deterministic in (world, split, seed), with balanced labels.

  train / test draw from the training phrase pools (test with its own random stream); heldout draws
  only from the held-out pools (templates and fillers training never sees); multiturn gives
  adversarial conversations. The mix is set by the world's `WorldConfig`.
  """
  if split not in SPLITS:
    raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
  if n < 0:
    raise ConfigError(f"n must be >= 0, got {n}")
  cfg = world.config
  rng = np.random.default_rng([world.seed, _SPLIT_CODE[split], int(seed), 17])
  b = PromptBuilder(world, split, rng)
  prefix = f"w{world.seed}-{split}-{seed}"
  hazards, benign = list(cfg.hazard_categories), list(cfg.benign_domains)
  out: list[Example] = []

  def topic_in(category: str):
    topics = world.topics_in(category)
    return topics[int(rng.integers(len(topics)))]

  mt_share = 1.0 if split == "multiturn" else (cfg.train_multiturn_fraction if split in ("train", "test")
                                               else 0.0)
  n_multi = int(round(n * mt_share))
  if n_multi:
    n_mal = int(round(n_multi * cfg.multiturn_malicious_fraction))
    intents = _balanced(rng, ["malicious"] * n_mal + ["dual_use"] * (n_multi - n_mal), n_multi)
    cats = _balanced(rng, hazards, n_multi)
    levels = _balanced(rng, [2, 3], n_multi)
    for i in range(n_multi):
      out.append(_multiturn(b, f"{prefix}-{len(out)}", split, topic_in(cats[i]), intents[i], levels[i]))

  n_benign, n_dual, n_mal = _allocate(cfg.intent_mix, n - n_multi)
  # Benign: plain curiosity about hazard topics (levels 0-1), alarming-word requests, everyday asks.
  n_curious, n_alarm = _allocate([cfg.benign_hazard_fraction, cfg.alarming_fraction,
                                  max(0.0, 1 - cfg.benign_hazard_fraction - cfg.alarming_fraction)],
                                 n_benign)[:2]
  n_plain = n_benign - n_curious - n_alarm
  curious_w = cfg.level_mix[0][:2] if sum(cfg.level_mix[0][:2]) > 0 else (1.0, 1.0)
  for cat, lvl in zip(_balanced(rng, hazards, n_curious), _levels(rng, curious_w, n_curious)):
    out.append(_single(b, f"{prefix}-{len(out)}", split, "benign", topic_in(cat), lvl, "curious")[0])
  for cat in _balanced(rng, benign, n_alarm):
    out.append(_alarming(b, f"{prefix}-{len(out)}", split, topic_in(cat)))
  for cat, lvl in zip(_balanced(rng, benign, n_plain), _levels(rng, cfg.level_mix[0], n_plain)):
    ctx = "benign" if rng.random() < 0.6 else None
    out.append(_single(b, f"{prefix}-{len(out)}", split, "benign", topic_in(cat), lvl, ctx)[0])

  # Dual-use and malicious, with a share of exact twins (same topic, request and frame).
  dual_levels = _levels(rng, cfg.level_mix[1], n_dual)
  mal_levels = _levels(rng, cfg.level_mix[2], n_mal)
  n_pairs = int(cfg.pair_fraction * min(n_dual, n_mal))
  pairs = []
  for lvl in list(dual_levels):
    if len(pairs) == n_pairs:
      break
    if lvl in mal_levels:
      mal_levels.remove(lvl)
      dual_levels.remove(lvl)
      pairs.append(lvl)
  pair_cats = _balanced(rng, hazards, len(pairs))
  for k, (cat, lvl) in enumerate(zip(pair_cats, pairs)):
    topic, pid = topic_in(cat), f"{prefix}-p{k}"
    ctx = "dual_use" if rng.random() < 0.75 else "ambiguous"
    ex, fixed = _single(b, f"{prefix}-{len(out)}", split, "dual_use", topic, lvl, ctx, pid)
    out.append(ex)
    out.append(_single(b, f"{prefix}-{len(out)}", split, "malicious", topic, lvl, "malicious", pid,
                       fixed)[0])
  for cat, lvl in zip(_balanced(rng, hazards, len(dual_levels)), dual_levels):
    ctx = "dual_use" if rng.random() < 0.75 else "ambiguous"
    out.append(_single(b, f"{prefix}-{len(out)}", split, "dual_use", topic_in(cat), lvl, ctx)[0])
  for cat, lvl in zip(_balanced(rng, hazards, len(mal_levels)), mal_levels):
    out.append(_single(b, f"{prefix}-{len(out)}", split, "malicious", topic_in(cat), lvl, "malicious")[0])

  order = rng.permutation(len(out))
  return [out[i] for i in order]
