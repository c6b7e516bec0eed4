"""Shared by the experiment configs and drivers (not a config itself).

- `SCALES`: the training budgets of the experiments (`tiny`, `default`, `large`), as overrides of
  `configs/demo.py`.
- `experiment_config(arg, changes)`: `configs/demo.py`'s `get_config` with a scale and changes applied;
  what every experiment config file's `get_config(arg)` returns.
- `run_grid`: trains a list of (name, seed, config) runs with `safecomp.training.pipeline.run`, each in
  its own workdir, skipping finished ones (rerunning resumes).
- `load_records` / `pool`: the eval stage's graded completions of every run, pooled across seeds with
  prompt ids made unique per seed.
- `write_tables`: per-intent summaries with intervals, paired comparisons, the per-seed spread,
  Markdown/JSON/PNG reports.

Loaded by path (`experiments/` is not a package): see `load_common` in the drivers and configs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.py"
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=wrong-import-position
import numpy as np

from safecomp import config as config_lib
from safecomp.constants import INTENTS, MODES, REFUSAL_MODES
from safecomp.eval import report as report_lib
from safecomp.eval import stats
from safecomp.errors import ConfigError, SafecompError
# pylint: enable=wrong-import-position

# Training budgets. `default` is the demo's budget cut to 300 SFT steps, 250 reward-model steps, 40 PPO
# iterations and 200 eval prompts per split, so that the controlled experiment (6 runs) fits well
# inside an hour on a 2-core CPU (see experiments/ce_refusal_vs_safecomplete/RESULTS.md for the time).
SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"demo": "size=tiny", "overrides": {}},
    "default": {"demo": "", "overrides": {
        "sft.steps": 300, "sft.warmup_steps": 20, "rm.steps": 250, "rm.checkpoint_every": 125,
        "ppo.iterations": 40, "eval.n_per_split": 200}},
    "large": {"demo": "", "overrides": {
        "model.hidden_size": 256, "model.num_layers": 4, "model.num_heads": 8, "model.num_kv_heads": 4,
        "model.head_dim": 32, "model.intermediate_size": 768, "testbed.n_sft": 6000, "testbed.n_rm": 4000,
        "sft.steps": 800, "sft.warmup_steps": 60, "sft.checkpoint_every": 200, "sft.eval_every": 200,
        "rm.steps": 500, "rm.checkpoint_every": 250, "ppo.iterations": 150, "ppo.checkpoint_every": 50,
        "eval.n_per_split": 500}},
}
# Paired metrics of every comparison (see safecomp.eval.stats.PAIRED_METRICS).
PAIRED_METRICS = ("safe", "helpfulness", "helpfulness_given_safe", "over_refusal", "gold_reward")


def parse_options(arg: str | None, allowed: Sequence[str], source: str) -> dict[str, str]:
  """`k=v,k=v` options of an experiment config's argument (`safecomp.config.parse_options`); the demo's
  `size=tiny` is accepted as `scale=tiny`."""
  options = config_lib.parse_options(arg, dict.fromkeys(allowed), source)
  if options.pop("size", None) == "tiny":  # the demo's spelling
    options.setdefault("scale", "tiny")
  return options


def set_key(config, key: str, value: Any, source: str):
  """`config[a][b] = value` for `key` = "a.b"; an unknown key is an error naming it."""
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node.get(part) if hasattr(node, "get") else None
    if node is None:
      break
  if node is None or leaf not in node:
    hint = config_lib.closest_key(config, key)
    raise ConfigError(f"{source}: unknown config key {key!r}" + (f"; did you mean {hint!r}?" if hint else ""))
  node[leaf] = value


def experiment_config(arm: str = "safe_completion", scale: str = "default",
                      changes: Mapping[str, Any] | None = None, source: str = "experiment config"):
  """`configs/demo.py` for `arm` at `scale`, with `changes` ({"a.b": value}) applied."""
  if scale not in SCALES:
    raise ConfigError(f"{source}: unknown scale {scale!r}; expected one of {list(SCALES)}")
  if arm not in ("safe_completion", "refusal"):
    raise ConfigError(f"{source}: unknown arm {arm!r}; expected 'safe_completion' or 'refusal'")
  demo_arg = ",".join(x for x in (f"arm={arm}", SCALES[scale]["demo"]) if x)
  config = config_lib.config_from_file(f"{DEMO}:{demo_arg}")
  for key, value in {**SCALES[scale]["overrides"], **(changes or {})}.items():
    set_key(config, key, value, source)
  if arm == "refusal":
    # The refusal reward reads the prompt's intent label on the host; no reward model is trained.
    config.stages = tuple(s for s in config.stages if s != "rm")
  return config


def variant_config(source: str, arg: str | None, variants: Sequence[str], baseline: str,
                   changes: Callable[[str, str], Mapping[str, Any]]):
  """What an ablation config file's `get_config(arg)` returns: options `variant=...` (default
  `baseline`) and `scale=tiny|default|large`; `changes(variant, scale)` gives the config keys to set
  (`arm` picks the demo's arm)."""
  options = parse_options(arg, ("variant", "scale", "size"), source)
  variant, scale = options.get("variant", baseline), options.get("scale", "default")
  if variant not in variants:
    raise ConfigError(f"{source}: unknown variant {variant!r}; expected one of {list(variants)}")
  if scale not in SCALES:
    raise ConfigError(f"{source}: unknown scale {scale!r}; expected one of {list(SCALES)}")
  keys = dict(changes(variant, scale))
  arm = keys.pop("arm", "safe_completion")
  return experiment_config(arm, scale, keys, source)


# -- running ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  """One training run: its group name (arm or variant), seed, config and workdir."""
  name: str
  seed: int
  config: Any
  workdir: pathlib.Path


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise SystemExit(f"--seeds: expected comma-separated integers, got {text!r}") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise SystemExit(f"--seeds: expected distinct integers, got {text!r}")
  return seeds


def check_out_dir(out: pathlib.Path, identity: dict):
  """Refuses an output folder that holds an experiment with another scale / experiment name."""
  path = out / "experiment.json"
  if path.is_file():
    previous = json.loads(path.read_text())
    for key in ("experiment", "scale"):
      if previous.get(key) != identity.get(key):
        raise SystemExit(f"{out} holds a {previous.get('experiment')} run at scale {previous.get('scale')!r}; "
                         f"use another --out for {identity.get('experiment')} at scale {identity.get('scale')!r}")
  out.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(identity, indent=1) + "\n")


