"""Row-checked readers for JSONL / CSV / JSON-array files and access to prepared tfds data sources.

Every reader turns a malformed row (bad JSON, missing column, wrong type, bad label) into a
`safecomp.errors.DataError` naming the file and line. With `skip_malformed=True` such rows are
skipped instead, logged, and counted in the returned `ReadResult`; nothing is dropped silently.

Prepared datasets (array_record files written by the builders in `safecomp.data`) are read
without TensorFlow through `tfds` data sources; `load_split` yields plain dicts of `str`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from safecomp.errors import DataError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
# Converts one raw row into a record; raises KeyError / TypeError / ValueError on a bad row.
RowFn = Callable[[Any], Any]


@dataclasses.dataclass
class ReadResult:
  """Rows read from one file, plus what was skipped (only with `skip_malformed=True`)."""
  path: str
  rows: list[Any]
  errors: list[DataError] = dataclasses.field(default_factory=list)
  lines: list[int] = dataclasses.field(default_factory=list)  # where each row starts in the file

  @property
  def skipped(self) -> int:
    return len(self.errors)


class RowError(ValueError):
  """Raised by a row function to reject a row with a specific reason."""


def _describe(exc: Exception) -> str:
  if isinstance(exc, KeyError):
    return f"missing key {exc.args[0]!r}"
  return str(exc) or type(exc).__name__


class _Collector:
  """Applies a row function and turns its failures into DataErrors (raised or recorded)."""

  def __init__(self, path: PathLike, row_fn: RowFn | None, skip_malformed: bool):
    self.result = ReadResult(path=str(path), rows=[])
    self._row_fn = row_fn
    self._skip = skip_malformed

  def fail(self, line: int, reason: str) -> None:
    err = DataError(self.result.path, line, reason)
    if not self._skip:
      raise err
    self.result.errors.append(err)

  def add(self, line: int, raw: Any) -> None:
    try:
      row = raw if self._row_fn is None else self._row_fn(raw)
    except (KeyError, TypeError, ValueError) as exc:
      self.fail(line, _describe(exc))
      return
    self.result.rows.append(row)
    self.result.lines.append(line)

  def finish(self) -> ReadResult:
    if self.result.errors:
      logger.warning("%s: skipped %d malformed row(s); first: %s", self.result.path,
                     self.result.skipped, self.result.errors[0])
    return self.result


def read_jsonl(path: PathLike, row_fn: RowFn | None = None, *,
               skip_malformed: bool = False) -> ReadResult:
  """Reads a JSONL file, one JSON value per non-blank line, through `row_fn`."""
  collector = _Collector(path, row_fn, skip_malformed)
  with open(path, "r", encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        raw = json.loads(line)
      except json.JSONDecodeError as exc:
        collector.fail(line_no, f"bad JSON: {exc.msg} at column {exc.colno}")
        continue
      collector.add(line_no, raw)
  return collector.finish()


def read_csv(path: PathLike, row_fn: RowFn | None = None, *,
             required_columns: Sequence[str] = (), skip_malformed: bool = False) -> ReadResult:
  """Reads a CSV file with a header line; rows are dicts of str passed through `row_fn`.

  A missing required column in the header is always an error (every row would be bad). A row
  with too many or too few fields is malformed. Line numbers are those where the row starts
  (quoted fields may span lines).
  """
  collector = _Collector(path, row_fn, skip_malformed)
  with open(path, "r", encoding="utf-8", newline="") as f:
    reader = csv.reader(f)
    try:
      header = next(reader)
    except StopIteration:
      raise DataError(path, 1, "empty file, expected a CSV header") from None
    except csv.Error as exc:
      raise DataError(path, 1, f"bad CSV header: {exc}") from None
    missing = [c for c in required_columns if c not in header]
    if missing:
      raise DataError(path, 1, f"missing column(s) {missing} in header {header}")
    start = reader.line_num + 1
    while True:
      try:
        fields = next(reader)
      except StopIteration:
        break
      except csv.Error as exc:
        collector.fail(start, f"bad CSV: {exc}")
        start = reader.line_num + 1
        continue
      line_no, start = start, reader.line_num + 1
      if not fields or (len(fields) == 1 and not fields[0].strip()):
        continue
      if len(fields) != len(header):
        collector.fail(line_no, f"expected {len(header)} fields, got {len(fields)}")
        continue
      collector.add(line_no, dict(zip(header, fields)))
  return collector.finish()


def read_json_array(path: PathLike, row_fn: RowFn | None = None, *,
                    skip_malformed: bool = False) -> ReadResult:
  """Reads a JSON file holding one top-level array; errors name the line of each element."""
  text = pathlib.Path(path).read_text(encoding="utf-8")
  decoder = json.JSONDecoder()
  collector = _Collector(path, row_fn, skip_malformed)

  def line_of(pos: int) -> int:
    return text.count("\n", 0, pos) + 1

  def skip_ws(pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
      pos += 1
    return pos

  pos = skip_ws(0)
  if not text.startswith("[", pos):
    raise DataError(path, line_of(pos), "expected a top-level JSON array")
  pos = skip_ws(pos + 1)
  if text.startswith("]", pos):
    return collector.finish()
  while True:
    try:
      raw, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
      # The array structure is lost past this point: not skippable.
      raise DataError(path, exc.lineno, f"bad JSON: {exc.msg} at column {exc.colno}") from None
    collector.add(line_of(pos), raw)
    pos = skip_ws(end)
    if text.startswith(",", pos):
      pos = skip_ws(pos + 1)
    elif text.startswith("]", pos):
      break
    else:
      raise DataError(path, line_of(pos), "expected ',' or ']' after an array element")
  return collector.finish()


# ---------------------------------------------------------------------------------------------
# Row-checking helpers for row functions.


def require(row: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
  """Returns `row[key]`, checking it is present and of type `kind` (bool is not an int here)."""
  if not isinstance(row, Mapping):
    raise TypeError(f"expected a JSON object, got {type(row).__name__}")
  if key not in row:
    raise KeyError(key)
  value = row[key]
  kinds = kind if isinstance(kind, tuple) else (kind,)
  is_bool = isinstance(value, bool)
  if not isinstance(value, kinds) or (is_bool and bool not in kinds):
    names = "/".join(k.__name__ for k in kinds)
    raise TypeError(f"key {key!r}: expected {names}, got {type(value).__name__} {value!r:.60}")
  return value


def require_choice(row: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
  """Returns `row[key]`, checking it is one of `choices`."""
  value = require(row, key, str)
  if value not in choices:
    raise RowError(f"key {key!r}: bad label {value!r}, expected one of {list(choices)}")
  return value


def require_messages(row: Mapping[str, Any], key: str) -> list[dict[str, str]]:
  """Returns `row[key]` as a non-empty list of `{role, content}` chat messages."""
  value = require(row, key, list)
  if not value:
    raise RowError(f"key {key!r}: empty message list")
  out = []
  for i, msg in enumerate(value):
    if not isinstance(msg, Mapping):
      raise TypeError(f"key {key!r}[{i}]: expected a message object, got {type(msg).__name__}")
    role = require(msg, "role", str)
    content = require(msg, "content", str)
    out.append({"role": role, "content": content})
  return out


# ---------------------------------------------------------------------------------------------
# Torn-tail handling for append-only JSONL files.


@dataclasses.dataclass
class TailRepair:
  """What `repair_jsonl_tail` found: complete rows kept and bytes cut from a torn last line."""
  rows: list[dict[str, Any]]
  truncated_bytes: int
  torn_text: str


def _parse_object(raw: bytes) -> dict[str, Any] | None:
  try:
    row = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError):
    return None
  return row if isinstance(row, dict) else None


def repair_jsonl_tail(path: PathLike) -> TailRepair:
  """Reads an append-only JSONL file, truncating a torn last line (e.g. after a kill).

  Only the final line may be incomplete. A last line that is not a valid JSON object is cut off
  and reported (logged and returned); a valid last object that only lacks its newline is kept
  and the newline added. A bad line anywhere else is real corruption and raises `DataError`.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return TailRepair(rows=[], truncated_bytes=0, torn_text="")
  data = path.read_bytes()
  lines = data.split(b"\n")
  if lines and not lines[-1]:
    lines.pop()  # The file ends with a newline.
  ends_with_newline = data.endswith(b"\n")
  rows: list[dict[str, Any]] = []
  offset = 0
  torn = b""
  for i, raw in enumerate(lines):
    is_last = i == len(lines) - 1
    if raw.strip():
      row = _parse_object(raw)
      if row is None:
        if not is_last:
          raise DataError(path, i + 1, "corrupt row in the middle of the file (not a JSON object)")
        torn = data[offset:]
        break
      rows.append(row)
    offset += len(raw) + 1
  with open(path, "r+b") as f:
    if torn:
      logger.warning("%s: truncating a torn last line (%d bytes) left by an interrupted write: %r",
                     path, len(torn), torn[:80])
      f.truncate(len(data) - len(torn))
    elif data and not ends_with_newline:
      f.seek(0, os.SEEK_END)
      f.write(b"\n")
    else:
      return TailRepair(rows=rows, truncated_bytes=0, torn_text="")
    f.flush()
    os.fsync(f.fileno())
  return TailRepair(rows=rows, truncated_bytes=len(torn),
                    torn_text=torn.decode("utf-8", errors="replace"))


