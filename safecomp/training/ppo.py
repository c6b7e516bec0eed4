"""PPO stage: policy = SFT model + critic, frozen reference = the SFT model, reward from `reward.grader`.

Each iteration samples responses for a batch of the task's training prompts, scores them, and runs all
PPO epochs/minibatches in one compiled update. Where the reward is scored:

- `rm` (default): the reward model's heads inside the compiled rollout (no host round-trip);
- `judge`: a judge LM reading the spec's rubrics inside the compiled rollout when it shares the
  policy's vocabulary (its rubric prompts are assembled from token-id segments on device); with
  another tokenizer the responses are decoded and re-tokenised on the host and the judge runs jitted
  between rollout and update (the log says so);
- `http`, `oracle`: graded on the host after decoding.

Every `ppo.gold_every` iterations the same responses are also graded by `eval.grader` (the run's gold
standard), so proxy and gold reward are logged side by side (over-optimisation shows as a gap).
Responses a host grader could not judge are left out of the update and counted (`ungraded`).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from safecomp import graders as graders_lib
from safecomp import models
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
  p = c.ppo
  return ppo_lib.PPOConfig(
      algorithm=p.algorithm, epochs=p.epochs, num_minibatches=p.num_minibatches, clip_eps=p.clip_eps,
      vf_coef=p.vf_coef, vf_clip=p.vf_clip, ent_coef=p.ent_coef, gamma=p.gamma, lam=p.lam,
      kl_coef=p.kl_coef, kl_estimator=p.kl_estimator,
      kl_target=p.adaptive_kl_target if p.adaptive_kl_target > 0 else None,
      kl_horizon=p.adaptive_kl_horizon, whiten_advantages=p.whiten_advantages,
      temperature=p.temperature, eos_penalty=p.eos_penalty, eos_id=eos_id,
      group_size=p.group_size)


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
    tx = loop_lib.make_optimizer(c.ppo, c.ppo.iterations * c.ppo.epochs * c.ppo.num_minibatches)
  return ppo_lib.create_rl_state(policy_params, tx, ppo_config(c, p.stop_ids))


def actor_critic(p, trained: bool = True, rm_params: Any = None
                 ) -> tuple[rollout_lib.ActorCritic, Any, Any]:
  """(actor-critic, initial params, reference params) of the PPO stage, as `ppo.critic` says.

  The policy starts as the SFT model and the reference is a frozen copy of it. "shared": a value head
  on the policy's own trunk. "separate": a critic model of the same size with its own trunk, started
  from the reward model's (`rm_params`, else the SFT trunk), so value-loss gradients never move the
  policy. `trained=False` gives the same shapes without restoring any checkpoint.
  """
  c = p.config
  lm_model, lm_init = p.init_model(("lm",), seed_offset=1)
  sft_params = p.trained_params("sft", lm_init, "sft") if trained else lm_init
  if c.ppo.critic == "shared":
    model, init = p.init_model(("lm", "value"), seed_offset=3)
    params = models.graft(init, sft_params)
    return rollout_lib.ActorCritic(model), params, params
  critic_model, critic_init = p.init_model(("value",), seed_offset=3)
  critic_params = models.graft(critic_init, sft_params if rm_params is None else rm_params)
  return (rollout_lib.ActorCritic(lm_model, critic_model), {"policy": sft_params, "critic": critic_params},
          sft_params)


def actor_shardings(actor: rollout_lib.ActorCritic, mesh) -> Any:
  """Shardings of an actor-critic params tree (see `actor_critic`), by each model's logical axes."""
  policy = parallel.param_shardings(actor.policy_model.config, mesh)
  if actor.critic_model is None:
    return policy
  return {"policy": policy, "critic": parallel.param_shardings(actor.critic_model.config, mesh)}