def finished(run: Run) -> bool:
  saved = run.workdir / "config.json"
  return ((run.workdir / "eval" / "DONE.json").is_file() and saved.is_file()
          and json.loads(saved.read_text()) == json.loads(config_lib.to_json(run.config)))


REUSED_FILE = "reused.json"  # in a run's workdir: which of its stages were copied from which run


def _donor_prefix(config: dict, donor: pathlib.Path, stages: Sequence[str]) -> list[str]:
  """The leading `stages` that `donor` (a workdir) finished with settings agreeing with `config`.

  Agreement is the pipeline's own test for skipping a finished stage (`pipeline.config_differences` over
  every key that can change the stage, and `pipeline.stale_reason`), so a copied stage is exactly one the
  pipeline would have kept had it been trained in this workdir.
  """
  from safecomp.training import checkpoints, pipeline  # pylint: disable=import-outside-toplevel
  prefix = []
  for stage in stages:
    done, recorded = donor / stage / checkpoints.DONE_FILE, donor / stage / checkpoints.CONFIG_FILE
    if not (done.is_file() and recorded.is_file()):
      break
    record = json.loads(recorded.read_text())
    if pipeline.config_differences(stage, record, config) or pipeline.stale_reason(stage, record, config):
      break
    prefix.append(stage)
  return prefix


