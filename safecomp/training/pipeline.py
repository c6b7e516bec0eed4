"""The pipeline: SFT -> reward model -> PPO -> eval, each stage checkpointed and skipped when complete.

`run(config, workdir)` is what `python -m safecomp.train` calls. Shared resources (world, spec,
tokenizer, model config, data) are built once and lazily by `Pipeline`; each stage is a function of the
pipeline that reads the previous stage's final checkpoint.
"""
from __future__ import annotations

import functools
import json
import logging
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax.training import train_state

from safecomp import config as config_lib
from safecomp import models
from safecomp import parallel
from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp import tokenizers
from safecomp.errors import CheckpointError, ConfigError, DataError
from safecomp.constants import INTENTS, SEVERITY_INDEX
from safecomp.data.readers import read_jsonl
from safecomp.testbed import lexicon
from safecomp.testbed import teachers
from safecomp.training import batching
from safecomp.training import evaluate as evaluate_lib
from safecomp.training import loop as loop_lib
from safecomp.training import rm as rm_lib
from safecomp.training import rollout as rollout_lib
from safecomp.training import sft as sft_lib
from safecomp.training.checkpoints import StageCheckpointer, first_difference
from safecomp.training.metrics import MetricWriter
from safecomp.training.ppo import graft

STAGES = ("sft", "rm", "ppo", "eval")
SPLIT_IDS = {"train": 0, "test": 1, "heldout": 2, "multiturn": 3}
# Config keys that decide the shapes of every checkpoint: stored with it, checked on restore.
SHAPE_KEYS = ("model", "testbed.world_seed", "max_seq_len")


def validate(config: ml_collections.ConfigDict):
  """Range checks a user can act on (unknown keys are caught when the overrides are parsed)."""
  for stage in config.stages:
    config_lib.require(stage in STAGES, "stages", f"unknown stage {stage!r}; expected a subset of {STAGES}")
  config_lib.require(config.max_prompt_len < config.max_seq_len, "max_prompt_len",
                     f"must be below max_seq_len ({config.max_seq_len})")
  config_lib.require(config.sft_style in ("safe_completion", "refusal"), "sft_style",
                     "must be 'safe_completion' or 'refusal'")
  for section in ("sft", "rm", "ppo"):
    for key in ("learning_rate",):
      config_lib.require(config[section][key] > 0, f"{section}.{key}", "must be > 0")
  config_lib.require(config.sft.steps > 0 and config.sft.batch_size > 0, "sft.steps", "must be > 0")
  config_lib.require(config.ppo.prompts_per_iteration % config.ppo.group_size == 0
                     and config.ppo.prompts_per_iteration // config.ppo.group_size >= 1,
                     "ppo.group_size", "must divide ppo.prompts_per_iteration")
  config_lib.require(config.ppo.max_new_tokens + config.max_prompt_len <= config.max_seq_len,
                     "ppo.max_new_tokens", "max_prompt_len + max_new_tokens must fit in max_seq_len")
  config_lib.require(config.ppo.critic in ("shared", "separate"), "ppo.critic", "must be 'shared' or 'separate'")
  config_lib.require(config.ppo.eos_penalty >= 0, "ppo.eos_penalty",
                     "is subtracted from the reward of responses without EOS, so it must be >= 0")
  for key in ("teacher_error_rate", "teacher_caution_rate", "judge_miss_rate"):
    config_lib.require(0.0 <= config.testbed[key] <= 1.0, f"testbed.{key}", "must lie in [0, 1]")
  config_lib.require(config.reward.grader in ("rm", "oracle"), "reward.grader", "must be 'rm' or 'oracle'")
  config_lib.require(config.reward.kind != "refusal" or config.reward.grader == "oracle", "reward.grader",
                     "the refusal reward reads the prompt's intent label and the response mode: "
                     "set reward.grader=oracle")
  config_lib.require(config.rm.policy_samples_per_prompt >= 0, "rm.policy_samples_per_prompt", "must be >= 0")
  config_lib.require(not (config.rm.policy_samples_per_prompt and config.rm.train_file), "rm.policy_samples_per_prompt",
                     "policy samples are labelled by the testbed oracle, which needs testbed prompts; "
                     "set it to 0 with rm.train_file")
  config_lib.require(len(config.reward.severity_to_safety) == 4, "reward.severity_to_safety",
                     "needs 4 values (negligible, low, moderate, high)")


