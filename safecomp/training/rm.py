"""Reward-model stage: severity (4-way) and helpfulness heads on the transformer trunk."""
from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from safecomp import graders as graders_lib
from safecomp import models
from safecomp import parallel
from safecomp.errors import ConfigError
from safecomp.parallel.distributed import is_main_process
from safecomp.models import lora
from safecomp.parallel.step import accumulate_gradients
from safecomp.rewards import reward_model as rm_lib
from safecomp.training import batching
from safecomp.training import generation
from safecomp.training import loop as loop_lib
from safecomp.training import rollout as rollout_lib
from safecomp.training.metrics import MetricWriter

LABEL_KEYS = ("severity", "helpfulness", "pair_index", "pair_mask")


def rm_forward(model, params, batch) -> dict:
  return model.apply({"params": params}, batch["tokens"], attention_mask=batch["attention_mask"])


def rm_step_fn(model, weights: dict, helpfulness_kind: str, microbatches: int = 1):
  """Pure `step(state, batch) -> (state, metrics)` on the weighted severity/helpfulness(/preference)
  loss, with in-step gradient accumulation over `microbatches` equal micro-batches."""

  def loss_fn(params, batch):
    outputs = rm_forward(model, params, batch)
    labels = {k: batch[k] for k in LABEL_KEYS if k in batch}
    return rm_lib.rm_loss(outputs, labels, weights, helpfulness_kind=helpfulness_kind)

  def step(state: train_state.TrainState, batch):
    # Gradients of the trainable part only (all of it, or the adapters and heads on a frozen base).
    grad_fn = jax.value_and_grad(lambda p, b: loss_fn(lora.model_params(state, p), b), has_aux=True)
    (loss, metrics), grads = accumulate_gradients(grad_fn, state.params, batch, microbatches)
    state, nonfinite = loop_lib.apply_if_finite(state, grads, loss)
    return state, dict(metrics, grad_norm=optax.global_norm(grads), nonfinite=nonfinite)

  return step


def make_rm_step(model, weights: dict, helpfulness_kind: str, microbatches: int = 1):
  """`rm_step_fn` jitted for one device (`safecomp.parallel.shard_step` shards it over a mesh)."""
  return jax.jit(rm_step_fn(model, weights, helpfulness_kind, microbatches), donate_argnums=0)


def rm_predict(model, params, arrays: dict[str, np.ndarray], batch_size: int,
               helpfulness_kind: str) -> dict[str, np.ndarray]:
  """Severity probabilities [N,4] and helpfulness [N] for every row, batch by batch."""

  @jax.jit
  def predict(params, batch):
    out = rm_forward(model, params, batch)
    probs = jax.nn.softmax(out["severity_logits"].astype(jnp.float32), -1)
    return probs, rm_lib.helpfulness_from_logit(out["helpfulness_logit"].astype(jnp.float32),
                                               helpfulness_kind)

  probs, helpful = [], []
  for start in range(0, len(arrays["tokens"]), batch_size):
    batch = {k: arrays[k][start:start + batch_size] for k in ("tokens", "attention_mask")}
    p, h = jax.device_get(predict(params, batch))
    probs.append(p)
    helpful.append(h)
  return {"severity_probs": np.concatenate(probs), "helpfulness": np.concatenate(helpful)}


def rm_report(predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, Any]:
  """Held-out accuracy, confusion matrix (rows = gold), ECE and helpfulness error."""
  probs, gold = predictions["severity_probs"], np.asarray(labels["severity"])
  pred = probs.argmax(-1)
  report = {
      "severity_accuracy": float(rm_lib.accuracy(jnp.asarray(pred), jnp.asarray(gold))),
      "severity_confusion": np.asarray(rm_lib.confusion_matrix(jnp.asarray(pred), jnp.asarray(gold))).tolist(),
      "severity_ece": float(rm_lib.expected_calibration_error(jnp.asarray(probs), jnp.asarray(gold))),
      "unsafe_accuracy": float(np.mean((pred >= 1) == (gold >= 1))),
  }
  if "helpfulness" in labels:
    target = np.asarray(labels["helpfulness"], np.float32)
    report["helpfulness_mae"] = float(np.mean(np.abs(predictions["helpfulness"] - target)))
    varies = np.std(target) > 0 and np.std(predictions["helpfulness"]) > 0
    report["helpfulness_corr"] = float(np.corrcoef(predictions["helpfulness"], target)[0, 1]) if varies else float("nan")
  return report


# ------------------------------------------------------------------------------------- the stage
SAMPLE_SEED_SPLIT = {"train": 0, "eval": 1}


def conversation_arrays(p, conversations: list[list[dict]], what: str) -> dict[str, np.ndarray]:
  """Token arrays of whole conversations (prompt + answer) for the reward model."""
  arrays = batching.conversations_to_arrays(p.tokenizer, conversations, p.config.chat_template,
                                            p.config.max_seq_len, what)
  del arrays["loss_mask"]
  return arrays


def _rm_arrays(p, rows: list[dict]) -> dict[str, np.ndarray]:
  arrays = conversation_arrays(p, [r["messages"] for r in rows], "reward-model rows")
  arrays["severity"] = np.asarray([r["severity"] for r in rows], np.int32)
  arrays["helpfulness"] = np.asarray([r["helpfulness"] for r in rows], np.float32)
  return arrays


