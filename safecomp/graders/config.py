"""The graders' config sections (`judge`, `http`, `oracle`), defined once: the experiment configs
include them, and the command-line tools (`safecomp.grade`, `safecomp.eval`, `safecomp.datagen`) build
the same sections from their flags (`add_flags` / `from_flags`)."""
from __future__ import annotations

import argparse

import ml_collections

from safecomp import config as config_lib
from safecomp import testbed
from safecomp.rewards import composite


def judge_section() -> ml_collections.ConfigDict:
  """`judge`: a local Hugging Face checkpoint read with the spec's rubrics (scores from logits)."""
  return ml_collections.ConfigDict({
      "checkpoint": "",  # the model directory (config.json, safetensors, tokenizer)
      "family": "",  # its chat format (llama3, qwen2, gemma, ...); "" = the tokenizer's own template
      "dtype": "float32",
      "batch_size": 8,  # rows per forward when grading on the host
      "max_len": 0,  # longest rubric prompt it reads; 0 = its max_position_embeddings
  })


def http_section() -> ml_collections.ConfigDict:
  """`http`: a judge behind an OpenAI-compatible server (vLLM, SGLang, TGI, `transformers serve`)."""
  return ml_collections.ConfigDict({
      "base_url": "",  # e.g. http://127.0.0.1:8000
      "model": "",  # the served model's name
      "api_key_env": "OPENAI_API_KEY",  # environment variable holding the key ("" = none)
      "concurrency": 8,
      "cache_dir": "",  # verdict cache; "" = <workdir>/http_cache in a training run, none elsewhere
      "timeout_s": 120.0,
      "max_retries": 5,  # per request, for connection errors, timeouts, 429 and 5xx
      "malformed_retries": 2,  # re-asks after an invalid verdict before the row is left ungraded
  })


def oracle_section() -> ml_collections.ConfigDict:
  """`oracle`: what the testbed oracle does with a prompt it cannot place in its world ("error", or
  "ungraded": left out of every rate), and its `OracleConfig` knobs (safety per severity comes from
  `reward.severity_to_safety`)."""
  section = config_lib.section_of(testbed.OracleConfig, exclude=("severity_to_safety",))
  section.unknown_prompts = "error"
  return section


def default_config() -> ml_collections.ConfigDict:
  """A config holding what graders read, at its defaults (for graders built outside a training run)."""
  return ml_collections.ConfigDict({
      "seed": 0, "spec": "safe_completion_fine", "testbed": {"world_seed": 0},
      "reward": {"severity_to_safety": composite.DEFAULT_SEVERITY_TO_SAFETY},
      "judge": judge_section(), "http": http_section(), "oracle": oracle_section()})


def add_flags(parser: argparse.ArgumentParser) -> None:
  """The flags of every grader option (mapped onto the sections by `from_flags`)."""
  g = parser.add_argument_group("graders")
  g.add_argument("--spec", help="policy spec name or YAML path (default: the workdir's, else safe_completion_fine)")
  g.add_argument("--judge-model", help="judge: checkpoint directory (judge.checkpoint)")
  g.add_argument("--judge-family", help="judge: chat family (llama3, qwen2, ...); default the tokenizer's template")
  g.add_argument("--judge-dtype", default=None, help="judge: compute dtype (default float32)")
  g.add_argument("--http-base-url", help="http: the server, e.g. http://127.0.0.1:8000")
  g.add_argument("--http-model", help="http: the served model's name")
  g.add_argument("--http-api-key-env", help="http: environment variable holding the key")
  g.add_argument("--http-concurrency", type=int, help="http: concurrent requests")
  g.add_argument("--http-cache-dir", help="http: verdict cache directory")
  g.add_argument("--oracle-unknown-prompts", choices=("error", "ungraded"),
                 help="oracle: a prompt outside the testbed is an error (default) or left ungraded")
  g.add_argument("--world-seed", type=int, default=None, help="oracle: seed of the testbed world")


def from_flags(args: argparse.Namespace, base: ml_collections.ConfigDict | None = None
               ) -> ml_collections.ConfigDict:
  """A config with the grader sections: `base`'s (a workdir's run config) or the defaults, with the
  flags that were given applied on top."""
  config = ml_collections.ConfigDict(base.to_dict()) if base is not None else default_config()
  overrides = {
      ("judge", "checkpoint"): args.judge_model, ("judge", "family"): args.judge_family,
      ("judge", "dtype"): args.judge_dtype, ("http", "base_url"): args.http_base_url,
      ("http", "model"): args.http_model, ("http", "api_key_env"): args.http_api_key_env,
      ("http", "concurrency"): args.http_concurrency, ("http", "cache_dir"): args.http_cache_dir,
      ("oracle", "unknown_prompts"): args.oracle_unknown_prompts, ("testbed", "world_seed"): args.world_seed,
  }
  for (section, key), value in overrides.items():
    if value is not None:
      config[section][key] = value
  if getattr(args, "batch_size", None):
    config.judge.batch_size = args.batch_size
  if args.spec is not None:
    config.spec = args.spec
  return config
