"""Tests for safecomp.eval.stats: intervals, summaries and paired tests."""
import math

import numpy as np
import pytest

from safecomp.errors import DataError, SafecompError
from safecomp.eval import stats


def test_mean_se_matches_analytic_and_bootstrap_spread():
  x = np.random.default_rng(1).normal(2.0, 3.0, size=400)
  est = stats.mean_ci(x, n_boot=2000, seed=0)
  assert est.value == pytest.approx(x.mean())
  assert est.se == pytest.approx(x.std(ddof=1) / math.sqrt(x.size))
  assert est.n == 400
  # The bootstrap interval is about mean +- 1.96 SE for a roughly normal mean.
  assert (est.hi - est.lo) / (2 * 1.96) == pytest.approx(est.se, rel=0.12)
  assert est.lo < est.value < est.hi


def test_proportion_se_and_wilson_known_values():
  est = stats.proportion_ci([1] * 30 + [0] * 70, n_boot=500, seed=0)
  assert est.value == pytest.approx(0.3)
  assert est.se == pytest.approx(math.sqrt(0.3 * 0.7 / 100))
  # Wilson for 0/10 at 95%: [0, z^2 / (n + z^2)].
  z2 = 1.959963984540054 ** 2
  lo, hi = stats.wilson_interval(0, 10)
  assert lo == pytest.approx(0.0, abs=1e-12)
  assert hi == pytest.approx(z2 / (10 + z2))
  # Wilson for 3/10 (textbook value 0.1078, 0.6032).
  lo, hi = stats.wilson_interval(3, 10)
  assert (lo, hi) == pytest.approx((0.1078, 0.6032), abs=5e-4)


def test_bootstrap_is_seeded():
  x = np.random.default_rng(2).random(50)
  a = stats.mean_ci(x, seed=7)
  assert a == stats.mean_ci(x, seed=7)
  assert (a.lo, a.hi) != (stats.mean_ci(x, seed=8).lo, stats.mean_ci(x, seed=8).hi)


def test_bootstrap_ci_coverage_about_95_percent():
  rng = np.random.default_rng(3)
  true_mean, sims = 1.5, 300
  covered = 0
  for i in range(sims):
    est = stats.mean_ci(rng.normal(true_mean, 2.0, size=50), n_boot=1000, seed=i)
    covered += est.lo <= true_mean <= est.hi
  assert 0.90 <= covered / sims <= 0.985


def test_wilson_ci_coverage_about_95_percent():
  rng = np.random.default_rng(4)
  p, n, sims = 0.3, 80, 2000
  ks = rng.binomial(n, p, size=sims)
  covered = sum(lo <= p <= hi for lo, hi in (stats.wilson_interval(int(k), n) for k in ks))
  assert 0.92 <= covered / sims <= 0.975


def test_empty_gives_nan_with_note():
  for est in (stats.mean_ci([]), stats.proportion_ci([])):
    assert est.n == 0 and math.isnan(est.value) and math.isnan(est.lo)
    assert "n=0" in est.note


def test_sign_flip_exact_small_case():
  # All 5 differences equal and positive: only all-plus and all-minus are as extreme: 2/32.
  p, method = stats.sign_flip_pvalue([1.0] * 5)
  assert method == "exact" and p == pytest.approx(2 / 32)
  assert stats.sign_flip_pvalue([0.0, 0.0, 0.0]) == (1.0, "exact")


def test_sign_flip_small_p_for_shift_and_calibrated_under_null():
  rng = np.random.default_rng(5)
  p_shift, method = stats.sign_flip_pvalue(rng.normal(0.8, 1.0, size=60), n_perm=2000, seed=0)
  assert method == "monte_carlo" and p_shift < 0.01
  null_ps = np.array([stats.sign_flip_pvalue(rng.normal(0.0, 1.0, size=30), n_perm=1000,
                                             seed=i)[0] for i in range(150)])
  assert 0.005 <= np.mean(null_ps < 0.05) <= 0.12
  assert np.median(null_ps) > 0.3


