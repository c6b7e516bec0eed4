"""The compiled rollout: sample with the KV cache, score with an on-device grader, combine into r.

`make_rollout(...)` returns one pure function: prompts in, everything PPO needs out, with no host
round-trip between generation and reward when the grader runs on device: the reward model's heads
(`RewardModelScorer`) or a judge LM reading the spec's rubrics (`JudgeScorer`, when it shares the
policy's vocabulary). Graders that cannot run inside jit (the gold oracle, an HTTP judge, a judge with
another tokenizer) use `make_sampler` and score on the host with the same output layout.

Scoring the sampled sequences (policy, reference and critic forwards, the on-device grader) can run
`score_chunk_rows` rows at a time (`map_rows`), so the float32 logits of the whole rollout batch
([B, L, V]) never exist at once; 0 scores the batch in one piece.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from safecomp import models
from safecomp.models import lora
from safecomp import parallel
from safecomp.constants import INTENT_INDEX
from safecomp.rewards import composite
from safecomp.rewards import judge as judge_lib
from safecomp.rewards import reward_model as rm_lib


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  max_new_tokens: int
  eos_id: int | tuple[int, ...]  # the stop ids (see safecomp.training.generation.stop_ids)
  pad_id: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  reward_kind: str = "product"
  severity_to_safety: tuple[float, ...] = composite.DEFAULT_SEVERITY_TO_SAFETY
  helpfulness_kind: str = "bce"
  score_chunk_rows: int = 0  # rows per scoring forward (0: the whole batch at once)


def full_attention_mask(prompt_mask: jax.Array, response_mask: jax.Array) -> jax.Array:
  return jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)


def sample(policy_model, policy_params, prompts, prompt_mask, rng, cfg: RolloutConfig) -> dict:
  """Samples responses and returns sequences, masks and the sampler's own log-probs."""
  out = models.generate(policy_model, policy_params, prompts, prompt_mask, rng,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                        top_p=cfg.top_p, greedy=cfg.greedy, eos_id=cfg.eos_id, pad_id=cfg.pad_id)
  response_mask = out.response_mask.astype(jnp.int32)
  return {"sequences": out.sequences, "attention_mask": full_attention_mask(prompt_mask, response_mask),
          "response_mask": response_mask, "sample_logprobs": out.response_logprobs,
          "finished": out.finished}


@dataclasses.dataclass(frozen=True)
class ActorCritic:
  """The policy and its critic behind one params tree.

  `critic_model=None`: the value head sits on the policy's own trunk (`policy_model` has heads
  ("lm", "value")) and params is that model's tree. Otherwise the critic is a separate model with
  heads ("value",) and params is {"policy": ..., "critic": ...}: value-loss gradients then never
  reach the policy's weights.
  """
  policy_model: Any
  critic_model: Any = None

  def policy_params(self, params):
    """The parameters `policy_model` samples with (and the reference is a copy of)."""
    return params if self.critic_model is None else params["policy"]

  # -- low-rank adapters: one frozen base under the policy, its reference and the critic ------------
  @property
  def adapters(self) -> bool:
    """Whether the models carry LoRA adapters (`lora.rank` > 0): the base weights are then frozen."""
    return bool(self.policy_model.config.lora_rank)

  @property
  def base_quantization(self) -> str:
    """How the frozen base is stored (`lora.base_quantization`)."""
    return self.policy_model.config.base_quantization

  def split(self, params) -> tuple[Any, Any]:
    """(frozen, trainable) of an actor-critic tree with adapters: the policy's base weights, held once
    (a separate critic runs on the same base without the LM head), and every adapter and value head."""
    if self.critic_model is None:
      return lora.split(params)
    frozen, policy = lora.split(params["policy"])
    return frozen, {"policy": policy, "critic": lora.split(params["critic"])[1]}

  def join(self, frozen, trainable):
    """The actor-critic tree of `split`'s halves."""
    if self.critic_model is None:
      return lora.combine(frozen, trainable)
    return {"policy": lora.combine(frozen, trainable["policy"]),
            "critic": lora.combine(trunk_base(frozen), trainable["critic"])}

  def reference_part(self, reference):
    """What the PPO step keeps of the reference policy's tree: all of it, or with adapters only its
    trainable part (the SFT adapters): the reference is the frozen base with those, no second base."""
    return lora.split(reference)[1] if self.adapters else reference

  def reference(self, frozen, reference_part):
    """The reference policy's tree from `reference_part` (and the frozen base, with adapters)."""
    return lora.combine(frozen, reference_part) if self.adapters else reference_part

  def forward(self, params, sequences, attention_mask, response_width: int) -> tuple[jax.Array, jax.Array | None]:
    """(logits [B, N, V], values [B, N] or None) at the positions predicting the N response tokens:
    the `forward_fn` of `safecomp.rl.ppo` (`models.response_forward` of the policy, and of the critic)."""
    logits, values = models.response_forward(self.policy_model, self.policy_params(params), sequences,
                                             attention_mask, response_width)
    if self.critic_model is not None:
      _, values = models.response_forward(self.critic_model, params["critic"], sequences, attention_mask,
                                          response_width)
    return logits, values


