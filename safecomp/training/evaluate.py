"""Eval stage: every policy the run produced answers the task's eval prompts; `eval.grader` grades them.

SFT, and PPO when it ran, answer the same prompts (testbed: the test, held-out-template and multi-turn
splits; prompts task: each eval source), so the comparison is paired. Every answer is graded by
`eval.grader` (the run's gold standard: the oracle on the testbed, a judge on real prompts) and, when
the run trained one, scored by the reward model too (the proxy PPO optimised). The report (JSON,
Markdown, PNG plots, per set) goes to `<workdir>/eval/`, and the table by intent is printed. Answers the
grader could not judge are written with their error, counted, and left out of every rate.
"""
from __future__ import annotations

import json
from typing import Any, Sequence


from safecomp import graders as graders_lib
from safecomp import parallel
from safecomp.eval import plots
from safecomp.eval import report as report_lib
from safecomp.eval import stats
from safecomp.parallel.distributed import is_main_process
from safecomp.training import generation
from safecomp.training import ppo as ppo_stage
from safecomp.training import rollout as rollout_lib
from safecomp.training.metrics import read_metrics

POLICIES = ("sft", "ppo")
PAIRED_METRICS = ("gold_reward", "safe", "helpfulness")


def helpfulness_1to4(h: float) -> int:
  """Helpfulness in [0, 1] on the rubric's 1-4 scale."""
  return 1 + int(round(3 * min(1.0, max(0.0, float(h)))))


def grade_records(grader, prompts: Sequence, texts: Sequence[str], model_name: str,
                  severity_to_safety: Sequence[float], reward_key: str = "gold_reward") -> list[dict[str, Any]]:
  """Graded records in the layout `safecomp.eval.stats` reads, one per answer (ungraded ones marked).

  `reward_key` (default `gold_reward`) holds r = h x s under the grader (the evaluation's standard;
  `proxy_reward` when the grader is the trained reward model itself).
  """
  grades = grader.grade(list(prompts), list(texts))
  rewards = graders_lib.rewards_of(grades, prompts, "product", severity_to_safety=severity_to_safety)
  records = []
  for i, (prompt, text, g) in enumerate(zip(prompts, texts, grades)):
    record = {"prompt_id": prompt.uid, "intent": prompt.intent, "split": prompt.source, "category": prompt.category,
              "model": model_name, "grader": g.grader, "prompt": prompt.message_list, "completion": text}
    if not g.graded:
      record.update(ungraded=True, error=g.error)
    else:
      record.update(unsafe=bool(g.unsafe), severity=int(g.severity), helpfulness=float(g.helpfulness),
                    helpfulness_1to4=int(g.details.get("helpfulness_1to4", helpfulness_1to4(g.helpfulness))),
                    mode=g.mode, **{reward_key: float(rewards["reward"][i])})
      if g.severity_probs is not None:
        record["severity_probs"] = list(g.severity_probs)
    records.append(record)
  return records


def add_proxy_rewards(records: list[dict], rm_grader, prompts: Sequence, texts: Sequence[str],
                      severity_to_safety: Sequence[float]) -> None:
  """The trained reward model's r = h x s (expected safety, as in the rollout) on each answer."""
  grades = rm_grader.grade(list(prompts), list(texts))
  proxy = graders_lib.rewards_of(grades, prompts, "product", severity_to_safety=severity_to_safety)["reward"]
  for record, value in zip(records, proxy):
    record["proxy_reward"] = float(value)


def graded_only(records: Sequence[dict]) -> list[dict]:
  return [r for r in records if not r.get("ungraded")]


