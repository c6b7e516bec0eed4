"""Shared machinery of the public-set builders: sources, checksums, the source table.

The source files of every public dataset (file name, raw URL at the pinned upstream revision,
sha256, size, gzip/derived flags) and each dataset's license are data, kept in
`third_party/public_datasets.json` at the repository root; `sources_for` reads and checks it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import re
from typing import Any, Callable, Iterator, Mapping

import tensorflow_datasets as tfds

from safecomp.constants import INTENTS
from safecomp.data import readers
from safecomp.errors import DataError

Example = tuple[str, dict[str, Any]]

# The table of public dataset sources, found relative to the repository (the package is installed
# from a checkout with `pip install -e .`). Tests point it elsewhere with monkeypatch.
TABLE_PATH = pathlib.Path(__file__).resolve().parents[3] / "third_party" / "public_datasets.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TABLE_KEYS = {"about", "datasets"}
_DATASET_KEYS = {"license", "configs", "sources"}
_SOURCE_KEYS = {"filename", "url", "revision", "sha256", "size", "gzip", "derived", "note"}


@dataclasses.dataclass(frozen=True)
class Source:
  """One source file: its name in the manual dir, where it is published, and its checksum.

  `sha256` and `size` are of the file as stored under `filename` (for a gzip source, of the
  decompressed file). `derived` marks a file that the published one is converted into (see
  the builder); then only the published file is fetched and the checksum is not applied to it.
  `revision` is the upstream commit that `url` is pinned to.
  """
  filename: str
  url: str
  sha256: str | None
  size: int | None = None
  gzip: bool = False
  derived: bool = False
  revision: str | None = None


def sha256_of(path: str | pathlib.Path) -> str:
  """Hex sha256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The source table (third_party/public_datasets.json)


@dataclasses.dataclass(frozen=True)
class _DatasetEntry:
  license: str
  sources: dict[str, Source]
  configs: dict[str, tuple[str, ...]] | None


