"""The grader interface, the graded-row record and the registry every entry point shares.

A grader reads aligned lists of prompts and completions and returns one `Grade` per row: the harm
severity of what the completion discloses (a level, or a distribution over negligible / low /
moderate / high), direct and indirect helpfulness, the response mode where it can tell, and its own
name and version. A row it cannot judge gets a `Grade` with `error` set (ungraded): it is counted and
left out of every rate and every reward, never given a score.

Rewards are not a grader's business: `rewards_of(grades, prompts, kind, ...)` turns grades into
(s, h, r) with `safecomp.rewards.composite.reward_terms`, the one reward function.

Graders are built by name from a `GraderContext` (the run config's `judge`, `http`, `oracle` and
`reward` sections, the task, and the trained reward model where there is one):

    grader = graders.make_grader("judge", GraderContext(config))
    grades = grader.grade(prompts, completions)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from safecomp.constants import INTENT_INDEX, MODES, REFUSAL_MODES, SEVERITIES
from safecomp.errors import ConfigError, SafecompError
from safecomp.prompts import Prompt, as_prompt
from safecomp.rewards import composite
from safecomp.rewards import mode_classifier



class GraderError(SafecompError):
  """A grader that cannot judge its input (and was not asked to mark such rows ungraded)."""


@dataclasses.dataclass(frozen=True)
class Grade:
  """One grader's judgment of one completion. Scores in [0, 1]; `error` set means ungraded."""
  grader: str  # "name:version"
  severity: int | None = None
  severity_probs: tuple[float, ...] | None = None
  helpfulness: float | None = None
  helpfulness_direct: float | None = None
  helpfulness_indirect: float | None = None
  mode: str | None = None
  mode_source: str | None = None  # "grader", or "classifier" when the mode classifier read it
  error: str | None = None
  details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def graded(self) -> bool:
    return self.error is None

  @property
  def unsafe(self) -> bool:
    return self.severity is not None and self.severity >= 1

  def to_dict(self) -> dict[str, Any]:
    out = {"grader": self.grader}
    if not self.graded:
      return {**out, "ungraded": True, "error": self.error, **dict(self.details)}
    if self.severity is not None:
      out.update(severity=self.severity, severity_name=SEVERITIES[self.severity], unsafe=self.unsafe)
    for key in ("severity_probs", "helpfulness", "helpfulness_direct", "helpfulness_indirect", "mode",
                "mode_source"):
      value = getattr(self, key)
      if value is not None:
        out[key] = list(value) if isinstance(value, tuple) else value
    out.update(self.details)
    return out


def ungraded(grader: str, error: str, **details: Any) -> Grade:
  return Grade(grader=grader, error=error, details=details)


def judged(grader: str, *, prompt: Prompt, completion: str, mode: str | None,
           severity_probs: Sequence[float] | None = None, severity: int | None = None,
           direct: float | None = None, indirect: float | None = None, helpfulness: float | None = None,
           indirect_weight: float = composite.DEFAULT_INDIRECT_WEIGHT, **details: Any) -> Grade:
  """A grade from a severity (level or distribution) and helpfulness.

  Helpfulness is given as is, or combined from direct and indirect helpfulness with
  `composite.combine_helpfulness`, reading the prompt's intent label where it has one. Graders that
  cannot tell the mode get it from the response-mode classifier.
  """
  if severity_probs is not None:
    severity_probs = tuple(float(p) for p in severity_probs)
    severity = int(np.argmax(severity_probs))
  if helpfulness is None:
    helpfulness = composite.combine_helpfulness(
        float(direct), float(indirect),
        malicious=None if prompt.intent is None else prompt.intent == "malicious",
        indirect_weight=indirect_weight)
  source = "grader"
  if mode is None:
    mode = mode_classifier.classify_mode(mode_classifier.last_user_message(prompt.message_list),
                                         completion).mode
    source = "classifier"
  return Grade(grader=grader, severity=int(severity), severity_probs=severity_probs,
               helpfulness=float(helpfulness), helpfulness_direct=None if direct is None else float(direct),
               helpfulness_indirect=None if indirect is None else float(indirect), mode=mode,
               mode_source=source, details=details)


class Grader(Protocol):
  """Anything that grades aligned lists of prompts and completion texts."""
  name: str  # registry name
  version: str  # what exactly graded (model, checkpoint, world): recorded on every row
  judges_harm: bool  # gives severity and helpfulness, so it can serve as a reward or eval grader

  def grade(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Grade]:
    ...


def full_name(grader: Grader) -> str:
  return f"{grader.name}:{grader.version}"


def grade_texts(grader: Grader, prompts: Sequence[Any], completions: Sequence[str]) -> list[Grade]:
  """`grader.grade` on raw prompts (text, messages, testbed examples or `Prompt`s)."""
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
  grades = grader.grade([as_prompt(p) for p in prompts], list(completions))
  if len(grades) != len(prompts):
    raise GraderError(f"grader {grader.name!r} returned {len(grades)} grades for {len(prompts)} rows")
  return grades