def _plot_ppo_curves(workdir, out_dir):
  """Proxy (reward model) and gold reward over PPO iterations: over-optimisation shows as a gap."""
  path = workdir / "metrics" / "ppo.jsonl"
  if not path.is_file():
    return
  rows = [r for r in read_metrics(path) if "gold_reward" in r]
  curves = {key: ([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
            for key in ("proxy_reward", "gold_reward")}
  curves = {k: v for k, v in curves.items() if v[0]}
  if curves:
    plots.plot_curves(curves, out_dir / "ppo_proxy_vs_gold.png", xlabel="PPO iteration",
                      ylabel="mean reward of sampled responses", title="proxy vs gold reward during PPO")


def policy_params(p, stage: str):
  """The language-model parameters of a completed SFT or PPO stage."""
  if stage == "sft":
    return p.sft_policy()[1]
  return ppo_stage.final_policy_params(p)


def run_eval(p) -> dict:
  """The eval stage of the pipeline (see module docstring)."""
  c = p.config
  tok = p.tokenizer
  out_dir = p.workdir / "eval"
  writes = is_main_process()  # every process answers and grades; one writes the shared workdir
  if writes:
    out_dir.mkdir(parents=True, exist_ok=True)
  cfg = rollout_lib.RolloutConfig(max_new_tokens=c.eval.max_new_tokens, eos_id=p.stop_ids, pad_id=tok.pad_id,
                                  greedy=c.eval.greedy, temperature=1.0)
  all_prompts = p.task.eval_prompts()
  prompts = generation.fitting_prompts(all_prompts, tok, c.chat_template, c.max_prompt_len, "eval")
  sets = list(dict.fromkeys(x.source for x in prompts))
  grader = p.grader(c.eval.grader, "eval.grader")
  to_safety = tuple(c.reward.severity_to_safety)

  model, sft_params = p.sft_policy()
  policies = {"sft": sft_params}
  if "ppo" in c.stages:
    policies["ppo"] = policy_params(p, "ppo")
  rm_grader = p.grader("rm") if p.checkpointer("rm").is_done() else None

  all_records, summaries = {}, {}
  for name, params in policies.items():
    texts = generation.generate_texts(model, params, tok, [x.message_list for x in prompts], c.chat_template,
                                      c.max_prompt_len, cfg, c.eval.batch_size, c.seed, f"eval {name}",
                                      mesh=p.mesh, rules=parallel.rules_from_config(c))
    records = grade_records(grader, prompts, texts, name, to_safety)
    if rm_grader is not None:
      add_proxy_rewards(records, rm_grader, prompts, texts, to_safety)
    all_records[name] = records
    if writes:
      with (out_dir / f"{name}_completions.jsonl").open("w") as f:
        for r in records:
          f.write(json.dumps(r) + "\n")
    graded = graded_only(records)
    summaries[name] = stats.summarize(graded, by="intent", n_boot=c.eval.bootstrap, seed=c.seed)
    for split in sets:
      summaries[f"{name}/{split}"] = stats.summarize(
          [r for r in graded if r["split"] == split], by="intent", n_boot=c.eval.bootstrap, seed=c.seed)

  comparisons = None
  if "ppo" in all_records:
    comparisons = [stats.paired_comparison(graded_only(all_records["sft"]), graded_only(all_records["ppo"]),
                                           metric, by="intent", names=("sft", "ppo"), n_boot=c.eval.bootstrap,
                                           seed=c.seed)
                   for metric in PAIRED_METRICS]
  headline = {name: summaries[name] for name in policies}
  title = f"Evaluation on {p.task.describe()} (grader: {graders_lib.full_name(grader)})"
  data = p.task.data_report()
  if writes:
    _plot_ppo_curves(p.workdir, out_dir)
    report_lib.write_report(headline, out_dir, comparisons=comparisons, title=title, data=data)
    for split in sets:
      report_lib.write_report({name: summaries[f"{name}/{split}"] for name in policies},
                              out_dir / "by_set" / split, plots=False,
                              title=f"Evaluation on {split} (grader: {graders_lib.full_name(grader)})")
  print(f"{title}\n" + report_lib.format_table(headline), flush=True)
  summary: dict[str, Any] = {f"{name}_gold_reward": summaries[name]["overall"]["gold_reward"]["value"]
                             for name in policies}
  summary["grader"] = graders_lib.full_name(grader)
  summary["prompts"] = len(prompts)
  summary["prompts_left_out"] = len(all_prompts) - len(prompts)
  summary["eval_training_overlap"] = data["eval_training_overlap"]
  print(f"[eval] {data['eval_prompts']} eval prompts, {data['eval_training_overlap']} of them also in training "
        f"(by normalised text)", flush=True)
  for name in policies:
    ungraded = len(all_records[name]) - len(graded_only(all_records[name]))
    summary[f"{name}_ungraded"] = ungraded
    if ungraded:
      print(f"[eval] {name}: {ungraded} of {len(all_records[name])} answers could not be graded by "
            f"{graders_lib.full_name(grader)}; left out of every rate (see {name}_completions.jsonl)", flush=True)
  if rm_grader is not None:  # over-optimisation: how far the reward model's view drifted from the gold grader's
    for name in policies:
      proxy = summaries[name]["overall"]["proxy_reward"]["value"]
      summary[f"{name}_proxy_reward"] = proxy
      summary[f"{name}_proxy_gold_gap"] = proxy - summary[f"{name}_gold_reward"]
      print(f"[eval] {name}: proxy (reward model) {proxy:.3f} vs gold {summary[f'{name}_gold_reward']:.3f}, "
            f"gap {summary[f'{name}_proxy_gold_gap']:+.3f}", flush=True)
  if "heldout" in sets:
    for name in policies:
      summary[f"{name}_heldout_gold_reward"] = summaries[f"{name}/heldout"]["overall"]["gold_reward"]["value"]
  return summary
