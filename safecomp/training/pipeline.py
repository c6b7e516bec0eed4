"""The pipeline: SFT -> reward model -> PPO -> eval, each stage checkpointed and skipped when complete.

`run(config, workdir)` is what `python -m safecomp.train` calls. It checks the whole config at start-up,
then sequences the stages; each stage lives in its own module (`training.sft`, `training.rm`,
`training.ppo`, `training.evaluate`) and is a function of the `Pipeline`, which builds the shared
resources once and lazily: the task (what the run trains and evaluates on), the spec, the tokenizer,
the models, the mesh and the graders.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections

from safecomp import config as config_lib
from safecomp import graders as graders_lib
from safecomp import models
from safecomp.models import lora
from safecomp import parallel
from safecomp import spec as spec_lib
from safecomp import tasks
from safecomp.tasks import files as task_files
from safecomp import testbed
from safecomp import tokenizers
from safecomp.errors import CheckpointError, ConfigError
from safecomp.graders.reward_model import RewardModelHandle
from safecomp.parallel import distributed
from safecomp.rewards import composite
from safecomp.training import compilation
from safecomp.training import evaluate as eval_stage
from safecomp.training import generation
from safecomp.training import loop as loop_lib
from safecomp.training import ppo as ppo_stage
from safecomp.rewards import reward_model as rm_lib
from safecomp.training import rm as rm_stage
from safecomp.training import sft as sft_stage
from safecomp.training.checkpoints import CONFIG_FILE, StageCheckpointer, first_difference, record_config

STAGES = ("sft", "rm", "ppo", "eval")
# Config keys that decide the shapes of every checkpoint: stored with it, checked on restore.
SHAPE_KEYS = ("model", "lora", "testbed.world_seed", "max_seq_len")
# What can change a stage's result. Keys that cannot: which stages run, how often a stage logs, evaluates
# and saves, how the same arithmetic is laid out over devices and processes, where public sets are
# cached and how a grader server is reached. Changing them never invalidates a finished stage.
NEUTRAL_KEYS = (
    "stages", "arm", "mesh", "distributed", "checkpoint", "max_consecutive_nonfinite", "compile_cache_dir",
    "task.data_dir", "task.public_manual_dir", "task.allow_testbed_with_pretrained",
    "sft.microbatches", "sft.log_every", "sft.eval_every", "sft.checkpoint_every",
    "rm.microbatches", "rm.log_every", "rm.checkpoint_every",
    "ppo.log_every", "ppo.gold_every", "ppo.checkpoint_every", "ppo.score_chunk_rows",
    "http.api_key_env", "http.concurrency", "http.cache_dir", "http.timeout_s", "http.max_retries")
# The first stage each key can change; a stage depends on every key of the stages before it as well.
# A key named nowhere counts from SFT on, so a key added to the configs later is never overlooked.
COUNTED_FROM = {
    "rm": ("rm", "testbed.n_rm", "testbed.n_rm_eval", "testbed.rm_candidates_per_prompt", "task.train_prompts",
           "ppo.max_new_tokens", "eval.batch_size"),  # length and batching of the SFT policy's samples
    "ppo": ("ppo", "reward", "testbed.n_rl_prompts", "eval.grader"),  # eval.grader: gold monitoring
    "eval": ("eval",),
}
# Grader sections count from the first stage that grades with that grader.
GRADER_SECTIONS = ("judge", "http", "oracle")
RETRAIN_FLAG = "--retrain_from"
REPLACED_DIR = "replaced"  # where --retrain_from moves the results it replaces

# Graders by role: what each config key may name.
REWARD_GRADERS = ("rm", "judge", "http", "oracle")
LABELERS = ("judge", "http", "oracle")
EVAL_GRADERS = ("judge", "http", "rm", "oracle")


def _graders_in_use(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{config key: grader name} of the graders this run will build."""
  used = {}
  stages = set(config.stages)
  if "ppo" in stages:
    used["reward.grader"] = config.reward.grader
  if "rm" in stages and config.rm.policy_samples_per_prompt:
    used["rm.labeler"] = config.rm.labeler
  if stages & {"ppo", "eval"}:
    used["eval.grader"] = config.eval.grader
  return used


