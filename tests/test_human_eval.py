"""Tests for safecomp.eval.human: blinded export, ratings import, un-blinding and win rates."""
import csv
import json

import numpy as np
import pytest

from safecomp.errors import DataError, SafecompError
from safecomp.eval import human

N_PROMPTS = 150


def _outputs(model):
  intents = ("benign", "dual_use", "malicious")
  return [dict(prompt_id=f"q{i}", prompt=f"How do I do thing {i}?\nDetails, please.",
               response=f"[{model}] answer {i}, with a comma", intent=intents[i % 3], model=model)
          for i in range(N_PROMPTS)]


@pytest.fixture()
def exported(tmp_path):
  paths = human.export_pairs(_outputs("refusal"), _outputs("safecomp"), tmp_path / "raters",
                             tmp_path / "private" / "key.json", seed=3)
  return tmp_path, paths


def _simulate(pairs_path, out_path, raters=("r1", "r2"), p_a=0.8, seed=0):
  """Raters who recognise model A's text and prefer it with probability p_a."""
  rng = np.random.default_rng(seed)
  with open(pairs_path, newline="", encoding="utf-8") as f:
    pairs = list(csv.DictReader(f))
  truth = {}
  with open(out_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=human.RATING_FIELDS)
    writer.writeheader()
    for pair in pairs:
      a_side = "left" if pair["left"].startswith("[refusal]") else "right"
      b_side = "right" if a_side == "left" else "left"
      for rater in raters:
        prefers_a = rng.random() < p_a
        truth[(pair["pair_id"], rater)] = "refusal" if prefers_a else "safecomp"
        writer.writerow({"pair_id": pair["pair_id"], "rater": rater,
                         "preference": a_side if prefers_a else b_side,
                         f"safety_{a_side}": 4, f"safety_{b_side}": 2,
                         f"helpfulness_{a_side}": 3, f"helpfulness_{b_side}": ""})
  return truth


def test_export_is_blinded_randomised_and_seeded(exported):
  tmp_path, paths = exported
  key = json.loads(paths["key"].read_text())
  assert key["models"] == {"a": "refusal", "b": "safecomp"}
  assert not (tmp_path / "raters" / "key.json").exists()
  for name in ("csv", "jsonl", "template"):
    text = paths[name].read_text()
    assert "q1" not in text and "dual_use" not in text  # raters see neither ids nor intents
  with open(paths["csv"], newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  jsonl = [json.loads(l) for l in paths["jsonl"].read_text().splitlines()]
  assert rows == jsonl and len(rows) == N_PROMPTS
  a_left = 0
  for row in rows:
    entry = key["pairs"][row["pair_id"]]
    i = int(entry["prompt_id"][1:])
    assert row["prompt"].startswith(f"How do I do thing {i}?\n")
    left_model = key["models"][entry["left"]]
    assert row["left"] == f"[{left_model}] answer {i}, with a comma"
    a_left += entry["left"] == "a"
  assert 0.35 < a_left / N_PROMPTS < 0.65
  # Pair order is shuffled away from prompt order.
  order = [key["pairs"][r["pair_id"]]["prompt_id"] for r in rows]
  assert order != [f"q{i}" for i in range(N_PROMPTS)]
  again = human.export_pairs(_outputs("refusal"), _outputs("safecomp"), tmp_path / "again",
                             tmp_path / "key2.json", seed=3)
  assert again["csv"].read_bytes() == paths["csv"].read_bytes()
  other = human.export_pairs(_outputs("refusal"), _outputs("safecomp"), tmp_path / "other",
                             tmp_path / "key3.json", seed=4)
  assert other["csv"].read_bytes() != paths["csv"].read_bytes()
  with pytest.raises(SafecompError, match="must not be inside"):
    human.export_pairs(_outputs("refusal"), _outputs("safecomp"), tmp_path / "x",
                       tmp_path / "x" / "key.json")


def test_round_trip_win_rate_and_unblinding(exported):
  tmp_path, paths = exported
  truth = _simulate(paths["csv"], tmp_path / "ratings.csv", seed=1)
  ratings = human.load_ratings(tmp_path / "ratings.csv")
  assert len(ratings) == 2 * N_PROMPTS
  rows = human.unblind(ratings, paths["key"])
  for row in rows:
    assert row["winner_model"] == truth[(row["pair_id"], row["rater"])]
    assert row["safety_a"] == 4 and row["safety_b"] == 2
    assert row["helpfulness_a"] == 3 and row["helpfulness_b"] is None
  result = human.win_rates(rows, paths["key"], n_boot=1000, seed=0)
  win = result["overall"]["win_rate_a"]
  assert win["lo"] <= 0.8 <= win["hi"] and win["n"] == N_PROMPTS
  expected = np.mean([v == "refusal" for v in truth.values()])
  assert win["value"] == pytest.approx(expected)
  assert result["overall"]["counts"]["a"] == sum(v == "refusal" for v in truth.values())
  assert set(result["by_intent"]) == {"benign", "dual_use", "malicious"}
  assert result["by_intent"]["benign"]["n_pairs"] == N_PROMPTS // 3
  assert result["overall"]["safety_a"]["value"] == 4.0
  assert "helpfulness_b" not in result["overall"]
  agr = result["agreement"]
  # Independent raters at 80%: agreement about 0.8^2 + 0.2^2 = 0.68, kappa about 0.
  assert agr["n_pairs"] == N_PROMPTS and 0.58 < agr["percent_agreement"] < 0.78
  assert abs(agr["fleiss_kappa"]) < 0.2
  assert "Win rate of refusal over safecomp" in human.format_win_rates(result)
  assert human.score_ratings(tmp_path / "ratings.csv", paths["key"], n_boot=1000) == result


def test_chat_prompts_render_and_prompt_mismatch_errors(tmp_path):
  chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
          {"role": "user", "content": "and then?"}]
  assert human.render_prompt(chat) == "user: hi\n\nassistant: hello\n\nuser: and then?"
  a = [dict(prompt_id="c1", prompt=chat, response="x")]
  b = [dict(prompt_id="c1", prompt=chat[:1], response="y")]
  with pytest.raises(DataError, match="outputs_b:#0: prompt text differs"):
    human.export_pairs(a, b, tmp_path / "p", tmp_path / "k.json", model_a="m1", model_b="m2")
  with pytest.raises(SafecompError, match="unmatched prompt_id"):
    human.export_pairs(a, [dict(b[0], prompt_id="c2")], tmp_path / "p", tmp_path / "k.json",
                       model_a="m1", model_b="m2")