def _message_list(value: Any, key: str) -> list[dict]:
  if not isinstance(value, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value):
    raise ValueError(f"'{key}' must be a list of {{role, content}} messages")
  return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def sft_row(raw: dict) -> list[dict] | None:
  """An SFT JSONL row (as `safecomp.datagen` writes it): `messages` ending in the assistant turn.

  Rows the judge rejected (`kept: false`) are skipped (None), not trained on.
  """
  messages = _message_list(raw["messages"], "messages")
  if messages[-1]["role"] != "assistant":
    raise ValueError("the last message must be the assistant turn to train on")
  return messages if raw.get("kept", True) else None


def rm_row(raw: dict) -> dict:
  """A labelled reward-model JSONL row: `prompt` (text or messages), `completion` (text), `severity`
  (0..3 or a name: negligible/low/moderate/high) and `helpfulness` in [0, 1]."""
  prompt = raw["prompt"]
  messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _message_list(prompt, "prompt")
  if not isinstance(raw["completion"], str):
    raise ValueError("'completion' must be a string")
  severity = raw["severity"]
  severity = SEVERITY_INDEX[severity] if isinstance(severity, str) and severity in SEVERITY_INDEX else severity
  if not isinstance(severity, int) or not 0 <= severity <= 3:
    raise ValueError(f"'severity' must be 0..3 or one of {list(SEVERITY_INDEX)}, got {raw['severity']!r}")
  helpfulness = float(raw["helpfulness"])
  if not 0.0 <= helpfulness <= 1.0:
    raise ValueError(f"'helpfulness' must lie in [0, 1], got {helpfulness}")
  return {"messages": messages + [{"role": "assistant", "content": raw["completion"]}],
          "severity": severity, "helpfulness": helpfulness}


def split_holdout(rows: list, fraction: float, seed: int) -> tuple[list, list]:
  """(train, held-out) by a seeded permutation."""
  order = np.random.default_rng(seed).permutation(len(rows))
  n_held = max(1, int(round(fraction * len(rows))))
  return [rows[i] for i in order[n_held:]], [rows[i] for i in order[:n_held]]