def validate(config: ml_collections.ConfigDict):
  """Checks a user can act on, all at start-up (unknown keys are caught when the overrides are parsed)."""
  require = config_lib.require
  for stage in config.stages:
    require(stage in STAGES, "stages", f"unknown stage {stage!r}; expected a subset of {STAGES}")
  require(config.max_prompt_len < config.max_seq_len, "max_prompt_len",
          f"must be below max_seq_len ({config.max_seq_len})")
  require(config.sft_style in ("safe_completion", "refusal"), "sft_style", "must be 'safe_completion' or 'refusal'")
  for section in ("sft", "rm", "ppo"):
    require(config[section].learning_rate > 0, f"{section}.learning_rate", "must be > 0")
  require(config.sft.steps > 0 and config.sft.batch_size > 0, "sft.steps", "must be > 0")
  require(config.ppo.prompts_per_iteration % config.ppo.group_size == 0
          and config.ppo.prompts_per_iteration // config.ppo.group_size >= 1,
          "ppo.group_size", "must divide ppo.prompts_per_iteration")
  require(config.ppo.max_new_tokens + config.max_prompt_len <= config.max_seq_len,
          "ppo.max_new_tokens", "max_prompt_len + max_new_tokens must fit in max_seq_len")
  require(config.ppo.critic in ("shared", "separate"), "ppo.critic", "must be 'shared' or 'separate'")
  require(config.ppo.eos_penalty >= 0, "ppo.eos_penalty",
          "is subtracted from the reward of responses without EOS, so it must be >= 0")
  for key in ("teacher_error_rate", "teacher_caution_rate", "judge_miss_rate"):
    require(0.0 <= config.testbed[key] <= 1.0, f"testbed.{key}", "must lie in [0, 1]")
  require(len(config.reward.severity_to_safety) == 4, "reward.severity_to_safety",
          "needs 4 values (negligible, low, moderate, high)")
  require(config.reward.kind in composite.REWARD_KINDS, "reward.kind",
          f"unknown reward kind {config.reward.kind!r}; expected one of {composite.REWARD_KINDS}")
  require(config.rm.policy_samples_per_prompt >= 0, "rm.policy_samples_per_prompt", "must be >= 0")
  require(config.rm.helpfulness_loss in rm_lib.HELPFULNESS_LOSSES, "rm.helpfulness_loss",
          f"unknown loss {config.rm.helpfulness_loss!r}; expected one of {rm_lib.HELPFULNESS_LOSSES}")
  vf_clip = config.ppo.vf_clip
  require(vf_clip is None or (isinstance(vf_clip, (int, float)) and not isinstance(vf_clip, bool) and vf_clip > 0),
          "ppo.vf_clip", f"must be a number > 0, or None for an unclipped value loss; got {vf_clip!r}")
  # Each section becomes its dataclass here too, so a bad field fails now, named by its key.
  ppo_stage.ppo_config(config, eos_id=0)
  if config.get("lora") is not None:  # runs recorded before adapters existed have no lora section
    try:  # rank, alpha and targets are checked where the section becomes the model's config
      models.ModelConfig(**models.config.lora_fields(config))
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config key 'lora': {e}") from None
    if config.lora.init_from:
      require(bool(config.lora.rank) and bool(config.model.init_from), "lora.init_from",
              "a PEFT adapter starts the adapters of a pretrained model: set lora.rank (and its alpha and "
              "targets, as the adapter has them) and model.init_from (the base it was trained on)")
      require((pathlib.Path(config.lora.init_from) / "adapter_config.json").is_file(), "lora.init_from",
              f"{config.lora.init_from} has no adapter_config.json (a PEFT LoRA adapter directory)")
  testbed.world_from_config(config)
  testbed.oracle_config_from(config)
  parallel.rules_from_config(config)
  require(config.chat_template in tokenizers.FAMILIES, "chat_template",
          f"unknown chat format {config.chat_template!r}; expected one of {sorted(tokenizers.FAMILIES)}")
  try:
    spec_lib.load_spec(config.spec)
  except ConfigError as e:
    raise ConfigError(f"config key 'spec': {e}") from None
  require(config.rm.policy_prompts >= 0, "rm.policy_prompts", "must be >= 0 (0 = every training prompt)")

  # The task and the graders.
  kind = config.task.kind
  require(kind in tasks.TASK_KINDS, "task.kind", f"unknown task {kind!r}; expected one of {tasks.TASK_KINDS}")
  require(config.reward.grader in REWARD_GRADERS, "reward.grader",
          f"unknown grader {config.reward.grader!r}; expected one of {REWARD_GRADERS}")
  require(config.rm.labeler in LABELERS, "rm.labeler",
          f"unknown labeler {config.rm.labeler!r}; expected one of {LABELERS}")
  require(config.eval.grader in EVAL_GRADERS, "eval.grader",
          f"unknown grader {config.eval.grader!r}; expected one of {EVAL_GRADERS}")
  require(config.oracle.unknown_prompts in ("error", "ungraded"), "oracle.unknown_prompts",
          "must be 'error' or 'ungraded'")
  require(config.reward.kind != "refusal" or config.reward.grader != "rm", "reward.grader",
          "the refusal reward reads the prompt's intent label and whether the response refuses, which the "
          "reward model's heads do not give: use oracle (testbed), judge or http")
  if kind == "testbed":
    require(not config.model.init_from or config.task.allow_testbed_with_pretrained, "task.kind",
            "model.init_from is a pretrained model but task.kind='testbed' trains it on the testbed's "
            "pseudo-word language; set task.kind=prompts with task.train_prompts / task.eval_prompts, or "
            "task.allow_testbed_with_pretrained=True if that is what you want")
    for split in config.eval.splits:
      require(split in testbed.SPLITS and split != "train", "eval.splits",
              f"unknown testbed eval split {split!r}; expected some of {tuple(s for s in testbed.SPLITS if s != 'train')}")
  else:
    require(bool(config.model.init_from), "model.init_from",
            "the prompts task trains a pretrained model: give its local Hugging Face directory")
    stages = set(config.stages)
    require("sft" not in stages or bool(config.sft.train_file), "sft.train_file",
            "the prompts task has no teacher of its own; generate SFT data with `python -m safecomp.datagen` "
            "and pass its output file")
    require(not stages & {"rm", "ppo"} or bool(config.task.train_prompts), "task.train_prompts",
            "the prompts task needs training prompts for the reward model's samples and PPO")
    require("eval" not in stages or bool(config.task.eval_prompts), "task.eval_prompts",
            "the prompts task needs eval prompts for the eval stage")
    require("rm" not in stages or config.rm.policy_samples_per_prompt > 0 or bool(config.rm.train_file),
            "rm.policy_samples_per_prompt", "the reward model needs labelled rows: policy samples graded by "
            "rm.labeler (> 0) and/or rm.train_file")
    for key, name in _graders_in_use(config).items():
      require(name != "oracle", key, "the oracle grades testbed prompts only; use judge or http")
    for key in ("task.train_prompts", "task.eval_prompts"):
      for item in tasks.parse_sources(config.task[key.split(".")[1]], key):
        if not item.startswith("public:"):  # a malformed row fails now, naming its file and line
          require(pathlib.Path(item).is_file(), key, f"prompt file {item} not found")
          task_files.read_prompts(item, tasks.source_name(item))
  for key, stage, read in (("sft.train_file", "sft", task_files.read_sft_file),
                           ("rm.train_file", "rm", task_files.read_rm_file)):
    path = config[stage].train_file
    if path and stage in config.stages:
      require(pathlib.Path(path).is_file(), key, f"{path} not found")
      read(path)  # a malformed row fails now, naming its file and line, not when the stage starts
  for key, name in _graders_in_use(config).items():
    if name == "judge":
      require(bool(config.judge.checkpoint), "judge.checkpoint",
              f"{key}=judge needs a local Hugging Face directory of the judge model")
      require(pathlib.Path(config.judge.checkpoint).is_dir(), "judge.checkpoint",
              f"{config.judge.checkpoint} is not a directory")
    if name == "http":
      require(bool(config.http.base_url) and bool(config.http.model), "http.base_url",
              f"{key}=http needs http.base_url (an OpenAI-compatible server) and http.model")
      require(config.http.concurrency >= 1, "http.concurrency", "must be >= 1")


