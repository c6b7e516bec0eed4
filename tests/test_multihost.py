"""Two JAX processes on 127.0.0.1 (gloo collectives, 2 CPU devices each) run one sharded SFT step.

Each process loads only its own rows of the batch; the loss and the updated parameters must match
one process on one device. Then the two processes run the whole tiny pipeline into one shared workdir,
which only process 0 writes.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.training import train_state

from safecomp import models, parallel
from safecomp.training import pipeline
from safecomp.training import sft as sft_lib
from safecomp.training.metrics import read_metrics
from tests.parallel_helpers import multihost_worker as worker

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-5


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def single_process():
  """The same step in this process, on one device, without any mesh: (loss, flat params)."""
  cfg = models.tiny()
  model = models.Transformer(cfg)
  params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=worker.optimizer())
  step = jax.jit(parallel.unjit(sft_lib.make_sft_step(model)))
  new_state, metrics = step(state, worker.sft_batch())
  flat = {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(
              jax.device_get(new_state.params))[0]}
  return float(metrics["loss"]), flat


def start_workers(out, *extra):
  """The two worker processes (see multihost_worker.py), writing their results to `out`."""
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return [subprocess.Popen(
      [sys.executable, str(REPO / "tests" / "parallel_helpers" / "multihost_worker.py"),
       "--process_id", str(i), "--num_processes", "2", "--port", str(port), "--local_devices", "2",
       "--out", str(out), *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]


def wait_for(procs, timeout):
  logs = []
  try:
    for proc in procs:
      logs.append(proc.communicate(timeout=timeout)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(output folder of the two processes, single-process reference), computed side by side."""
  out = tmp_path_factory.mktemp("multihost")
  procs = start_workers(out)
  try:
    reference = single_process()
  finally:
    wait_for(procs, timeout=180)
  return out, reference


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
  """(output folder, shared workdir) of both processes running every stage of the tiny pipeline."""
  out = tmp_path_factory.mktemp("multihost_pipeline")
  workdir = out / "workdir"
  wait_for(start_workers(out, "--workdir", str(workdir), "--stages", ",".join(pipeline.STAGES)), timeout=600)
  return out, workdir


def test_each_process_loads_only_its_rows(runs):
  out, _ = runs
  results = [json.loads((out / f"result_{i}.json").read_text()) for i in range(2)]
  for r in results:
    assert r["process_count"] == 2 and r["global_devices"] == 4 and r["local_devices"] == 2
    assert not r["q_fully_addressable"] and r["q_local_shards"] == 2
    assert r["key_ok"]
  rows = [r["rows"] for r in results]
  assert sorted(rows[0] + rows[1]) == list(range(worker.B))
  assert not set(rows[0]) & set(rows[1])


def test_two_processes_match_one(runs):
  out, (loss, params) = runs
  for i in range(2):
    result = json.loads((out / f"result_{i}.json").read_text())
    assert result["loss"] == pytest.approx(loss, abs=TOL)
  gathered = dict(np.load(out / "params.npz"))
  assert set(gathered) == set(params)
  for name, value in params.items():
    np.testing.assert_allclose(gathered[name], value, atol=TOL, err_msg=name)


def test_only_process_0_writes_the_shared_workdir(pipeline_runs):
  out, workdir = pipeline_runs
  results = [json.loads((out / f"result_{i}.json").read_text()) for i in range(2)]
  assert all(r["process_count"] == 2 for r in results)
  assert results[1]["written"] == []  # checkpoint steps aside (orbax writes them from every process)
  written = set(results[0]["written"])
  for stage in pipeline.STAGES:
    assert {f"{stage}/DONE.json", f"{stage}/config.json"} <= written
  assert {"config.json", "rm/eval.json", "eval/eval.json", "eval/sft_completions.jsonl"} <= written
  # Both processes computed the same results.
  for stage in pipeline.STAGES:
    same = [json.dumps({k: v for k, v in r["summaries"][stage].items() if k not in ("seconds", "compile_seconds")},
                       sort_keys=True)
            for r in results]
    assert same[0] == same[1], stage


def test_each_metrics_row_is_written_once(pipeline_runs):
  _, workdir = pipeline_runs
  steps = {"sft": 6, "rm": 4, "ppo": 3}
  assert sorted(p.name for p in (workdir / "metrics").iterdir()) == [f"{s}.jsonl" for s in sorted(steps)]
  for stage, total in steps.items():
    rows = read_metrics(workdir / "metrics" / f"{stage}.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, total + 1)), stage
    evals = [r["step"] for r in rows if "loss" not in r]
    assert evals == sorted(set(evals)), stage
  assert len((workdir / "eval" / "sft_completions.jsonl").read_text().splitlines()) == 24
  assert len(list((workdir / "tensorboard" / "sft").iterdir())) == 1
