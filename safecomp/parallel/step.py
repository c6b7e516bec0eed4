"""Sharded training steps: one `jax.jit` with explicit in/out shardings, under the mesh and rules.

    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.DEFAULT_RULES
    param_sh = parallel.param_shardings(cfg, mesh)
    state, state_sh = parallel.init_sharded_state(create, params, param_sh, mesh)
    batch_sh = parallel.batch_shardings(example_batch, mesh)
    step = parallel.shard_step(sft.sft_step_fn(model, microbatches=2), mesh, rules, state_sh,
                               batch_sh)
    state, metrics = step(state, batch)        # host numpy batch is placed on the mesh first

Gradient accumulation runs inside the step (`accumulate_gradients`, a `lax.scan` over
micro-batches), so one loop step is still one optimizer update: checkpoints, resumption and
learning-rate schedules are unchanged. `accumulating_optimizer` (optax.MultiSteps) is the
alternative when the loop itself feeds micro-batches.

Mixed precision is a model setting: `ModelConfig(dtype="bfloat16", param_dtype="float32")` computes
in bfloat16 and keeps float32 master weights (and float32 optimizer state, which optax creates in
the parameter dtype). Rematerialisation is `ModelConfig.remat`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh

from safecomp import models
from safecomp.parallel.mesh import DEFAULT_RULES, AnyMesh, mesh_context
from safecomp.rl import ppo as ppo_lib
from safecomp.parallel.sharding import put_batch, replicated

StepFn = Callable[..., tuple[Any, Any]]


def unjit(fn: Callable) -> Callable:
  """The Python function under a `jax.jit` wrapper (so it is traced once, under the mesh rules)."""
  while hasattr(fn, "lower") and hasattr(fn, "__wrapped__"):
    fn = fn.__wrapped__
  return fn


class ShardedStep:
  """A jitted `(state, batch, *extra) -> (state, metrics)` bound to a mesh and logical-axis rules.

  Call it with host (numpy) or global arrays; host batches are placed with the batch shardings
  first (`put_batch`: on several processes each passes its own rows). `lower(...)` lowers it
  ahead of time, also against an `AbstractMesh` (no devices needed).
  """

  def __init__(self, jitted, mesh: AnyMesh, rules, batch_sharding: Any, global_batch: int | None):
    self.jitted = jitted
    self.mesh = mesh
    self.rules = rules
    self.batch_sharding = batch_sharding
    self.global_batch = global_batch

  def __call__(self, state, batch, *extra):
    if isinstance(self.mesh, AbstractMesh):
      raise TypeError("a step sharded over an AbstractMesh can only be lowered, not run")
    batch = put_batch(batch, self.batch_sharding, self.global_batch)
    with mesh_context(self.mesh, self.rules):
      return self.jitted(state, batch, *extra)

  def lower(self, state, batch, *extra, platform: str | None = None):
    """`jax.stages.Lowered` for (abstract) arguments; `platform` ("tpu", ...) on an AbstractMesh."""
    with mesh_context(self.mesh, self.rules):
      traced = self.jitted.trace(state, batch, *extra)
      if isinstance(self.mesh, AbstractMesh):
        return traced.lower(lowering_platforms=(platform or jax.default_backend(),))
      return traced.lower()


def shard_step(step_fn: StepFn, mesh: AnyMesh, rules: Sequence[tuple[str, Any]],
               state_shardings: Any, batch_sharding: Any, *,
               extra_shardings: Sequence[Any] = (), metrics_sharding: Any = None,
               donate: bool = True, global_batch: int | None = None,
               compiler_options: dict[str, Any] | None = None) -> ShardedStep:
  """Jits a pure `step_fn(state, batch, *extra) -> (state, metrics)` for `mesh`.

  Args:
    step_fn: the step; a `jax.jit`-wrapped function is unwrapped and re-jitted here.
    mesh: a `jax.sharding.Mesh`, or an `AbstractMesh` for lowering only.
    rules: logical-axis rules (`DEFAULT_RULES`), active while the step is traced.
    state_shardings: NamedSharding tree of the state (`state_shardings(...)`); also the output's.
    batch_sharding: NamedSharding tree (or prefix) of the batch (`batch_shardings(...)`).
    extra_shardings: shardings of further arguments (e.g. frozen reference / reward-model params).
    metrics_sharding: sharding (or prefix) of the metrics; default replicated.
    donate: donate the input state's buffers (the caller must not reuse the old state).
    global_batch: global leading batch size when each process passes only its rows.
    compiler_options: XLA options for this step's compilation (e.g. TPU scheduler flags).
  """
  rules = tuple(rules) if rules is not None else DEFAULT_RULES
  out_metrics = replicated(mesh) if metrics_sharding is None else metrics_sharding
  jitted = jax.jit(
      unjit(step_fn),
      in_shardings=(state_shardings, batch_sharding, *extra_shardings),
      out_shardings=(state_shardings, out_metrics),
      donate_argnums=(0,) if donate else (),
      compiler_options=compiler_options)
  return ShardedStep(jitted, mesh, rules, batch_sharding, global_batch)


# --------------------------------------------------------------------------- gradient accumulation
def split_microbatches(batch: Any, microbatches: int) -> Any:
  """[B, ...] leaves -> [k, B / k, ...] for k = `microbatches`; micro-batch i = rows i, i+k, ...

  Strided (not contiguous) rows keep every micro-batch spread over all devices of a batch-sharded
  array, so no data moves.
  """
  def split(x):
    if x.shape[0] % microbatches:
      raise ValueError(
          f"batch of {x.shape[0]} rows does not split into {microbatches} micro-batches")
    x = x.reshape((x.shape[0] // microbatches, microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def accumulate_gradients(grad_fn: Callable, params: Any, batch: Any, microbatches: int,
                         weight_key: str | None = None):
  """`((loss, metrics), grads)` of `grad_fn` over the batch, one micro-batch at a time.

  `grad_fn(params, batch) -> ((loss, metrics), grads)` (a `jax.value_and_grad(..., has_aux=True)`).
  With `weight_key`, micro-batches are weighted by `metrics[weight_key]` (e.g. the target-token
  count of a token-mean loss), which makes the result equal to one pass over the whole batch; that
  metric is summed, the others weighted-averaged. Without it, micro-batches weigh the same.
  Gradients accumulate in float32.
  """
  if microbatches <= 1:
    return grad_fn(params, batch)
  micro = split_microbatches(batch, microbatches)
  (loss0, metrics0), grads0 = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
  zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)

  def body(carry, mb):
    total_w, loss_acc, metrics_acc, grads_acc = carry
    (loss, metrics), grads = grad_fn(params, mb)
    w = (jnp.asarray(metrics[weight_key], jnp.float32) if weight_key
         else jnp.ones((), jnp.float32))
    add = lambda acc, x: acc + w * x.astype(jnp.float32)
    return (total_w + w, add(loss_acc, loss), jax.tree.map(add, metrics_acc, metrics),
            jax.tree.map(add, grads_acc, grads)), None

  init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros(metrics0), zeros(grads0))
  (total_w, loss, metrics, grads), _ = jax.lax.scan(body, init, micro)
  denom = jnp.maximum(total_w, 1e-9)
  grads = jax.tree.map(lambda g, ref: (g / denom).astype(ref.dtype), grads, grads0)
  metrics = {k: (v / denom).astype(metrics0[k].dtype) for k, v in metrics.items()}
  if weight_key:
    metrics[weight_key] = total_w.astype(metrics0[weight_key].dtype)
  return ((loss / denom).astype(loss0.dtype), metrics), grads


def accumulating_optimizer(tx: optax.GradientTransformation, every_k: int
                           ) -> optax.GradientTransformation:
  """`tx` applied once every `every_k` calls on the mean gradient (optax.MultiSteps).

  For loops that feed one micro-batch per step; the step count then counts micro-batches.
  """
  if every_k <= 1:
    return tx
  return optax.MultiSteps(tx, every_k_schedule=every_k).gradient_transformation()


# ---------------------------------------------------------------------------- the PPO step
def policy_forward(model) -> Callable:
  """`forward_fn(params, sequences, attention_mask, response_width) -> (logits, values)` for
  `ppo_update`: `models.response_forward` of one model with the LM head (and a value head or not)."""
  return functools.partial(models.response_forward, model)


def ppo_step_fn(forward_fn: Callable, config) -> StepFn:
  """Pure `(state, {"rollout": rollout, "rng": key}) -> (state, metrics)` around `ppo_update`."""
  def step(state, batch: Mapping[str, Any]):
    return ppo_lib.ppo_update(state, batch["rollout"], forward_fn=forward_fn, config=config,
                              rng=batch["rng"])

  return step
