"""The content policy as data: frozen dataclasses loaded from versioned YAML with strict validation."""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
from typing import Mapping, Sequence

import numpy as np
import yaml

from safecomp.constants import INTENTS, MODES, SEVERITIES, SEVERITY_INDEX
from safecomp.errors import ConfigError

POLICY_DIR = pathlib.Path(__file__).resolve().parent / "policies"
LEVELS = ("background", "mechanism", "actionable", "critical")
HAZARD_CATEGORIES = ("biology", "chemistry", "cyber", "weapons", "self_harm", "fraud_privacy")
RUBRICS = ("safety", "helpfulness_direct", "helpfulness_indirect")
GRANULARITIES = ("fine", "coarse")
STYLES = ("safe_completion", "refusal")
# Top-level `conflicts`: whether rules may disagree on a request's mode. "allowed" is for studying
# ambiguous policies (the `inconsistent` spec ablation); shipped policies are otherwise consistent.
CONFLICT_POLICIES = ("forbidden", "allowed")
MAX_ID = 30  # section and rule ids are cited in teacher reasoning as words "1".."30"
SCORE_TOKENS = ("1", "2", "3", "4")
_PLACEHOLDER = re.compile(r"\{(prompt|completion|policy|scale)\}")


class SpecError(ConfigError):
  """A malformed policy file; the message names the file, line and key."""


@dataclasses.dataclass(frozen=True)
class Severity:
  name: str
  level: int
  definition: str


@dataclasses.dataclass(frozen=True)
class InformationLevel:
  name: str
  definition: str


@dataclasses.dataclass(frozen=True)
class Mode:
  name: str
  definition: str
  includes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """A decision rule: when the request matches, respond in `mode`. Unset conditions match anything."""
  id: int
  mode: str
  text: str
  intents: tuple[str, ...]
  hazard: bool | None = None
  levels: tuple[int, ...] | None = None

  def matches(self, intent: str, hazard: bool, level: int) -> bool:
    return (intent in self.intents and (self.hazard is None or self.hazard == hazard)
            and (self.levels is None or level in self.levels))


@dataclasses.dataclass(frozen=True)
class Conflict:
  """A request cell where several rules match and disagree on the mode."""
  intent: str
  hazard: bool
  level: int
  rule_ids: tuple[int, ...]  # in document order
  modes: tuple[str, ...]  # the mode of each rule in `rule_ids`

  def describe(self) -> str:
    rules = ", ".join(f"rule {i} -> {m}" for i, m in zip(self.rule_ids, self.modes))
    return f"intent={self.intent!r}, hazard={self.hazard}, level={LEVELS[self.level]!r}: {rules}"


@dataclasses.dataclass(frozen=True)
class LevelGuidance:
  level: str
  severity: str
  guidance: str

  @property
  def severity_index(self) -> int:
    return SEVERITY_INDEX[self.severity]


@dataclasses.dataclass(frozen=True)
class Section:
  """Guidance for one category (or, for `hazard: false`, for a group of everyday domains)."""
  id: int
  name: str
  title: str
  hazard: bool
  summary: str
  domains: tuple[str, ...] = ()
  levels: tuple[LevelGuidance, ...] = ()
  resources: str = ""

  def guidance(self, level: str | int) -> LevelGuidance | None:
    """Per-level guidance (fine specs), or None where the spec gives none."""
    name = LEVELS[level] if isinstance(level, int) else level
    return next((g for g in self.levels if g.level == name), None)


