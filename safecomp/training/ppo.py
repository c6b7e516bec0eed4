"""PPO stage: policy = SFT model + value head, frozen reference = the SFT model, reward = r = h x s.

Each iteration samples responses for a batch of testbed prompts, scores them (reward model inside the
compiled rollout by default, or the gold oracle on the host), and runs all PPO epochs/minibatches in
one compiled update. Every `gold_every` iterations the same responses are also graded by the gold
oracle, so proxy reward and gold reward are logged side by side (over-optimisation shows as a gap).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from safecomp import parallel
from safecomp.constants import INTENT_INDEX, INTENTS, MODES

REFUSAL_MODES = (MODES.index("refusal_redirect"), MODES.index("hard_refusal"))
from safecomp.rewards import composite
from safecomp.rl import ppo as ppo_lib
from safecomp.training import batching
from safecomp.training import loop as loop_lib
from safecomp.training import rollout as rollout_lib


def graft(fresh: Any, pretrained: Any) -> Any:
  """`fresh` with every leaf that `pretrained` also has replaced by it (new heads stay fresh)."""
  if isinstance(fresh, dict):
    return {k: graft(v, pretrained[k]) if isinstance(pretrained, dict) and k in pretrained else v
            for k, v in fresh.items()}
  if np.shape(fresh) != np.shape(pretrained):
    raise ValueError(f"shape mismatch grafting parameters: {np.shape(fresh)} vs {np.shape(pretrained)}")
  return pretrained


def ppo_config(c, eos_id: int) -> ppo_lib.PPOConfig:
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


def decode_responses(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
  """Response text up to (not including) EOS, keeping `<think>` markers for the grader to strip."""
  specials = {tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id}
  out = []
  for row, row_mask in zip(np.asarray(tokens), np.asarray(mask)):
    ids = [int(t) for t, m in zip(row, row_mask) if m and int(t) not in specials]
    out.append(tokenizer.decode(ids, skip_special_tokens=False))
  return out


def oracle_scores(world, examples, texts, kind: str, severity_to_safety) -> dict[str, np.ndarray]:
  """Gold oracle grades on the host, combined with the same reward function as the proxy."""
  from safecomp import testbed  # pylint: disable=import-outside-toplevel
  grades = [testbed.grade(e.messages, t, world=world) for e, t in zip(examples, texts)]
  severity = np.asarray([g.severity for g in grades])
  safety = np.asarray(composite.safety_from_severity(jnp.asarray(severity), severity_to_safety))
  helpfulness = np.asarray([g.helpfulness for g in grades], np.float32)
  refused = np.asarray([g.mode in ("refusal_redirect", "hard_refusal") for g in grades], np.float32)
  intent = np.asarray([INTENT_INDEX[e.intent] for e in examples])
  reward = np.asarray(composite.composite_reward(
      jnp.asarray(safety), jnp.asarray(helpfulness), kind, intent=jnp.asarray(intent),
      refused=jnp.asarray(refused)))
  gold = np.asarray(composite.composite_reward(jnp.asarray(safety), jnp.asarray(helpfulness), "product"))
  modes = np.asarray([MODES.index(g.mode) for g in grades])
  return {"reward": reward, "gold_reward": gold, "safety": safety, "helpfulness": helpfulness,
          "unsafe": (severity >= 1).astype(np.float32), "modes": modes}


def mode_fractions(modes: np.ndarray, prefix: str) -> dict[str, float]:
  return {f"{prefix}mode_{name}": float(np.mean(modes == i)) for i, name in enumerate(MODES)}


def gold_metrics(graded: dict[str, np.ndarray], examples) -> dict[str, float]:
  """Gold reward, safety, helpfulness and modes of sampled responses, overall and per prompt intent.

  Per-intent figures show drift the mean hides, e.g. benign helpfulness eroding into generic,
  over-cautious answers while the overall reward still rises.
  """
  out = {"gold_reward": float(graded["gold_reward"].mean()), "gold_safety": float(graded["safety"].mean()),
         "gold_helpfulness": float(graded["helpfulness"].mean()), "gold_unsafe": float(graded["unsafe"].mean()),
         **mode_fractions(graded["modes"], "gold_")}
  intents = np.asarray([e.intent for e in examples])
  for intent in INTENTS:
    mask = intents == intent
    if mask.any():
      out[f"gold_reward_{intent}"] = float(graded["gold_reward"][mask].mean())
      out[f"gold_helpfulness_{intent}"] = float(graded["helpfulness"][mask].mean())
      out[f"gold_unsafe_{intent}"] = float(graded["unsafe"][mask].mean())
      out[f"gold_refusal_{intent}"] = float(np.isin(graded["modes"][mask], REFUSAL_MODES).mean())
  return out


def initial_state(p, policy_params, tx=None) -> ppo_lib.RLTrainState:
  c = p.config
  if tx is None:
    tx = loop_lib.make_optimizer(c.ppo, c.ppo.iterations * c.ppo.epochs * c.ppo.num_minibatches)
  return ppo_lib.create_rl_state(policy_params, tx, ppo_config(c, p.tokenizer.eos_id))


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
    params = graft(init, sft_params)
    return rollout_lib.ActorCritic(model), params, params
  critic_model, critic_init = p.init_model(("value",), seed_offset=3)
  critic_params = graft(critic_init, sft_params if rm_params is None else rm_params)
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


def run_ppo(p) -> dict:
  """The PPO stage of the pipeline (see module docstring)."""
  c = p.config
  tok = p.tokenizer
  examples = p.examples("train", c.testbed.n_rl_prompts, seed_offset=3)
  prompts = batching.prompts_to_arrays(tok, [e.messages for e in examples], c.chat_template,
                                       c.max_prompt_len)
  intents = np.asarray([INTENT_INDEX[e.intent] for e in examples], np.int32)

  on_device = c.reward.grader == "rm"
  # A separate critic starts from the reward model's trunk when this run has one, else from SFT's.
  rm_model, rm_params = p.trained_reward_model() if on_device else (None, None)
  actor, policy_params, ref_params = actor_critic(p, rm_params=rm_params)

  cfg = ppo_config(c, tok.eos_id)
  state = initial_state(p, policy_params)
  roll_cfg = rollout_lib.RolloutConfig(
      max_new_tokens=c.ppo.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
      temperature=c.ppo.temperature, reward_kind=c.reward.kind,
      severity_to_safety=tuple(c.reward.severity_to_safety), helpfulness_kind=c.rm.helpfulness_loss)

  update = functools.partial(ppo_lib.ppo_update, forward_fn=actor.forward, config=cfg)
  base_key = jax.random.key(c.seed * 1000 + 77)
  n_unique = c.ppo.prompts_per_iteration // c.ppo.group_size

  def batch_fn(step: int) -> dict:
    index = np.repeat(batching.batch_indices(step, len(examples), n_unique, c.seed + 101), c.ppo.group_size)
    return {"prompts": prompts["tokens"][index], "prompt_mask": prompts["attention_mask"][index],
            "intent": intents[index], "index": index, "step": np.int32(step)}

  if on_device:
    rollout = rollout_lib.make_rollout(actor, rm_model, roll_cfg)

    def fused_step(state, batch, ref_params, rm_params):
      roll_key, update_key = jax.random.split(jax.random.fold_in(base_key, batch["step"]))
      roll = rollout(state.params, ref_params, rm_params, batch["prompts"], batch["prompt_mask"],
                     batch["intent"], roll_key)
      new_state, metrics = update(state, roll, rng=update_key)
      new_state, metrics["nonfinite"] = loop_lib.keep_if_finite(state, new_state, metrics["loss"])
      metrics.update(proxy_safety=roll["safety"].mean(), proxy_helpfulness=roll["helpfulness"].mean(),
                     response_tokens=roll["sequences"][:, -c.ppo.max_new_tokens:],
                     response_mask=roll["response_mask"], proxy_rewards=roll["scores"])
      return new_state, metrics

    # Rollout and update as one step on the mesh: policy, reference and reward model split by
    # their logical axes, prompts over the data axes (each host feeds its own rows).
    parallel.check_batch_size(c.ppo.prompts_per_iteration, p.mesh, "ppo.prompts_per_iteration")
    policy_sh = actor_shardings(actor, p.mesh)
    ref_sh = parallel.param_shardings(actor.policy_model.config, p.mesh)
    rm_sh = parallel.param_shardings(rm_model.config, p.mesh)
    tx = state.tx  # one optimizer object: the state's tree structure must not change
    state, state_sh = parallel.init_sharded_state(lambda q: initial_state(p, q, tx), policy_params, policy_sh,
                                                  p.mesh)
    ref_params, rm_params = parallel.place(ref_params, ref_sh), parallel.place(rm_params, rm_sh)
    batch_sh = parallel.batch_shardings({k: v for k, v in batch_fn(0).items() if k != "index"}, p.mesh)
    rows = parallel.host_rows(batch_sh["prompts"], c.ppo.prompts_per_iteration)
    sharded_step = parallel.shard_step(fused_step, p.mesh, parallel.DEFAULT_RULES, state_sh, batch_sh,
                                       extra_shardings=(ref_sh, rm_sh),
                                       global_batch=c.ppo.prompts_per_iteration)

    def step_fn(state, batch):
      index = batch.pop("index")
      local = {k: v[rows] if np.ndim(v) else v for k, v in batch.items()}
      state, metrics = sharded_step(state, local, ref_params, rm_params)
      return state, dict(metrics, prompt_index=index)
  else:
    sampler = functools.partial(jax.jit(rollout_lib.make_sampler(actor, roll_cfg)), ref_params=ref_params)
    @jax.jit
    def jit_update(state, roll, rng):
      new_state, metrics = update(state, roll, rng=rng)
      new_state, metrics["nonfinite"] = loop_lib.keep_if_finite(state, new_state, metrics["loss"])
      return new_state, metrics


    def step_fn(state, batch):
      roll_key, update_key = jax.random.split(jax.random.fold_in(base_key, batch["step"]))
      roll = jax.device_get(sampler(state.params, prompts=batch["prompts"], prompt_mask=batch["prompt_mask"], rng=roll_key))
      n = c.ppo.max_new_tokens
      texts = decode_responses(tok, roll["sequences"][:, -n:], roll["response_mask"])
      graded = oracle_scores(p.world, [examples[i] for i in batch["index"]], texts, c.reward.kind,
                             tuple(c.reward.severity_to_safety))
      roll = {k: roll[k] for k in ("sequences", "attention_mask", "response_mask", "old_logprobs",
                                   "ref_logprobs", "values")}
      roll["scores"] = graded["reward"]
      state, metrics = jit_update(state, roll, rng=update_key)
      metrics.update(gold_metrics(graded, [examples[i] for i in batch["index"]]))
      return state, metrics

  def on_log(step: int, row: dict) -> dict:
    tokens, mask, index = row.pop("response_tokens", None), row.pop("response_mask", None), row.pop("prompt_index", None)
    proxy = row.pop("proxy_rewards", None)
    if tokens is None or (step % c.ppo.gold_every and step != c.ppo.iterations):
      return {}
    texts = decode_responses(tok, tokens, mask)
    batch_examples = [examples[i] for i in index]
    graded = oracle_scores(p.world, batch_examples, texts, "product", tuple(c.reward.severity_to_safety))
    return {"proxy_reward": float(np.mean(proxy)), **gold_metrics(graded, batch_examples)}

  from safecomp.training.metrics import MetricWriter  # pylint: disable=import-outside-toplevel
  writer = MetricWriter(p.workdir, "ppo")
  state = loop_lib.run_loop(
      state, step_fn, batch_fn, p.checkpointer("ppo"), writer,
      loop_lib.LoopConfig(c.ppo.iterations, c.ppo.log_every, c.ppo.checkpoint_every,
                          c.max_consecutive_nonfinite, "ppo"),
      to_tree=rl_tree, from_tree=rl_from_tree, on_log=on_log)
  writer.close()
  from safecomp.training.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  rows = [r for r in read_metrics(writer.path) if "gold_reward" in r]
  summary = {"iterations": c.ppo.iterations}
  if rows:
    summary.update(first_gold_reward=rows[0]["gold_reward"], last_gold_reward=rows[-1]["gold_reward"])
    if "proxy_reward" in rows[-1]:
      summary.update(last_proxy_reward=rows[-1]["proxy_reward"])
  return summary