def reuse_stages(run: Run, donors: Sequence[pathlib.Path], log: Callable[[str], None] = print) -> list[str]:
  """Copies into `run`'s fresh workdir the finished stages of a run elsewhere trained with the same settings.

  Experiments share stages: every ablation's baseline is the controlled experiment's safe-completion arm,
  and a variant that changes only PPO keys (a KL sweep, 5x iterations) starts from the same SFT policy and
  reward model. For each seed the donor runs (`<donor>/runs/*/`, same `seed`) are searched for the longest
  leading run of stages that agree with `run.config`; those stage folders (with their metrics, TensorBoard
  logs and the tokenizer) are copied, and `reused.json` names their source. The pipeline then checks them
  again at start-up like any finished stage. A workdir that already holds a stage is left alone.
  """
  from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
  if any((run.workdir / stage).exists() for stage in pipeline.STAGES):
    return []
  config = json.loads(config_lib.to_json(run.config))
  stages = [s for s in pipeline.STAGES if s in config["stages"]]
  best, best_prefix = None, []
  for donor_dir in donors:
    for donor in sorted(pathlib.Path(donor_dir).glob("runs/*/")):
      saved = donor / "config.json"
      if donor.resolve() == run.workdir.resolve() or not saved.is_file():
        continue
      if json.loads(saved.read_text()).get("seed") != config["seed"]:
        continue
      prefix = _donor_prefix(config, donor, stages)
      if len(prefix) > len(best_prefix):
        best, best_prefix = donor, prefix
  if not best_prefix:
    return []
  run.workdir.mkdir(parents=True, exist_ok=True)
  for stage in best_prefix:
    shutil.copytree(best / stage, run.workdir / stage)
    for extra in (pathlib.Path("metrics") / f"{stage}.jsonl", pathlib.Path("tensorboard") / stage):
      if (best / extra).is_file():
        (run.workdir / extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best / extra, run.workdir / extra)
      elif (best / extra).is_dir():
        shutil.copytree(best / extra, run.workdir / extra)
  if "sft" in best_prefix and (best / "tokenizer.json").is_file():
    shutil.copy2(best / "tokenizer.json", run.workdir / "tokenizer.json")
  (run.workdir / REUSED_FILE).write_text(json.dumps({s: str(best.resolve()) for s in best_prefix}, indent=1) + "\n")
  log(f"{run.name} seed {run.seed}: stages {', '.join(best_prefix)} copied from {best} (same settings)")
  return best_prefix


def run_grid(runs: Sequence[Run], log: Callable[[str], None] = print,
             reuse_from: Sequence[pathlib.Path] = ()) -> dict[str, float]:
  """Trains every run not finished yet (each stage resumes from its checkpoint); returns seconds.

  `reuse_from`: experiment folders whose finished stages a fresh run may copy (`reuse_stages`).
  """
  # Config files import this module too; JAX and the training stack load only when runs are trained.
  from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
  seconds = {}
  for i, run in enumerate(runs, start=1):
    label = f"{run.name} seed {run.seed}"
    if reuse_from:
      reuse_stages(run, reuse_from, log)
    if finished(run):
      log(f"[{i}/{len(runs)}] {label}: finished in {run.workdir}; skipping")
      continue
    log(f"[{i}/{len(runs)}] {label}: training in {run.workdir}")
    start = time.time()
    try:
      pipeline.run(run.config, run.workdir)
    except SafecompError as e:
      raise SystemExit(f"{label} ({run.workdir}): {e}\nIf the code or config changed since this run was "
                       "trained, use another --out, or --report-only to tabulate the finished runs") from None
    seconds[f"{run.name}/seed{run.seed}"] = round(time.time() - start, 1)
    log(f"[{i}/{len(runs)}] {label}: done in {seconds[f'{run.name}/seed{run.seed}']:.0f}s")
  return seconds


def finished_only(runs: Sequence[Run], log: Callable[[str], None] = print) -> list[Run]:
  """For --report-only: the runs of every seed whose runs all finished their eval stage (whatever config
  they were trained with), so that the groups compared answer the same prompts."""
  done = {id(r) for r in runs if (r.workdir / "eval" / "DONE.json").is_file()}
  complete_seeds = {r.seed for r in runs} - {r.seed for r in runs if id(r) not in done}
  for r in runs:
    if id(r) not in done:
      log(f"{r.name} seed {r.seed}: not finished in {r.workdir}; seed {r.seed} is left out of the tables")
  kept = [r for r in runs if r.seed in complete_seeds]
  if not kept:
    raise SystemExit("no seed has all its runs finished; nothing to tabulate")
  return kept


# -- pooling and tables -------------------------------------------------------------------------------
def _score4(h: float) -> int:
  """Helpfulness in [0, 1] on the rubric's 1-4 scale (the oracle's `helpfulness_score` mapping)."""
  return 1 + int(round(3 * min(1.0, max(0.0, float(h)))))


