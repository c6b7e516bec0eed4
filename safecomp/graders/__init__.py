"""Graders for real text and for the testbed, in one registry shared by every entry point.

`safecomp.train` (reward.grader, rm.labeler, eval.grader), `safecomp.eval`, `safecomp.grade` and
`safecomp.datagen` build graders by name from the same config sections:

| name      | judges            | reads                                                                    |
|-----------|-------------------|--------------------------------------------------------------------------|
| `judge`   | severity, h, mode* | `judge.checkpoint` (local HF directory), `judge.family`, `judge.dtype`  |
| `http`    | severity, h, mode | `http.base_url`, `http.model`, `http.api_key_env`, `http.concurrency`,   |
|           |                   | `http.cache_dir` (an OpenAI-compatible server: vLLM, SGLang, TGI, ...)   |
| `rm`      | severity, h, mode* | the run's trained reward model                                          |
| `oracle`  | severity, h, mode | the testbed world (testbed prompts only; `oracle.unknown_prompts`)       |
| `mode`    | mode              | the response-mode classifier                                             |
| `keyword` | refused           | the refusal-prefix matcher                                               |

(* mode from the response-mode classifier.) See `safecomp.graders.base` for the interface.

Importing the registry pulls in no JAX and no model code (the grade CLI's `mode` grader, datagen's HTTP
judge and the testbed stay light): the `judge` factory alone imports its module, which needs JAX, when
it is built.
"""
from __future__ import annotations

import os

from safecomp import spec as spec_lib
from safecomp import testbed
from safecomp.errors import ConfigError
from safecomp.graders.base import (GRADERS, REFUSAL_MODES, Grade, Grader, GraderContext, GraderError,
                                   full_name, grade_texts, harm_graders, make_grader, register_grader,
                                   rewards_of, ungraded)
from safecomp.graders.client import ChatClient
from safecomp.graders.http import HttpGrader
from safecomp.graders.mode import KeywordGrader, ModeGrader
from safecomp.graders.oracle import OracleGrader
from safecomp.graders.reward_model import RewardModelGrader


def _spec(config):
  return spec_lib.load_spec(config.spec)


def _section(config, name: str):
  if name not in config:
    raise ConfigError(f"config has no {name!r} section (needed by the {name} grader)")
  return config[name]


@register_grader("judge", judges_harm=True, description="a local LM reading the spec's rubrics (logits)")
def _judge(context: GraderContext) -> Grader:
  from safecomp.graders.judge import JudgeGrader  # pylint: disable=import-outside-toplevel  # needs JAX
  j = _section(context.config, "judge")
  if not j.checkpoint:
    raise ConfigError("config key 'judge.checkpoint': the judge grader needs a local Hugging Face model "
                      "directory (config.json, safetensors, tokenizer)")
  if not os.path.isdir(j.checkpoint):
    raise ConfigError(f"config key 'judge.checkpoint': {j.checkpoint} is not a directory")
  return JudgeGrader.from_checkpoint(j.checkpoint, _spec(context.config), family=j.family or None,
                                     dtype=j.dtype, batch_size=j.batch_size, max_len=j.max_len or None)


@register_grader("http", judges_harm=True, description="a judge behind an OpenAI-compatible server")
def _http(context: GraderContext) -> Grader:
  h = _section(context.config, "http")
  if not h.base_url:
    raise ConfigError("config key 'http.base_url': the http grader needs the server's address, "
                      "e.g. http://127.0.0.1:8000")
  if not h.model:
    raise ConfigError("config key 'http.model': the http grader needs the served model's name")
  client = ChatClient(base_url=h.base_url, model=h.model, api_key_env=h.api_key_env or None,
                      timeout_s=h.timeout_s, max_retries=h.max_retries, seed=context.config.get("seed", 0))
  return HttpGrader(client, _spec(context.config), concurrency=h.concurrency, cache_dir=h.cache_dir,
                    malformed_retries=h.malformed_retries)


@register_grader("rm", judges_harm=True, description="the run's trained reward model")
def _reward_model(context: GraderContext) -> Grader:
  if context.reward_model is None:
    raise ConfigError("the rm grader needs a trained reward model (a workdir whose rm stage is complete)")
  return RewardModelGrader(context.reward_model())


@register_grader("oracle", judges_harm=True, description="the testbed's gold oracle (testbed prompts only)")
def _oracle(context: GraderContext) -> Grader:
  world = getattr(context.task, "world", None)
  if world is None:
    if context.task is not None:
      raise ConfigError(f"the oracle grades testbed prompts only, and this run's task is "
                        f"{getattr(context.task, 'kind', type(context.task).__name__)!r}; "
                        "use a judge (judge or http)")
    world = testbed.world_from_config(context.config)
  return OracleGrader(world, unknown_prompts=context.config.get("oracle", {}).get("unknown_prompts", "error"),
                      config=testbed.oracle_config_from(context.config))


@register_grader("mode", judges_harm=False, description="the response-mode classifier (modes only)")
def _mode(context: GraderContext) -> Grader:
  del context
  return ModeGrader()


@register_grader("keyword", judges_harm=False, description="the refusal-prefix matcher (refused only)")
def _keyword(context: GraderContext) -> Grader:
  del context
  return KeywordGrader()


__all__ = ["GRADERS", "REFUSAL_MODES", "Grade", "Grader", "GraderContext", "GraderError", "full_name",
           "grade_texts", "harm_graders", "make_grader", "register_grader", "rewards_of", "ungraded"]
