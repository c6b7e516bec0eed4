"""`benchmarks/run.py` runs end to end at the tiniest sizes (`--smoke`); timings are not checked."""
import dataclasses
import json

import pytest

from benchmarks import ppo as ppo_bench
from benchmarks import run


def test_sft_and_scaling_sections_print_their_tables(tmp_path):
  report = run.main(["--smoke", "--sections", "sft,scaling", "--json", str(tmp_path / "bench.json")])
  assert "## Dense-matmul peak" in report
  assert "| float32 64x64 @ 64x64 |" in report
  assert "## SFT step" in report and "MFU" in report
  assert "## SFT step time vs sequence length and batch size" in report
  assert "skipped (token cap)" in report
  assert "## Run" in report and "| sft |" in report and "| scaling |" in report
  data = json.loads((tmp_path / "bench.json").read_text())
  assert data["sft"] and all(0 < row["mfu"] and row["tokens_per_s"] > 0 for row in data["sft"])
  assert data["matmul_peak"][0]["flops_per_s"] > 0 and data["raw"]["sft"]["steps"]
  assert data["scaling"] and [row["section"] for row in data["run"]] == ["sft", "scaling"]


def test_generate_section_compares_with_hugging_face(tmp_path):
  report = run.main(["--smoke", "--sections", "generate", "--torch-threads", "1", "--json", str(tmp_path / "b.json")])
  assert "safecomp / HF" in report
  rows = json.loads((tmp_path / "b.json").read_text())["generate"]
  assert [r["batch"] for r in rows] == [2] and rows[0]["speedup_vs_hf"] > 0
  row = next(line for line in report.splitlines() if line.startswith("| 2 | 4 + 3 |"))
  assert "n/a" not in row
  assert "### Where safecomp's generation time goes" in report
  assert 0 < rows[0]["share_of_matmul_bound"] and rows[0]["safecomp_prefill_s"] > 0


def test_lora_section_compares_adapters_with_full_fine_tuning(tmp_path):
  report = run.main(["--smoke", "--sections", "lora", "--json", str(tmp_path / "b.json")])
  assert "## Adapters" in report and "LoRA r=16, nf4 base" in report
  rows = json.loads((tmp_path / "b.json").read_text())["lora"]
  assert [r["lora_rank"] for r in rows] == [0, 16, 16, 16, 16] and rows[0]["frozen_bytes"] == 0
  assert all(r["frozen_bytes"] > 0 and r["optimizer_bytes"] < rows[0]["optimizer_bytes"] for r in rows[1:])
  assert rows[4]["frozen_bytes"] < rows[3]["frozen_bytes"] < rows[1]["frozen_bytes"]  # nf4 < int8 < float32


def test_ppo_section_runs_safecomp_and_the_pytorch_loop(tmp_path):
  report = run.main(["--smoke", "--sections", "ppo", "--ppo-baselines", "torch",
                     "--torch-threads", "1", "--json", str(tmp_path / "b.json")])
  rows = json.loads((tmp_path / "b.json").read_text())["ppo"]
  assert [r["critic"] for r in rows] == ["separate"] * 3 and rows[0]["time_vs_safecomp"] == 1.0
  assert rows[1]["implementation"].startswith("safecomp with LoRA r=16") and rows[1]["time_vs_safecomp"] > 0
  assert rows[2]["implementation"].startswith("plain") and rows[2]["time_vs_safecomp"] > 0
  assert "## One PPO iteration" in report
  rows = [line for line in report.splitlines() if line.startswith(("| safecomp", "| plain"))]
  assert len(rows) == 3
  for row in rows:
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[2] == run.demo_config().ppo.critic == "separate", row  # the critic that was measured
    assert cells[3] != "n/a", row  # seconds per iteration
  assert "| implementation | critic |" in report


def test_ppo_benchmark_times_the_configured_critic():
  c = run.demo_config(run.SMOKE.ppo_overrides + (("ppo.critic", "shared"),))
  prompts, mask = ppo_bench.random_prompts(c.ppo.prompts_per_iteration, c.max_prompt_len, run.SMOKE.ppo_vocab)
  side, _ = ppo_bench.safecomp_iteration(c, run.SMOKE.ppo_vocab, prompts, mask, 1, 1, 0.0)
  assert side.critic == "shared" and side.timing is not None
  result = ppo_bench.PPOResult(config=ppo_bench.policy_config(c, run.SMOKE.ppo_vocab, ("lm",)), prompts=4,
                               prompt_len=6, new_tokens=3, epochs=1, minibatches=2, sides=[side], critic="shared")
  assert dataclasses.asdict(result)["critic"] == "shared"
  assert "| safecomp (JAX, fused rollout + update) | shared |" in ppo_bench.ppo_table(result)


@pytest.mark.skipif(ppo_bench.trl_unavailable_reason() is not None,
                    reason="optional: TRL with trl.experimental.ppo is not installed")
def test_trl_baseline_runs():
  c = run.demo_config(run.SMOKE.ppo_overrides)
  prompts, _ = ppo_bench.random_prompts(c.ppo.prompts_per_iteration, c.max_prompt_len,
                                        run.SMOKE.ppo_vocab)
  side = ppo_bench.trl_iteration(c, run.SMOKE.ppo_vocab, prompts, iterations=2, torch_threads=1)
  assert side.error is None, side.error
  assert len(side.timing.times) == 1


def test_bad_arguments_are_rejected():
  with pytest.raises(SystemExit):
    run.parse_args(["--sections", "sft,nope"])
  with pytest.raises(SystemExit):
    run.parse_args(["--ppo-baselines", "deepspeed"])
  with pytest.raises(SystemExit):
    run.parse_args(["--quick", "--smoke"])
