"""Public-set builders: built offline from the shared data folder into a tmp data_dir."""
import collections
import csv
import inspect
import json
import pathlib
import re
import shutil

import pytest

from safecomp.constants import INTENTS
from safecomp.data import public, readers
from safecomp.data.public import base as public_base
from safecomp.errors import DataError

TABLE = pathlib.Path(__file__).resolve().parents[1] / "third_party" / "public_datasets.json"

# (dataset, config) -> {split: rows}, as the README and PROVENANCE files document.
EXPECTED_SIZES = {
    ("xstest", "prompts"): {"test": 450},
    ("xstest", "completions"): {"llama2new": 450, "llama2orig": 450, "mistralinstruct": 450},
    ("rbr_gold", None): {"train": 351},
    ("simplesafetytests", None): {"test": 100},
    ("coconot", "eval"): {"test": 1001},
    ("coconot", "contrast"): {"test": 379},
    ("coconot", "pref"): {"train": 927},
    ("jailbreakbench", None): {"harmful": 100, "benign": 100},
    ("cyberseceval_frr", None): {"test": 750},
    ("hh_rlhf_harmless_base", None): {"test": 2312},
    ("openai_moderation", None): {"test": 1680},
}


@pytest.fixture(scope="module")
def built(shared_data_dir, tmp_path_factory):
  """Builds every dataset once; returns {(name, config): builder}."""
  data_dir = tmp_path_factory.mktemp("tfds")
  return {(name, config): public.build_public(name, data_dir, config=config,
                                              manual_dir=shared_data_dir / name)
          for name, config in EXPECTED_SIZES}


def _split(built, name, config, split):
  return readers.load_split(built[(name, config)].data_dir, split)


@pytest.mark.parametrize("key", list(EXPECTED_SIZES))
def test_sizes_and_no_skips(built, key):
  builder = built[key]
  assert {s: info.num_examples for s, info in builder.info.splits.items()} == EXPECTED_SIZES[key]
  assert builder.skipped_rows == {s: 0 for s in EXPECTED_SIZES[key]}
  for split in EXPECTED_SIZES[key]:
    uids = [r["uid"] for r in _split(built, *key, split)]
    assert len(set(uids)) == len(uids)
    if "intent" in builder.info.features:
      assert {r["intent"] for r in _split(built, *key, split)} <= set(INTENTS)


def test_xstest_matches_source_file_and_intents(built, shared_data_dir):
  with open(shared_data_dir / "xstest" / "xstest_prompts.csv", newline="",
            encoding="utf-8") as f:
    raw = list(csv.DictReader(f))
  rows = list(_split(built, "xstest", "prompts", "test"))
  assert [r["prompt"] for r in rows] == [r["prompt"] for r in raw]  # File order kept.
  assert [r["label"] for r in rows] == [r["label"] for r in raw]
  assert collections.Counter(r["intent"] for r in rows) == {
      "benign": sum(r["label"] == "safe" for r in raw),
      "malicious": sum(r["label"] == "unsafe" for r in raw)}
  completions = list(_split(built, "xstest", "completions", "mistralinstruct"))
  with open(shared_data_dir / "xstest" / "xstest_v2_completions_mistralinstruct.csv",
            newline="", encoding="utf-8") as f:
    raw = list(csv.DictReader(f))
  assert [r["final_label"] for r in completions] == [r["final_label"] for r in raw]
  assert [r["completion"] for r in completions] == [r["completion"] for r in raw]
  assert [r["agreement"] for r in completions] == [r["agreement"] == "TRUE" for r in raw]
  assert all(r["intent"] == ("malicious" if r["type"].startswith("contrast_") else "benign")
             for r in completions)


def test_rbr_gold_messages_and_propositions(built, shared_data_dir):
  raw = [json.loads(l) for l in open(shared_data_dir / "rbr_gold" / "train.jsonl",
                                     encoding="utf-8")]
  rows = list(_split(built, "rbr_gold", None, "train"))
  for got, want in zip(rows, raw):
    assert got["prompt"] == want["prompt"]
    assert got["completion"] == want["completion"][0]["content"]
    assert got["propositions"] == want["propositions"]
    assert got["response_type"] == want["response_type"]


