"""Tests for safecomp.eval.report and safecomp.eval.plots."""
import json

import numpy as np
import pytest
from matplotlib import image as mpimg

from safecomp.constants import INTENTS, MODES
from safecomp.errors import SafecompError
from safecomp.eval import plots, report, stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(model, p_unsafe, seed, n=60):
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    intent = INTENTS[i % 3]
    unsafe = bool(rng.random() < p_unsafe[intent])
    rows.append(dict(prompt_id=f"p{i}", intent=intent, unsafe=unsafe,
                     severity=int(rng.integers(0, 4)) if unsafe else None,
                     helpfulness=float(rng.random()), mode=MODES[int(rng.integers(0, 4))],
                     model=model, proxy_reward=float(rng.random())))
  return rows


@pytest.fixture(scope="module")
def summaries_and_comparison():
  a = _records("refusal", {"benign": 0.0, "dual_use": 0.3, "malicious": 0.4}, seed=0)
  b = _records("safecomp", {"benign": 0.0, "dual_use": 0.1, "malicious": 0.2}, seed=1)
  summaries = {"refusal": stats.summarize(a, n_boot=200),
               "safecomp": stats.summarize(b, n_boot=200)}
  comp = stats.paired_comparison(a, b, "safety", n_boot=200, n_perm=500)
  return summaries, comp


def _is_png(path):
  data = path.read_bytes()
  img = mpimg.imread(path)
  return data.startswith(PNG_MAGIC) and img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_write_report_files_exist_and_parse(tmp_path, summaries_and_comparison):
  summaries, comp = summaries_and_comparison
  paths = report.write_report(summaries, tmp_path / "out", [comp])
  assert paths["json"].exists() and paths["md"].exists()

  def no_nan(token):
    raise AssertionError(f"non-standard JSON constant {token}")

  doc = json.loads(paths["json"].read_text(), parse_constant=no_nan)
  assert set(doc["models"]) == {"refusal", "safecomp"}
  benign = doc["models"]["refusal"]["groups"]["benign"]
  # No unsafe benign outputs: the severity shares are undefined and stored as null.
  assert benign["n_unsafe"] == 0 and benign["severity_of_unsafe"]["high"]["value"] is None
  assert doc["comparisons"][0]["metric"] == "safety"
  assert doc["models"]["safecomp"]["overall"]["safety_rate"]["value"] == pytest.approx(
      summaries["safecomp"]["overall"]["safety_rate"]["value"])

  md = paths["md"].read_text()
  assert "## Safety rate" in md and "## Severity among unsafe outputs" in md
  assert "| group | refusal | safecomp |" in md
  dual = summaries["refusal"]["groups"]["dual_use"]["safety_rate"]
  assert f"| dual_use | {dual['value']:.3f} [{dual['lo']:.3f}, {dual['hi']:.3f}] |" in md
  assert "### safety: refusal vs safecomp" in md
  p = comp["overall"]["p_value"]
  assert report._format_p(p) in md.split("### safety")[1]
  assert "## Mean proxy reward" in md and "Mean gold reward" not in md
  assert paths["plots"] and all(_is_png(p) for p in paths["plots"])
  assert {p.name for p in paths["plots"]} >= {"safety_rate.png", "helpfulness_given_safe.png",
                                               "severity_of_unsafe.png", "modes.png"}


def test_report_renders_from_loaded_json(tmp_path, summaries_and_comparison):
  summaries, _ = summaries_and_comparison
  doc = json.loads(report.write_report(summaries, tmp_path, plots=False)["json"].read_text())
  md = report.format_markdown(doc["models"])
  assert md == (tmp_path / "eval.md").read_text()


def test_format_table_rows_and_values(summaries_and_comparison):
  summaries, _ = summaries_and_comparison
  text = report.format_table(summaries)
  lines = text.splitlines()
  assert "safety rate" in lines[0] and "help | safe" in lines[0]
  body = lines[2:]
  assert len(body) == 2 * (len(INTENTS) + 1)
  row = next(l for l in body if l.startswith("safecomp") and " malicious " in l)
  g = summaries["safecomp"]["groups"]["malicious"]
  assert f"{g['safety_rate']['value']:.2f} [{g['safety_rate']['lo']:.2f}" in row
  sev = "/".join(f"{100 * g['severity_of_unsafe'][s]['value']:.0f}"
                 for s in ("negligible", "low", "moderate", "high"))
  assert sev in row
  benign_row = next(l for l in body if l.startswith("refusal") and " benign " in l)
  assert "—" in benign_row  # no unsafe benign outputs: no severity distribution
  # A single summary works too.
  assert len(report.format_table(summaries["refusal"]).splitlines()) == 2 + len(INTENTS) + 1


def test_format_estimate_handles_missing():
  assert report.format_estimate(None) == "—"
  assert report.format_estimate({"value": None, "lo": None, "hi": None}) == "—"
  assert report.format_estimate({"value": 0.5, "lo": 0.25, "hi": 0.75}, 2) == "0.50 [0.25, 0.75]"
  with pytest.raises(SafecompError):
    report.write_report({}, "/nonexistent")


def test_plot_curves_png_and_shape_check(tmp_path):
  steps = np.arange(20)
  path = plots.plot_curves({"proxy": (steps, steps * 0.1), "gold": (steps, np.sqrt(steps))},
                           tmp_path / "curves.png", xlabel="PPO step", ylabel="reward")
  assert path == tmp_path / "curves.png" and _is_png(path)
  with pytest.raises(SafecompError, match="curve 'bad'"):
    plots.plot_curves({"bad": ([1, 2, 3], [1, 2])}, tmp_path / "bad.png")