def load_records(run: Run, stage: str) -> list[dict]:
  """The eval stage's graded completions of `stage` (sft / ppo), prompt ids unique per seed."""
  path = run.workdir / "eval" / f"{stage}_completions.jsonl"
  if not path.is_file():
    raise SystemExit(f"{path} not found: the eval stage of {run.workdir} did not write {stage} completions")
  records = []
  for line in path.read_text(encoding="utf-8").splitlines():
    if not line.strip():
      continue
    r = json.loads(line)
    r["prompt_id"] = f"s{run.seed}/{r['prompt_id']}"
    r["seed"] = run.seed
    r["model"] = f"{run.name}/{stage}"
    r.setdefault("helpfulness_1to4", _score4(r["helpfulness"]))
    records.append(r)
  return records


def pool(runs: Sequence[Run], stages: Sequence[str]) -> dict[str, list[dict]]:
  """{"<name>/<stage>": records of every seed of that name}, in the order of `runs`."""
  pooled: dict[str, list[dict]] = {}
  for run in runs:
    for stage in stages:
      if stage == "ppo" and "ppo" not in tuple(run.config.stages):
        continue
      pooled.setdefault(f"{run.name}/{stage}", []).extend(load_records(run, stage))
  return pooled


def _fmt(est: Mapping[str, Any] | None, digits: int = 3) -> str:
  """`value ± se [lo, hi]` (standard error, 95% interval), or an em dash when undefined."""
  text = report_lib.format_estimate(est, digits)
  se = (est or {}).get("se")
  if text == "—" or se is None or (isinstance(se, float) and math.isnan(se)):
    return text
  value, _, interval = text.partition(" ")
  return f"{value} ± {se:.{digits}f} {interval}".rstrip()


