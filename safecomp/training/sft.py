"""The SFT stage: fine-tuning on prompt -> reasoning + answer, loss on the assistant tokens only."""
from __future__ import annotations

import logging
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from safecomp.models import lora
from safecomp.parallel.step import accumulate_gradients
from safecomp.training import batching
from safecomp.training import loop as loop_lib
from safecomp.training.metrics import MetricWriter


def sft_loss(model, params, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
  """Mean next-token cross-entropy over assistant tokens (reasoning + answer + end token)."""
  tokens, attention, loss_mask = batch["tokens"], batch["attention_mask"], batch["loss_mask"]
  chex.assert_equal_shape([tokens, attention, loss_mask])
  segments = batch.get("segment_ids")  # packed rows (`sft.packing`): several conversations per row
  logits = model.apply({"params": params}, tokens, attention_mask=attention, segment_ids=segments,
                       positions=batch.get("positions"))["logits"][:, :-1]
  targets, mask = tokens[:, 1:], loss_mask[:, 1:].astype(jnp.float32)
  if segments is not None:  # a conversation never predicts the next one's first token
    mask = mask * (segments[:, 1:] == segments[:, :-1])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  n = jnp.maximum(mask.sum(), 1.0)
  loss = (ce * mask).sum() / n
  accuracy = ((jnp.argmax(logits, -1) == targets) * mask).sum() / n
  return loss, {"loss": loss, "token_accuracy": accuracy, "target_tokens": mask.sum()}


def sft_step_fn(model, microbatches: int = 1):
  """Pure `step(state, batch) -> (state, metrics)`: one guarded AdamW step on the SFT loss.

  With `microbatches > 1` the gradient is accumulated over strided micro-batches inside the step,
  weighted by their target tokens, so the update equals one pass over the whole batch.
  """
  def step(state: train_state.TrainState, batch):
    # Gradients of the trainable part only (all of it, or the adapters on a frozen base).
    grad_fn = jax.value_and_grad(lambda p, b: sft_loss(model, lora.model_params(state, p), b), has_aux=True)
    (loss, metrics), grads = accumulate_gradients(grad_fn, state.params, batch, microbatches,
                                                  weight_key="target_tokens")
    state, nonfinite = loop_lib.apply_if_finite(state, grads, loss)
    return state, dict(metrics, grad_norm=optax.global_norm(grads), nonfinite=nonfinite)

  return step


def make_sft_step(model, microbatches: int = 1):
  """`sft_step_fn` jitted for one device (`safecomp.parallel.shard_step` shards it over a mesh)."""
  return jax.jit(sft_step_fn(model, microbatches), donate_argnums=0)


def make_sft_eval(model, arrays: dict[str, np.ndarray], batch_size: int):
  """Held-out SFT loss and token accuracy, token-weighted over the whole eval split."""
  loss_fn = jax.jit(lambda params, batch: sft_loss(model, params, batch)[1])

  def evaluate(params: Any) -> dict:
    total, correct, tokens = 0.0, 0.0, 0.0
    n = len(arrays["tokens"])
    for start in range(0, n, batch_size):
      batch = {k: v[start:start + batch_size] for k, v in arrays.items() if k != "truncated"}
      m = jax.device_get(loss_fn(params, batch))
      total += float(m["loss"]) * float(m["target_tokens"])
      correct += float(m["token_accuracy"]) * float(m["target_tokens"])
      tokens += float(m["target_tokens"])
    return {"eval_loss": total / max(tokens, 1.0), "eval_token_accuracy": correct / max(tokens, 1.0)}

  return evaluate


def run_sft(p) -> dict:
  """The SFT stage: the task's teacher-written, judge-filtered conversations (student sees the plain
  prompt), loss on the assistant turn; held-out loss every `sft.eval_every` steps."""
  c = p.config
  train_conv, stats = p.task.sft_conversations("train")
  eval_conv, _ = p.task.sft_conversations("eval")
  logging.info("sft: %d/%d teacher outputs kept by the judge", stats["kept"], stats["generated"])
  train = batching.conversations_to_arrays(p.tokenizer, train_conv, c.chat_template, c.max_seq_len, "SFT rows")
  held = batching.conversations_to_arrays(p.tokenizer, eval_conv, c.chat_template, c.max_seq_len, "SFT eval rows")
  if c.sft.packing:  # rows of max_seq_len holding several conversations; a batch is sft.batch_size rows
    conversations = len(train_conv)
    train = batching.pack_rows(train, np.random.default_rng([c.seed, 17]).permutation(conversations))
    print(f"[sft] packing: {conversations} conversations in {len(train['tokens'])} rows of {c.max_seq_len} "
          f"tokens ({train['attention_mask'].mean():.0%} of the slots hold a token)", flush=True)
  model, params = p.init_model(("lm",), seed_offset=1)

  def global_batch(step: int) -> dict:
    index = batching.batch_indices(step, len(train["tokens"]), c.sft.batch_size, c.seed)
    return batching.trim_padding(batching.take(train, index), c.pad_multiple)

  state, step_fn, rows = p.sharded_training(
      sft_step_fn(model, c.sft.microbatches), model, params,
      loop_lib.make_optimizer(c.sft, c.sft.steps), global_batch(0), c.sft.batch_size, "sft.batch_size")
  evaluate = make_sft_eval(model, held, c.sft.batch_size)
  writer = MetricWriter(p.workdir, "sft")
  state = loop_lib.run_loop(
      state, step_fn, lambda step: {k: v[rows] for k, v in global_batch(step).items()},
      p.checkpointer("sft"), writer,
      loop_lib.LoopConfig(c.sft.steps, c.sft.log_every, c.sft.checkpoint_every,
                          c.max_consecutive_nonfinite, "sft"),
      eval_fn=lambda state, step: evaluate(state.model_params()), eval_every=c.sft.eval_every)
  summary = dict(evaluate(state.model_params()), **stats)
  writer.close()
  return summary