def final_policy_params(p) -> Any:
  """The language-model parameters of the completed PPO policy (no value head)."""
  actor, init, _ = actor_critic(p, trained=False)
  abstract = jax.eval_shape(lambda: rl_tree(initial_state(p, init)))
  params = actor.policy_params(p.final_params("ppo", abstract)["params"])
  return {k: v for k, v in params.items() if k != "value_head"}


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


def run_ppo(p) -> dict:
  """The PPO stage of the pipeline (see module docstring)."""
  c = p.config
  tok = p.tokenizer
  prompts = generation.fitting_prompts(p.task.train_prompts(), tok, c.chat_template, c.max_prompt_len, "ppo")
  arrays = batching.prompts_to_arrays(tok, [x.message_list for x in prompts], c.chat_template, c.max_prompt_len)
  intents = np.asarray([INTENT_INDEX[x.intent] for x in prompts], np.int32)
  gold_grader = p.grader(c.eval.grader, "eval.grader")

  device = on_device_scorer(p, prompts)
  # A separate critic starts from the reward model's trunk when this run has one, else from SFT's.
  rm_params = device[1] if device is not None and c.reward.grader == "rm" else None
  actor, policy_params, ref_params = actor_critic(p, rm_params=rm_params)

  cfg = ppo_config(c, p.stop_ids)
  state = initial_state(p, policy_params)
  roll_cfg = rollout_lib.RolloutConfig(
      max_new_tokens=c.ppo.max_new_tokens, eos_id=p.stop_ids, pad_id=tok.pad_id,
      temperature=c.ppo.temperature, reward_kind=c.reward.kind,
      severity_to_safety=tuple(c.reward.severity_to_safety), helpfulness_kind=c.rm.helpfulness_loss)

  update = functools.partial(ppo_lib.ppo_update, forward_fn=actor.forward, config=cfg)
  base_key = jax.random.key(c.seed * 1000 + 77)
  n_unique = c.ppo.prompts_per_iteration // c.ppo.group_size
  width = c.ppo.max_new_tokens

  def batch_fn(step: int) -> dict:
    index = np.repeat(batching.batch_indices(step, len(prompts), n_unique, c.seed + 101), c.ppo.group_size)
    batch = {"prompts": arrays["tokens"][index], "prompt_mask": arrays["attention_mask"][index],
             "intent": intents[index], "index": index, "step": np.int32(step)}
    if device is not None and device[2] is not None:
      batch["judge_heads"], batch["judge_head_mask"] = device[2].head_arrays(index, device[2].max_head, tok.pad_id)
    return batch

  def grade(index, tokens, mask, grader):
    """(grades, prompts) of decoded responses."""
    texts = generation.decode_responses(tok, tokens, mask, p.stop_ids)
    batch_prompts = [prompts[i] for i in index]
    return grader.grade(batch_prompts, texts), batch_prompts

  def rewards(grades, batch_prompts, kind):
    # float32 like the compiled rollout's rewards: one definition of r whichever side computes it.
    return graders_lib.rewards_of(grades, batch_prompts, kind, as_jax=True,
                                  severity_to_safety=tuple(c.reward.severity_to_safety))

  if device is not None:
    scorer, scorer_params, _ = device
    rollout = rollout_lib.make_rollout(actor, scorer, roll_cfg)
    extra_keys = ("judge_heads", "judge_head_mask") if device[2] is not None else ()

    def fused_step(state, batch, ref_params, scorer_params):
      roll_key, update_key = jax.random.split(jax.random.fold_in(base_key, batch["step"]))
      inputs = {k: batch[k] for k in extra_keys} or None
      roll = rollout(state.params, ref_params, scorer_params, batch["prompts"], batch["prompt_mask"],
                     batch["intent"], roll_key, inputs)
      new_state, metrics = update(state, roll, rng=update_key)
      new_state, metrics["nonfinite"] = loop_lib.keep_if_finite(state, new_state, metrics["loss"])
      metrics.update(proxy_safety=roll["safety"].mean(), proxy_helpfulness=roll["helpfulness"].mean(),
                     response_tokens=roll["sequences"][:, -width:],
                     response_mask=roll["response_mask"], proxy_rewards=roll["scores"])
      return new_state, metrics

    # Rollout and update as one step on the mesh: policy, reference and on-device grader split by
    # their logical axes, prompts over the data axes (each host feeds its own rows).
    parallel.check_batch_size(c.ppo.prompts_per_iteration, p.mesh, "ppo.prompts_per_iteration")
    policy_sh = actor_shardings(actor, p.mesh)
    ref_sh = parallel.param_shardings(actor.policy_model.config, p.mesh)
    scorer_sh = parallel.param_shardings(scorer.model.config, p.mesh)
    tx = state.tx  # one optimizer object: the state's tree structure must not change
    state, state_sh = parallel.init_sharded_state(lambda q: initial_state(p, q, tx), policy_params, policy_sh,
                                                  p.mesh)
    ref_params, scorer_params = parallel.place(ref_params, ref_sh), parallel.place(scorer_params, scorer_sh)
    batch_sh = parallel.batch_shardings({k: v for k, v in batch_fn(0).items() if k != "index"}, p.mesh)
    rows = parallel.host_rows(batch_sh["prompts"], c.ppo.prompts_per_iteration)
    sharded_step = parallel.shard_step(fused_step, p.mesh, parallel.DEFAULT_RULES, state_sh, batch_sh,
                                       extra_shardings=(ref_sh, scorer_sh),
                                       global_batch=c.ppo.prompts_per_iteration)

    def step_fn(state, batch):
      index = batch.pop("index")
      local = {k: v[rows] if np.ndim(v) else v for k, v in batch.items()}
      state, metrics = sharded_step(state, local, ref_params, scorer_params)
      return state, dict(metrics, prompt_index=index)
  else:
    reward_grader = p.grader(c.reward.grader, "reward.grader")
    sampler = functools.partial(jax.jit(rollout_lib.make_sampler(actor, roll_cfg)), ref_params=ref_params)

    @jax.jit
    def jit_update(state, roll, rng):
      new_state, metrics = update(state, roll, rng=rng)
      new_state, metrics["nonfinite"] = loop_lib.keep_if_finite(state, new_state, metrics["loss"])
      return new_state, metrics

    def step_fn(state, batch):
      roll_key, update_key = jax.random.split(jax.random.fold_in(base_key, batch["step"]))
      roll = jax.device_get(sampler(state.params, prompts=batch["prompts"], prompt_mask=batch["prompt_mask"],
                                    rng=roll_key))
      grades, batch_prompts = grade(batch["index"], roll["sequences"][:, -width:], roll["response_mask"],
                                    reward_grader)
      scored = rewards(grades, batch_prompts, c.reward.kind)
      graded = scored["graded"] > 0
      if not graded.any():
        raise graders_lib.GraderError(f"reward.grader={c.reward.grader!r} could not grade any response of PPO "
                                      f"iteration {int(batch['step']) + 1}")
      roll = {k: roll[k] for k in ("sequences", "attention_mask", "response_mask", "old_logprobs",
                                   "ref_logprobs", "values")}
      if not graded.all():  # ungraded responses take no part in the update: no tokens, no score
        roll["response_mask"] = roll["response_mask"] * graded[:, None].astype(roll["response_mask"].dtype)
      roll["scores"] = scored["reward"]
      state, metrics = jit_update(state, roll, rng=update_key)
      metrics["ungraded"] = float(np.mean(~graded))
      if c.eval.grader == c.reward.grader:  # the reward grader is the gold standard: log it every step
        metrics.update(gold_metrics(rewards(grades, batch_prompts, "product"), batch_prompts))
      else:
        metrics.update(response_tokens=roll["sequences"][:, -width:], response_mask=roll["response_mask"],
                       prompt_index=batch["index"], proxy_rewards=scored["reward"])
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