def trunk_base(frozen) -> dict:
  """The policy's frozen base without its LM head: the base a critic or a reward model with adapters
  runs on."""
  return {k: v for k, v in frozen.items() if k != "lm_head"}


def map_rows(fn, rows: Any, chunk_rows: int) -> Any:
  """`fn(rows)` computed `chunk_rows` rows at a time (`lax.map`), equal to one call on every row.

  `fn` maps a tree of [B, ...] arrays to a tree of [B, ...] arrays, each row depending only on its own
  input row. Chunk i holds rows i, i + k, i + 2k, ... (k chunks), as `parallel.split_microbatches`
  splits them, so every chunk of a batch-split array stays spread over all its devices. 0, or a
  chunk as large as the batch, calls `fn` once.
  """
  b = jax.tree.leaves(rows)[0].shape[0]
  if not chunk_rows or chunk_rows >= b:
    return fn(rows)
  if b % chunk_rows:
    raise ValueError(f"score_chunk_rows={chunk_rows} does not divide the rollout batch of {b} rows")
  chunks = b // chunk_rows
  out = jax.lax.map(fn, parallel.split_microbatches(rows, chunks))
  # [k, B / k, ...] back to [B, ...]: row r of the batch is row r // k of chunk r % k.
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((b,) + x.shape[2:]), out)


def score_policy(actor: ActorCritic, params, ref_params, batch: dict, cfg: RolloutConfig) -> dict:
  """Old log-probs and values (policy and critic) and reference log-probs on the sampled sequences.

  `ref_params` are parameters of `actor.policy_model` (the frozen copy of the starting policy).
  Computed `cfg.score_chunk_rows` rows at a time (see `map_rows`).
  """
  n = batch["response_mask"].shape[1]

  def score(rows):
    # sequences = [prompt (left- or right-padded, fixed width) | response (right-padded after EOS)].
    sequences, mask, attention = rows["sequences"], rows["response_mask"], rows["attention_mask"]

    def response_logprobs(logits):
      return models.token_logprobs(logits, sequences[:, -n:], cfg.temperature) * mask

    logits, values = actor.forward(params, sequences, attention, n)
    values = jnp.zeros(mask.shape, jnp.float32) if values is None else values
    ref_logits, _ = models.response_forward(actor.policy_model, ref_params, sequences, attention, n)
    return {"old_logprobs": response_logprobs(logits), "values": values.astype(jnp.float32) * mask,
            "ref_logprobs": response_logprobs(ref_logits)}

  rows = {k: batch[k] for k in ("sequences", "attention_mask", "response_mask")}
  return map_rows(score, rows, cfg.score_chunk_rows)


def score_rows(scorer: Any, params, batch: dict, intent, inputs, cfg: RolloutConfig) -> dict:
  """The on-device grader's per-row outputs, `cfg.score_chunk_rows` rows at a time (see `map_rows`)."""
  rows = {"batch": {k: batch[k] for k in ("sequences", "attention_mask", "response_mask")},
          "intent": intent, "inputs": inputs}
  return map_rows(lambda r: scorer(params, r["batch"], r["intent"], r["inputs"], cfg), rows,
                  cfg.score_chunk_rows)


def score_reward_model(rm_model, rm_params, batch: dict, intent: jax.Array | None, cfg: RolloutConfig) -> dict:
  """Safety s, helpfulness h (both in [0,1]) and the composite reward from the reward heads."""
  out = rm_model.apply({"params": rm_params}, batch["sequences"], attention_mask=batch["attention_mask"])
  del intent  # only the refusal reward reads it, and that one is scored on the host (see pipeline)
  scores, safety, helpfulness = rm_lib.reward_from_heads(
      out["severity_logits"], out["helpfulness_logit"], helpfulness_kind=cfg.helpfulness_kind,
      kind=cfg.reward_kind, severity_to_safety=cfg.severity_to_safety)
  return {"scores": scores, "safety": safety, "helpfulness": helpfulness,
          "severity_probs": jax.nn.softmax(out["severity_logits"].astype(jnp.float32), -1)}


