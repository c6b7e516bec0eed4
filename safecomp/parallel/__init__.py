"""Sharded training: mesh from config, logical-axis rules, sharded steps, multi-host input."""
from safecomp.parallel.distributed import is_main_process, maybe_initialize_distributed
from safecomp.parallel.mesh import (BATCH_AXES, DEFAULT_RULES, MESH_AXES, abstract_mesh, axis_rules,
                                    batch_divisor, check_batch_size, make_mesh, mesh_context,
                                    mesh_shape, mesh_sizes, parse_mesh, rules_from_config,
                                    rules_section)
from safecomp.parallel.sharding import (abstract_like, abstract_params, batch_shardings,
                                        batch_spec, describe, fit_spec, host_rows,
                                        init_sharded_state, logical_shardings, param_shardings,
                                        place, put_batch, replicated, shard_bytes, state_shardings,
                                        with_shardings)
from safecomp.parallel.step import (ShardedStep, accumulate_gradients, accumulating_optimizer,
                                    policy_forward, ppo_step_fn, shard_step,
                                    split_microbatches, unjit)

__all__ = [
    "BATCH_AXES", "DEFAULT_RULES", "MESH_AXES", "ShardedStep", "abstract_like", "abstract_mesh",
    "abstract_params", "accumulate_gradients", "accumulating_optimizer", "axis_rules",
    "batch_divisor", "batch_shardings", "batch_spec", "check_batch_size", "describe", "fit_spec",
    "host_rows", "init_sharded_state", "is_main_process", "logical_shardings", "make_mesh",
    "maybe_initialize_distributed", "mesh_context", "mesh_shape", "mesh_sizes",
    "param_shardings", "parse_mesh", "place", "policy_forward", "ppo_step_fn", "put_batch",
    "replicated", "rules_from_config", "rules_section", "shard_bytes", "shard_step", "split_microbatches",
    "state_shardings", "unjit", "with_shardings",
]