def test_ties_count_half_and_agreement_hand_case():
  key = {"models": {"a": "m1", "b": "m2"},
         "pairs": {"p1": {"prompt_id": "x1", "intent": "benign", "left": "a", "right": "b"},
                   "p2": {"prompt_id": "x2", "intent": "benign", "left": "b", "right": "a"}}}
  ratings = [human.Rating("p1", "r1", "left"), human.Rating("p1", "r2", "tie"),
             human.Rating("p2", "r1", "right"), human.Rating("p2", "r2", "right")]
  rows = human.unblind(ratings, key)
  assert [r["winner"] for r in rows] == ["a", "tie", "a", "a"]
  res = human.win_rates(rows, key, n_boot=200)
  assert res["overall"]["win_rate_a"]["value"] == pytest.approx((0.75 + 1.0) / 2)
  # Counts a: 3, tie: 1. P_bar = (0 + 1) / 2; p = (3/4, 0, 1/4); P_e = 10/16.
  agr = res["agreement"]
  assert agr["percent_agreement"] == pytest.approx(0.5)
  assert agr["fleiss_kappa"] == pytest.approx((0.5 - 10 / 16) / (1 - 10 / 16))


@pytest.mark.parametrize("body, line, needle", [
    ("p1,r1,left\np1,r2,sideways\n", 3, "'preference'"),
    ("p1,r1,left,5\n", 2, "'safety_left'"),
    ("p1,,left\n", 2, "'rater'"),
    ("p1,r1,left\np1,r1,tie\n", 3, "already rated"),
    ("p1,r1,left,1,2,3,4,9\n", 2, "fields"),
])
def test_malformed_csv_rows_name_file_and_line(tmp_path, body, line, needle):
  path = tmp_path / "bad.csv"
  path.write_text(",".join(human.RATING_FIELDS) + "\n" + body)
  with pytest.raises(DataError, match=needle) as err:
    human.load_ratings(path)
  assert err.value.path == str(path) and err.value.line == line


def test_malformed_jsonl_and_unknown_pair(tmp_path, exported):
  _, paths = exported
  path = tmp_path / "bad.jsonl"
  path.write_text('{"pair_id": "pair-00000", "rater": "r1", "preference": "left"}\n\n{oops\n')
  with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
    human.load_ratings(path)
  path.write_text('{"pair_id": "pair-00000", "rater": "r1", "preference": "Left"}\n'
                  '{"pair_id": "nope", "rater": "r1", "preference": "tie"}\n')
  ratings = human.load_ratings(path)
  assert ratings[0].preference == "left"
  with pytest.raises(DataError, match=r"bad\.jsonl:2: pair_id 'nope' not in key"):
    human.unblind(ratings, paths["key"])
  with pytest.raises(DataError, match="CSV header lacks"):
    (tmp_path / "h.csv").write_text("pair,who,pref\n")
    human.load_ratings(tmp_path / "h.csv")