@dataclasses.dataclass(frozen=True)
class Rubric:
  """An LLM-grader prompt with `{prompt}` and `{completion}` (and optional `{policy}`, `{scale}`)."""
  name: str
  text: str
  scale: tuple[tuple[str, str], ...]  # ("4", description) ... ("1", description)

  @property
  def score_tokens(self) -> tuple[str, ...]:
    return SCORE_TOKENS

  def scale_text(self) -> str:
    return "\n".join(f"{k} = {v}" for k, v in self.scale)

  def render(self, prompt: str, completion: str, policy: str = "") -> str:
    # One pass (not str.format): braces or placeholder names inside user text stay as they are.
    values = {"prompt": prompt, "completion": completion, "policy": policy, "scale": self.scale_text()}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A versioned content policy."""
  name: str
  version: str
  granularity: str
  style: str
  summary: str
  severities: tuple[Severity, ...]
  information_levels: tuple[InformationLevel, ...]
  meaningful_facilitation: str
  modes: tuple[Mode, ...]
  rules: tuple[Rule, ...]
  sections: tuple[Section, ...]
  rubrics: tuple[Rubric, ...]
  path: str = ""
  allow_conflicts: bool = False  # the YAML's `conflicts: allowed`; loading checks it against conflicts()

  def section(self, category: str) -> Section:
    """The section for a category name, or the everyday section listing it among its domains."""
    for s in self.sections:
      if s.name == category or category in s.domains:
        return s
    names = [s.name for s in self.sections] + [d for s in self.sections for d in s.domains]
    hint = difflib.get_close_matches(category, names, n=1)
    raise SpecError(f"{self.path or self.name}: no section for category {category!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {names}"))

  def rubric(self, name: str) -> Rubric:
    for r in self.rubrics:
      if r.name == name:
        return r
    raise SpecError(f"{self.path or self.name}: no rubric {name!r}; known: {[r.name for r in self.rubrics]}")

  def mode(self, name: str) -> Mode:
    for m in self.modes:
      if m.name == name:
        return m
    raise SpecError(f"{self.path or self.name}: no mode {name!r}")

  def matching_rules(self, intent: str, hazard: bool, level: int) -> tuple[Rule, ...]:
    """Every rule matching a request, in document order."""
    return tuple(r for r in self.rules if r.matches(intent, bool(hazard), int(level)))

  def decide(self, intent: str, hazard: bool, level: int, rng: np.random.Generator | None = None) -> Rule:
    """The rule that applies to a request (validation guarantees one matches).

    Where matching rules disagree on the mode (only in specs declaring `conflicts: allowed`), a
    reader with `rng` picks one of them uniformly, so two readers (teacher, judge) resolve the same
    ambiguity independently; without `rng`, the first. `rng` is drawn from only on such a conflict,
    so a consistent spec never consumes randomness and every data stream stays as it was.
    """
    matching = self.matching_rules(intent, hazard, level)
    if not matching:
      raise SpecError(f"{self.path or self.name}: no rule for intent={intent!r} hazard={hazard} level={level}")
    if rng is not None and len({r.mode for r in matching}) > 1:
      return matching[int(rng.integers(len(matching)))]
    return matching[0]

  def conflicts(self) -> tuple[Conflict, ...]:
    """Every (intent, hazard, level) cell whose matching rules disagree on the mode."""
    return _conflicts(self.rules)

  def policy_text(self, categories: Sequence[str] | None = None) -> str:
    """The policy as prose for a prompt: everything, or only the sections of `categories`."""
    lines = [f"Content policy {self.name} v{self.version} ({self.granularity}).", self.summary, "",
             "Harm severity levels:"]
    lines += [f"- {s.name} ({s.level}): {s.definition}" for s in self.severities]
    lines += ["", "Information levels:"]
    lines += [f"- {lv.name}: {lv.definition}" for lv in self.information_levels]
    lines += ["", f"Meaningful facilitation: {self.meaningful_facilitation}", "", "Response modes:"]
    lines += [f"- {m.name}: {m.definition}" for m in self.modes]
    # An ambiguous policy does not say which of its clashing rules wins: its readers must guess.
    lines += ["", "Rules:" if self.allow_conflicts else "Rules (the first that matches applies):"]
    lines += [f"- rule {r.id} -> {r.mode}: {r.text}" for r in self.rules]
    wanted = self.sections if categories is None else [self.section(c) for c in categories]
    for s in dict.fromkeys(wanted):
      lines += ["", f"Section {s.id} ({s.name}): {s.title}. {s.summary}"]
      if s.domains:
        lines.append(f"Domains: {', '.join(s.domains)}.")
      lines += [f"- {g.level} ({g.severity}): {g.guidance}" for g in s.levels]
      if s.resources:
        lines.append(f"Resources: {s.resources}")
    return "\n".join(lines).strip()


def _conflicts(rules: Sequence[Rule]) -> tuple[Conflict, ...]:
  out = []
  for intent in INTENTS:
    for hazard in (False, True):
      for level in range(len(LEVELS)):
        matching = [r for r in rules if r.matches(intent, hazard, level)]
        if len({r.mode for r in matching}) > 1:
          out.append(Conflict(intent, hazard, level, tuple(r.id for r in matching),
                              tuple(r.mode for r in matching)))
  return tuple(out)


# ------------------------------------------------------------------------------------ loading
def list_specs() -> list[str]:
  """Names of the policies shipped with the package."""
  return sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))


def resolve(name_or_path: str | pathlib.Path) -> pathlib.Path:
  s = str(name_or_path)
  if s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s:
    path = pathlib.Path(s)
  else:
    path = POLICY_DIR / f"{s}.yaml"
  if not path.is_file():
    raise SpecError(f"spec {s!r} not found (looked for {path}); shipped specs: {list_specs()}")
  return path


def load_spec(name_or_path: str | pathlib.Path) -> Spec:
  """Loads a shipped policy by name (`safe_completion_fine`) or any YAML file by path."""
  path = resolve(name_or_path)
  text = path.read_text(encoding="utf-8")
  return parse_spec(text, str(path))


def parse_spec(text: str, source: str = "<string>") -> Spec:
  """Parses and validates policy YAML; errors name `source`, the line and the key."""
  try:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    data = yaml.safe_load(text)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 0
    raise SpecError(f"{source}:{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
  lines: dict[tuple, int] = {}
  _record_lines(root, (), lines)
  return _Validator(source, lines).spec(data)


def _record_lines(node, path: tuple, out: dict):
  if node is None:
    return
  out[path] = node.start_mark.line + 1
  if isinstance(node, yaml.MappingNode):
    for k, v in node.value:
      out[path + (k.value,)] = k.start_mark.line + 1
      _record_lines(v, path + (k.value,), out)
      out[path + (k.value,)] = k.start_mark.line + 1
  elif isinstance(node, yaml.SequenceNode):
    for i, v in enumerate(node.value):
      _record_lines(v, path + (i,), out)


def _dotted(path: tuple) -> str:
  out = ""
  for p in path:
    out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
  return out or "<root>"


class _Validator:
  """Type and key checks with errors naming file:line and the dotted key."""

  def __init__(self, source: str, lines: Mapping[tuple, int]):
    self.source, self.lines = source, lines

  def fail(self, path: tuple, why: str):
    line = 0
    for k in range(len(path), -1, -1):  # nearest enclosing node that has a line
      if path[:k] in self.lines:
        line = self.lines[path[:k]]
        break
    raise SpecError(f"{self.source}:{line}: key '{_dotted(path)}': {why}")

  def mapping(self, value, path, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    if not isinstance(value, Mapping):
      self.fail(path, f"expected a mapping, got {type(value).__name__}")
    allowed = list(required) + list(optional)
    for key in value:
      if key not in allowed:
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        self.fail(path + (key,), "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else
                                                   f"; allowed: {allowed}"))
    for key in required:
      if key not in value:
        self.fail(path, f"missing required key {key!r}")
    return dict(value)

  def string(self, value, path) -> str:
    if not isinstance(value, str) or not value.strip():
      self.fail(path, "expected a non-empty string")
    return " ".join(value.split()) if "\n" not in value.strip() else value.strip()

  def boolean(self, value, path) -> bool:
    if not isinstance(value, bool):
      self.fail(path, f"expected true or false, got {value!r}")
    return value

  def ident(self, value, path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ID:
      self.fail(path, f"expected an integer id in 1..{MAX_ID}, got {value!r}")
    return value

  def choice(self, value, path, options) -> str:
    if value not in options:
      self.fail(path, f"{value!r} is not one of {list(options)}")
    return value

  def seq(self, value, path) -> list:
    if not isinstance(value, list) or not value:
      self.fail(path, "expected a non-empty list")
    return value

  def spec(self, data) -> Spec:
    top = self.mapping(data, (), ["name", "version", "granularity", "style", "summary", "severities",
                                  "information_levels", "meaningful_facilitation", "modes", "rules",
                                  "sections", "rubrics"], ["description", "conflicts"])
    version = str(top["version"])
    if not re.fullmatch(r"\d+(\.\d+){0,2}", version):
      self.fail(("version",), f"expected a version like '1.0.0', got {top['version']!r}")
    allow_conflicts = self.choice(top.get("conflicts", "forbidden"), ("conflicts",),
                                  CONFLICT_POLICIES) == "allowed"
    rules = self.rules(top["rules"])
    clashes = _conflicts(rules)
    if clashes and not allow_conflicts:
      self.fail(("rules",), "matching rules disagree on the mode for "
                + "; ".join(c.describe() for c in clashes)
                + ". Declare top-level `conflicts: allowed` to study an ambiguous policy on purpose")
    return Spec(
        name=self.string(top["name"], ("name",)), version=version,
        granularity=self.choice(top["granularity"], ("granularity",), GRANULARITIES),
        style=self.choice(top["style"], ("style",), STYLES),
        summary=self.string(top["summary"], ("summary",)),
        severities=self.severities(top["severities"]), information_levels=self.levels(top["information_levels"]),
        meaningful_facilitation=self.string(top["meaningful_facilitation"], ("meaningful_facilitation",)),
        modes=self.modes(top["modes"]), rules=rules, sections=self.sections(top["sections"]),
        rubrics=self.rubrics(top["rubrics"]), path=self.source, allow_conflicts=allow_conflicts)

  def severities(self, value) -> tuple[Severity, ...]:
    items = self.seq(value, ("severities",))
    out = []
    for i, item in enumerate(items):
      p = ("severities", i)
      d = self.mapping(item, p, ["name", "level", "definition"])
      name = self.choice(d["name"], p + ("name",), SEVERITIES)
      if d["level"] != SEVERITY_INDEX[name]:
        self.fail(p + ("level",), f"severity {name!r} has level {SEVERITY_INDEX[name]}, got {d['level']!r}")
      out.append(Severity(name, d["level"], self.string(d["definition"], p + ("definition",))))
    if tuple(s.name for s in out) != SEVERITIES:
      self.fail(("severities",), f"must list exactly {list(SEVERITIES)} in order")
    return tuple(out)

  def levels(self, value) -> tuple[InformationLevel, ...]:
    items = self.seq(value, ("information_levels",))
    out = []
    for i, item in enumerate(items):
      p = ("information_levels", i)
      d = self.mapping(item, p, ["name", "definition"])
      out.append(InformationLevel(self.choice(d["name"], p + ("name",), LEVELS),
                                  self.string(d["definition"], p + ("definition",))))
    if tuple(lv.name for lv in out) != LEVELS:
      self.fail(("information_levels",), f"must list exactly {list(LEVELS)} in order")
    return tuple(out)

  def modes(self, value) -> tuple[Mode, ...]:
    d = self.mapping(value, ("modes",), MODES)
    out = []
    for name in MODES:
      p = ("modes", name)
      m = self.mapping(d[name], p, ["definition"], ["includes"])
      inc = m.get("includes", [])
      if not isinstance(inc, list) or not all(isinstance(x, str) for x in inc):
        self.fail(p + ("includes",), "expected a list of strings")
      out.append(Mode(name, self.string(m["definition"], p + ("definition",)), tuple(inc)))
    return tuple(out)

  def rules(self, value) -> tuple[Rule, ...]:
    items = self.seq(value, ("rules",))
    out, seen = [], set()
    for i, item in enumerate(items):
      p = ("rules", i)
      d = self.mapping(item, p, ["id", "when", "mode", "text"])
      rid = self.ident(d["id"], p + ("id",))
      if rid in seen:
        self.fail(p + ("id",), f"duplicate rule id {rid}")
      seen.add(rid)
      w = self.mapping(d["when"], p + ("when",), ["intents"], ["hazard", "levels"])
      intents = tuple(self.choice(x, p + ("when", "intents", j), INTENTS)
                      for j, x in enumerate(self.seq(w["intents"], p + ("when", "intents"))))
      hazard = self.boolean(w["hazard"], p + ("when", "hazard")) if "hazard" in w else None
      levels = None
      if "levels" in w:
        levels = tuple(LEVELS.index(self.choice(x, p + ("when", "levels", j), LEVELS))
                       for j, x in enumerate(self.seq(w["levels"], p + ("when", "levels"))))
      out.append(Rule(rid, self.choice(d["mode"], p + ("mode",), MODES), self.string(d["text"], p + ("text",)),
                      intents, hazard, levels))
    for intent in INTENTS:  # every request must be decidable
      for hazard in (False, True):
        for level in range(4):
          if not any(r.matches(intent, hazard, level) for r in out):
            self.fail(("rules",), f"no rule covers intent={intent!r}, hazard={hazard}, level={LEVELS[level]!r}")
    return tuple(out)

  def sections(self, value) -> tuple[Section, ...]:
    items = self.seq(value, ("sections",))
    out, ids, names = [], set(), set()
    for i, item in enumerate(items):
      p = ("sections", i)
      d = self.mapping(item, p, ["id", "name", "title", "hazard", "summary"], ["domains", "levels", "resources"])
      sid = self.ident(d["id"], p + ("id",))
      name = self.string(d["name"], p + ("name",))
      if sid in ids or name in names:
        self.fail(p, f"duplicate section id {sid} or name {name!r}")
      ids.add(sid)
      names.add(name)
      hazard = self.boolean(d["hazard"], p + ("hazard",))
      domains = d.get("domains", [])
      if not isinstance(domains, list) or not all(isinstance(x, str) for x in domains):
        self.fail(p + ("domains",), "expected a list of category names")
      levels = []
      if "levels" in d:
        lv = self.mapping(d["levels"], p + ("levels",), LEVELS)
        for name_ in LEVELS:
          q = p + ("levels", name_)
          g = self.mapping(lv[name_], q, ["severity", "guidance"])
          levels.append(LevelGuidance(name_, self.choice(g["severity"], q + ("severity",), SEVERITIES),
                                      self.string(g["guidance"], q + ("guidance",))))
        sev = [g.severity_index for g in levels]
        if sev != sorted(sev):
          self.fail(p + ("levels",), "severity must not decrease from background to critical")
        if not hazard and max(sev) > 0:
          self.fail(p + ("levels",), "a section with hazard: false must be negligible at every level")
      out.append(Section(sid, name, self.string(d["title"], p + ("title",)), hazard,
                         self.string(d["summary"], p + ("summary",)), tuple(domains), tuple(levels),
                         self.string(d["resources"], p + ("resources",)) if "resources" in d else ""))
    for cat in HAZARD_CATEGORIES:
      if not any(s.name == cat and s.hazard for s in out):
        self.fail(("sections",), f"missing hazard section {cat!r}")
    return tuple(out)

  def rubrics(self, value) -> tuple[Rubric, ...]:
    d = self.mapping(value, ("rubrics",), RUBRICS)
    out = []
    for name in RUBRICS:
      p = ("rubrics", name)
      r = self.mapping(d[name], p, ["scale", "text"])
      raw = r["scale"]
      scale = self.mapping({str(k): v for k, v in raw.items()} if isinstance(raw, Mapping) else raw,
                           p + ("scale",), SCORE_TOKENS)
      text = self.string(r["text"], p + ("text",))
      for ph in ("{prompt}", "{completion}"):
        if ph not in text:
          self.fail(p + ("text",), f"missing placeholder {ph}")
      unknown = set(re.findall(r"\{[a-z_]+\}", text)) - {"{prompt}", "{completion}", "{policy}", "{scale}"}
      if unknown:
        self.fail(p + ("text",), f"unknown placeholders {sorted(unknown)}")
      out.append(Rubric(name, text, tuple((k, self.string(scale[k], p + ("scale", k)))
                                          for k in reversed(SCORE_TOKENS))))
    return tuple(out)