def _bad(path: pathlib.Path, key: str, reason: str) -> DataError:
  return DataError(path, 0, f"key {key!r}: {reason}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  out = {}
  for k, v in pairs:
    if k in out:
      raise ValueError(f"duplicate key {k!r}")
    out[k] = v
  return out


def _check_keys(path: pathlib.Path, key: str, value: Any, required: set[str],
                allowed: set[str]) -> None:
  if not isinstance(value, dict):
    raise _bad(path, key, f"expected an object, got {type(value).__name__}")
  missing = sorted(required - set(value))
  if missing:
    raise _bad(path, key, f"missing {missing}")
  unknown = sorted(set(value) - allowed)
  if unknown:
    raise _bad(path, key, f"unknown key(s) {unknown}")


def _parse_source(path: pathlib.Path, key: str, raw: Any) -> Source:
  """One source entry; every field is checked, the error names its dotted key."""
  _check_keys(path, key, raw, _SOURCE_KEYS - {"gzip", "derived", "note"}, _SOURCE_KEYS)
  filename, url, revision = raw["filename"], raw["url"], raw["revision"]
  sha256, size = raw["sha256"], raw["size"]
  if not isinstance(filename, str) or not filename or "/" in filename:
    raise _bad(path, f"{key}.filename", f"expected a file name, got {filename!r}")
  if not isinstance(revision, str) or not _COMMIT.fullmatch(revision):
    raise _bad(path, f"{key}.revision", f"expected a 40-digit commit hash, got {revision!r}")
  if not isinstance(url, str) or not url.startswith("https://"):
    raise _bad(path, f"{key}.url", f"expected an https:// URL, got {url!r}")
  if f"/{revision}/" not in url:
    raise _bad(path, f"{key}.url", f"{url!r} is not pinned to its revision {revision}")
  if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
    raise _bad(path, f"{key}.sha256", f"expected 64 lowercase hex digits or null, got {sha256!r}")
  if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
    raise _bad(path, f"{key}.size", f"expected a byte count or null, got {size!r}")
  flags = {}
  for flag in ("gzip", "derived"):
    flags[flag] = raw.get(flag, False)
    if not isinstance(flags[flag], bool):
      raise _bad(path, f"{key}.{flag}", f"expected true or false, got {flags[flag]!r}")
  if not isinstance(raw.get("note", ""), str):
    raise _bad(path, f"{key}.note", f"expected a string, got {raw['note']!r}")
  return Source(filename, url, sha256, size, gzip=flags["gzip"], derived=flags["derived"],
                revision=revision)


def _parse_dataset(path: pathlib.Path, key: str, raw: Any) -> _DatasetEntry:
  _check_keys(path, key, raw, {"license", "sources"}, _DATASET_KEYS)
  license_ = raw["license"]
  if not isinstance(license_, str) or not license_.strip():
    raise _bad(path, f"{key}.license", f"expected a license, got {license_!r}")
  raw_sources = raw["sources"]
  if not isinstance(raw_sources, dict) or not raw_sources:
    raise _bad(path, f"{key}.sources", "expected a non-empty object of source files")
  sources = {k: _parse_source(path, f"{key}.sources.{k}", v) for k, v in raw_sources.items()}
  configs = None
  if "configs" in raw:
    raw_configs = raw["configs"]
    if not isinstance(raw_configs, dict) or not raw_configs:
      raise _bad(path, f"{key}.configs", "expected a non-empty object {config: [source keys]}")
    configs = {}
    for name, keys in raw_configs.items():
      if (not isinstance(keys, list) or not keys
          or not all(isinstance(k, str) for k in keys)):
        raise _bad(path, f"{key}.configs.{name}", f"expected a list of source keys, got {keys!r}")
      unknown = [k for k in keys if k not in sources]
      if unknown:
        raise _bad(path, f"{key}.configs.{name}", f"{unknown} not in {key}.sources")
      configs[name] = tuple(keys)
  return _DatasetEntry(license_, sources, configs)


@functools.lru_cache(maxsize=4)
def _load_table(path: pathlib.Path, version: tuple[int, int]) -> dict[str, _DatasetEntry]:
  """The whole table, checked; cached per file version (mtime, size)."""
  del version  # Only part of the cache key.
  try:
    raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
  except json.JSONDecodeError as exc:
    raise DataError(path, exc.lineno, f"bad JSON: {exc.msg}") from None
  except ValueError as exc:  # A duplicate key.
    raise DataError(path, 0, str(exc)) from None
  if not isinstance(raw, dict):
    raise DataError(path, 0, f"expected an object, got {type(raw).__name__}")
  unknown = sorted(set(raw) - _TABLE_KEYS)
  if unknown:
    raise DataError(path, 0, f"unknown key(s) {unknown}")
  datasets = raw.get("datasets")
  if not isinstance(datasets, dict):
    raise _bad(path, "datasets", "expected an object {dataset: entry}")
  return {name: _parse_dataset(path, f"datasets.{name}", entry)
          for name, entry in datasets.items()}


def _dataset_entry(dataset: str) -> tuple[pathlib.Path, _DatasetEntry]:
  path = TABLE_PATH
  try:
    stat = path.stat()
  except FileNotFoundError:
    raise FileNotFoundError(
        f"public dataset table not found at {path}: it is looked for in third_party/ of the "
        "repository safecomp is installed from (`pip install -e .` from a checkout)") from None
  table = _load_table(path, (stat.st_mtime_ns, stat.st_size))
  if dataset not in table:
    raise DataError(path, 0, f"no entry 'datasets.{dataset}' (datasets: {sorted(table)})")
  return path, table[dataset]


def sources_for(dataset: str, config: str | None = None) -> dict[str, Source]:
  """The source files of a public dataset, from `TABLE_PATH`, keyed as the builder reads them.

  Args:
    dataset: the builder's name, e.g. `"xstest"`.
    config: a builder config (e.g. `"prompts"`): only the files it reads. Without one, all the
      dataset's files.

  Raises:
    FileNotFoundError: the table is absent (the message says where it was looked for).
    DataError: the table is malformed, or has no entry for `dataset` / `config`; the message
      names the file and the key.
  """
  path, entry = _dataset_entry(dataset)
  if config is None:
    return dict(entry.sources)
  if entry.configs is None:
    raise DataError(path, 0, f"no entry 'datasets.{dataset}.configs' (asked for config "
                    f"{config!r})")
  if config not in entry.configs:
    raise DataError(path, 0, f"no entry 'datasets.{dataset}.configs.{config}' (configs: "
                    f"{sorted(entry.configs)})")
  return {k: entry.sources[k] for k in entry.configs[config]}


def license_for(dataset: str) -> str:
  """The license of a public dataset, from `TABLE_PATH` (errors as `sources_for`)."""
  return _dataset_entry(dataset)[1].license


def configs_for(dataset: str) -> tuple[str, ...] | None:
  """The builder configs the table lists for a dataset (None: the dataset has none)."""
  configs = _dataset_entry(dataset)[1].configs
  return None if configs is None else tuple(configs)


# ---------------------------------------------------------------------------------------------
# Features and the builder base class


def messages_feature() -> tfds.features.Sequence:
  """A chat: a sequence of {role, content} messages."""
  return tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()})


def intent_feature() -> tfds.features.ClassLabel:
  """The intent label of a prompt (`safecomp.constants.INTENTS`)."""
  return tfds.features.ClassLabel(names=list(INTENTS))


class PublicBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: source resolution, checksum checks, row-error policy.

  A subclass sets `name` (its key in the source table) and reads `SOURCES`, its source files,
  and `LICENSE` from the table; both are looked up when first used, not on import.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional: place the source files (see the builder's SOURCES) in the manual dir, e.g. "
      "the shared data folder for this dataset. Without a manual dir they are downloaded.")
  HOMEPAGE = ""
  CITATION = ""
  DESCRIPTION = ""

  def __init__(self, *, skip_malformed: bool = False, verify_checksums: bool = True,
               **kwargs: Any):
    self._skip_malformed = skip_malformed
    self._verify_checksums = verify_checksums
    self.skipped_rows: dict[str, int] = {}
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def SOURCES(cls) -> Mapping[str, Source]:  # pylint: disable=invalid-name
    """All source files of the dataset, from the source table (`sources_for`)."""
    return sources_for(cls.name)

  @tfds.core.utils.classproperty
  @classmethod
  def LICENSE(cls) -> str:  # pylint: disable=invalid-name
    """The dataset's license, from the source table."""
    return license_for(cls.name)

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> dict[str, Any] | None:
    # Known checksums of files downloaded as-is, so that tfds validates the download itself.
    infos = {}
    for src in cls.SOURCES.values():
      if src.sha256 and src.size and not src.gzip and not src.derived:
        infos[src.url] = tfds.download.checksums.UrlInfo(
            size=src.size, checksum=src.sha256, filename=src.filename)
    return infos or None

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=self._features(),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        license=self.LICENSE,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Keep the source file's order.
    )

  def _needed_sources(self) -> list[str]:
    """Keys of SOURCES this config reads: its files in the source table (all by default)."""
    config = self.builder_config.name if self.builder_config else None
    return list(sources_for(self.name, config))

  def _resolve(self, dl_manager: tfds.download.DownloadManager) -> dict[str, pathlib.Path]:
    """Paths to the needed source files: from the manual dir when present, else downloaded."""
    keys = self._needed_sources()
    sources = self.SOURCES
    manual = None
    try:
      manual = pathlib.Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):
      pass  # No manual dir given (or empty): download.
    if manual is not None:
      missing = [sources[k].filename for k in keys
                 if not (manual / sources[k].filename).is_file()]
      if missing:
        raise FileNotFoundError(f"manual dir {manual} lacks {missing} for {self.name}")
      paths = {k: manual / sources[k].filename for k in keys}
      checked = keys
    else:
      urls = {k: sources[k].url for k in keys}
      downloaded = dl_manager.download_and_extract(urls)
      paths = {k: pathlib.Path(downloaded[k]) for k in keys}
      # A derived source arrives in its published form: convert it to the file we read.
      paths = {k: self._convert_download(k, p) for k, p in paths.items()}
      checked = [k for k in keys if not sources[k].derived]
    if self._verify_checksums:
      for k in checked:
        self._check_sha256(sources[k], paths[k])
    return paths

  def _convert_download(self, key: str, path: pathlib.Path) -> pathlib.Path:
    del key
    return path

  def _check_sha256(self, src: Source, path: pathlib.Path) -> None:
    if not src.sha256:
      return
    got = sha256_of(path)
    if got != src.sha256:
      raise DataError(path, 0, f"sha256 {got} differs from the published file's {src.sha256} "
                      f"({src.url}); pass verify_checksums=False to read a modified copy")

  def _read(self, split: str, result: readers.ReadResult) -> list[Any]:
    """Records the skip count of one split and returns its rows."""
    self.skipped_rows[split] = self.skipped_rows.get(split, 0) + result.skipped
    self.info.metadata["skipped_rows"] = dict(self.skipped_rows)
    return result.rows

  def _read_jsonl(self, split: str, path: pathlib.Path, row_fn: Callable[[Any], Any]) -> list[Any]:
    return self._read(split, readers.read_jsonl(path, row_fn, skip_malformed=self._skip_malformed))

  def _read_csv(self, split: str, path: pathlib.Path, row_fn: Callable[[Any], Any],
                columns: tuple[str, ...]) -> list[Any]:
    return self._read(split, readers.read_csv(path, row_fn, required_columns=columns,
                                              skip_malformed=self._skip_malformed))

  def _generate_examples(self, rows: list[Example]) -> Iterator[Example]:
    yield from rows


def numbered(rows: list[dict[str, Any]], prefix: str) -> list[Example]:
  """Keys rows that have no id of their own by position in the file."""
  out = []
  for i, row in enumerate(rows):
    uid = f"{prefix}-{i:05d}"
    out.append((uid, {"uid": uid, **row}))
  return out