def test_prompt_set_intents(built, shared_data_dir):
  assert {r["intent"] for r in _split(built, "simplesafetytests", None, "test")} == {"malicious"}
  eval_rows = list(_split(built, "coconot", "eval", "test"))
  safety = [r for r in eval_rows if r["category"] == public.COCONOT_SAFETY_CATEGORY]
  assert len(safety) == 395 and {r["intent"] for r in safety} == {"malicious"}
  assert {r["intent"] for r in eval_rows if r not in safety} == {"benign"}
  assert {r["intent"] for r in _split(built, "coconot", "contrast", "test")} == {"benign"}
  harmful = list(_split(built, "jailbreakbench", None, "harmful"))
  benign = list(_split(built, "jailbreakbench", None, "benign"))
  assert {r["intent"] for r in harmful} == {"malicious"}
  assert {r["intent"] for r in benign} == {"dual_use"}
  # The benign twins are matched to the harmful rows by index and behaviour.
  assert [(r["index"], r["behavior"]) for r in harmful] == [(r["index"], r["behavior"])
                                                            for r in benign]
  assert {r["intent"] for r in _split(built, "cyberseceval_frr", None, "test")} == {"dual_use"}


def test_hh_rlhf_pairs_parse_into_messages(built):
  rows = list(_split(built, "hh_rlhf_harmless_base", None, "test"))
  for row in rows[:50]:
    assert row["prompt"][0]["role"] == "user" and row["prompt"][-1]["role"] == "user"
    assert row["chosen"].endswith(row["chosen_response"])
    assert row["rejected"].endswith(row["rejected_response"])
  assert sum(r["same_prompt"] for r in rows) >= len(rows) - 10


def test_moderation_unknown_labels(built, shared_data_dir):
  raw = [json.loads(l) for l in open(shared_data_dir / "openai_moderation" /
                                     "samples-1680.jsonl", encoding="utf-8")]
  rows = list(_split(built, "openai_moderation", None, "test"))
  for key in public.MODERATION_LABELS:
    assert sum(r["labels"][key] == 1 for r in rows) == sum(x.get(key) == 1 for x in raw)
    assert sum(r["labels"][key] == -1 for r in rows) == sum(key not in x for x in raw)


def test_sources_are_pinned_and_checksums_match(shared_data_dir):
  for name, cls in public.PUBLIC_BUILDERS.items():
    assert cls.HOMEPAGE.startswith("https://") and cls.LICENSE
    for src in cls.SOURCES.values():
      assert re.search(r"/[0-9a-f]{40}/", src.url), src.url  # A commit, not a branch.
      path = shared_data_dir / name / src.filename
      assert public.sha256_of(path) == src.sha256 and path.stat().st_size == src.size
    infos = cls.url_infos or {}
    assert set(infos) == {s.url for s in cls.SOURCES.values() if not (s.gzip or s.derived)}
    for src in cls.SOURCES.values():
      if src.url in infos:
        assert infos[src.url].checksum == src.sha256


def test_builder_sources_come_from_the_table(tmp_path):
  assert public_base.TABLE_PATH == TABLE
  table = json.loads(TABLE.read_text(encoding="utf-8"))["datasets"]
  assert set(table) == set(public.PUBLIC_BUILDERS)
  for name, cls in public.PUBLIC_BUILDERS.items():
    entry = table[name]
    want = {k: public.Source(s["filename"], s["url"], s["sha256"], s["size"],
                             gzip=s.get("gzip", False), derived=s.get("derived", False),
                             revision=s["revision"])
            for k, s in entry["sources"].items()}
    assert cls.SOURCES == want and public.sources_for(name) == want
    assert cls.LICENSE == entry["license"]
    # Each config reads exactly the files the table lists for it.
    configs = [c.name for c in cls.BUILDER_CONFIGS or []]
    assert list(entry.get("configs", {})) == configs
    for config in configs or [None]:
      builder = cls(config=config, data_dir=str(tmp_path))
      assert builder.info.as_proto.redistribution_info.license == entry["license"]
      needed = builder._needed_sources()  # pylint: disable=protected-access
      assert needed == (entry["configs"][config] if config else list(entry["sources"]))
    # No URL or checksum is left in the builder's module.
    code = inspect.getsource(inspect.getmodule(cls))
    assert "https://raw." not in code and not re.search(r"[0-9a-f]{40}", code), name
  assert set(public.sources_for("xstest", "completions")) == set(public.XSTEST_MODELS)