def policy_rm_rows(p, split: str, model, params, labeler) -> tuple[list[dict], int]:
  """Reward-model rows sampled from the SFT policy on the task's RM prompts, labelled by `labeler`.

  Hand-made candidates miss the policy's own slips (a fact dropped, a neighbouring topic, a
  half-remembered redirection); a reward model that has never seen them cannot tell them from the
  real thing, and PPO drifts into them. `rm.policy_samples_per_prompt` samples per prompt are drawn
  at `rm.policy_temperature`. Returns the rows and how many samples the labeler left ungraded.
  """
  c = p.config
  tok = p.tokenizer
  prompts = generation.fitting_prompts(p.task.rm_prompts(split), tok, c.chat_template, c.max_prompt_len,
                                       f"rm samples ({split})")
  prompts = prompts * c.rm.policy_samples_per_prompt
  cfg = rollout_lib.RolloutConfig(max_new_tokens=c.ppo.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                  temperature=c.rm.policy_temperature)
  texts = generation.generate_texts(model, params, tok, [x.message_list for x in prompts], c.chat_template,
                                    c.max_prompt_len, cfg, c.eval.batch_size,
                                    seed=c.seed * 1000 + 31 * SAMPLE_SEED_SPLIT[split],
                                    desc=f"rm samples ({split})", mesh=p.mesh, rules=parallel.rules_from_config(c))
  grades = labeler.grade(prompts, texts)
  rows = [{"messages": prompt.message_list + [{"role": "assistant", "content": text}],
           "severity": g.severity, "helpfulness": g.helpfulness, "policy_sample": True}
          for prompt, text, g in zip(prompts, texts, grades) if g.graded]
  return rows, sum(not g.graded for g in grades)


def run_rm(p) -> dict:
  """The reward-model stage: severity and helpfulness heads on the SFT trunk, trained on the task's
  labelled rows and on samples of the SFT policy labelled by `rm.labeler`."""
  c = p.config
  sft_model, sft_params = p.sft_policy()  # the finished SFT stage, or an error naming it
  train_rows, held_rows = p.task.rm_rows("train"), p.task.rm_rows("eval")
  labels = {"task_rows": len(train_rows)}
  if c.rm.policy_samples_per_prompt:
    labeler = p.grader(c.rm.labeler, "rm.labeler")
    rows, left_out = policy_rm_rows(p, "train", sft_model, sft_params, labeler)
    held, held_left_out = policy_rm_rows(p, "eval", sft_model, sft_params, labeler)
    train_rows, held_rows = train_rows + rows, held_rows + held
    labels.update(policy_rows=len(rows), labeler=graders_lib.full_name(labeler),
                  ungraded_samples=left_out + held_left_out)
    if left_out + held_left_out:
      print(f"[rm] {left_out + held_left_out} policy samples the labeler could not grade are left out", flush=True)
  if not train_rows or not held_rows:
    raise ConfigError("config key 'rm.policy_samples_per_prompt': no labelled rows to train or evaluate the "
                      "reward model on (the labeler graded none, and there is no rm.train_file)")
  train, held = _rm_arrays(p, train_rows), _rm_arrays(p, held_rows)
  model, fresh = p.init_model(("severity", "helpfulness"), seed_offset=2)
  params = models.graft(fresh, sft_params)  # the reward model starts from the SFT trunk
  weights = {"severity": c.rm.severity_weight, "helpfulness": c.rm.helpfulness_weight}
  n = len(train["tokens"])

  def global_batch(step: int) -> dict:
    index = batching.batch_indices(step, n, c.rm.batch_size, c.seed + 1)
    return batching.trim_padding(batching.take(train, index), c.pad_multiple)

  state, step_fn, rows = p.sharded_training(
      rm_step_fn(model, weights, c.rm.helpfulness_loss, c.rm.microbatches), model, params,
      loop_lib.make_optimizer(c.rm, c.rm.steps), global_batch(0), c.rm.batch_size, "rm.batch_size")
  writer = MetricWriter(p.workdir, "rm")
  state = loop_lib.run_loop(
      state, step_fn, lambda step: {k: v[rows] for k, v in global_batch(step).items()},
      p.checkpointer("rm"), writer,
      loop_lib.LoopConfig(c.rm.steps, c.rm.log_every, c.rm.checkpoint_every, c.max_consecutive_nonfinite, "rm"))
  predictions = rm_predict(model, state.model_params(), held, c.rm.batch_size, c.rm.helpfulness_loss)
  report = rm_report(predictions, held)
  on_policy = np.asarray([bool(r.get("policy_sample")) for r in held_rows])
  if on_policy.any():  # accuracy where PPO will query it: on the SFT policy's own samples
    on_policy_report = rm_report(batching.take(predictions, on_policy), batching.take(held, on_policy))
    report.update({f"policy_{k}": v for k, v in on_policy_report.items() if not isinstance(v, list)})
  report["labels"] = labels
  if is_main_process():  # one writer of the shared workdir
    (p.workdir / "rm" / "eval.json").write_text(json.dumps(report, indent=2))
  writer.write(c.rm.steps, {f"eval_{k}": v for k, v in report.items() if not isinstance(v, dict)})
  writer.close()
  print(f"[rm] held-out severity accuracy {report['severity_accuracy']:.3f}, ECE {report['severity_ece']:.3f}, "
        f"helpfulness MAE {report.get('helpfulness_mae', float('nan')):.3f}; on the SFT policy's samples "
        f"{report.get('policy_severity_accuracy', float('nan')):.3f} and "
        f"{report.get('policy_helpfulness_mae', float('nan')):.3f}\n"
        f"[rm] severity confusion (rows = gold negligible..high): {report['severity_confusion']}", flush=True)
  return {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