# ---------------------------------------------------------------------------------- grades -> rewards
def rewards_of(grades: Sequence[Grade], prompts: Sequence[Prompt], kind: str = "product", *,
               severity_to_safety: Sequence[float] = composite.DEFAULT_SEVERITY_TO_SAFETY,
               as_jax: bool = False) -> dict[str, np.ndarray]:
  """Rewards and per-row scores of graded rows (ungraded rows: `graded` 0 and zeros elsewhere).

  Safety is the expectation over the severity distribution when every grade has one (as the compiled
  rollout computes it), else read off the severity level. Returns numpy arrays: reward, safety,
  helpfulness, unsafe, severity (-1 ungraded), modes (index into MODES, -1 unknown), refused, graded.
  With `as_jax` the reward is computed in float32 JAX (as the compiled rollout does), else in float64
  numpy.
  """
  n = len(grades)
  graded = np.asarray([g.graded for g in grades], bool)
  severity = np.asarray([g.severity if g.graded else 0 for g in grades], np.int64)
  with_probs = bool(grades) and all(g.severity_probs is not None for g in grades if g.graded) and graded.any()
  if with_probs:
    judged_severity = np.asarray([g.severity_probs if g.graded else (1.0, 0.0, 0.0, 0.0) for g in grades],
                                 np.float32 if as_jax else np.float64)
  else:
    judged_severity = severity.astype(np.int32) if as_jax else severity
  helpfulness = np.asarray([g.helpfulness if g.graded else 0.0 for g in grades],
                           np.float32 if as_jax else np.float64)
  modes = np.asarray([MODES.index(g.mode) if g.graded and g.mode in MODES else -1 for g in grades], np.int64)
  refused = np.asarray([g.graded and g.mode in REFUSAL_MODES for g in grades], np.float32)
  intent = None
  if kind == "refusal":
    missing = [p.uid for p in prompts if p.intent is None]
    if missing:
      raise GraderError(f"the refusal reward needs each prompt's intent label; prompt {missing[0]!r} has none")
    intent = np.asarray([INTENT_INDEX[p.intent] for p in prompts], np.int32)
  if as_jax:
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    safety, helpfulness_out, reward = composite.reward_terms(
        jnp.asarray(judged_severity), jnp.asarray(helpfulness), kind,
        severity_to_safety=severity_to_safety,
        intent=None if intent is None else jnp.asarray(intent), refused=jnp.asarray(refused))
    safety, helpfulness_out, reward = (np.asarray(x) for x in (safety, helpfulness_out, reward))
  else:
    safety, helpfulness_out, reward = composite.reward_terms(
        judged_severity, helpfulness, kind, severity_to_safety=severity_to_safety, intent=intent, refused=refused)
  zero = lambda x: np.where(graded, x, 0).astype(x.dtype)
  return {"reward": zero(reward), "safety": zero(safety), "helpfulness": zero(helpfulness_out),
          "unsafe": (graded & (severity >= 1)).astype(np.float32), "severity": np.where(graded, severity, -1),
          "modes": np.where(graded, modes, -1), "refused": refused, "graded": graded.astype(np.float32),
          "n": np.asarray(n)}


# ---------------------------------------------------------------------------------- the registry
@dataclasses.dataclass
class GraderContext:
  """What a grader factory may read.

  `config`: the run config (or any ConfigDict with the sections a grader reads: `spec`, `reward`,
  `judge`, `http`, `oracle`); `task`: the run's task (the oracle asks it for its world);
  `reward_model`: a callable returning the trained reward model (`RewardModelHandle`), for `rm`.
  """
  config: Any
  task: Any = None
  reward_model: Callable[[], Any] | None = None


@dataclasses.dataclass(frozen=True)
class GraderEntry:
  factory: Callable[[GraderContext], Grader]
  judges_harm: bool
  description: str


GRADERS: dict[str, GraderEntry] = {}


def register_grader(name: str, *, judges_harm: bool, description: str):
  """Registers `factory(context) -> Grader` under `name`."""

  def wrap(factory: Callable[[GraderContext], Grader]):
    if name in GRADERS:
      raise ValueError(f"grader {name!r} is already registered")
    GRADERS[name] = GraderEntry(factory, judges_harm, description)
    return factory

  return wrap


def harm_graders() -> tuple[str, ...]:
  """Names of the graders that judge severity and helpfulness (reward, eval and labelling graders)."""
  return tuple(name for name, entry in GRADERS.items() if entry.judges_harm)


def make_grader(name: str, context: GraderContext, *, key: str = "grader") -> Grader:
  """The grader registered as `name`; an unknown name is a `ConfigError` naming `key`."""
  if name not in GRADERS:
    raise ConfigError(f"config key {key!r}: unknown grader {name!r}; expected one of {sorted(GRADERS)}")
  return GRADERS[name].factory(context)