@pytest.mark.parametrize("break_fn,match", [
    (lambda d: d["xstest"]["sources"]["prompts"].pop("sha256"),
     r"key 'datasets\.xstest\.sources\.prompts': missing \['sha256'\]"),
    (lambda d: d["xstest"]["sources"]["llama2new"].update(sha256="abc"),
     r"key 'datasets\.xstest\.sources\.llama2new\.sha256': expected 64"),
    (lambda d: d["rbr_gold"]["sources"]["train"].update(revision="0" * 40),
     r"key 'datasets\.rbr_gold\.sources\.train\.url': .* not pinned to its revision"),
    (lambda d: d["coconot"]["sources"]["pref"].update(size="2574178"),
     r"key 'datasets\.coconot\.sources\.pref\.size'"),
    (lambda d: d["hh_rlhf_harmless_base"]["sources"]["test"].update(gzip="yes"),
     r"key 'datasets\.hh_rlhf_harmless_base\.sources\.test\.gzip'"),
    (lambda d: d["openai_moderation"]["sources"]["test"].update(sha="x"),
     r"key 'datasets\.openai_moderation\.sources\.test': unknown key\(s\) \['sha'\]"),
    (lambda d: d["coconot"]["configs"].update(pref=["prefs"]),
     r"key 'datasets\.coconot\.configs\.pref': \['prefs'\] not in"),
    (lambda d: d["cyberseceval_frr"].pop("license"),
     r"key 'datasets\.cyberseceval_frr': missing \['license'\]"),
    (lambda d: d.pop("simplesafetytests"), r"no entry 'datasets\.simplesafetytests'"),
])
def test_malformed_table_entry_names_file_and_key(tmp_path, monkeypatch, break_fn, match):
  table = json.loads(TABLE.read_text(encoding="utf-8"))
  break_fn(table["datasets"])
  path = tmp_path / "public_datasets.json"
  path.write_text(json.dumps(table, indent=2), encoding="utf-8")
  monkeypatch.setattr(public_base, "TABLE_PATH", path)
  with pytest.raises(DataError, match=match) as info:
    public.sources_for("simplesafetytests")
  assert info.value.path == str(path)
  with pytest.raises(DataError, match=match):  # A builder fails before reading any data.
    public.build_public("simplesafetytests", tmp_path / "d", manual_dir=tmp_path)


def test_table_bad_json_unknown_config_and_absent_file(tmp_path, monkeypatch):
  path = tmp_path / "public_datasets.json"
  path.write_text(TABLE.read_text(encoding="utf-8").replace('"MIT",', '"MIT"', 1),
                  encoding="utf-8")
  monkeypatch.setattr(public_base, "TABLE_PATH", path)
  with pytest.raises(DataError, match="bad JSON") as info:
    public.sources_for("rbr_gold")
  assert info.value.path == str(path) and info.value.line > 1
  path.write_text(TABLE.read_text(encoding="utf-8"), encoding="utf-8")
  with pytest.raises(DataError, match=r"no entry 'datasets\.xstest\.configs\.nope'"):
    public.sources_for("xstest", "nope")
  with pytest.raises(DataError, match=r"no entry 'datasets\.rbr_gold\.configs'"):
    public.sources_for("rbr_gold", "default")
  missing = tmp_path / "third_party" / "public_datasets.json"
  monkeypatch.setattr(public_base, "TABLE_PATH", missing)
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    public.RbrGold.SOURCES  # pylint: disable=pointless-statement


def test_jailbreakbench_artifact_conversion_matches_manual_csv(shared_data_dir, tmp_path):
  # The harmful list is published inside an attack artifact; rebuild one from the CSV.
  with open(shared_data_dir / "jailbreakbench" / "jbb_harmful_behaviors_from_artifacts.csv",
            newline="", encoding="utf-8") as f:
    raw = list(csv.DictReader(f))
  artifact = {"parameters": {}, "jailbreaks": [
      {"index": int(r["index"]), "goal": r["goal"], "behavior": r["behavior"],
       "category": r["category"], "prompt": "p", "response": "r", "jailbroken": False}
      for r in raw]}
  path = tmp_path / "gpt-4-0125-preview.json"
  path.write_text(json.dumps(artifact), encoding="utf-8")
  builder = public.JailbreakBench(data_dir=str(tmp_path / "d"))
  converted = builder._convert_download("harmful", path)  # pylint: disable=protected-access
  read = lambda p: readers.read_csv(p, public.jbb_harmful_row).rows
  assert read(converted) == read(shared_data_dir / "jailbreakbench" /
                                 "jbb_harmful_behaviors_from_artifacts.csv")


