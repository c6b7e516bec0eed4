"""PPO stage: policy = SFT model + critic, frozen reference = the SFT model, reward from `reward.grader`.

Each iteration samples responses for a batch of the task's training prompts, scores them, and runs all
PPO epochs/minibatches in one compiled update. Where the reward is scored:

- `rm` (default): the reward model's heads inside the compiled rollout (no host round-trip);
- `judge`: a judge LM reading the spec's rubrics inside the compiled rollout when it shares the
  policy's vocabulary (its rubric prompts are assembled from token-id segments on device); with
  another tokenizer the responses are decoded and re-tokenised on the host and the judge runs jitted
  between rollout and update (the log says so);
- `http`, `oracle`: graded on the host after decoding.

Either way the iteration is built by `build_ppo_step` (which `safecomp.memory` plans too): sharded over
the config's mesh, parameters split by their logical axes and rows over the batch axes, each host
feeding, sampling and grading its own rows.

Every `ppo.gold_every` iterations the same responses are also graded by `eval.grader` (the run's gold
standard), so proxy and gold reward are logged side by side (over-optimisation shows as a gap).
Responses a host grader could not judge are left out of the update and counted (`ungraded`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from safecomp import config as config_lib
from safecomp import graders as graders_lib
from safecomp import models
from safecomp.models import lora
from safecomp import parallel
from safecomp.constants import INTENT_INDEX, INTENTS, MODES, REFUSAL_MODES
from safecomp.errors import ConfigError
from safecomp.rl import ppo as ppo_lib
from safecomp.tokenizers import THINK_CLOSE, THINK_OPEN
from safecomp.training import batching
from safecomp.training import generation
from safecomp.training import loop as loop_lib
from safecomp.training import rollout as rollout_lib
from safecomp.training.metrics import MetricWriter, read_metrics

_REFUSAL_MODE_IDS = tuple(MODES.index(m) for m in REFUSAL_MODES)


def ppo_config(c, eos_id) -> ppo_lib.PPOConfig:
  """The update's hyper-parameters (the `ppo` section; `eos_id` from the tokenizer); also checks the
  rollout's (`pipeline.validate` calls it at start-up)."""
  chunk = c.ppo.score_chunk_rows
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0 or (
      chunk and c.ppo.prompts_per_iteration % chunk):
    raise ConfigError(f"config key 'ppo.score_chunk_rows': rows per scoring forward must be 0 (the whole batch "
                      f"at once) or divide ppo.prompts_per_iteration ({c.ppo.prompts_per_iteration}); got {chunk!r}")
  return config_lib.dataclass_from(ppo_lib.PPOConfig, c.ppo, "ppo", eos_id=eos_id)


def rl_tree(state: ppo_lib.RLTrainState) -> dict:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "kl_coef": state.kl_coef, "score_moments": state.score_moments}


def rl_from_tree(state: ppo_lib.RLTrainState, tree: dict) -> ppo_lib.RLTrainState:
  return state.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"],
                       kl_coef=tree["kl_coef"], score_moments=type(state.score_moments)(*tree["score_moments"]))


def mode_fractions(modes: np.ndarray, prefix: str) -> dict[str, float]:
  return {f"{prefix}mode_{name}": float(np.mean(modes == i)) for i, name in enumerate(MODES)}


def gold_metrics(graded: dict[str, np.ndarray], prompts) -> dict[str, float]:
  """Gold reward, safety, helpfulness and modes of sampled responses, overall and per prompt intent.

  `graded`: `graders.rewards_of` of the gold grader's grades with the `product` reward. Per-intent
  figures show drift the mean hides, e.g. benign helpfulness eroding into generic, over-cautious
  answers while the overall reward still rises. Rows the gold grader could not judge are left out.
  """
  ok = graded["graded"] > 0
  out = {"gold_ungraded": float(np.mean(~ok))}
  if not ok.any():
    return out
  g = {k: v[ok] for k, v in graded.items() if np.ndim(v)}
  out.update({"gold_reward": float(g["reward"].mean()), "gold_safety": float(g["safety"].mean()),
              "gold_helpfulness": float(g["helpfulness"].mean()), "gold_unsafe": float(g["unsafe"].mean()),
              **mode_fractions(g["modes"], "gold_")})
  intents = np.asarray([x.intent for x in prompts])[ok]
  for intent in INTENTS:
    mask = intents == intent
    if mask.any():
      out[f"gold_reward_{intent}"] = float(g["reward"][mask].mean())
      out[f"gold_helpfulness_{intent}"] = float(g["helpfulness"][mask].mean())
      out[f"gold_unsafe_{intent}"] = float(g["unsafe"][mask].mean())
      out[f"gold_refusal_{intent}"] = float(np.isin(g["modes"][mask], _REFUSAL_MODE_IDS).mean())
  return out