def _hand_records():
  # benign: 3 records, dual_use: 3, malicious: none.
  return [
      dict(prompt_id="b1", intent="benign", unsafe=False, severity=0, helpfulness=1.0,
           helpfulness_1to4=4, mode="direct", gold_reward=1.0),
      dict(prompt_id="b2", intent="benign", unsafe=False, helpfulness=0.5, helpfulness_1to4=2,
           mode="hard_refusal", gold_reward=0.0),
      dict(prompt_id="b3", intent="benign", unsafe=True, severity="low", helpfulness=0.9,
           mode="direct", gold_reward=0.0),
      dict(prompt_id="d1", intent="dual_use", unsafe=True, severity=3, helpfulness=1.0,
           mode="direct", gold_reward=0.0),
      dict(prompt_id="d2", intent="dual_use", unsafe=True, severity=3, helpfulness=0.8,
           mode="direct", gold_reward=0.0),
      dict(prompt_id="d3", intent="dual_use", unsafe=False, helpfulness=0.6,
           helpfulness_1to4=3, mode="safe_completion", refused=False, gold_reward=0.6),
  ]


def test_summarize_matches_hand_computed_numbers():
  s = stats.summarize(_hand_records(), n_boot=200, seed=0)
  benign, dual, mal = (s["groups"][k] for k in ("benign", "dual_use", "malicious"))
  assert (benign["n"], benign["n_safe"], benign["n_unsafe"]) == (3, 2, 1)
  assert benign["safety_rate"]["value"] == pytest.approx(2 / 3)
  assert benign["helpfulness_given_safe"]["value"] == pytest.approx(0.75)
  assert benign["helpfulness_1to4_given_safe"]["value"] == pytest.approx(3.0)
  assert benign["severity_of_unsafe"]["low"]["value"] == 1.0
  assert benign["severity_of_unsafe"]["high"]["value"] == 0.0
  assert benign["modes"]["direct"]["value"] == pytest.approx(2 / 3)
  assert benign["over_refusal_rate"]["value"] == pytest.approx(1 / 3)  # hard_refusal on b2
  assert benign["gold_reward"]["value"] == pytest.approx(1 / 3)
  assert dual["safety_rate"]["value"] == pytest.approx(1 / 3)
  assert dual["severity_of_unsafe"]["high"]["value"] == 1.0
  assert dual["severity_of_unsafe"]["high"]["n"] == 2
  assert dual["modes"]["safe_completion"]["value"] == pytest.approx(1 / 3)
  assert dual["over_refusal_rate"]["n"] == 0 and math.isnan(dual["over_refusal_rate"]["value"])
  assert mal["n"] == 0 and math.isnan(mal["safety_rate"]["value"])
  assert any("malicious" in note for note in s["notes"])
  overall = s["overall"]
  assert overall["n"] == 6 and overall["safety_rate"]["value"] == pytest.approx(0.5)
  assert overall["helpfulness_given_safe"]["value"] == pytest.approx((1.0 + 0.5 + 0.6) / 3)
  assert overall["severity_of_unsafe"]["high"]["value"] == pytest.approx(2 / 3)
  assert overall["over_refusal_rate"]["value"] == pytest.approx(1 / 3)
  assert "proxy_reward" not in overall


def test_summarize_accepts_columnar_input_and_other_groupings():
  rows = _hand_records()
  keys = sorted({k for r in rows for k in r})
  columns = {k: [r.get(k) for r in rows] for k in keys}
  assert stats.summarize(columns, n_boot=100) == stats.summarize(rows, n_boot=100)
  for r, split in zip(rows, "xxyyyy"):
    r["split"] = split
  s = stats.summarize(rows, by="split", n_boot=100)
  assert list(s["groups"]) == ["x", "y"] and s["groups"]["y"]["n"] == 4
  assert stats.summarize(rows, by=None, n_boot=100)["groups"] == {}
  with pytest.raises(SafecompError, match="need a list per key"):
    stats.summarize(rows[0])