# ---------------------------------------------------------------------------------------------
# Broken copies


def _copy(shared_data_dir, tmp_path, name):
  manual = tmp_path / "manual"
  shutil.copytree(shared_data_dir / name, manual)
  for p in manual.iterdir():
    p.chmod(0o644)
  return manual


def test_modified_copy_fails_checksum(shared_data_dir, tmp_path):
  manual = _copy(shared_data_dir, tmp_path, "simplesafetytests")
  path = manual / "simplesafetytests.csv"
  path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
  with pytest.raises(DataError, match="sha256"):
    public.build_public("simplesafetytests", tmp_path / "d", manual_dir=manual)


@pytest.mark.parametrize("name,config,filename,break_fn,line,reason", [
    ("xstest", "prompts", "xstest_prompts.csv",
     lambda lines: lines.__setitem__(3, lines[3].replace(",safe,", ",maybe,")), 4,
     "bad label 'maybe'"),
    ("simplesafetytests", None, "simplesafetytests.csv",
     lambda lines: lines.__setitem__(5, "sst_005,only two"), 6, "expected 5 fields"),
    ("rbr_gold", None, "train.jsonl",
     lambda lines: lines.__setitem__(9, lines[9][:-20]), 10, "bad JSON"),
    ("coconot", "eval", "coconot_eval.jsonl",
     lambda lines: lines.__setitem__(2, json.dumps({**json.loads(lines[2]), "prompt": 7})), 3,
     "key 'prompt': expected str, got int"),
    ("openai_moderation", None, "samples-1680.jsonl",
     lambda lines: lines.__setitem__(7, json.dumps({**json.loads(lines[7]), "S": 2})), 8,
     "key 'S': bad label 2"),
    ("hh_rlhf_harmless_base", None, "harmless_base_test.jsonl",
     lambda lines: lines.__setitem__(0, json.dumps({"chosen": "x"})), 1, "missing key 'rejected'"),
])
def test_malformed_row_names_file_and_line_or_is_skipped(shared_data_dir, tmp_path, name, config,
                                                          filename, break_fn, line, reason):
  manual = _copy(shared_data_dir, tmp_path, name)
  path = manual / filename
  lines = path.read_text(encoding="utf-8").split("\n")
  break_fn(lines)
  path.write_text("\n".join(lines), encoding="utf-8")
  with pytest.raises(DataError) as info:
    public.build_public(name, tmp_path / "d1", config=config, manual_dir=manual,
                        verify_checksums=False)
  assert info.value.path == str(path) and info.value.line == line
  assert reason in info.value.reason
  builder = public.build_public(name, tmp_path / "d2", config=config, manual_dir=manual,
                                verify_checksums=False, skip_malformed=True)
  split = next(iter(builder.info.splits))
  expected = EXPECTED_SIZES[(name, config)][split]
  assert builder.info.splits[split].num_examples == expected - 1
  assert builder.skipped_rows[split] == 1
  # The count is recorded with the prepared data, not only in memory.
  reloaded = readers.load_split(builder.data_dir, split)
  assert len(reloaded) == expected - 1
  meta = json.loads((builder.data_path / "metadata.json").read_text())
  assert meta["skipped_rows"][split] == 1


def test_missing_column_is_an_error(shared_data_dir, tmp_path):
  manual = _copy(shared_data_dir, tmp_path, "xstest")
  path = manual / "xstest_prompts.csv"
  text = path.read_text(encoding="utf-8")
  path.write_text(text.replace("id,prompt,type,label,", "id,prompt,type,lable,", 1),
                  encoding="utf-8")
  with pytest.raises(DataError, match=r"xstest_prompts.csv:1: missing column\(s\) \['label'\]"):
    public.build_public("xstest", tmp_path / "d", config="prompts", manual_dir=manual,
                        verify_checksums=False, skip_malformed=True)


def test_manual_dir_missing_a_file(shared_data_dir, tmp_path):
  manual = _copy(shared_data_dir, tmp_path, "coconot")
  (manual / "coconot_pref.jsonl").unlink()
  with pytest.raises(FileNotFoundError, match="coconot_pref.jsonl"):
    public.build_public("coconot", tmp_path / "d", config="pref", manual_dir=manual)
  with pytest.raises(KeyError, match="unknown public dataset"):
    public.build_public("nope", tmp_path / "d")