def initial_state(p, policy_params, tx=None) -> ppo_lib.RLTrainState:
  c = p.config
  if tx is None:
    tx = ppo_optimizer(c)
  actor = abstract_actor_critic(c, p.tokenizer.vocab_size)
  return ppo_lib.create_rl_state(policy_params, tx, ppo_config(c, p.stop_ids), adapters=actor.adapters,
                                 split_fn=actor.split, join_fn=actor.join, quantization=actor.base_quantization)


def ppo_optimizer(c):
  """The PPO stage's optimizer (one update per minibatch, over every epoch of every iteration)."""
  return loop_lib.make_optimizer(c.ppo, c.ppo.iterations * c.ppo.epochs * c.ppo.num_minibatches)


def rollout_config(c, stop_ids, pad_id: int) -> rollout_lib.RolloutConfig:
  """How the PPO stage samples and scores its rollouts (`ppo`, `reward` and `rm` sections)."""
  return rollout_lib.RolloutConfig(
      max_new_tokens=c.ppo.max_new_tokens, eos_id=stop_ids, pad_id=pad_id, temperature=c.ppo.temperature,
      reward_kind=c.reward.kind, severity_to_safety=tuple(c.reward.severity_to_safety),
      helpfulness_kind=c.rm.helpfulness_loss, score_chunk_rows=c.ppo.score_chunk_rows)


