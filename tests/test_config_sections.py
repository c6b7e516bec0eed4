"""Each config section becomes its dataclass in one place (`safecomp.config.dataclass_from`), and every
field of that dataclass is a key of the section, so every knob can be set from the command line."""
import dataclasses

import pytest

from safecomp import config as config_lib
from safecomp import models, parallel, testbed
from safecomp.errors import ConfigError
from safecomp.rl import ppo as ppo_lib
from safecomp.training import pipeline
from safecomp.training import ppo as ppo_stage

# (dataclass, config section, fields the run derives instead of reading them from the section)
SECTIONS = [
    (ppo_lib.PPOConfig, "ppo", {"eos_id"}),
    (testbed.WorldConfig, "testbed", set()),
    (testbed.OracleConfig, "oracle", {"severity_to_safety"}),
]


@pytest.mark.parametrize("cls,section,derived", SECTIONS, ids=[s[1] for s in SECTIONS])
def test_every_dataclass_field_is_a_config_key(cls, section, derived):
  config = config_lib.load_config("configs/demo.py")
  fields = {f.name for f in dataclasses.fields(cls)}
  assert derived <= fields
  assert not fields - derived - set(config[section]), f"{cls.__name__} fields missing from `{section}`"


def test_ppo_settings_reach_the_update():
  config = config_lib.load_config("configs/demo.py", [
      "ppo.kl_mode=loss", "ppo.kl_estimator=k3", "ppo.kl_target=6.0", "ppo.normalize_scores=True",
      "ppo.grpo_normalize_std=False"])
  cfg = ppo_stage.ppo_config(config, eos_id=(2, 5))
  assert (cfg.kl_mode, cfg.kl_estimator, cfg.kl_target, cfg.normalize_scores, cfg.grpo_normalize_std,
          cfg.eos_id) == ("loss", "k3", 6.0, True, False, (2, 5))
  default = ppo_stage.ppo_config(config_lib.load_config("configs/demo.py"), eos_id=2)
  assert default.kl_target is None and default.kl_mode == "reward"


@pytest.mark.parametrize("override,key", [
    ("ppo.kl_mode=sideways", "ppo.kl_mode"), ("ppo.algorithm=dpo", "ppo.algorithm"),
    ("ppo.kl_estimator=k9", "ppo.kl_estimator"), ("testbed.topics_per_category=0", "testbed.topics_per_category"),
    ("testbed.heldout_fraction=2.0", "testbed.heldout_fraction"), ("oracle.indirect_weight=1.5", "oracle.indirect_weight"),
    ("mesh.rules.embed='model'", "mesh.rules.embed")])
def test_a_bad_enum_or_value_fails_at_start_up_naming_its_key(override, key):
  config = config_lib.load_config("configs/demo.py", [override])
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    pipeline.validate(config)


def test_world_and_oracle_come_from_the_config():
  config = config_lib.load_config("configs/demo.py", ["testbed.topics_per_category=2", "oracle.junk_coverage=0.25",
                                                      "reward.severity_to_safety=(1.0, 0.5, 0.25, 0.0)"])
  world = testbed.world_from_config(config)
  assert len(world.topics) == 2 * len(config.testbed.hazard_categories + config.testbed.benign_domains)
  assert len(world.topics) < len(testbed.world_from_config(config_lib.load_config("configs/demo.py")).topics)
  oracle = testbed.oracle_config_from(config)
  assert oracle.junk_coverage == 0.25 and oracle.severity_to_safety == (1.0, 0.5, 0.25, 0.0)


def test_a_missing_field_takes_the_dataclass_default_and_unknown_derived_fields_are_refused():
  assert config_lib.dataclass_from(testbed.OracleConfig, {}, "oracle") == testbed.OracleConfig()
  with pytest.raises(TypeError, match="no field"):
    config_lib.dataclass_from(testbed.OracleConfig, {}, "oracle", temperature=1.0)


def test_one_model_config_for_fresh_and_planned_models(tmp_path):
  """The pipeline and the memory planner read the `model` section the same way, including what a family
  implies (a fresh Gemma ties its embeddings and scales them, as a Gemma checkpoint would)."""
  config = config_lib.load_config("configs/demo.py:size=tiny", ["model.family=gemma"])
  p = pipeline.Pipeline(config, tmp_path)
  cfg = p.model_config(("lm",))
  planned = models.model_config_from(config, ("lm",), vocab_size=p.tokenizer.vocab_size)  # as the planner reads it
  assert dataclasses.replace(cfg, pad_token_id=None, bos_token_id=None, eos_token_id=None) == planned
  assert (cfg.pad_token_id, cfg.eos_token_id) == (p.tokenizer.pad_id, p.tokenizer.eos_id)
  assert cfg.tie_word_embeddings and cfg.scale_embeddings and cfg.hidden_act == "gelu_pytorch_tanh"


def test_mesh_rules_are_read_from_the_config():
  config = config_lib.load_config("configs/demo.py", ["mesh.rules.embed=None"])
  assert dict(parallel.rules_from_config(config))["embed"] is None
  assert parallel.rules_from_config(config_lib.load_config("configs/demo.py")) == parallel.DEFAULT_RULES


@pytest.mark.parametrize("arg,message", [("size=huge", "option size='huge'"), ("arms=refusal", "unknown option"),
                                         ("tiny", "must look like key=value")])
def test_config_file_options_are_checked(arg, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.config_from_file(f"configs/demo.py:{arg}")
