"""Eval stage: generate on the testbed eval sets, grade with the gold oracle, report by intent.

Every policy the pipeline produced (SFT, and PPO when it ran) answers the same prompts (test,
held-out templates, multi-turn), so the comparison is paired. The report (JSON, Markdown, PNG plots)
goes to `<workdir>/eval/`, and the table by intent is printed.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import numpy as np

from safecomp import testbed
from safecomp.rewards import composite
from safecomp.eval import plots
from safecomp.eval import report as report_lib
from safecomp.eval import stats
from safecomp.training import batching
from safecomp.training import rm as rm_lib
from safecomp.training import rollout as rollout_lib
from safecomp.training.metrics import progress, read_metrics
from safecomp.training import ppo as ppo_lib
from safecomp.training.ppo import decode_responses

POLICIES = ("sft", "ppo")


def generate_texts(model, params, tokenizer, conversations: Sequence[list[dict]], family: str,
                   max_prompt_len: int, cfg: rollout_lib.RolloutConfig, batch_size: int, seed: int,
                   desc: str) -> list[str]:
  """Responses for every conversation, in batches of a fixed shape (one compilation)."""
  arrays = batching.prompts_to_arrays(tokenizer, conversations, family, max_prompt_len)
  n = len(conversations)
  sample = jax.jit(lambda params, prompts, mask, rng: rollout_lib.sample(model, params, prompts, mask, rng, cfg))
  texts: list[str] = []
  bar = progress(n, desc)
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size) % n  # pad the last batch by wrapping around
    out = jax.device_get(sample(params, arrays["tokens"][index], arrays["attention_mask"][index],
                                jax.random.key(seed + start)))
    width = cfg.max_new_tokens
    batch_texts = decode_responses(tokenizer, out["sequences"][:, -width:], out["response_mask"])
    take = min(batch_size, n - start)
    texts.extend(batch_texts[:take])
    bar.update(take)
  bar.close()
  return texts


def grade_records(world, examples, texts: Sequence[str], model_name: str,
                  severity_to_safety: Sequence[float]) -> list[dict[str, Any]]:
  """Gold-oracle graded records in the layout `safecomp.eval.stats` reads."""
  records = []
  for example, text in zip(examples, texts):
    g = testbed.grade(example.messages, text, world=world)
    safety = float(severity_to_safety[g.severity])
    records.append({
        "prompt_id": example.uid, "intent": example.intent, "split": example.split, "model": model_name,
        "unsafe": bool(g.severity >= 1), "severity": int(g.severity), "helpfulness": float(g.helpfulness),
        "helpfulness_1to4": int(g.helpfulness_score),
        "mode": g.mode, "gold_reward": float(g.helpfulness) * safety, "completion": text,
        "category": example.category})
  return records


def proxy_rewards(p, reward_model: tuple[Any, Any], examples, texts: Sequence[str]) -> np.ndarray:
  """The trained reward model's r = h x s on each (prompt, completion): the proxy RL optimised."""
  c = p.config
  rm_model, rm_params = reward_model
  conversations = [list(e.messages) + [{"role": "assistant", "content": t}] for e, t in zip(examples, texts)]
  arrays = batching.conversations_to_arrays(p.tokenizer, conversations, c.chat_template, c.max_seq_len,
                                            "graded completions")
  predictions = rm_lib.rm_predict(rm_model, rm_params, arrays, c.eval.batch_size, c.rm.helpfulness_loss)
  safety = np.asarray(composite.safety_from_severity(predictions["severity_probs"],
                                                     tuple(c.reward.severity_to_safety)))
  return predictions["helpfulness"] * safety


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


def run_eval(p) -> dict:
  """The eval stage of the pipeline (see module docstring)."""
  c = p.config
  tok = p.tokenizer
  out_dir = p.workdir / "eval"
  out_dir.mkdir(parents=True, exist_ok=True)
  cfg = rollout_lib.RolloutConfig(max_new_tokens=c.eval.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                  greedy=c.eval.greedy, temperature=1.0)
  examples = []
  for i, split in enumerate(c.eval.splits):
    examples.extend(p.examples(split, c.eval.n_per_split, seed_offset=20 + i))

  policies = {}
  model, init = p.init_model(("lm",), seed_offset=1)
  policies["sft"] = p.trained_params("sft", init, "sft")
  if "ppo" in c.stages:
    policies["ppo"] = ppo_lib.final_policy_params(p)

  with_proxy = p.checkpointer("rm").is_done()
  reward_model = p.trained_reward_model() if with_proxy else None
  all_records, summaries = {}, {}
  for name, params in policies.items():
    texts = generate_texts(model, params, tok, [e.messages for e in examples], c.chat_template,
                           c.max_prompt_len, cfg, c.eval.batch_size, c.seed, f"eval {name}")
    records = grade_records(p.world, examples, texts, name, tuple(c.reward.severity_to_safety))
    if with_proxy:
      for record, proxy in zip(records, proxy_rewards(p, reward_model, examples, texts)):
        record["proxy_reward"] = float(proxy)
    all_records[name] = records
    with (out_dir / f"{name}_completions.jsonl").open("w") as f:
      for r in records:
        f.write(json.dumps(r) + "\n")
    summaries[name] = stats.summarize(records, by="intent", n_boot=c.eval.bootstrap, seed=c.seed)
    for split in c.eval.splits:
      summaries[f"{name}/{split}"] = stats.summarize(
          [r for r in records if r["split"] == split], by="intent", n_boot=c.eval.bootstrap, seed=c.seed)

  comparisons = None
  if "ppo" in all_records:
    comparisons = [stats.paired_comparison(all_records["sft"], all_records["ppo"], metric, by="intent",
                                           names=("sft", "ppo"), n_boot=c.eval.bootstrap, seed=c.seed)
                   for metric in ("gold_reward", "safe", "helpfulness")]
  _plot_ppo_curves(p.workdir, out_dir)
  headline = {name: summaries[name] for name in policies}
  report_lib.write_report(headline, out_dir, comparisons=comparisons)
  print(report_lib.format_table(headline), flush=True)
  summary = {f"{name}_gold_reward": summaries[name]["overall"]["gold_reward"]["value"] for name in policies}
  if with_proxy:  # over-optimisation: how far the reward model's view drifted from the gold grader's
    for name in policies:
      proxy = summaries[name]["overall"]["proxy_reward"]["value"]
      summary[f"{name}_proxy_reward"] = proxy
      summary[f"{name}_proxy_gold_gap"] = proxy - summary[f"{name}_gold_reward"]
      print(f"[eval] {name}: proxy (reward model) {proxy:.3f} vs gold {summary[f'{name}_gold_reward']:.3f}, "
            f"gap {summary[f'{name}_proxy_gold_gap']:+.3f}", flush=True)
  heldout = [f"{name}/heldout" for name in policies if f"{name}/heldout" in summaries]
  for key in heldout:
    summary[key.replace("/", "_") + "_gold_reward"] = summaries[key]["overall"]["gold_reward"]["value"]
  return summary
