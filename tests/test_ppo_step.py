"""The PPO iteration `run_ppo` runs, built once (`build_ppo_step`) for every grader and planned as built.

- With a host grader (the oracle, http) the sampler and the update are sharded steps on the mesh, equal
  on one device to plain `jax.jit` calls of the same functions, and split over several devices (a fresh
  process with 2 simulated CPU devices runs `tests/parallel_helpers/ppo_step_devices.py`).
- `python -m safecomp.memory --stage ppo` plans that same step: its total equals what XLA reports for
  the step `run_ppo` compiles.
"""
import functools
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from safecomp import config as config_lib
from safecomp import memory, models, parallel
from safecomp.errors import ConfigError
from safecomp.rl import ppo as ppo_lib
from safecomp.training import loop as loop_lib
from safecomp.training import pipeline
from safecomp.training import ppo as ppo_stage
from safecomp.training import rollout as rollout_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.py")
VOCAB, EOS, PAD = 64, 2, 0


def tiny(arm="safe_completion", *overrides):
  return config_lib.load_config(f"{DEMO}:arm={arm},size=tiny", list(overrides))


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
  """The 2-device process, started first so that it runs while the tests below do."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "parallel_helpers" / "ppo_step_devices.py"),
                           str(tmp_path_factory.mktemp("two_devices"))],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  yield proc
  if proc.poll() is None:
    proc.kill()


def test_two_device_process_starts(two_devices):
  assert two_devices.poll() in (None, 0)


def untrained_pipeline(config, workdir):
  """A pipeline whose SFT and reward-model "checkpoints" are the fresh models (no stage has run)."""
  p = pipeline.Pipeline(config, workdir)
  p.trained_params = lambda stage, like, section: like
  return p


# --------------------------------------------------------------------------- host grader, one device
def test_host_grader_step_equals_plain_jit_on_one_device():
  c = tiny("refusal")
  assert c.reward.grader == "oracle" and c.ppo.critic == "separate"
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  actor = ppo_stage.abstract_actor_critic(c, vocab_size=VOCAB)
  step = ppo_stage.build_ppo_step(c, actor, None, mesh, stop_ids=(EOS,), pad_id=PAD)
  assert step.fused is None and isinstance(step.sample, parallel.ShardedStep)
  assert isinstance(step.update, parallel.ShardedStep)

  policy = jax.device_get(models.init_params(actor.policy_model.config, jax.random.key(0)))
  critic = jax.device_get(models.init_params(actor.critic_model.config, jax.random.key(1)))
  params = {"policy": policy, "critic": critic}
  b, width = c.ppo.prompts_per_iteration, c.max_prompt_len
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, VOCAB, (b, width)).astype(np.int32)
  prompt_mask = np.ones((b, width), np.int32)
  prompt_mask[::2, :width // 2] = 0
  scores = rng.uniform(0, 1, b).astype(np.float32)
  graded = np.ones(b, np.int32)
  graded[3] = 0  # one response the grader could not judge
  it = 2

  # What run_ppo ran before: a jitted sampler, the host's scores, a jitted update.
  cfg = ppo_stage.ppo_config(c, (EOS,))
  tx = loop_lib.make_optimizer(c.ppo, c.ppo.iterations * c.ppo.epochs * c.ppo.num_minibatches)
  roll_cfg = ppo_stage.rollout_config(c, (EOS,), PAD)
  sampler = functools.partial(jax.jit(rollout_lib.make_sampler(actor, roll_cfg)), ref_params=policy)
  update = functools.partial(ppo_lib.ppo_update, forward_fn=actor.forward, config=cfg)

  @jax.jit
  def jit_update(state, roll, rng):
    new_state, metrics = update(state, roll, rng=rng)
    new_state, metrics["nonfinite"] = loop_lib.keep_if_finite(state, new_state, metrics["loss"])
    return new_state, metrics

  roll_key, update_key = jax.random.split(jax.random.fold_in(jax.random.key(c.seed * 1000 + 77), it))
  plain_state = ppo_lib.create_rl_state(params, tx, cfg)
  roll = jax.device_get(sampler(plain_state.params, prompts=prompts, prompt_mask=prompt_mask, rng=roll_key))
  roll = {k: roll[k] for k in ppo_stage.ROLLOUT_KEYS}
  plain_roll = dict(roll, response_mask=roll["response_mask"] * graded[:, None], scores=scores)
  plain_state, plain_metrics = jit_update(plain_state, plain_roll, update_key)

  state = step.init_state(params)
  batch = {"prompts": prompts, "prompt_mask": prompt_mask, "intent": np.zeros(b, np.int32), "step": np.int32(it)}
  sharded_roll = step.sample(state, batch, parallel.place(policy, step.ref_shardings))
  for key in ppo_stage.ROLLOUT_KEYS:
    np.testing.assert_array_equal(np.asarray(sharded_roll[key]), roll[key], err_msg=key)
  state, metrics = step.update(state, {"rollout": sharded_roll, "scores": scores, "graded": graded,
                                       "step": np.int32(it)})
  for a, b_ in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(plain_state.params))):
    np.testing.assert_array_equal(a, b_)
  for key, value in jax.device_get(plain_metrics).items():
    np.testing.assert_array_equal(np.asarray(metrics[key]), value, err_msg=key)
  assert float(metrics["ungraded"]) == pytest.approx(1 / b)
  np.testing.assert_array_equal(np.asarray(metrics["response_mask"])[3], 0)


# ------------------------------------------------------------------------------------ the planner
def test_planner_total_is_the_compiled_run_ppo_step(tmp_path):
  config = tiny()
  assert config.reward.grader == "rm" and config.ppo.critic == "separate"
  p = untrained_pipeline(config, tmp_path)
  prompts = p.task.train_prompts()
  step, args = ppo_stage.ppo_step(p, prompts)
  assert step.fused is not None and step.actor.critic_model is not None
  b, width = config.ppo.prompts_per_iteration, config.max_prompt_len
  batch = {"prompts": np.zeros((b, width), np.int32), "prompt_mask": np.ones((b, width), np.int32),
           "intent": np.zeros(b, np.int32), "step": np.int32(0)}
  compiled = step.fused.lower(args["state"], batch, args["ref_params"], args["scorer_params"]).compile()
  stats = compiled.memory_analysis()
  run_ppo_bytes = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
                   + stats.temp_size_in_bytes)

  result = memory.plan(config, {"data": 1, "fsdp": 1, "tensor": 1}, stage="ppo",
                       vocab_size=p.tokenizer.vocab_size)
  assert result["critic"] == "separate" and result["grader"] == "rm" and result["reward_on_device"]
  assert list(result["programs"]) == ["rollout+update"] and "compiled" in result
  assert result["total_bytes"] == pytest.approx(run_ppo_bytes, rel=0.01)
  # The separate critic's trunk is trained (parameters and optimizer state), the reward model frozen.
  lm = models.model_config_from(config, ("lm",), vocab_size=p.tokenizer.vocab_size)
  value = models.model_config_from(config, ("value",), vocab_size=p.tokenizer.vocab_size)
  rm = models.model_config_from(config, ("severity", "helpfulness"), vocab_size=p.tokenizer.vocab_size)
  assert result["params_bytes"] == 4 * (memory.count_params(lm) + memory.count_params(value))
  assert result["frozen_bytes"] == 4 * (memory.count_params(lm) + memory.count_params(rm))


def test_planner_plans_a_host_grader_as_sampler_then_update():
  config = tiny("refusal", "ppo.critic=shared")
  result = memory.plan(config, {"data": 2, "fsdp": 1, "tensor": 1}, stage="ppo", vocab_size=VOCAB,
                       compile_step=False)
  assert list(result["programs"]) == ["rollout", "update"] and not result["reward_on_device"]
  cfg = models.model_config_from(config, ("lm", "value"), vocab_size=VOCAB)
  assert result["critic"] == "shared" and result["frozen_bytes"] == 4 * memory.count_params(cfg)
  assert result["total_bytes"] == max(x["total_bytes"] for x in result["programs"].values())
  with pytest.raises(ConfigError, match="ppo.prompts_per_iteration"):
    memory.plan(config, {"data": 3, "fsdp": 1, "tensor": 1}, stage="ppo", vocab_size=VOCAB, compile_step=False)


def test_score_chunk_rows_is_checked_at_start_up(tmp_path):
  with pytest.raises(ConfigError, match="config key 'ppo.score_chunk_rows'"):
    pipeline.run(tiny("safe_completion", "ppo.score_chunk_rows=3"), tmp_path / "run")
  assert ppo_stage.rollout_config(tiny("safe_completion", "ppo.score_chunk_rows=4"), (EOS,), PAD).score_chunk_rows == 4


# ---------------------------------------- 2 simulated devices (last: their process ran meanwhile)
def test_host_grader_run_is_sharded_over_two_devices(two_devices):
  out, err = two_devices.communicate(timeout=600)
  assert two_devices.returncode == 0, err[-4000:]
  result = json.loads(out.strip().splitlines()[-1])
  assert result["devices"] == 2 and result["mesh_devices"] == 2
  assert "'ppo.prompts_per_iteration'" in result["odd_batch_error"]
  assert result["sampler_is_sharded"]
  assert result["rows"] == list(range(8))  # one process feeds every row
  assert result["rollout_devices"] == 2 and result["rollout_shard_rows"] == [4]
  assert result["iterations"] == 1
  row = result["last_row"]
  assert row["ungraded"] == 0.0 and math.isfinite(row["loss"]) and "gold_reward" in row