# ---------------------------------------------------------------------------------------------
# Prepared tfds data sources.


def decode_record(value: Any) -> Any:
  """Turns a tfds record into plain Python: bytes -> str, numpy -> lists / scalars."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, Mapping):
    return {k: decode_record(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    if value.dtype.kind in ("S", "O"):
      return [decode_record(v) for v in value.tolist()]
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple)):
    return [decode_record(v) for v in value]
  return value


def decode_with_features(value: Any, feature: Any) -> Any:
  """Like `decode_record`, but also maps class ids to their names and a sequence of dicts
  (tfds stores it as a dict of lists) to a list of dicts, guided by the tfds features."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if isinstance(feature, tfds.features.ClassLabel):
    return feature.int2str(int(value))
  if isinstance(feature, tfds.features.Sequence) and isinstance(feature.feature,
                                                                tfds.features.FeaturesDict):
    columns = {k: decode_with_features(value[k], tfds.features.Sequence(f))
               for k, f in feature.feature.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{k: col[i] for k, col in columns.items()} for i in range(n)]
  if isinstance(feature, tfds.features.Sequence):
    return [decode_with_features(v, feature.feature) for v in value]
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: decode_with_features(value[k], f) for k, f in feature.items()}
  return decode_record(value)


class DecodedSource(Sequence):
  """A random-access view of a tfds data source whose records are decoded dicts of str.

  Class labels come back as their names and chat messages as lists of `{role, content}`.
  """

  def __init__(self, source: Any, features: Any = None):
    self._source = source
    self._features = features

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):  # type: ignore[override]
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    record = self._source[index]
    if self._features is None:
      return decode_record(record)
    return decode_with_features(record, self._features)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    for i in range(len(self)):
      yield self[i]

  @property
  def raw(self) -> Any:
    """The underlying tfds data source (e.g. to hand to grain)."""
    return self._source


def load_split(dataset: PathLike, split: str, *, data_dir: PathLike | None = None) -> DecodedSource:
  """Opens one split of a prepared dataset, without TensorFlow.

  Args:
    dataset: either the directory of a prepared dataset version
      (`<data_dir>/<name>/<config>/<version>`) or a registered name such as `"xstest/prompts"`
      (the builder's module must be imported so that tfds knows the name).
    split: the split name, e.g. `"test"`.
    data_dir: where prepared datasets live when `dataset` is a name.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(dataset)
  if path.is_dir() and (path / "dataset_info.json").exists():
    builder = tfds.builder_from_directory(str(path))
  else:
    builder = tfds.builder(str(dataset), data_dir=None if data_dir is None else str(data_dir))
    if not pathlib.Path(builder.data_dir).joinpath("dataset_info.json").exists():
      raise FileNotFoundError(
          f"dataset {dataset!r} is not prepared under {builder.data_dir}; run its "
          "download_and_prepare() first")
  splits = builder.info.splits
  if split not in splits:
    raise KeyError(f"split {split!r} not in {dataset}: available {sorted(splits.keys())}")
  return DecodedSource(builder.as_data_source(split=split), builder.info.features)