class Pipeline:
  """Lazily built resources shared by the stages."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.fingerprint = config_lib.fingerprint_keys(config, SHAPE_KEYS)

  # -- shared resources ----------------------------------------------------------------------------
  @functools.cached_property
  def world(self):
    return testbed.make_world(self.config.testbed.world_seed)

  @functools.cached_property
  def spec(self):
    return spec_lib.load_spec(self.config.spec)

  @functools.cached_property
  def tokenizer(self):
    path = self.workdir / "tokenizer.json"
    if self.config.model.init_from:
      return tokenizers.load_tokenizer(self.config.model.init_from)
    if not path.is_file():
      tokenizers.word_level_tokenizer(self.world.vocabulary()).save(str(path))
    return tokenizers.load_tokenizer(str(path))

  def model_config(self, heads: tuple[str, ...]) -> models.ModelConfig:
    m = self.config.model
    tok = self.tokenizer
    return models.ModelConfig(
        family=m.family, vocab_size=tok.vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
        num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
        intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
        pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, heads=heads,
        dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat)

  def init_model(self, heads: tuple[str, ...], seed_offset: int) -> tuple[Any, Any]:
    """(model, params): from `model.init_from` when set, else freshly initialised (seeded)."""
    if self.config.model.init_from:
      m = self.config.model
      return models.load_pretrained(m.init_from, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                                    heads=heads, tokenizer=self.tokenizer, seed=self.config.seed + seed_offset)
    cfg = self.model_config(heads)
    params = models.init_params(cfg, jax.random.key(self.config.seed * 1000 + seed_offset))
    return models.Transformer(cfg), params

  # -- devices -------------------------------------------------------------------------------------
  @functools.cached_property
  def mesh(self):
    return parallel.make_mesh(self.config.mesh)

  def sharded_training(self, step_fn: Callable, model, params: Any, tx, example_batch: dict,
                       global_batch: int, batch_key: str):
    """(state, sharded step, this host's batch rows) for a supervised stage on the config's mesh.

    Parameters and optimizer state are split by the model's logical axes, batches over the data
    axes; each host feeds only its rows of every global batch.
    """
    parallel.check_batch_size(global_batch, self.mesh, batch_key)
    param_sh = parallel.param_shardings(model.config, self.mesh)
    state, state_sh = parallel.init_sharded_state(lambda q: _new_state(q, tx), params, param_sh, self.mesh)
    batch_sh = parallel.batch_shardings(example_batch, self.mesh)
    step = parallel.shard_step(step_fn, self.mesh, parallel.DEFAULT_RULES, state_sh, batch_sh,
                               global_batch=global_batch)
    return state, step, parallel.host_rows(batch_sh["tokens"], global_batch)

  def checkpointer(self, stage: str) -> StageCheckpointer:
    return StageCheckpointer(self.workdir / stage, fingerprint=self.fingerprint,
                             max_to_keep=self.config.checkpoint.max_to_keep)

  def final_params(self, stage: str, abstract_state: Any) -> Any:
    ckpt = self.checkpointer(stage)
    if not ckpt.is_done():
      raise ConfigError(f"stage {stage!r} has no complete checkpoint in {ckpt.directory}; "
                        f"run it first (add it to config.stages)")
    tree, _ = ckpt.restore(abstract_state, step=ckpt.done_meta()["step"])
    return tree

  def trained_params(self, stage: str, params_like: Any, section: str) -> Any:
    """The parameters of a completed SFT/RM stage (restored into the shapes of `params_like`)."""
    tx = loop_lib.make_optimizer(self.config[section], self.config[section].steps)
    abstract = jax.eval_shape(lambda: loop_lib.checkpoint_tree(_new_state(params_like, tx)))
    return self.final_params(stage, abstract)["params"]

  def trained_reward_model(self) -> tuple[Any, Any]:
    """(model, params) of the completed `rm` stage."""
    model, init = self.init_model(("severity", "helpfulness"), seed_offset=2)
    return model, self.trained_params("rm", init, "rm")

  # -- data ----------------------------------------------------------------------------------------
  def examples(self, split: str, n: int, seed_offset: int = 0) -> list:
    return testbed.generate_examples(self.world, split, n, seed=self.config.seed * 7919 + seed_offset)

  def sft_conversations(self, split: str, n: int) -> tuple[list[list[dict]], dict]:
    """Teacher-written, judge-filtered SFT conversations (student sees the plain prompt).

    From `sft.train_file` (JSONL, e.g. `safecomp.datagen` output) when set, with
    `sft.holdout_fraction` of it held out; else from the testbed's procedural teacher.
    """
    c = self.config
    if c.sft.train_file:
      config_lib.require(pathlib.Path(c.sft.train_file).is_file(), "sft.train_file",
                         f"{c.sft.train_file} not found")
      rows = read_jsonl(c.sft.train_file, sft_row).rows
      kept = [r for r in rows if r is not None]
      if not kept:
        raise DataError(c.sft.train_file, 0, "no rows with kept=true to train on")
      train, held = split_holdout(kept, c.sft.holdout_fraction, c.seed)
      return (train if split == "train" else held), {"generated": len(rows), "kept": len(kept)}
    rng = np.random.default_rng([c.seed, 11, SPLIT_IDS[split]])
    conversations, stats = [], {"generated": 0, "kept": 0}
    for example in self.examples(split, n, seed_offset=1 if split == "train" else 2):
      row = teachers.make_sft_example(
          self.world, self.spec, example, c.sft_style, rng, error_rate=c.testbed.teacher_error_rate,
          judge_miss_rate=c.testbed.judge_miss_rate, reasoning=c.reasoning,
          caution_rate=c.testbed.teacher_caution_rate)
      stats["generated"] += 1
      if row.get("kept", True):
        stats["kept"] += 1
        conversations.append(row["messages"])
    return conversations, stats


  def rm_examples(self, split: str, n: int) -> list:
    """The reward model's prompts: hand-made candidates and policy samples answer the same ones."""
    return self.examples(split, n, seed_offset=4 if split == "train" else 5)

  def rm_rows(self, split: str, n: int) -> list[dict]:
    """Reward-model rows: candidate responses of every kind (see `testbed.candidates`), oracle-labelled.

    When the policy writes reasoning, candidates carry a `<think>` block too (its intent drawn at
    random, so the reward model must judge the answer rather than the reasoning).
    """
    c = self.config
    if c.rm.train_file:
      config_lib.require(pathlib.Path(c.rm.train_file).is_file(), "rm.train_file", f"{c.rm.train_file} not found")
      train, held = split_holdout(read_jsonl(c.rm.train_file, rm_row).rows, c.rm.holdout_fraction, c.seed)
      return train if split == "train" else held
    rng = np.random.default_rng([c.seed, 13, SPLIT_IDS[split]])
    rows = []
    for example in self.rm_examples(split, n):
      picks = rng.choice(len(testbed.CANDIDATE_SOURCES), size=c.testbed.rm_candidates_per_prompt,
                         replace=False)
      for k in sorted(int(i) for i in picks):
        answer, _ = testbed.make_candidate(self.world, self.spec, example, testbed.CANDIDATE_SOURCES[k], rng,
                                           error_rate=c.testbed.teacher_error_rate)
        grade = testbed.grade(example.messages, answer, world=self.world, example=example)
        if c.reasoning:
          reasoning, _ = teachers.spec_reasoning(self.spec, example, intent=str(rng.choice(INTENTS)))
          answer = f"{lexicon.THINK_OPEN} {reasoning} {lexicon.THINK_CLOSE} {answer}"
        rows.append({"messages": list(example.messages) + [{"role": "assistant", "content": answer}],
                     "severity": grade.severity, "helpfulness": grade.helpfulness})
    return rows

  def policy_rm_rows(self, split: str, n: int, model, params) -> list[dict]:
    """Reward-model rows sampled from the SFT policy on the prompts of `rm_rows`, oracle-labelled.

    Hand-made candidates miss the policy's own slips (a fact dropped, a neighbouring topic, a
    half-remembered redirection); a reward model that has never seen them cannot tell them from the
    real thing, and PPO drifts into them. `rm.policy_samples_per_prompt` samples per prompt are drawn
    at `rm.policy_temperature`.
    """
    c = self.config
    k = c.rm.policy_samples_per_prompt
    examples = self.rm_examples(split, n) * k
    cfg = rollout_lib.RolloutConfig(max_new_tokens=c.ppo.max_new_tokens, eos_id=self.tokenizer.eos_id,
                                    pad_id=self.tokenizer.pad_id, temperature=c.rm.policy_temperature)
    texts = evaluate_lib.generate_texts(model, params, self.tokenizer, [e.messages for e in examples],
                                        c.chat_template, c.max_prompt_len, cfg, c.eval.batch_size,
                                        seed=c.seed * 1000 + 31 * SPLIT_IDS[split], desc=f"rm samples ({split})")
    rows = []
    for example, text in zip(examples, texts):
      grade = testbed.grade(example.messages, text, world=self.world, example=example)
      rows.append({"messages": list(example.messages) + [{"role": "assistant", "content": text}],
                   "severity": grade.severity, "helpfulness": grade.helpfulness, "policy_sample": True})
    return rows


def open_workdir(workdir: str | pathlib.Path) -> Pipeline:
  """The `Pipeline` of a finished or running workdir, from the `config.json` its run saved."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise ConfigError(f"{path} not found: {workdir} is not a safecomp workdir "
                      f"(run `python -m safecomp.train --config ... --workdir {workdir}` first)")
  return Pipeline(config_lib.config_from_json(path), workdir)


# -- stages ----------------------------------------------------------------------------------------
def _new_state(params, tx) -> train_state.TrainState:
  return train_state.TrainState.create(apply_fn=None, params=params, tx=tx)


def run_sft(p: Pipeline) -> dict:
  c = p.config
  train_conv, stats = p.sft_conversations("train", c.testbed.n_sft)
  eval_conv, _ = p.sft_conversations("test", c.testbed.n_sft_eval)
  logging.info("sft: %d/%d teacher outputs kept by the judge", stats["kept"], stats["generated"])
  train = batching.conversations_to_arrays(p.tokenizer, train_conv, p.config.chat_template, c.max_seq_len, "SFT rows")
  held = batching.conversations_to_arrays(p.tokenizer, eval_conv, p.config.chat_template, c.max_seq_len, "SFT eval rows")
  model, params = p.init_model(("lm",), seed_offset=1)

  def global_batch(step: int) -> dict:
    index = batching.batch_indices(step, len(train_conv), c.sft.batch_size, c.seed)
    return batching.trim_padding(batching.take(train, index), c.pad_multiple)

  state, step_fn, rows = p.sharded_training(
      sft_lib.sft_step_fn(model, c.sft.microbatches), model, params,
      loop_lib.make_optimizer(c.sft, c.sft.steps), global_batch(0), c.sft.batch_size, "sft.batch_size")
  evaluate = sft_lib.make_sft_eval(model, held, c.sft.batch_size)
  writer = MetricWriter(p.workdir, "sft")
  state = loop_lib.run_loop(
      state, step_fn, lambda step: {k: v[rows] for k, v in global_batch(step).items()},
      p.checkpointer("sft"), writer,
      loop_lib.LoopConfig(c.sft.steps, c.sft.log_every, c.sft.checkpoint_every,
                          c.max_consecutive_nonfinite, "sft"),
      eval_fn=lambda state, step: evaluate(state.params), eval_every=c.sft.eval_every)
  summary = dict(evaluate(state.params), **stats)
  writer.close()
  return summary


def _rm_arrays(p: Pipeline, rows: list[dict]) -> dict[str, np.ndarray]:
  arrays = batching.conversations_to_arrays(p.tokenizer, [r["messages"] for r in rows], p.config.chat_template,
                                            p.config.max_seq_len, "reward-model rows")
  arrays["severity"] = np.asarray([r["severity"] for r in rows], np.int32)
  arrays["helpfulness"] = np.asarray([r["helpfulness"] for r in rows], np.float32)
  del arrays["loss_mask"]
  return arrays


def run_rm(p: Pipeline) -> dict:
  c = p.config
  sft_model, sft_init = p.init_model(("lm",), seed_offset=1)
  sft_params = p.trained_params("sft", sft_init, "sft") if "sft" in c.stages else sft_init
  train_rows, held_rows = p.rm_rows("train", c.testbed.n_rm), p.rm_rows("test", c.testbed.n_rm_eval)
  if c.rm.policy_samples_per_prompt:
    train_rows += p.policy_rm_rows("train", c.testbed.n_rm, sft_model, sft_params)
    held_rows += p.policy_rm_rows("test", c.testbed.n_rm_eval, sft_model, sft_params)
  train, held = _rm_arrays(p, train_rows), _rm_arrays(p, held_rows)
  model, fresh = p.init_model(("severity", "helpfulness"), seed_offset=2)
  params = graft(fresh, sft_params)  # the reward model starts from the SFT trunk
  weights = {"severity": c.rm.severity_weight, "helpfulness": c.rm.helpfulness_weight}
  n = len(train["tokens"])

  def global_batch(step: int) -> dict:
    index = batching.batch_indices(step, n, c.rm.batch_size, c.seed + 1)
    return batching.trim_padding(batching.take(train, index), c.pad_multiple)

  state, step_fn, rows = p.sharded_training(
      rm_lib.rm_step_fn(model, weights, c.rm.helpfulness_loss, c.rm.microbatches), model, params,
      loop_lib.make_optimizer(c.rm, c.rm.steps), global_batch(0), c.rm.batch_size, "rm.batch_size")
  writer = MetricWriter(p.workdir, "rm")
  state = loop_lib.run_loop(
      state, step_fn, lambda step: {k: v[rows] for k, v in global_batch(step).items()},
      p.checkpointer("rm"), writer,
      loop_lib.LoopConfig(c.rm.steps, c.rm.log_every, c.rm.checkpoint_every, c.max_consecutive_nonfinite, "rm"))
  predictions = rm_lib.rm_predict(model, state.params, held, c.rm.batch_size, c.rm.helpfulness_loss)
  report = rm_lib.rm_report(predictions, held)
  on_policy = np.asarray([bool(r.get("policy_sample")) for r in held_rows])
  if on_policy.any():  # accuracy where PPO will query it: on the SFT policy's own samples
    on_policy_report = rm_lib.rm_report(batching.take(predictions, on_policy), batching.take(held, on_policy))
    report.update({f"policy_{k}": v for k, v in on_policy_report.items() if not isinstance(v, list)})
  (p.workdir / "rm" / "eval.json").write_text(json.dumps(report, indent=2))
  writer.write(c.rm.steps, {f"eval_{k}": v for k, v in report.items()})
  writer.close()
  print(f"[rm] held-out severity accuracy {report['severity_accuracy']:.3f}, ECE {report['severity_ece']:.3f}, "
        f"helpfulness MAE {report.get('helpfulness_mae', float('nan')):.3f}; on the SFT policy's samples "
        f"{report.get('policy_severity_accuracy', float('nan')):.3f} and "
        f"{report.get('policy_helpfulness_mae', float('nan')):.3f}\n"
        f"[rm] severity confusion (rows = gold negligible..high): {report['severity_confusion']}", flush=True)
  return {k: v for k, v in report.items() if not isinstance(v, list)}


def _lazy(module: str, name: str) -> Callable[[Pipeline], dict]:
  def call(p: Pipeline) -> dict:
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(module), name)(p)
  return call


STAGE_FNS: dict[str, Callable[[Pipeline], dict]] = {
    "sft": run_sft, "rm": run_rm,
    "ppo": _lazy("safecomp.training.ppo", "run_ppo"),
    "eval": _lazy("safecomp.training.evaluate", "run_eval"),
}


def _check_workdir_config(p: Pipeline):
  """Refuses a workdir whose saved config has other shapes (model, world, lengths) than this run's."""
  path = p.workdir / "config.json"
  if not path.is_file():
    return
  try:
    saved = ml_collections.ConfigDict(json.loads(path.read_text()))
    old = config_lib.fingerprint_keys(saved, SHAPE_KEYS)
  except (ValueError, KeyError, AttributeError):
    return  # not a readable record of an earlier run: the checkpoints' own fingerprints still guard
  for key in SHAPE_KEYS:
    found = first_difference(key, old.get(key), p.fingerprint.get(key)) if key in old else None
    if found is not None:
      name, was, now = found
      raise CheckpointError(f"{p.workdir} was written with a different config: {name}={was!r}, this run has "
                            f"{name}={now!r}. Use another --workdir or restore the old config.")


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, dict]:
  """Runs every stage in `config.stages`, skipping those already complete; returns their summaries."""
  validate(config)
  parallel.maybe_initialize_distributed(config)  # before any other JAX call touches devices
  p = Pipeline(config, workdir)
  _check_workdir_config(p)  # before config.json is overwritten: it is the workdir's record
  text = config_lib.to_json(config)
  print(f"safecomp config (saved to {p.workdir / 'config.json'}):\n{config}", flush=True)
  (p.workdir / "config.json").write_text(text)
  summaries = {}
  for stage in config.stages:
    ckpt = p.checkpointer(stage)
    if ckpt.is_done():
      print(f"[{stage}] complete in {ckpt.directory}; skipping", flush=True)
      summaries[stage] = ckpt.done_meta()
      continue
    start = time.time()
    print(f"[{stage}] starting", flush=True)
    summary = STAGE_FNS[stage](p)
    summary["seconds"] = round(time.time() - start, 1)
    ckpt.mark_done(ckpt.latest_step() or 0, summary)
    summaries[stage] = summary
    print(f"[{stage}] done in {summary['seconds']}s: "
          + json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float))}), flush=True)
  return summaries