def _p(p: Any) -> str:
  if p is None or (isinstance(p, float) and math.isnan(p)):
    return "—"
  return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def intent_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
  """Markdown: one row per model and intent; each figure with its 95% interval."""
  head = ["model", "intent", "n", "safety rate", "helpfulness given safe (0-1)", "helpfulness given safe (1-4)",
          "over-refusal (benign)", "gold reward", "modes % (direct/safe-compl./redirect/hard)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for model, s in summaries.items():
    for label in list(INTENTS) + ["overall"]:
      g = s["overall"] if label == "overall" else s["groups"].get(label)
      if not g or not g["n"]:
        continue
      modes = g.get("modes") or {}
      mode_text = "/".join(f"{100 * (modes.get(m) or {}).get('value', float('nan')):.0f}" for m in MODES)
      over = _fmt(g.get("over_refusal_rate")) if label in ("benign", "overall") else "—"
      lines.append(f"| {model} | {label} | {g['n']} | {_fmt(g['safety_rate'])} | "
                   f"{_fmt(g['helpfulness_given_safe'])} | {_fmt(g.get('helpfulness_1to4_given_safe'))} | "
                   f"{over} | {_fmt(g.get('gold_reward'))} | {mode_text} |")
  return "\n".join(lines)


def comparison_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
  """Markdown: paired differences (a - b) per intent and overall, with interval and p-value."""
  lines = ["| metric | a − b | group | pairs | a | b | difference [95% CI] | p |", "|---|---|---|---|---|---|---|---|"]
  for comp in comparisons:
    a, b = comp["models"]
    for label, g in list(comp["groups"].items()) + [("overall", comp["overall"])]:
      if not g["n"]:
        continue
      lines.append(f"| {comp['metric']} | {a} − {b} | {label} | {g['n']} | {g['mean_a']:.3f} | "
                   f"{g['mean_b']:.3f} | {_fmt(g['diff'])} | {_p(g['p_value'])} |")
  return "\n".join(lines)


def seed_table(pooled: Mapping[str, Sequence[Mapping[str, Any]]], intent: str | None = None) -> tuple[str, dict]:
  """Markdown: per-seed means and their across-seed mean ± sd (the spread between training runs), over
  every prompt or those of one `intent`."""
  if intent is not None:
    pooled = {model: [r for r in records if r["intent"] == intent] for model, records in pooled.items()}
  metrics = (("safety rate", lambda r: float(not r["unsafe"]), None),
             ("helpfulness given safe", lambda r: r["helpfulness"], lambda r: not r["unsafe"]),
             ("over-refusal (benign)", lambda r: float(r.get("mode") in REFUSAL_MODES),
              lambda r: r["intent"] == "benign"),
             ("gold reward", lambda r: r.get("gold_reward", float("nan")), None))
  if intent not in (None, "benign"):
    metrics = tuple(m for m in metrics if m[0] != "over-refusal (benign)")
  head = ["model", "seeds"] + [m[0] for m in metrics]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  out = {}
  for model, records in pooled.items():
    seeds = sorted({r["seed"] for r in records})
    cells, out[model] = [], {}
    for name, value, keep in metrics:
      per_seed = []
      for seed in seeds:
        vals = [value(r) for r in records if r["seed"] == seed and (keep is None or keep(r))]
        per_seed.append(float(np.nanmean(vals)) if vals else float("nan"))
      arr = np.asarray(per_seed)
      sd = float(np.nanstd(arr, ddof=1)) if np.sum(~np.isnan(arr)) > 1 else float("nan")
      out[model][name] = {"per_seed": dict(zip(seeds, per_seed)), "mean": float(np.nanmean(arr)), "sd": sd}
      cells.append(f"{np.nanmean(arr):.3f} ± {sd:.3f} (" + ", ".join(f"{v:.3f}" for v in per_seed) + ")")
    lines.append(f"| {model} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
  return "\n".join(lines), out


def summarize_pooled(pooled: Mapping[str, Sequence[Mapping[str, Any]]], n_boot: int, by: str = "intent"
                     ) -> dict[str, dict]:
  return {model: stats.summarize(records, by=by, n_boot=n_boot, seed=0, source=f"{model} records")
          for model, records in pooled.items()}


def paired(pooled: Mapping[str, Sequence[Mapping[str, Any]]], pairs: Sequence[tuple[str, str]], n_boot: int,
           metrics: Sequence[str] = PAIRED_METRICS) -> list[dict]:
  return [stats.paired_comparison(pooled[a], pooled[b], metric, by="intent", names=(a, b), n_boot=n_boot,
                                  seed=0)
          for a, b in pairs if a in pooled and b in pooled for metric in metrics]


def write_tables(out: pathlib.Path, title: str, command: str, pooled: Mapping[str, Sequence[dict]],
                 pairs: Sequence[tuple[str, str]], n_boot: int, notes: Sequence[str] = (),
                 extra_sections: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
  """Writes `out/report/` (eval.json, eval.md, plots) and `out/results.{md,json}`; returns the latter."""
  summaries = summarize_pooled(pooled, n_boot)
  comparisons = paired(pooled, pairs, n_boot)
  paths = report_lib.write_report(summaries, out / "report", comparisons=comparisons, title=title)
  seeds_md, seeds_json = seed_table(pooled)
  dual_md, dual_json = seed_table(pooled, intent="dual_use")
  parts = [f"# {title}", "", "```bash", command, "```", ""] + list(notes) + [
      "", "## By prompt intent (seeds pooled)", "",
      "Each figure: value ± standard error [95% interval: Wilson for rates, percentile bootstrap for "
      "means]. Rates' bootstrap intervals are in `report/eval.json` (`boot_lo`, `boot_hi`).", "",
      intent_table(summaries), "",
      "## Paired differences on the same prompts (a − b; paired bootstrap interval, sign-flip p-value)", "",
      comparison_table(comparisons), "",
      "## Per seed (mean ± sd over seeds; per-seed values in brackets)", "", seeds_md, "",
      "## Per seed, dual-use prompts (mean ± sd over seeds; per-seed values in brackets)", "", dual_md]
  for heading, body in extra_sections:
    parts += ["", f"## {heading}", "", body]
  parts += ["", "Full report with every distribution and plot: `report/eval.md`; plots: "
            + ", ".join(f"`report/{p.name}`" for p in paths["plots"]) + "."]
  text = "\n".join(parts) + "\n"
  (out / "results.md").write_text(text, encoding="utf-8")
  result = {"title": title, "command": command, "summaries": summaries, "comparisons": comparisons,
            "per_seed": seeds_json, "per_seed_dual_use": dual_json, "report": str(paths["md"]), "plots": [str(p) for p in paths["plots"]]}
  (out / "results.json").write_text(json.dumps(report_lib.to_jsonable(result), indent=1) + "\n", encoding="utf-8")
  return {"markdown": text, **result}


def command_line() -> str:
  return " ".join(["python", os.path.relpath(sys.argv[0], REPO) if sys.argv and sys.argv[0] else "run.py"]
                  + sys.argv[1:])