@dataclasses.dataclass(frozen=True)
class RewardModelScorer:
  """The trained reward model's heads as the on-device grader (its params: the reward model's)."""
  model: Any

  def __call__(self, params, batch: dict, intent, inputs, cfg: RolloutConfig) -> dict:
    del inputs
    return score_reward_model(self.model, params, batch, intent, cfg)


@dataclasses.dataclass(frozen=True)
class JudgeScorer:
  """A judge LM as the on-device grader (its params: the judge's), sharing the policy's vocabulary.

  Per batch row the rollout gets the ids of each rubric prompt before the completion
  (`inputs["judge_heads"]` [B, R, P] and `inputs["judge_head_mask"]`); the sampled answer (reasoning
  and end-of-turn tokens masked) and the rubric's closing ids (`tails`, the same for every prompt) are
  spliced around it, and the score-token distribution at the end is the grade (see
  `safecomp.rewards.judge`).
  """
  model: Any
  score_ids: tuple[int, ...]
  tails: tuple[tuple[int, ...], ...]
  pad_id: int
  think_open: tuple[int, ...] = ()
  think_close: tuple[int, ...] = ()
  special_ids: tuple[int, ...] = ()  # never part of the answer (EOS, end of turn, padding)
  indirect_weight: float = composite.DEFAULT_INDIRECT_WEIGHT

  def tail_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(t) for t in self.tails)
    ids = np.full((len(self.tails), width), self.pad_id, np.int32)
    mask = np.zeros(ids.shape, np.int32)
    for r, tail in enumerate(self.tails):
      ids[r, width - len(tail):], mask[r, width - len(tail):] = tail, 1
    return ids, mask

  def answer(self, batch: dict) -> tuple[jax.Array, jax.Array]:
    """The response ids and the mask of what the judge reads (the answer a user sees)."""
    n = batch["response_mask"].shape[1]
    response = batch["sequences"][:, -n:]
    mask = judge_lib.answer_mask(response, batch["response_mask"], self.think_open, self.think_close)
    for token in self.special_ids:
      mask = mask * (response != token).astype(mask.dtype)
    return response, mask

  def __call__(self, params, batch: dict, intent, inputs, cfg: RolloutConfig) -> dict:
    response, mask = self.answer(batch)
    tails, tail_mask = self.tail_arrays()
    probs = judge_lib.judge_probs(self.model, params, inputs["judge_heads"], inputs["judge_head_mask"],
                                  response, mask, jnp.asarray(tails), jnp.asarray(tail_mask),
                                  jnp.asarray(self.score_ids, jnp.int32))
    scores = judge_lib.judgment(probs)
    malicious = None if intent is None else intent == INTENT_INDEX["malicious"]
    helpfulness = composite.combine_helpfulness(scores["helpfulness_direct"], scores["helpfulness_indirect"],
                                                malicious=malicious, indirect_weight=self.indirect_weight)
    safety, helpfulness, reward = composite.reward_terms(
        scores["severity_probs"], helpfulness, cfg.reward_kind, severity_to_safety=cfg.severity_to_safety)
    return {"scores": reward, "safety": safety, "helpfulness": helpfulness,
            "severity_probs": scores["severity_probs"]}


def make_rollout(actor: ActorCritic, scorer: Any, cfg: RolloutConfig):
  """`rollout(params, ref_params, scorer_params, prompts, prompt_mask, intent, rng, scorer_inputs=None)`.

  One pure function (jit it once): generation, policy/reference log-probs, values and the on-device
  grader's reward, all in a single compiled computation. `params` is the actor-critic tree (see
  `ActorCritic`); `scorer` is a `RewardModelScorer`, a `JudgeScorer`, or a reward model (`Transformer`)
  which is wrapped in a `RewardModelScorer`; `scorer_inputs` are its per-row inputs, if any.
  """
  if isinstance(scorer, models.Transformer):
    scorer = RewardModelScorer(scorer)

  def rollout(params, ref_params, scorer_params, prompts, prompt_mask, intent, rng, scorer_inputs=None):
    batch = sample(actor.policy_model, actor.policy_params(params), prompts, prompt_mask, rng, cfg)
    batch.update(score_policy(actor, params, ref_params, batch, cfg))
    batch.update(score_rows(scorer, scorer_params, batch, intent, scorer_inputs, cfg))
    return batch

  return rollout


def make_sampler(actor: ActorCritic, cfg: RolloutConfig):
  """`sample_and_score(params, ref_params, prompts, prompt_mask, rng) -> dict` without rewards."""

  def sample_and_score(params, ref_params, prompts, prompt_mask, rng):
    batch = sample(actor.policy_model, actor.policy_params(params), prompts, prompt_mask, rng, cfg)
    batch.update(score_policy(actor, params, ref_params, batch, cfg))
    return batch

  return sample_and_score
