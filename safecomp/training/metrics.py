"""Metrics to JSONL and TensorBoard in the workdir, and progress bars with ETA."""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from typing import Any, Mapping

import numpy as np
from tensorboardX import SummaryWriter
import tqdm

from safecomp.parallel.distributed import is_main_process


def _scalar(value: Any) -> float | None:
  try:
    array = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  if array.size != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
    return None
  return float(array.reshape(()))  # flags such as `nonfinite` are logged as 0/1


class MetricWriter:
  """Appends `{"step": s, **scalars}` rows to `<workdir>/metrics/<stage>.jsonl` and to TensorBoard.

  Every process of a multi-host run computes the same rows; only process 0 writes them into the shared
  workdir, so each step appears once.
  """

  def __init__(self, workdir: str | pathlib.Path, stage: str, tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / "metrics" / f"{stage}.jsonl"
    self.writes = is_main_process()
    self._tb = None
    if not self.writes:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if tensorboard:
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard" / stage))

  def truncate_after(self, step: int):
    """Drops rows past `step` (written by a run that died before its next checkpoint)."""
    if not self.writes:
      return
    rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping[str, Any]):
    row = {"step": int(step)}
    for key, value in metrics.items():
      scalar = _scalar(value)
      if scalar is None:
        continue
      row[key] = scalar if math.isfinite(scalar) else str(scalar)
      if self._tb is not None and math.isfinite(scalar):
        self._tb.add_scalar(key, scalar, int(step))
    if self.writes:
      with self.path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  """The rows of a metrics JSONL file; a torn last line (a run killed mid-write) is ignored."""
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  numbered = [(i + 1, line) for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
  rows = []
  for k, (number, line) in enumerate(numbered):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if k < len(numbered) - 1:
        raise ValueError(f"{path}:{number}: corrupt metrics row") from None
  return rows


def progress(total: int, desc: str, initial: int = 0, **kwargs) -> tqdm.tqdm:
  """A progress bar with rate and ETA; plain lines (not redraws) when stderr is not a terminal."""
  interactive = sys.stderr.isatty()
  return tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True,
                   mininterval=0.5 if interactive else 10.0, file=sys.stderr, **kwargs)