def critic_heads(critic: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
  """(policy model heads, critic model heads or None) of `ppo.critic`: "shared" puts the value head on
  the policy's trunk, "separate" gives the critic a trunk of its own."""
  if critic == "shared":
    return ("lm", "value"), None
  if critic == "separate":
    return ("lm",), ("value",)
  raise ConfigError(f"config key 'ppo.critic': must be 'shared' or 'separate', got {critic!r}")


def actor_critic(p, trained: bool = True, rm_params: Any = None
                 ) -> tuple[rollout_lib.ActorCritic, Any, Any]:
  """(actor-critic, initial params, reference params) of the PPO stage, as `ppo.critic` says.

  The policy starts as the SFT model and the reference is a frozen copy of it. "shared": a value head
  on the policy's own trunk. "separate": a critic model of the same size with its own trunk, started
  from the reward model's (`rm_params`, else the SFT trunk), so value-loss gradients never move the
  policy. `trained=False` gives the same shapes without restoring any checkpoint. With adapters
  (`lora.rank`) every model shares the frozen base: the policy trains the SFT adapters on, the critic
  the reward model's, and the reference is that base with the SFT adapters (`ActorCritic.reference_part`).
  """
  c = p.config
  policy_heads, value_heads = critic_heads(c.ppo.critic)
  lm_model, lm_init = p.init_model(("lm",), seed_offset=1)
  sft_params = p.trained_params("sft", lm_init, "sft") if trained else lm_init
  if value_heads is None:
    model, init = p.init_model(policy_heads, seed_offset=3)
    params = models.graft(init, sft_params)
    actor = rollout_lib.ActorCritic(model)
    return actor, params, actor.reference_part(params)
  critic_model, critic_init = p.init_model(value_heads, seed_offset=3)
  critic_params = models.graft(critic_init, sft_params if rm_params is None else rm_params)
  actor = rollout_lib.ActorCritic(lm_model, critic_model)
  return actor, {"policy": sft_params, "critic": critic_params}, actor.reference_part(sft_params)


def abstract_actor_critic(c, vocab_size: int | None = None) -> rollout_lib.ActorCritic:
  """The PPO stage's actor-critic models (as `actor_critic` builds them) from the config alone."""
  policy_heads, value_heads = critic_heads(c.ppo.critic)
  model = lambda heads: models.Transformer(models.model_config_from(c, heads, vocab_size=vocab_size))
  return rollout_lib.ActorCritic(model(policy_heads), None if value_heads is None else model(value_heads))


def actor_shardings(actor: rollout_lib.ActorCritic, mesh, rules=parallel.DEFAULT_RULES) -> Any:
  """Shardings of an actor-critic params tree (see `actor_critic`), by each model's logical axes."""
  policy = parallel.param_shardings(actor.policy_model.config, mesh, rules)
  if actor.critic_model is None:
    return policy
  return {"policy": policy, "critic": parallel.param_shardings(actor.critic_model.config, mesh, rules)}


def actor_abstract_params(actor: rollout_lib.ActorCritic) -> Any:
  """ShapeDtypeStructs of an actor-critic params tree (nothing allocated)."""
  policy = parallel.abstract_params(actor.policy_model.config)[0]
  if actor.critic_model is None:
    return policy
  return {"policy": policy, "critic": parallel.abstract_params(actor.critic_model.config)[0]}


def final_policy_params(p) -> Any:
  """The language-model parameters of the completed PPO policy (no value head)."""
  actor, init, _ = actor_critic(p, trained=False)
  state = initial_state(p, init)
  trained = p.final_params("ppo", jax.eval_shape(lambda: rl_tree(state)))["params"]
  params = actor.policy_params(state.model_params(trained))
  # Under QLoRA the base is stored quantised: hand out the weights it stands for, as trained_params does.
  params = models.quantize.dequantize_tree(params, actor.policy_model.config.params_dtype)
  return {k: v for k, v in params.items() if k != "value_head"}


# ---------------------------------------------------------------------------------- the PPO step
# What the update reads of a rollout scored on the host (the sampler's outputs it keeps).
ROLLOUT_KEYS = ("sequences", "attention_mask", "response_mask", "old_logprobs", "ref_logprobs", "values")


def iteration_keys(c, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(rollout key, update key) of PPO iteration `step`: a function of the seed and the step only."""
  return tuple(jax.random.split(jax.random.fold_in(jax.random.key(c.seed * 1000 + 77), step)))


@dataclasses.dataclass
class PPOStep:
  """The compiled PPO iteration of a config on a mesh: what `run_ppo` runs and `safecomp.memory` plans.

  With an on-device grader (`scorer`) the iteration is one step, `fused(state, batch, ref_params,
  scorer_params)`: rollout, reward and every epoch of the update in one XLA computation. With a host
  grader it is two, `sample(state.params, batch, ref_params) -> rollout` and, once the host has scored
  the responses, `update(state, {"rollout", "scores", "graded", "step"})`. Every step is a
  `parallel.ShardedStep`: parameters split by their logical axes, rows over the batch axes, each
  process passing only its own rows (`rows`).
  """
  config: Any
  actor: rollout_lib.ActorCritic
  scorer: Any  # the on-device grader, or None: the reward is graded on the host
  mesh: Any
  rules: tuple
  create: Callable[[Any], ppo_lib.RLTrainState]  # actor-critic params -> fresh state
  param_shardings: Any  # of the actor-critic params
  abstract_state: Any
  state_shardings: Any
  abstract_ref: Any
  ref_shardings: Any
  abstract_scorer: Any
  scorer_shardings: Any
  batch: dict  # ShapeDtypeStructs of the global host batch the first step reads
  batch_shardings: dict
  update_batch: dict | None  # host grader: ShapeDtypeStructs of the update's batch
  fused: parallel.ShardedStep | None = None
  # With adapters the reward model in the rollout runs on the policy's frozen base: `scorer_shardings`
  # and `abstract_scorer` are then its adapters and heads only (`scorer_part`).
  scorer_shares_base: bool = False
  sample: parallel.ShardedStep | None = None
  update: parallel.ShardedStep | None = None

  @property
  def global_batch(self) -> int:
    return int(self.config.ppo.prompts_per_iteration)

  def rows(self) -> np.ndarray:
    """The rows of every global batch this process feeds (`parallel.host_rows`)."""
    return parallel.host_rows(self.batch_shardings["prompts"], self.global_batch)

  def programs(self) -> dict[str, tuple[parallel.ShardedStep, tuple]]:
    """{name: (sharded step, abstract arguments with shardings)}, in the order an iteration runs them."""
    w = parallel.with_shardings
    state = w(self.abstract_state, self.state_shardings)
    batch = w(self.batch, self.batch_shardings)
    ref = w(self.abstract_ref, self.ref_shardings)
    if self.fused is not None:
      return {"rollout+update": (self.fused, (state, batch, ref, w(self.abstract_scorer, self.scorer_shardings)))}
    update_batch = w(self.update_batch, parallel.batch_shardings(self.update_batch, self.mesh, self.rules))
    return {"rollout": (self.sample, (state, batch, ref)), "update": (self.update, (state, update_batch))}

  def init_state(self, params: Any) -> ppo_lib.RLTrainState:
    """A fresh state from actor-critic `params` (host or device arrays), placed with its shardings (the
    frozen base cut from the trainable part as the actor-critic says, with adapters)."""
    return parallel.init_sharded_state(self.create, params, self.param_shardings, self.mesh, self.actor.split)[0]

  def scorer_part(self, scorer_params: Any) -> Any:
    """What the step takes of the on-device grader's parameters (all, or its adapters and heads)."""
    return lora.split(scorer_params)[1] if self.scorer_shares_base else scorer_params

  def lower(self, platform: str | None = None) -> dict[str, Any]:
    """{name: jax.stages.Lowered} of every step (`platform` when the mesh is abstract)."""
    return {name: step.lower(*args, platform=platform) for name, (step, args) in self.programs().items()}


def build_ppo_step(c, actor: rollout_lib.ActorCritic, scorer: Any, mesh, *, stop_ids, pad_id: int,
                   scorer_inputs: dict | None = None) -> PPOStep:
  """The PPO iteration `run_ppo` compiles, for config `c` on `mesh` (concrete, or abstract to plan it).

  Args:
    c: the experiment config (its `ppo`, `reward`, `rm`, `mesh` and `max_prompt_len` keys).
    actor: the actor-critic (`actor_critic` / `abstract_actor_critic`; `ppo.critic` decides its shape).
    scorer: the on-device grader (`RewardModelScorer`, `JudgeScorer`), or None for a host grader.
    mesh: a `jax.sharding.Mesh` to run, or an `AbstractMesh` to lower and plan.
    stop_ids, pad_id: the tokenizer's stop ids and padding id.
    scorer_inputs: ShapeDtypeStructs (global shapes) of the scorer's per-row inputs, if any.

  Raises a ConfigError naming `ppo.prompts_per_iteration` when the mesh does not split the batch.
  """
  rules = parallel.rules_from_config(c)
  b, n, width = int(c.ppo.prompts_per_iteration), int(c.ppo.max_new_tokens), int(c.max_prompt_len)
  parallel.check_batch_size(b, mesh, "ppo.prompts_per_iteration", rules)
  cfg = ppo_config(c, stop_ids)
  roll_cfg = rollout_config(c, stop_ids, pad_id)
  tx = ppo_optimizer(c)  # one optimizer object: the state's tree structure must not change
  create = lambda params: ppo_lib.create_rl_state(params, tx, cfg, adapters=actor.adapters, split_fn=actor.split,
                                                   join_fn=actor.join, quantization=actor.base_quantization)
  update = functools.partial(ppo_lib.ppo_update, forward_fn=actor.forward, config=cfg)

  param_sh = actor_shardings(actor, mesh, rules)
  abstract_state = jax.eval_shape(create, actor_abstract_params(actor))
  state_sh = parallel.state_shardings(abstract_state, param_sh, mesh, actor.split)
  ref_config = actor.policy_model.config
  abstract_ref = actor.reference_part(parallel.abstract_params(ref_config)[0])
  ref_sh = actor.reference_part(parallel.param_shardings(ref_config, mesh, rules))
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  batch = {"prompts": i32(b, width), "prompt_mask": i32(b, width), "intent": i32(b), "step": i32()}
  batch.update(scorer_inputs or {})
  batch_sh = parallel.batch_shardings(batch, mesh, rules)
  common = dict(config=c, actor=actor, scorer=scorer, mesh=mesh, rules=rules, create=create,
                param_shardings=param_sh, abstract_state=abstract_state, state_shardings=state_sh, abstract_ref=abstract_ref,
                ref_shardings=ref_sh, batch=batch, batch_shardings=batch_sh)

  if scorer is not None:
    rollout = rollout_lib.make_rollout(actor, scorer, roll_cfg)
    input_keys = tuple(scorer_inputs or ())
    # A reward model trained with adapters shares the policy's frozen base (one base in the whole step).
    shares_base = actor.adapters and isinstance(scorer, rollout_lib.RewardModelScorer)

    def fused_step(state, batch, ref_params, scorer_params):
      roll_key, update_key = iteration_keys(c, batch["step"])
      inputs = {k: batch[k] for k in input_keys} or None
      if shares_base:
        scorer_params = lora.combine(rollout_lib.trunk_base(state.frozen), scorer_params)
      roll = rollout(state.model_params(), actor.reference(state.frozen, ref_params), scorer_params,
                     batch["prompts"], batch["prompt_mask"], batch["intent"], roll_key, inputs)
      new_state, metrics = update(state, roll, rng=update_key)
      new_state, metrics["nonfinite"] = loop_lib.keep_if_finite(state, new_state, metrics["loss"])
      metrics.update(proxy_safety=roll["safety"].mean(), proxy_helpfulness=roll["helpfulness"].mean(),
                     response_tokens=roll["sequences"][:, -n:], response_mask=roll["response_mask"],
                     proxy_rewards=roll["scores"])
      return new_state, metrics

    scorer_config = scorer.model.config
    part = (lambda tree: lora.split(tree)[1]) if shares_base else (lambda tree: tree)
    scorer_sh = part(parallel.param_shardings(scorer_config, mesh, rules))
    fused = parallel.shard_step(fused_step, mesh, rules, state_sh, batch_sh, extra_shardings=(ref_sh, scorer_sh),
                                global_batch=b)
    return PPOStep(**common, abstract_scorer=part(parallel.abstract_params(scorer_config)[0]),
                   scorer_shardings=scorer_sh, update_batch=None, fused=fused, scorer_shares_base=shares_base)

  sampler = rollout_lib.make_sampler(actor, roll_cfg)

  def sample_step(state, batch, ref_params):
    roll_key, _ = iteration_keys(c, batch["step"])
    roll = sampler(state.model_params(), actor.reference(state.frozen, ref_params), batch["prompts"],
                   batch["prompt_mask"], roll_key)
    return {k: roll[k] for k in ROLLOUT_KEYS}

  def update_step(state, batch):
    _, update_key = iteration_keys(c, batch["step"])
    roll = dict(batch["rollout"], scores=batch["scores"])
    graded = batch["graded"]
    # Responses the host grader could not judge take no part in the update: no tokens, no score.
    roll["response_mask"] = roll["response_mask"] * graded[:, None].astype(roll["response_mask"].dtype)
    new_state, metrics = update(state, roll, rng=update_key)
    new_state, metrics["nonfinite"] = loop_lib.keep_if_finite(state, new_state, metrics["loss"])
    metrics.update(ungraded=1.0 - graded.astype(jnp.float32).mean(), response_tokens=roll["sequences"][:, -n:],
                   response_mask=roll["response_mask"], proxy_rewards=roll["scores"])
    return new_state, metrics

  abstract_roll = jax.eval_shape(sample_step, abstract_state, batch, abstract_ref)
  update_batch = {"rollout": abstract_roll, "scores": f32(b), "graded": i32(b), "step": i32()}
  roll_sh = parallel.batch_shardings(abstract_roll, mesh, rules)
  # The sampler leaves the state alone: state in (not donated), rollout rows out (split like the batch).
  sample = parallel.ShardedStep(
      jax.jit(sample_step, in_shardings=(state_sh, batch_sh, ref_sh), out_shardings=roll_sh),
      mesh, rules, batch_sh, b)
  update_sh = parallel.batch_shardings(update_batch, mesh, rules)
  update_fn = parallel.shard_step(update_step, mesh, rules, state_sh, update_sh, global_batch=b)
  return PPOStep(**common, abstract_scorer=None, scorer_shardings=None, update_batch=update_batch,
                 sample=sample, update=update_fn)


# ------------------------------------------------------------------------------ on-device graders
def on_device_scorer(p, prompts) -> tuple[Any, Any, Any] | None:
  """(scorer, its params, per-prompt inputs or None) when `reward.grader` runs in the compiled rollout,
  else None (the reward is scored on the host)."""
  c = p.config
  if c.reward.grader == "rm":
    rm_model, rm_params = p.trained_reward_model()
    return rollout_lib.RewardModelScorer(rm_model), rm_params, None
  if c.reward.grader != "judge" or c.reward.kind == "refusal":  # the refusal reward reads modes from text
    return None
  judge = p.grader("judge", "reward.grader")
  if not judge.tokenizer.same_vocabulary(p.tokenizer):
    print("[ppo] the judge's tokenizer differs from the policy's: each response is decoded and re-tokenised on "
          "the host, and the judge runs jitted between rollout and update", flush=True)
    return None
  segments = judge.segments([x.message_list for x in prompts])
  longest = segments.max_head + c.ppo.max_new_tokens + segments.max_tail
  if longest > judge.max_len:
    raise ConfigError(f"config key 'judge.max_len': the judge's rubric prompts need up to {longest} tokens "
                      f"(rubric + prompt {segments.max_head}, answer {c.ppo.max_new_tokens}, closing "
                      f"{segments.max_tail}) but the judge reads {judge.max_len}; shorten max_prompt_len or "
                      "ppo.max_new_tokens")
  tok = p.tokenizer
  scorer = rollout_lib.JudgeScorer(
      judge.model, tuple(int(i) for i in judge.score_ids), segments.tails, judge.pad_id,
      think_open=tuple(tok.encode(THINK_OPEN, continuation=True)),
      think_close=tuple(tok.encode(THINK_CLOSE, continuation=True)),
      special_ids=tuple(i for i in {*p.stop_ids, tok.pad_id, tok.bos_id} if i is not None),
      indirect_weight=judge.indirect_weight)
  print(f"[ppo] reward from the judge {graders_lib.full_name(judge)} inside the compiled rollout "
        f"({len(segments.rubrics)} rubric prompts of up to {longest} tokens per response)", flush=True)
  return scorer, judge.params, segments


def process_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a global array split over the batch axes, in row order (the rows
  `PPOStep.rows` names): what the host grades and scores."""
  shards = {}
  for shard in x.addressable_shards:
    start = (shard.index[0].start or 0) if shard.index else 0
    shards.setdefault(start, shard.data)  # a row block held by several devices is read once
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])


def ppo_step(p, prompts) -> tuple[PPOStep, dict]:
  """(the PPO step `run_ppo` runs, its placed arguments {"state", "ref_params", "scorer_params",
  "scorer_inputs"}) for the pipeline `p` training on `prompts`."""
  c = p.config
  device = on_device_scorer(p, prompts)
  # A separate critic starts from the reward model's trunk when this run has one, else from SFT's.
  rm_params = device[1] if device is not None and c.reward.grader == "rm" else None
  actor, policy_params, ref_params = actor_critic(p, rm_params=rm_params)
  scorer, scorer_params, segments = device if device is not None else (None, None, None)
  inputs = None
  if segments is not None:  # the rubric prompts' heads, [B, rubrics, longest head] (see batch_fn)
    shape = (c.ppo.prompts_per_iteration, len(segments.rubrics), segments.max_head)
    inputs = {k: jax.ShapeDtypeStruct(shape, np.int32) for k in ("judge_heads", "judge_head_mask")}
  step = build_ppo_step(c, actor, scorer, p.mesh, stop_ids=p.stop_ids, pad_id=p.tokenizer.pad_id,
                        scorer_inputs=inputs)
  state = step.init_state(policy_params)
  args = {"state": state, "ref_params": parallel.place(ref_params, step.ref_shardings),
          "scorer_params": None if scorer is None else parallel.place(step.scorer_part(scorer_params),
                                                                      step.scorer_shardings),
          "scorer_inputs": segments}
  return step, args


def run_ppo(p) -> dict:
  """The PPO stage of the pipeline (see module docstring)."""
  c = p.config
  tok = p.tokenizer
  prompts = generation.fitting_prompts(p.task.train_prompts(), tok, c.chat_template, c.max_prompt_len, "ppo")
  arrays = batching.prompts_to_arrays(tok, [x.message_list for x in prompts], c.chat_template, c.max_prompt_len)
  intents = np.asarray([INTENT_INDEX[x.intent] for x in prompts], np.int32)
  gold_grader = p.grader(c.eval.grader, "eval.grader")

  step, args = ppo_step(p, prompts)
  state, ref_params, scorer_params, segments = (args["state"], args["ref_params"], args["scorer_params"],
                                                args["scorer_inputs"])
  n_unique = c.ppo.prompts_per_iteration // c.ppo.group_size
  own_rows = step.rows()

  def batch_fn(step_index: int) -> dict:
    index = np.repeat(batching.batch_indices(step_index, len(prompts), n_unique, c.seed + 101), c.ppo.group_size)
    batch = {"prompts": arrays["tokens"][index], "prompt_mask": arrays["attention_mask"][index],
             "intent": intents[index], "index": index, "step": np.int32(step_index)}
    if segments is not None:
      batch["judge_heads"], batch["judge_head_mask"] = segments.head_arrays(index, segments.max_head, tok.pad_id)
    return batch

  def local(batch: dict) -> dict:
    """This process's rows of a global host batch (each host feeds its own rows)."""
    return {k: v[own_rows] if np.ndim(v) else v for k, v in batch.items()}

  def grade(index, tokens, mask, grader):
    """(grades, prompts) of decoded responses."""
    texts = generation.decode_responses(tok, tokens, mask, p.stop_ids)
    batch_prompts = [prompts[i] for i in index]
    return grader.grade(batch_prompts, texts), batch_prompts

  def rewards(grades, batch_prompts, kind):
    # float32 like the compiled rollout's rewards: one definition of r whichever side computes it.
    return graders_lib.rewards_of(grades, batch_prompts, kind, as_jax=True,
                                  severity_to_safety=tuple(c.reward.severity_to_safety))

  if step.fused is not None:
    def step_fn(state, batch):
      index = batch.pop("index")
      state, metrics = step.fused(state, local(batch), ref_params, scorer_params)
      return state, dict(metrics, prompt_index=index)
  else:
    reward_grader = p.grader(c.reward.grader, "reward.grader")
    # The reward grader is the gold standard: its grades are logged every step (one process grades
    # every row; with several, on_log grades the gathered responses every ppo.gold_every steps).
    gold_from_reward = c.eval.grader == c.reward.grader and jax.process_count() == 1

    def step_fn(state, batch):
      index = batch.pop("index")
      batch = local(batch)
      roll = step.sample(state, {k: batch[k] for k in step.batch}, ref_params)
      grades, batch_prompts = grade(index[own_rows], process_rows(roll["sequences"])[:, -c.ppo.max_new_tokens:],
                                    process_rows(roll["response_mask"]), reward_grader)
      scored = rewards(grades, batch_prompts, c.reward.kind)
      graded = np.asarray(scored["graded"]) > 0
      state, metrics = step.update(state, {"rollout": roll, "scores": scored["reward"],
                                           "graded": graded.astype(np.int32), "step": batch["step"]})
      if float(metrics["ungraded"]) == 1.0:
        raise graders_lib.GraderError(f"reward.grader={c.reward.grader!r} could not grade any response of PPO "
                                      f"iteration {int(batch['step']) + 1}")
      metrics = dict(metrics, prompt_index=index)
      if gold_from_reward:
        for key in ("response_tokens", "response_mask", "prompt_index", "proxy_rewards"):
          metrics.pop(key)
        metrics.update(gold_metrics(rewards(grades, batch_prompts, "product"), batch_prompts))
      return state, metrics

  def on_log(step: int, row: dict) -> dict:
    tokens, mask, index = row.pop("response_tokens", None), row.pop("response_mask", None), row.pop("prompt_index", None)
    proxy = row.pop("proxy_rewards", None)
    if tokens is None or (step % c.ppo.gold_every and step != c.ppo.iterations):
      return {}
    grades, batch_prompts = grade(index, tokens, mask, gold_grader)
    return {"proxy_reward": float(np.mean(proxy)), **gold_metrics(rewards(grades, batch_prompts, "product"),
                                                                   batch_prompts)}

  writer = MetricWriter(p.workdir, "ppo")
  state = loop_lib.run_loop(
      state, step_fn, batch_fn, p.checkpointer("ppo"), writer,
      loop_lib.LoopConfig(c.ppo.iterations, c.ppo.log_every, c.ppo.checkpoint_every,
                          c.max_consecutive_nonfinite, "ppo"),
      to_tree=rl_tree, from_tree=rl_from_tree, on_log=on_log)
  writer.close()
  rows = [r for r in read_metrics(writer.path) if "gold_reward" in r]
  summary = {"iterations": c.ppo.iterations, "reward_grader": c.reward.grader, "gold_grader": c.eval.grader}
  if rows:
    summary.update(first_gold_reward=rows[0]["gold_reward"], last_gold_reward=rows[-1]["gold_reward"])
    if "proxy_reward" in rows[-1]:
      summary.update(last_proxy_reward=rows[-1]["proxy_reward"])
  return summary
