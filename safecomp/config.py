"""Experiment configs: `ml_collections` files with `--config.key=value` overrides.

A config file defines `get_config(arg=None) -> ConfigDict`; the file *is* the experiment. Overrides use
the same machinery as `python -m safecomp.train` (absl `config_flags`), so a key that does not exist is
an error naming the closest valid key, and a value of the wrong type is an error naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import pathlib
import sys
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from absl import flags
import ml_collections
from ml_collections import config_flags

from safecomp.errors import ConfigError, DataError


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    full = f"{prefix}{key}"
    keys.append(full)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(all_keys(value, full + "."))
  return keys


def closest_key(config: ml_collections.ConfigDict, key: str) -> str | None:
  matches = difflib.get_close_matches(key, all_keys(config), n=1, cutoff=0.5)
  return matches[0] if matches else None


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path` (optionally `path:arg`) and applies `key=value` overrides (no leading `--config.`)."""
  path = str(path)
  file_part = path.split(":", 1)[0]
  if not pathlib.Path(file_part).is_file():
    raise ConfigError(f"config file not found: {file_part}")
  argv = ["safecomp", f"--config={path}"]
  for item in overrides:
    item = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in item:
      raise ConfigError(f"override {item!r} must look like key=value")
    argv.append(f"--config.{item}")
  flag_values = flags.FlagValues()
  # `sys_argv`: the override flags are found in this argv, not in the process's own.
  config_flags.DEFINE_config_file("config", default=None, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  try:
    flag_values(argv)
  except flags.Error as e:
    raise _explain(e, path) from None
  except (AttributeError, KeyError) as e:
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv[2:]]
    raise ConfigError(f"{path}: {unknown_key_message(path, keys) or _explain(e, path)}") from None
  return flag_values["config"].value


def load_module(path: str | pathlib.Path, name: str | None = None):
  """Imports a Python file by path (config files, experiment helpers outside the package).

  With `name` the module is cached in `sys.modules`, so every importer shares one copy.
  """
  if name is not None and name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name or "safecomp_loaded_file", str(path))
  module = importlib.util.module_from_spec(spec)
  if name is not None:
    sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def config_from_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file named `file.py` or `file.py:arg`, with no overrides."""
  file_part, _, arg = str(path).partition(":")
  module = load_module(file_part)
  return module.get_config(arg) if arg else module.get_config()


def unknown_key_message(path: str | pathlib.Path, keys: Sequence[str]) -> str | None:
  """'unknown config key ...; did you mean ...?' for the first of `keys` the config file lacks."""
  try:
    base = config_from_file(path)
  except Exception:  # pylint: disable=broad-except
    return None
  known = set(all_keys(base))
  for key in keys:
    if key not in known:
      hint = closest_key(base, key)
      return f"unknown config key {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
  return None


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the config files use; dicts stay dicts."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_from_json(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The ConfigDict a run saved with `safecomp.config.to_json` (lists become tuples again)."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, f"invalid JSON: {e.msg}") from None
  if not isinstance(raw, dict):
    raise DataError(path, 1, f"expected a JSON object, got {type(raw).__name__}")
  return ml_collections.ConfigDict(_tuples(raw))



def _explain(error: Exception, path: str) -> ConfigError:
  """Turns an absl/ml_collections parsing error into one line naming the key."""
  text = str(error).replace("\\n", " ").replace("\n", " ").strip("'\" ")
  return ConfigError(f"{path}: {text}")


def check_keys(config: ml_collections.ConfigDict, allowed: ml_collections.ConfigDict, prefix: str = ""):
  """Raises if `config` has a key `allowed` lacks (for configs assembled in Python, not via flags)."""
  for key, value in config.items():
    full = f"{prefix}{key}"
    if key not in allowed:
      hint = closest_key(allowed, full)
      raise ConfigError(f"unknown config key {full!r}" + (f"; did you mean {hint!r}?" if hint else ""))
    if isinstance(value, ml_collections.ConfigDict) and isinstance(allowed[key], ml_collections.ConfigDict):
      check_keys(value, allowed[key], full + ".")


T = TypeVar("T")


def dataclass_from(cls: type[T], section: Mapping[str, Any], key: str, **derived: Any) -> T:
  """`cls(**section)`: the one way a config section becomes its dataclass.

  Every field of the dataclass `cls` is read from the config section `key` under the same name,
  except the `derived` ones (values the run computes, e.g. token ids from the tokenizer), which are not
  config keys. Section keys that are not fields belong to the stage that reads the section. A field the
  section lacks takes the dataclass default (configs saved before the key existed); the dataclass's own
  checks run here, so a bad value fails at start-up naming `key.field`.
  """
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(derived) - set(fields))
  if unknown:
    raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
  kwargs = dict(derived)
  for name, f in fields.items():
    if name in derived or not f.init:
      continue
    if name in section:
      kwargs[name] = section[name]
    elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
      raise ConfigError(f"config key {key + '.' + name!r} is missing (a field of {cls.__name__})")
  try:
    return cls(**kwargs)
  except ConfigError as e:
    field, _, why = str(e).partition(": ")
    field = field.split("=", 1)[0].rsplit(".", 1)[-1]
    if field in fields and why:
      raise ConfigError(f"config key {key + '.' + field!r}: {why} (got {kwargs.get(field)!r})") from None
    raise ConfigError(f"config section {key!r}: {e}") from None
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config section {key!r}: {e}") from None


def section_of(cls: type, *, exclude: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """A config section holding every field of dataclass `cls` at its default (tuples stay tuples)."""
  instance = cls()
  return ml_collections.ConfigDict({f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)
                                    if f.init and f.name not in exclude})


def parse_options(arg: str | None, allowed: Mapping[str, Sequence[str] | None], source: str) -> dict[str, str]:
  """`k=v,k=v` options of a config file argument (`--config file.py:k=v,k=v`).

  `allowed` maps each option to its valid values (None: any value). An unknown option or value is an
  error naming `source` (the config file).
  """
  options = {}
  for item in (arg or "").split(","):
    if not item.strip():
      continue
    if "=" not in item:
      raise ConfigError(f"{source}: option {item!r} must look like key=value")
    name, value = (s.strip() for s in item.split("=", 1))
    if name not in allowed:
      raise ConfigError(f"{source}: unknown option {name!r}; expected one of {list(allowed)}")
    if allowed[name] is not None and value not in allowed[name]:
      raise ConfigError(f"{source}: option {name}={value!r}; expected one of {list(allowed[name])}")
    options[name] = value
  return options


def require(condition: bool, key: str, message: str):
  if not condition:
    raise ConfigError(f"config key {key!r}: {message}")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=_json_default)


def _json_default(value: Any):
  if isinstance(value, (tuple, set, frozenset)):
    return list(value)
  return repr(value)


def fingerprint_keys(config: ml_collections.ConfigDict, keys: Iterable[str]) -> dict:
  """The sub-config that decides the shapes of a checkpoint: stored with it and checked on restore."""
  out = {}
  for key in keys:
    node = config
    for part in key.split("."):
      node = node[part]
    out[key] = node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node
  return json.loads(json.dumps(out, default=_json_default))