class Pipeline:
  """Lazily built resources shared by the stages."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.fingerprint = config_lib.fingerprint_keys(config, SHAPE_KEYS)
    self._graders: dict[str, Any] = {}
    self._checkpointers: dict[str, StageCheckpointer] = {}

  # -- shared resources ----------------------------------------------------------------------------
  @functools.cached_property
  def task(self):
    return tasks.make_task(self.config)

  @functools.cached_property
  def spec(self):
    return spec_lib.load_spec(self.config.spec)

  @functools.cached_property
  def tokenizer(self):
    path = self.workdir / "tokenizer.json"
    if self.config.model.init_from:
      return tokenizers.load_tokenizer(self.config.model.init_from)
    if not path.is_file():  # written once, whole: other processes and tools read the same file
      tmp = path.with_name(f"tokenizer.{os.getpid()}.tmp.json")
      tokenizers.word_level_tokenizer(testbed.world_from_config(self.config).vocabulary()).save(str(tmp))
      os.replace(tmp, path)
    return tokenizers.load_tokenizer(str(path))

  @functools.cached_property
  def stop_ids(self) -> tuple[int, ...]:
    """The ids that end a response (EOS and the chat format's end-of-turn token)."""
    return generation.stop_ids(self.tokenizer, self.config.chat_template)

  def model_config(self, heads: tuple[str, ...]) -> models.ModelConfig:
    tok = self.tokenizer
    return models.model_config_from(self.config, heads, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                    bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)

  @property
  def adapters(self) -> bool:
    """Whether every stage trains low-rank adapters on a frozen base (`lora.rank` > 0)."""
    return bool(self.config.get("lora", {}).get("rank", 0))

  def init_model(self, heads: tuple[str, ...], seed_offset: int) -> tuple[Any, Any]:
    """(model, params): from `model.init_from` when set, else freshly initialised (seeded). With
    `lora.init_from`, the adapters start as that PEFT adapter's."""
    if self.config.model.init_from:
      m = self.config.model
      cfg = self.model_config(heads)
      model, params = models.load_pretrained(
          m.init_from, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, heads=heads,
          tokenizer=self.tokenizer, seed=self.config.seed + seed_offset, lora_rank=cfg.lora_rank,
          lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)
      if self.adapters and self.config.lora.init_from:
        params = lora.combine(params, self.imported_adapters(model.config))
      return model, params
    cfg = self.model_config(heads)
    params = models.init_params(cfg, jax.random.key(self.config.seed * 1000 + seed_offset))
    return models.Transformer(cfg), params

  def imported_adapters(self, model_config: models.ModelConfig) -> Any:
    """The PEFT adapter of `lora.init_from` in this run's layout; its rank, alpha and targets must be the
    run's (`lora.rank`, `lora.alpha`, `lora.targets`)."""
    path = self.config.lora.init_from
    adapters, fields = models.load_adapter(path, model_config)
    for key, field in (("rank", "lora_rank"), ("alpha", "lora_alpha"), ("targets", "lora_targets")):
      ours, theirs = getattr(model_config, field), fields[field]
      same = set(ours) == set(theirs) if key == "targets" else float(ours) == float(theirs)
      config_lib.require(same, f"lora.{key}", f"is {ours!r} but the adapter in {path} has {theirs!r}")
    return adapters

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
    rules = parallel.rules_from_config(self.config)
    parallel.check_batch_size(global_batch, self.mesh, batch_key, rules)
    param_sh = parallel.param_shardings(model.config, self.mesh, rules)
    adapters, quantization = bool(model.config.lora_rank), model.config.base_quantization
    state, state_sh = parallel.init_sharded_state(lambda q: loop_lib.new_state(q, tx, adapters, quantization),
                                                  params, param_sh, self.mesh)
    batch_sh = parallel.batch_shardings(example_batch, self.mesh, rules)
    step = parallel.shard_step(step_fn, self.mesh, rules, state_sh, batch_sh, global_batch=global_batch)
    return state, step, parallel.host_rows(batch_sh["tokens"], global_batch)

  # -- checkpoints ---------------------------------------------------------------------------------
  def checkpointer(self, stage: str) -> StageCheckpointer:
    """The stage's checkpointer, one per stage until `close`."""
    ckpt = self._checkpointers.get(stage)
    if ckpt is None or ckpt.closed:
      ckpt = self._checkpointers[stage] = StageCheckpointer(
          self.workdir / stage, fingerprint=self.fingerprint, max_to_keep=self.config.checkpoint.max_to_keep)
    return ckpt

  def close(self):
    """Closes the checkpointers (orbax finishes its work), so a run that stops on an error exits cleanly."""
    checkpointers, self._checkpointers = list(self._checkpointers.values()), {}
    for ckpt in checkpointers:
      ckpt.close()

  def final_params(self, stage: str, abstract_state: Any) -> Any:
    ckpt = self.checkpointer(stage)
    if not ckpt.is_done():
      raise ConfigError(f"stage {stage!r} has no complete checkpoint in {ckpt.directory}; "
                        f"run it first (add it to config.stages)")
    tree, _ = ckpt.restore(abstract_state, step=ckpt.done_meta()["step"])
    return tree

  def trained_params(self, stage: str, params_like: Any, section: str) -> Any:
    """The parameters of a completed SFT/RM stage (restored into the shapes of `params_like`).

    With adapters (`lora.rank`) the checkpoint holds the trainable part only; the frozen base is
    `params_like`'s, the stage's starting point, as the stage stored it (`lora.base_quantization`: the
    dequantised weights the adapters were trained against).
    """
    tx = loop_lib.make_optimizer(self.config[section], self.config[section].steps)
    adapters = self.adapters
    abstract = jax.eval_shape(lambda: loop_lib.checkpoint_tree(loop_lib.new_state(params_like, tx, adapters)))
    trained = self.final_params(stage, abstract)["params"]
    if not adapters:
      return trained
    kind = models.config.lora_fields(self.config)["base_quantization"]
    base = models.quantize.stored_like_training(lora.split(params_like)[0], kind,
                                                 jnp.dtype(self.config.model.param_dtype))
    return lora.combine(base, trained)

  def sft_policy(self) -> tuple[Any, Any]:
    """(model, params) of the finished SFT stage; an error naming the stage when there is none."""
    model, init = self.init_model(("lm",), seed_offset=1)
    return model, self.trained_params("sft", init, "sft")

  def trained_reward_model(self) -> tuple[Any, Any]:
    """(model, params) of the completed `rm` stage."""
    model, init = self.init_model(("severity", "helpfulness"), seed_offset=2)
    return model, self.trained_params("rm", init, "rm")

  # -- graders -------------------------------------------------------------------------------------
  def reward_model_handle(self):
    """The trained reward model as a host scoring function (the `rm` grader's input)."""
    model, params = self.trained_reward_model()
    c = self.config

    def score(conversations):
      arrays = rm_stage.conversation_arrays(self, conversations, "graded completions")
      pred = rm_stage.rm_predict(model, params, arrays, c.eval.batch_size, c.rm.helpfulness_loss)
      return pred["severity_probs"], pred["helpfulness"]

    return RewardModelHandle(score, f"{self.workdir.name}/rm@{self.checkpointer('rm').done_meta()['step']}")

  def grader(self, name: str, key: str = "grader"):
    """The grader `name` for this run (built once; `key` names the config key in errors)."""
    if name not in self._graders:
      if name == "oracle":
        self._graders[name] = self.task.host_grader()
      else:
        config = self.config
        if name == "http" and not config.http.cache_dir:  # resumed runs pay for no verdict twice
          config = ml_collections.ConfigDict(config.to_dict())
          config.http.cache_dir = str(self.workdir / "http_cache")
        context = graders_lib.GraderContext(config, task=self.task, reward_model=self.reward_model_handle)
        self._graders[name] = graders_lib.make_grader(name, context, key=key)
    return self._graders[name]


def open_workdir(workdir: str | pathlib.Path) -> Pipeline:
  """The `Pipeline` of a finished or running workdir, from the `config.json` its run saved (checked
  as at start-up)."""
  workdir = pathlib.Path(workdir)
  train = f"python -m safecomp.train --config configs/demo.py --workdir {workdir}"
  if not workdir.is_dir():
    raise ConfigError(f"workdir {workdir} does not exist; train it first: {train}")
  path = workdir / "config.json"
  if not path.is_file():
    raise ConfigError(f"{path} not found: {workdir} is not a safecomp workdir; train it first: {train}")
  config = config_lib.config_from_json(path)
  try:
    validate(config)
  except (KeyError, AttributeError) as e:
    raise ConfigError(f"{path}: missing config key {e} (saved by an older version?)") from None
  return Pipeline(config, workdir)


def check_batches(config: ml_collections.ConfigDict, mesh) -> None:
  """Every global batch of the stages to run splits evenly over the mesh's batch axes (and micro-batches)."""
  batches = {"sft": [("sft.batch_size", config.sft.batch_size, config.sft.microbatches)],
             "rm": [("rm.batch_size", config.rm.batch_size, config.rm.microbatches)],
             "ppo": [("ppo.prompts_per_iteration", config.ppo.prompts_per_iteration, 1)]}
  for stage in config.stages:
    for key, rows, microbatches in batches.get(stage, ()):
      parallel.check_batch_size(rows, mesh, key)
      config_lib.require(rows % microbatches == 0, key.replace("batch_size", "microbatches"),
                         f"must divide {key} ({rows})")
      if microbatches > 1:
        parallel.check_batch_size(rows // microbatches, mesh, key.replace("batch_size", "microbatches"))


STAGE_FNS: dict[str, Callable[[Pipeline], dict]] = {
    "sft": sft_stage.run_sft, "rm": rm_stage.run_rm, "ppo": ppo_stage.run_ppo, "eval": eval_stage.run_eval,
}


# -- what each stage was trained with --------------------------------------------------------------
def _plain(config: ml_collections.ConfigDict) -> dict:
  """The config as the JSON records hold it (tuples as lists)."""
  return json.loads(config_lib.to_json(config))


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{dotted key: value} of every leaf of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _lookup(tree: dict, key: str) -> Any:
  for part in key.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _named(key: str, entries: Iterable[str]) -> bool:
  return any(key == e or key.startswith(e + ".") for e in entries)


def graders_by_stage(config: dict) -> dict[str, set[str]]:
  """{stage: the graders it grades with} under `config` (a plain dict)."""
  get = functools.partial(_lookup, config)
  return {"sft": set(), "rm": {get("rm.labeler")} if get("rm.policy_samples_per_prompt") else set(),
          "ppo": {get("reward.grader"), get("eval.grader")}, "eval": {get("eval.grader")}}


def first_stage(key: str, configs: Iterable[dict]) -> str | None:
  """The first stage whose result the dotted leaf `key` can change under any of `configs`; None if none.

  A stage's result depends on the keys of its own stage and of every stage before it.
  """
  if _named(key, NEUTRAL_KEYS):
    return None
  section = key.split(".")[0]
  if section in GRADER_SECTIONS:
    used = [graders_by_stage(c) for c in configs]
    return next((stage for stage in STAGES if any(section in u[stage] for u in used)), None)
  return next((stage for stage in STAGES[1:] if _named(key, COUNTED_FROM[stage])), "sft")


def config_differences(stage: str, recorded: dict, config: dict) -> list[tuple[str, Any, Any]]:
  """(key, recorded value, this run's value) of every key that can change `stage` and differs.

  Keys the record lacks are not differences: a key added to the configs later, at its default, must
  not orphan every earlier run. Both configs are plain dicts (`_plain`).
  """
  old, new = _leaves(recorded), _leaves(config)
  upto = STAGES.index(stage)
  found = []
  for key in sorted(old.keys() & new.keys()):
    first = first_stage(key, (recorded, config))
    if first is not None and STAGES.index(first) <= upto and old[key] != new[key]:
      found.append((key, old[key], new[key]))
  return found


def stale_reason(stage: str, recorded: dict, config: dict) -> str | None:
  """Why a finished stage cannot stand for this run although no key of it differs, or None."""
  if stage == "eval" and "ppo" in config["stages"] and "ppo" not in (recorded.get("stages") or ()):
    return "evaluated no PPO policy (its run had no 'ppo' in config.stages) and this run trains one"
  return None


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """What the workdir holds, read at start-up before anything is written."""
  trained: dict[str, bool]  # the stage trained something here (complete or checkpointed)
  done: dict[str, bool]  # the stage is complete and is skipped
  backfill: dict[str, dict]  # finished stages with no record of their own: the workdir's config.json
  replace: tuple[str, ...]  # stages whose results --retrain_from sets aside


def _workdir_config(workdir: pathlib.Path) -> dict | None:
  path = workdir / "config.json"
  try:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
  except ValueError:
    return None


def plan_stages(p: Pipeline, retrain_from: str | None = None) -> StagePlan:
  """Reads every stage's state and recorded config; raises when a finished stage was trained with a
  config this run contradicts (a key that can change it differs), so nothing is silently reused.

  Stages from `retrain_from` on are not checked: the run sets their results aside and trains them
  again. A stage trained before stages recorded their own config is checked against the workdir's
  `config.json`, the config of the last run.
  """
  config = _plain(p.config)
  replace = STAGES[STAGES.index(retrain_from):] if retrain_from else ()
  trained, done, backfill, problems = {}, {}, {}, []
  legacy = _workdir_config(p.workdir)
  for stage in STAGES:
    # Only existing stage directories are opened: opening one creates it.
    ckpt = p.checkpointer(stage) if (p.workdir / stage).is_dir() else None
    trained[stage] = ckpt is not None and ckpt.has_state() and stage not in replace
    done[stage] = trained[stage] and ckpt.is_done()
    if not trained[stage]:
      continue
    recorded = ckpt.recorded_config()
    where = ckpt.directory / CONFIG_FILE
    if recorded is None and legacy is not None:
      recorded, where = legacy, p.workdir / "config.json"
      backfill[stage] = legacy
    if recorded is None:
      continue  # nothing to compare with: the checkpoints' shape fingerprints still guard
    lines = [f"    {key}: trained with {old!r}, this run has {new!r}"
             for key, old, new in config_differences(stage, recorded, config)]
    reason = stale_reason(stage, recorded, config) if done[stage] else None
    if reason:
      lines.append(f"    {reason}")
    if lines:
      state = "complete" if done[stage] else f"checkpointed up to step {ckpt.latest_step()}"
      problems.append((stage, f"  stage {stage!r} ({state}; its config: {where}):\n" + "\n".join(lines)))
  if problems:
    first = problems[0][0]
    raise CheckpointError(
        f"{p.workdir} holds results trained with a different config; nothing was run.\n"
        + "\n".join(text for _, text in problems)
        + f"\nRerun with the recorded values, use another --workdir, or pass {RETRAIN_FLAG}={first} to train "
        f"{first!r} and every later stage again (their current results are moved to "
        f"{p.workdir / REPLACED_DIR}/).")
  if retrain_from != "sft":
    _check_workdir_config(p)
  return StagePlan(trained=trained, done=done, backfill=backfill, replace=replace)


def _set_aside(workdir: pathlib.Path, stages: Iterable[str]) -> tuple[pathlib.Path, list[str]]:
  """Moves the results of `stages` (and the tokenizer, with SFT) under `replaced/<time>/`.

  Returns the folder and the stages that had results there. Main process only.
  """
  target = workdir / REPLACED_DIR / time.strftime("%Y%m%d-%H%M%S")
  moved = []
  for stage in stages:
    paths = [pathlib.Path(stage), pathlib.Path("metrics") / f"{stage}.jsonl", pathlib.Path("tensorboard") / stage]
    if stage == "sft":
      paths.append(pathlib.Path("tokenizer.json"))
    for path in paths:
      if (workdir / path).exists():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(workdir / path, target / path)
        moved += [] if stage in moved else [stage]
  return target, moved


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
                            f"{name}={now!r}. Use another --workdir, restore the old config, or pass "
                            f"{RETRAIN_FLAG}=sft to train every stage again.")


def check_retrain_from(config: ml_collections.ConfigDict, retrain_from: str | None):
  if retrain_from is None:
    return
  if retrain_from not in STAGES:
    raise ConfigError(f"{RETRAIN_FLAG}={retrain_from}: unknown stage; expected one of {STAGES}")
  if retrain_from not in config.stages:
    raise ConfigError(f"{RETRAIN_FLAG}={retrain_from}: the stage is not in config.stages {tuple(config.stages)}, "
                      f"so this run would not train it again")


def _start(p: Pipeline, plan: StagePlan, text: str):
  """The main process's writes at start-up: set aside what is retrained, record the config."""
  if plan.replace:
    target, moved = _set_aside(p.workdir, plan.replace)
    if moved:
      print(f"[{RETRAIN_FLAG[2:]}] the results of {', '.join(moved)} moved to {target}", flush=True)
  for stage, recorded in plan.backfill.items():  # (opening a checkpointer here would wait for the others)
    record_config(p.workdir / stage, json.dumps(recorded, indent=2, sort_keys=True))
  (p.workdir / "config.json").write_text(text)
  if not p.config.model.init_from:
    _ = p.tokenizer  # writes DIR/tokenizer.json, which the other processes then read


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
        retrain_from: str | None = None) -> dict[str, dict]:
  """Runs every stage in `config.stages`, skipping those already complete; returns their summaries.

  A finished stage is only skipped when this config agrees with the one it was trained with (every key
  that can change it); otherwise the run stops at start-up, naming the keys. `retrain_from` (a stage
  in `config.stages`) sets aside the results of that stage and every later one and trains them again.
  On a multi-host run every process runs the same computations; only process 0 writes the workdir's
  shared files (configs, metrics, reports, DONE markers).
  """
  validate(config)
  check_retrain_from(config, retrain_from)
  parallel.maybe_initialize_distributed(config)  # before any other JAX call touches devices
  cache = compilation.enable_cache(config.get("compile_cache_dir", ""))
  p = Pipeline(config, workdir)
  try:
    check_batches(config, p.mesh)
    plan = plan_stages(p, retrain_from)
    p.close()  # stage directories may move; every process reopens them from here on
    text = config_lib.to_json(config)
    distributed.sync("safecomp_plan")  # every process has read the workdir before it changes
    if distributed.is_main_process():
      _start(p, plan, text)
    distributed.sync("safecomp_start")
    print(f"safecomp config (saved to {p.workdir / 'config.json'}):\n{config}", flush=True)
    print(f"[compile] persistent compilation cache: {cache or 'off'}", flush=True)
    summaries = {}
    for stage in config.stages:
      ckpt = p.checkpointer(stage)
      if plan.done[stage]:
        print(f"[{stage}] complete in {ckpt.directory}; skipping", flush=True)
        summaries[stage] = ckpt.done_meta()
        continue
      if distributed.is_main_process() and (not plan.trained[stage] or ckpt.recorded_config() is None):
        ckpt.record_config(text)  # what its checkpoints are trained with, before the first one
      start, compiling = time.time(), compilation.compile_seconds()
      print(f"[{stage}] starting", flush=True)
      summary = STAGE_FNS[stage](p)
      summary["seconds"] = round(time.time() - start, 1)
      summary["compile_seconds"] = round(compilation.compile_seconds() - compiling, 1)
      if distributed.is_main_process():
        ckpt.mark_done(ckpt.latest_step() or 0, summary)
      distributed.sync(f"safecomp_{stage}_done")  # later stages read DONE.json
      summaries[stage] = summary
      print(f"[{stage}] done in {summary['seconds']}s: "
            + json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float))}), flush=True)
    return summaries
  finally:
    p.close()