@pytest.mark.parametrize("change, needle", [
    (dict(intent="evil"), "'intent'"),
    (dict(unsafe="yes"), "'unsafe'"),
    (dict(unsafe=True, severity=None), "'severity'"),
    (dict(helpfulness=1.5), "'helpfulness'"),
    (dict(mode="shrug"), "'mode'"),
])
def test_bad_records_name_index_and_key(change, needle):
  rows = _hand_records()
  rows[4] = {**rows[4], **change}
  with pytest.raises(DataError, match=rf"graded\.jsonl:#4: .*{needle}"):
    stats.summarize(rows, source="graded.jsonl")
  rows[4].pop("helpfulness")
  with pytest.raises(DataError, match="'helpfulness' missing"):
    stats.summarize(rows)


def _paired_set(n, shift, seed):
  rng = np.random.default_rng(seed)
  a, b = [], []
  for i in range(n):
    intent = ("benign", "dual_use", "malicious")[i % 3]
    h = float(rng.uniform(0.2, 0.8))
    noise = float(rng.normal(0, 0.05))
    a.append(dict(prompt_id=f"p{i}", intent=intent, unsafe=False, helpfulness=h, model="ref"))
    b.append(dict(prompt_id=f"p{i}", intent=intent, unsafe=bool(i % 5 == 0), severity=1,
                  helpfulness=float(np.clip(h + shift + noise, 0, 1)), model="sc"))
  return a, b


def test_paired_comparison_detects_shift_and_not_noise():
  a, b = _paired_set(90, 0.1, seed=0)
  res = stats.paired_comparison(a, b[::-1], "helpfulness", n_boot=500, n_perm=2000)
  assert res["models"] == ["ref", "sc"]
  ov = res["overall"]
  assert ov["n"] == 90 and ov["p_value"] < 0.01
  assert ov["diff"]["hi"] < 0 and ov["diff"]["lo"] < ov["diff"]["value"] < ov["diff"]["hi"]
  assert ov["diff"]["value"] == pytest.approx(ov["mean_a"] - ov["mean_b"])
  assert set(res["groups"]) == {"benign", "dual_use", "malicious"}
  assert res["groups"]["benign"]["n"] == 30
  a0, b0 = _paired_set(90, 0.0, seed=1)
  assert stats.paired_comparison(a0, b0, "helpfulness", n_perm=2000)["overall"]["p_value"] > 0.05
  # Conditional metric: only prompts where both outputs are safe (b unsafe on every 5th).
  res = stats.paired_comparison(a, b, "helpfulness_given_safe", by=None, n_boot=100, n_perm=100)
  assert res["overall"]["n"] == 72 and res["groups"] == {}
  res = stats.paired_comparison(a, b, "safety", n_boot=100, n_perm=100)
  assert res["overall"]["diff"]["value"] == pytest.approx(18 / 90)
  assert stats.paired_comparison(a, b, "safe", n_boot=100, n_perm=100)["overall"] == res["overall"]


def test_paired_comparison_is_seeded_and_handles_empty_groups():
  a, b = _paired_set(12, 0.05, seed=2)
  r1 = stats.paired_comparison(a, b, "helpfulness", seed=3, n_boot=300)
  assert r1 == stats.paired_comparison(a, b, "helpfulness", seed=3, n_boot=300)
  res = stats.paired_comparison(a, b, "over_refusal", n_boot=100)
  assert res["overall"]["n"] == 0 and math.isnan(res["overall"]["p_value"])
  assert "n=0" in res["overall"]["note"]


def test_paired_comparison_lists_unmatched_ids():
  a, b = _paired_set(9, 0.0, seed=0)
  b[2] = {**b[2], "prompt_id": "extra"}
  with pytest.raises(SafecompError, match=r"only in ref: \['p2'\]; only in sc: \['extra'\]"):
    stats.paired_comparison(a, b, "safety")
  with pytest.raises(SafecompError, match="unknown paired metric"):
    stats.paired_comparison(a, a, "vibes")
