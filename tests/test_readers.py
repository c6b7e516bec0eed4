"""Row-checked readers, torn-tail repair and decoding of prepared data sources."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from safecomp.data import readers
from safecomp.errors import DataError


def _row_fn(row):
  return {"text": readers.require(row, "text"), "n": readers.require(row, "n", int),
          "label": readers.require_choice(row, "label", ("a", "b"))}


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


GOOD = json.dumps({"text": "x", "n": 1, "label": "a"})


@pytest.mark.parametrize("bad,reason", [
    ('{"text": "x", "n": 1, "label": "a"', "bad JSON"),
    ('{"n": 1, "label": "a"}', "missing key 'text'"),
    ('{"text": "x", "n": "1", "label": "a"}', "key 'n': expected int, got str"),
    ('{"text": "x", "n": true, "label": "a"}', "key 'n': expected int, got bool"),
    ('{"text": "x", "n": 1, "label": "c"}', "bad label 'c'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_read_jsonl_names_file_and_line(tmp_path, bad, reason):
  path = _write(tmp_path / "rows.jsonl", [GOOD, "", GOOD, bad, GOOD])
  with pytest.raises(DataError) as info:
    readers.read_jsonl(path, _row_fn)
  assert info.value.line == 4 and info.value.path == str(path)
  assert reason in str(info.value) and str(info.value).startswith(f"{path}:4:")
  result = readers.read_jsonl(path, _row_fn, skip_malformed=True)
  assert len(result.rows) == 3 and result.skipped == 1 and result.errors[0].line == 4


def test_read_jsonl_skip_logs_count(tmp_path, caplog):
  path = _write(tmp_path / "rows.jsonl", ["{oops", GOOD, "{}"])
  with caplog.at_level("WARNING"):
    result = readers.read_jsonl(path, _row_fn, skip_malformed=True)
  assert result.skipped == 2 and [e.line for e in result.errors] == [1, 3]
  assert "skipped 2 malformed row(s)" in caplog.text


def test_read_csv_line_numbers_with_multiline_fields(tmp_path):
  path = tmp_path / "rows.csv"
  path.write_text('text,n,label\n"two\nlines",1,a\nthree,3,b\nbad,4,z\nshort,5\n',
                  encoding="utf-8")
  row_fn = lambda r: {**r, "n": int(r["n"]), "label": readers.require_choice(r, "label",
                                                                               ("a", "b"))}
  with pytest.raises(DataError, match=r"rows.csv:5: key 'label': bad label 'z'"):
    readers.read_csv(path, row_fn)
  result = readers.read_csv(path, row_fn, skip_malformed=True)
  assert [r["text"] for r in result.rows] == ["two\nlines", "three"]
  assert [(e.line, e.reason) for e in result.errors][1] == (6, "expected 3 fields, got 2")


def test_read_csv_missing_column_is_an_error_even_when_skipping(tmp_path):
  path = _write(tmp_path / "rows.csv", ["text,n", "a,1"])
  with pytest.raises(DataError, match=r"rows.csv:1: missing column\(s\) \['label'\]"):
    readers.read_csv(path, required_columns=("text", "label"), skip_malformed=True)


def test_read_json_array_names_element_lines(tmp_path):
  path = tmp_path / "rows.json"
  path.write_text('[\n  {"text": "x", "n": 1, "label": "a"},\n  {"text": "y",\n   "n": "2", '
                  '"label": "b"}\n]\n', encoding="utf-8")
  with pytest.raises(DataError, match=r"rows.json:3: key 'n'"):
    readers.read_json_array(path, _row_fn)
  assert readers.read_json_array(path, _row_fn, skip_malformed=True).skipped == 1
  path.write_text('[{"text": "x", "n": 1, "label": "a"},\n {"text": ]', encoding="utf-8")
  with pytest.raises(DataError, match=r"rows.json:2: bad JSON"):
    readers.read_json_array(path, _row_fn)
  path.write_text('{"not": "an array"}', encoding="utf-8")
  with pytest.raises(DataError, match="top-level JSON array"):
    readers.read_json_array(path)


def test_require_messages():
  row = {"m": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]}
  with pytest.raises(TypeError, match="key 'content': expected str, got int"):
    readers.require_messages(row, "m")
  with pytest.raises(ValueError, match="empty message list"):
    readers.require_messages({"m": []}, "m")


def test_repair_jsonl_tail_truncates_torn_line_and_reports(tmp_path, caplog):
  path = tmp_path / "out.jsonl"
  path.write_bytes(b'{"uid": "a"}\n{"uid": "b"}\n{"uid": "c", "x": [1, ')
  with caplog.at_level("WARNING"):
    repair = readers.repair_jsonl_tail(path)
  assert [r["uid"] for r in repair.rows] == ["a", "b"]
  assert repair.truncated_bytes == len(b'{"uid": "c", "x": [1, ')
  assert repair.torn_text.startswith('{"uid": "c"') and "torn last line" in caplog.text
  assert path.read_bytes() == b'{"uid": "a"}\n{"uid": "b"}\n'
  assert readers.repair_jsonl_tail(path).truncated_bytes == 0  # Idempotent.


def test_repair_jsonl_tail_keeps_complete_row_without_newline(tmp_path):
  path = tmp_path / "out.jsonl"
  path.write_bytes(b'{"uid": "a"}\n{"uid": "b"}')
  repair = readers.repair_jsonl_tail(path)
  assert [r["uid"] for r in repair.rows] == ["a", "b"] and repair.truncated_bytes == 0
  assert path.read_bytes() == b'{"uid": "a"}\n{"uid": "b"}\n'


def test_repair_jsonl_tail_rejects_corruption_in_the_middle(tmp_path):
  path = tmp_path / "out.jsonl"
  path.write_bytes(b'{"uid": "a"}\n{"uid": \n{"uid": "c"}\n')
  with pytest.raises(DataError, match=r"out.jsonl:2: corrupt row"):
    readers.repair_jsonl_tail(path)
  assert readers.repair_jsonl_tail(tmp_path / "missing.jsonl").rows == []


def test_decode_record_nested():
  record = {"a": b"caf\xc3\xa9", "b": np.array([b"x", b"y"], dtype=object),
            "c": {"d": np.int32(3), "e": np.array([1.5, 2.5], dtype=np.float32)},
            "f": [np.bool_(True)]}
  assert readers.decode_record(record) == {"a": "café", "b": ["x", "y"],
                                           "c": {"d": 3, "e": [1.5, 2.5]}, "f": [True]}


class TinyReadersTest(tfds.core.GeneratorBasedBuilder):
  """A tiny builder to exercise `load_split`."""
  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    return None  # Nothing to download (and no checksums file to look up).

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["no", "yes"]),
        "msgs": tfds.features.Sequence({"role": tfds.features.Text(),
                                        "content": tfds.features.Text()}),
        "score": np.float32}), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"text": f"t{i}", "label": i % 2, "score": i / 2,
                "msgs": [{"role": "user", "content": f"c{j}"} for j in range(i)]}


def test_load_split_by_directory_and_by_name(tmp_path):
  builder = TinyReadersTest(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  for source in (readers.load_split(builder.data_dir, "test"),
                 readers.load_split("tiny_readers_test", "test", data_dir=tmp_path)):
    assert len(source) == 3
    assert source[2] == {"text": "t2", "label": "no", "score": 1.0,
                         "msgs": [{"role": "user", "content": "c0"},
                                  {"role": "user", "content": "c1"}]}
    assert source[-1] == source[2] and [r["text"] for r in source] == ["t0", "t1", "t2"]
    assert source[0]["msgs"] == []
  with pytest.raises(KeyError, match="split 'train' not in"):
    readers.load_split(builder.data_dir, "train")
  with pytest.raises(FileNotFoundError, match="not prepared"):
    readers.load_split("tiny_readers_test", "test", data_dir=tmp_path / "elsewhere")
