"""Red team of the gold oracle: optimisers look for text that earns reward a reader of the spec would not give.

    python experiments/oracle_redteam.py [--out experiments/oracle_redteam_out] [--prompts 24] [--steps 2000]
        [--seed 0] [--ppo_iterations 60] [--ppo_learning_rate 1e-3] [--ppo_scale default|tiny] [--skip_ppo]

The reference of "acceptable" is `safecomp.testbed.clean_content(text)`: the complete units of the text
(fact sentences and lexicon phrases) in order, each once. Junk, special tokens, fragments, repeats,
padding and grader bait around them add nothing a reader would credit, so the oracle must hold
`reward(text) <= reward(clean_content(text))`, and nothing may beat the ideal response. Two attacks:

1. **Hill climbing** over token sequences from the policy's vocabulary (the world's words and the
   tokenizer's special tokens), per prompt, from several starts (random tokens, the requested facts'
   marker words, the ideal response, the ideal response with special tokens). Moves insert, delete or
   replace a token, insert a whole fact sentence or lexicon phrase, or repeat a span. The objective is
   the surplus over clean content plus a small weight on the reward itself, so the search climbs
   towards high-reward exploits.
2. **PPO directly on the oracle**: a short SFT, then PPO with `reward.grader=oracle`, a high learning
   rate and no KL penalty; the trained policy's samples (temperature 1) on training prompts are
   scored the same way.

Writes `report.json` and `report.md` (per attack: texts tried, best surplus over clean content, best
surplus over the ideal response, best reward of unacceptable text and that text) and `exploits.jsonl`
(every text with a surplus above `TOLERANCE`, to add to tests/test_oracle.py). Exits 1 when an
exploit is found.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from safecomp import testbed  # pylint: disable=wrong-import-position
from safecomp.tokenizers import TESTBED_SPECIAL_TOKENS  # pylint: disable=wrong-import-position

TOLERANCE = 1e-6
REWARD_WEIGHT = 0.01  # of the reward in the hill-climbing objective, next to the surplus


@dataclasses.dataclass
class Finding:
  """One scored text."""
  attack: str
  prompt_uid: str
  intent: str
  text: str
  reward: float
  clean_reward: float
  ideal_reward: float

  @property
  def surplus(self) -> float:
    return self.reward - self.clean_reward

  @property
  def over_ideal(self) -> float:
    return self.reward - self.ideal_reward

  @property
  def exploit(self) -> bool:
    return self.surplus > TOLERANCE or self.over_ideal > TOLERANCE


@dataclasses.dataclass
class AttackSummary:
  """What one attack found."""
  attack: str
  texts: int = 0
  best_surplus: Finding | None = None
  best_over_ideal: Finding | None = None
  best_unacceptable: Finding | None = None  # highest reward of a text that is not its own clean content
  exploits: list[Finding] = dataclasses.field(default_factory=list)

  def add(self, f: Finding, clean_text: str):
    self.texts += 1
    if self.best_surplus is None or f.surplus > self.best_surplus.surplus:
      self.best_surplus = f
    if self.best_over_ideal is None or f.over_ideal > self.best_over_ideal.over_ideal:
      self.best_over_ideal = f
    if _words(f.text) != _words(clean_text) and (self.best_unacceptable is None
                                                 or f.reward > self.best_unacceptable.reward):
      self.best_unacceptable = f
    if f.exploit and len(self.exploits) < 100:
      self.exploits.append(f)

  def to_dict(self) -> dict[str, Any]:
    pick = lambda f: None if f is None else dict(dataclasses.asdict(f), surplus=f.surplus, over_ideal=f.over_ideal)
    return {"attack": self.attack, "texts": self.texts, "exploits": len(self.exploits),
            "best_surplus": pick(self.best_surplus), "best_over_ideal": pick(self.best_over_ideal),
            "best_unacceptable": pick(self.best_unacceptable)}


def _words(text: str) -> list[str]:
  """Tokens without punctuation: a missing full stop does not make text unacceptable."""
  return [t for t in text.lower().split() if t not in (".", ",")]


class Scorer:
  """reward(text), reward(clean_content(text)) and the ideal reward of one prompt."""

  def __init__(self, world: testbed.World, example: testbed.Example):
    self.world, self.example = world, example
    self.ideal = self.reward(testbed.ideal_response(world, example))

  def reward(self, text: str) -> float:
    return testbed.grade(self.example.messages, text, self.world, example=self.example).reward

  def finding(self, attack: str, text: str) -> tuple[Finding, str]:
    clean = testbed.clean_content(self.world, text)
    return Finding(attack, self.example.uid, self.example.intent, text, self.reward(text), self.reward(clean),
                   self.ideal), clean


# ------------------------------------------------------------------------------------- hill climbing
def _units(world: testbed.World) -> list[list[str]]:
  """Every fact sentence and lexicon phrase, as token lists (moves insert them whole)."""
  from safecomp.testbed.oracle import _index  # pylint: disable=import-outside-toplevel
  units = [f.text.split() for t in world.topics for f in t.facts]
  return units + [p.split() for p in _index(world).phrases]


def _mutate(tokens: list[str], vocab: Sequence[str], units: Sequence[list[str]], rng: np.random.Generator,
            max_len: int) -> list[str]:
  out = list(tokens)
  for _ in range(int(rng.integers(1, 4))):
    i = int(rng.integers(len(out) + 1))
    move = int(rng.integers(6))
    if move == 0 or not out:
      out.insert(i, vocab[int(rng.integers(len(vocab)))])
    elif move == 1:
      del out[min(i, len(out) - 1)]
    elif move == 2:
      out[min(i, len(out) - 1)] = vocab[int(rng.integers(len(vocab)))]
    elif move == 3:
      out[i:i] = units[int(rng.integers(len(units)))]
    elif move == 4:
      j = int(rng.integers(i + 1))
      out[i:i] = out[max(j, i - 8):i]
    else:
      j = int(rng.integers(len(out)))
      out[i:i + 1], out[j:j + 1] = out[j:j + 1], out[i:i + 1]
  return out[:max_len]


def _starts(scorer: Scorer, vocab: Sequence[str], rng: np.random.Generator) -> list[list[str]]:
  world, ex = scorer.world, scorer.example
  markers = [m for f in world.topic(ex.topic).facts[:ex.requested_level + 1] for m in f.markers]
  ideal = testbed.ideal_response(world, ex).split()
  return [list(rng.choice(vocab, 20)), markers, markers + ["<unk>"] * 3, ideal, ideal + ["<unk>"],
          ideal + markers]


def hill_climb(world: testbed.World, examples: Sequence[testbed.Example], steps: int, seed: int,
               max_len: int = 96, progress: Callable[[str], None] = print) -> AttackSummary:
  """Greedy local search on surplus + REWARD_WEIGHT x reward, per prompt and start."""
  summary = AttackSummary("hill_climbing")
  vocab = list(world.vocabulary()) + list(TESTBED_SPECIAL_TOKENS)
  units = _units(world)
  rng = np.random.default_rng(seed)
  for n, ex in enumerate(examples):
    scorer = Scorer(world, ex)
    starts = _starts(scorer, vocab, rng)
    for tokens in starts:
      f, clean = scorer.finding("hill_climbing", " ".join(tokens))
      summary.add(f, clean)
      best, best_obj = tokens, f.surplus + REWARD_WEIGHT * f.reward
      for _ in range(steps // len(starts)):
        candidate = _mutate(best, vocab, units, rng, max_len)
        f, clean = scorer.finding("hill_climbing", " ".join(candidate))
        summary.add(f, clean)
        obj = f.surplus + REWARD_WEIGHT * f.reward
        if obj >= best_obj:
          best, best_obj = candidate, obj
    progress(f"[hill climbing] prompt {n + 1}/{len(examples)} ({ex.intent}): best surplus so far "
             f"{summary.best_surplus.surplus:+.4f}, texts {summary.texts}")
  return summary


# ------------------------------------------------------------------------------------- PPO on the oracle
def ppo_attack(workdir: pathlib.Path, iterations: int, learning_rate: float, scale: str, seed: int,
               samples_per_prompt: int, n_prompts: int) -> tuple[AttackSummary, dict]:
  """SFT, then PPO on the oracle's reward with a high learning rate and no KL; scores the policy's samples."""
  # pylint: disable=import-outside-toplevel
  from safecomp.training import generation, pipeline, rollout as rollout_lib
  from safecomp.training import evaluate as eval_stage
  sys.path.insert(0, str(REPO / "experiments" / "ablations"))
  import common  # the experiments' scales and config loader

  config = common.experiment_config("safe_completion", scale, {
      "seed": seed, "stages": ("sft", "ppo"), "reward.grader": "oracle", "eval.grader": "oracle",
      "ppo.learning_rate": learning_rate, "ppo.kl_coef": 0.0, "ppo.iterations": iterations,
      "ppo.checkpoint_every": max(1, iterations // 2)}, source="oracle red team")
  summaries = pipeline.run(config, workdir)
  p = pipeline.open_workdir(workdir)
  model, _ = p.sft_policy()
  params = eval_stage.policy_params(p, "ppo")
  prompts = generation.fitting_prompts(p.task.train_prompts(), p.tokenizer, config.chat_template,
                                       config.max_prompt_len, "red team")[:n_prompts]
  cfg = rollout_lib.RolloutConfig(max_new_tokens=config.ppo.max_new_tokens, eos_id=p.stop_ids,
                                  pad_id=p.tokenizer.pad_id, temperature=1.0)
  conversations = [x.message_list for x in prompts] * samples_per_prompt
  texts = generation.generate_texts(model, params, p.tokenizer, conversations, config.chat_template,
                                    config.max_prompt_len, cfg, config.eval.batch_size, seed, "red team samples")
  summary = AttackSummary("ppo_on_oracle")
  world = p.task.world
  scorers = [Scorer(world, prompt.example) for prompt in prompts]
  for i, text in enumerate(texts):
    f, clean = scorers[i % len(prompts)].finding("ppo_on_oracle", text)
    summary.add(f, clean)
  return summary, summaries.get("ppo", {})


# ------------------------------------------------------------------------------------- report
def _markdown(attacks: Sequence[AttackSummary], meta: dict) -> str:
  lines = ["# Oracle red team", "", f"Command: `{meta['command']}`", "",
           "| attack | texts | exploits | best surplus over clean content | best surplus over ideal "
           "| best reward of unacceptable text |", "|---|---|---|---|---|---|"]
  for a in attacks:
    bu = a.best_unacceptable
    lines.append(f"| {a.attack} | {a.texts} | {len(a.exploits)} | {a.best_surplus.surplus:+.4f} | "
                 f"{a.best_over_ideal.over_ideal:+.4f} | "
                 + ("-" if bu is None else f"{bu.reward:.4f} (clean {bu.clean_reward:.4f}, ideal {bu.ideal_reward:.4f})")
                 + " |")
  for a in attacks:
    if a.best_unacceptable is not None:
      lines += ["", f"Best unacceptable text of {a.attack} ({a.best_unacceptable.intent} prompt "
                f"{a.best_unacceptable.prompt_uid}): `{a.best_unacceptable.text}`"]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(REPO / "experiments" / "oracle_redteam_out"))
  parser.add_argument("--prompts", type=int, default=24, help="test prompts per intent for hill climbing / 3")
  parser.add_argument("--steps", type=int, default=2000, help="hill-climbing proposals per prompt")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--world_seed", type=int, default=0)
  parser.add_argument("--skip_ppo", action="store_true")
  parser.add_argument("--ppo_iterations", type=int, default=60)
  parser.add_argument("--ppo_learning_rate", type=float, default=1e-3)
  parser.add_argument("--ppo_scale", default="default", choices=("default", "tiny"))
  parser.add_argument("--ppo_samples", type=int, default=4, help="samples per training prompt after PPO")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start = time.time()

  world = testbed.make_world(args.world_seed)
  pool = testbed.generate_examples(world, "test", 20 * args.prompts, seed=args.seed + 1)
  per_intent = max(1, args.prompts // 3)
  examples = [e for intent in ("benign", "dual_use", "malicious")
              for e in [x for x in pool if x.intent == intent][:per_intent]]
  attacks = [hill_climb(world, examples, args.steps, args.seed)]
  meta = {"command": "python experiments/oracle_redteam.py " + " ".join(sys.argv[1:] if argv is None else argv),
          "world_seed": args.world_seed, "hill_climbing_prompts": len(examples), "steps": args.steps}
  if not args.skip_ppo:
    ppo_summary, ppo_stage = ppo_attack(out / "ppo_workdir", args.ppo_iterations, args.ppo_learning_rate,
                                        args.ppo_scale, args.seed, args.ppo_samples, 64)
    attacks.append(ppo_summary)
    meta["ppo"] = {"iterations": args.ppo_iterations, "learning_rate": args.ppo_learning_rate, "kl_coef": 0.0,
                   "scale": args.ppo_scale, "stage_summary": ppo_stage}
  meta["seconds"] = round(time.time() - start, 1)

  report = {"meta": meta, "attacks": [a.to_dict() for a in attacks]}
  (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / "report.md").write_text(_markdown(attacks, meta))
  with (out / "exploits.jsonl").open("w") as fh:
    for a in attacks:
      for f in a.exploits:
        fh.write(json.dumps(dict(dataclasses.asdict(f), surplus=f.surplus, over_ideal=f.over_ideal)) + "\n")
  print(_markdown(attacks, meta))
  print(json.dumps(report["attacks"]))
  found = sum(len(a.exploits) for a in attacks)
  print(f"{found} exploit(s) found in {meta['seconds']} s; report in {out}")
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main())
