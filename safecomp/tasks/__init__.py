"""Tasks: what the pipeline trains and evaluates on, behind one interface.

A task gives the pipeline, PPO, the eval stage, the eval CLI and the experiments everything they take
from data, and nothing else reaches data directly:

- `train_prompts()`: the RL prompts, as `safecomp.prompts.Prompt`s (uid, messages, intent, category);
- `eval_sets()`, `eval_set_prompts(name)`, `eval_prompts()`: the eval prompts, by set;
- `rm_prompts(split)`: the prompts whose policy samples label the reward model ("train" / "eval");
- `sft_conversations(split)`, `rm_rows(split)`: SFT conversations and labelled reward-model rows;
- `host_grader()`: the grader the task brings (the testbed's gold oracle), if any.

`TestbedTask` is the procedural world with its teachers and oracle; `PromptsTask` reads JSONL prompt
files and public sets by name (`task.train_prompts`, `task.eval_prompts`). `make_task(config)` picks
one by `task.kind`.
"""
from __future__ import annotations

from safecomp.errors import ConfigError
from safecomp.tasks.prompts import PromptsTask
from safecomp.tasks.sources import PUBLIC_PROMPT_SETS, load_source, parse_sources, source_name
from safecomp.tasks.testbed import TestbedTask

TASK_KINDS = ("testbed", "prompts")


def make_task(config):
  """The task `config.task.kind` names."""
  kind = config.task.kind
  if kind == "testbed":
    return TestbedTask(config)
  if kind == "prompts":
    return PromptsTask(config)
  raise ConfigError(f"config key 'task.kind': unknown task {kind!r}; expected one of {TASK_KINDS}")


__all__ = ["PUBLIC_PROMPT_SETS", "PromptsTask", "TASK_KINDS", "TestbedTask", "load_source", "make_task",
           "parse_sources", "source_name"]
