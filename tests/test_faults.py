"""Faults a long run meets: kill -9, SIGTERM, NaN/inf, torn checkpoints, and errors a user can act on.

The kill and SIGTERM tests run `python -m safecomp.train` in subprocesses on a tiny config and compare
the interrupted-and-resumed run with an uninterrupted one, bit for bit. The subprocesses share a JAX
compilation cache so that each restart costs seconds.
"""
import math
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from safecomp.errors import ConfigError
from flax.training import train_state

from safecomp.errors import CheckpointError
from safecomp.training import loop as loop_lib
from safecomp.training import pipeline
from safecomp.training import ppo as ppo_stage
from safecomp.training.checkpoints import StageCheckpointer
from safecomp.training.metrics import MetricWriter, read_metrics

from tests.conftest import REPO_ROOT, demo_config

DEMO = str(REPO_ROOT / "configs" / "demo.py")
SFT_STEPS, PPO_ITERATIONS = 24, 16
# One command for every run: SFT long enough to be killed half-way, checkpoints every 3 SFT steps
# (metrics are logged every 2, so the two cadences disagree), every 2 PPO iterations. PPO is graded by
# the oracle, which spares the reward-model stage; one SFT batch shape means one compilation.
OVERRIDES = {"stages": ("sft", "ppo"), "reward.grader": "oracle", "sft.steps": SFT_STEPS,
             "sft.checkpoint_every": 3, "sft.log_every": 2, "sft.eval_every": 6, "ppo.iterations": PPO_ITERATIONS,
             "ppo.checkpoint_every": 2, "pad_multiple": 160}
ARGS = ("--config", f"{DEMO}:size=tiny",
        *(f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in OVERRIDES.items()))
TIMEOUT = 300


# -- helpers ---------------------------------------------------------------------------------------
def _config(**overrides):
  """The config `ARGS` describes, with more overrides (dotted keys)."""
  return demo_config(**dict(OVERRIDES, **overrides))


def _env(cache_dir):
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


class Run:
  """`python -m safecomp.train ARGS --workdir W` in the background, output to files."""

  def __init__(self, workdir, cache_dir, *extra):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(self.workdir.glob("run*.out")))
    self.out_path, self.err_path = self.workdir / f"run{n}.out", self.workdir / f"run{n}.err"
    with self.out_path.open("w") as out, self.err_path.open("w") as err:
      self.proc = subprocess.Popen([sys.executable, "-m", "safecomp.train", *ARGS, *extra,
                                    "--workdir", str(self.workdir)],
                                   cwd=REPO_ROOT, env=_env(cache_dir), stdout=out, stderr=err)

  @property
  def stdout(self):
    return self.out_path.read_text()

  @property
  def stderr(self):
    return self.err_path.read_text()

  def wait(self, timeout=TIMEOUT):
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      pytest.fail(f"run did not finish in {timeout}s:\n{self.stderr[-3000:]}")

  def wait_for_step(self, stage, minimum, timeout=TIMEOUT):
    """Polls `workdir/<stage>/` until a checkpoint step >= `minimum` exists."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      if any(s >= minimum for s in _steps(self.workdir / stage)):
        return
      if self.proc.poll() is not None:
        pytest.fail(f"run exited ({self.proc.returncode}) before {stage} step {minimum}:\n{self.stderr[-3000:]}")
      time.sleep(0.01)
    pytest.fail(f"no {stage} checkpoint >= {minimum} after {timeout}s")

  def signal(self, signum):
    os.kill(self.proc.pid, signum)


def _steps(stage_dir):
  stage_dir = pathlib.Path(stage_dir)
  return sorted(int(p.name) for p in stage_dir.iterdir() if p.name.isdigit()) if stage_dir.is_dir() else []


def _resumed_from(text, stage):
  found = re.findall(rf"\[{stage}\] resumed from step (\d+)", text)
  return [int(s) for s in found]


def final_trees(workdir):
  """{stage: the whole final checkpoint (params, optimizer state, step)}, restored by the checkpointer."""
  p = pipeline.Pipeline(_config(), workdir)
  out = {}
  _, init = p.init_model(("lm",), seed_offset=1)
  tx = loop_lib.make_optimizer(p.config.sft, p.config.sft.steps)
  abstract = jax.eval_shape(lambda: loop_lib.checkpoint_tree(loop_lib.new_state(init, tx)))  # pylint: disable=protected-access
  out["sft"] = p.final_params("sft", abstract)
  _, policy_init, _ = ppo_stage.actor_critic(p, trained=False)
  abstract = jax.eval_shape(lambda: ppo_stage.rl_tree(ppo_stage.initial_state(p, policy_init)))
  out["ppo"] = p.final_params("ppo", abstract)
  return out


def assert_trees_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  assert leaves_a, "empty checkpoint"
  for path, x, y in zip(jax.tree_util.tree_flatten_with_path(a)[0], leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path[0]
    assert np.array_equal(x, y), f"{jax.tree_util.keystr(path[0])} differs"


@pytest.fixture
def no_pickle(monkeypatch):
  """Any unpickling raises."""
  import _pickle  # pylint: disable=import-outside-toplevel

  def refuse(*args, **kwargs):
    raise AssertionError("a checkpoint restore used pickle")

  for module in (pickle, _pickle):
    monkeypatch.setattr(module, "load", refuse)
    monkeypatch.setattr(module, "loads", refuse)
  monkeypatch.setattr(pickle, "Unpickler", refuse)


# -- kill -9 and SIGTERM ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
  """An uninterrupted run, then the same command killed and restarted until it completes:

  run 0: kill -9 half-way through SFT;  run 1: resumes SFT, kill -9 half-way through PPO;
  run 2: resumes PPO, SIGTERM half-way;  run 3: resumes PPO and completes.
  The uninterrupted run goes first and fills the compilation cache, so the others start in seconds.
  """
  root = tmp_path_factory.mktemp("faults")
  cache = root / "jax_cache"
  reference = Run(root / "reference", cache)
  reference.wait()
  workdir = root / "interrupted"
  runs, notes = [], {}

  runs.append(Run(workdir, cache))
  runs[0].wait_for_step("sft", 6)
  runs[0].signal(signal.SIGKILL)
  runs[0].wait()
  notes["sft_steps_at_kill"] = _steps(workdir / "sft")

  runs.append(Run(workdir, cache))
  runs[1].wait_for_step("ppo", 4)
  runs[1].signal(signal.SIGKILL)
  runs[1].wait()
  notes["ppo_steps_at_kill"] = _steps(workdir / "ppo")

  runs.append(Run(workdir, cache))
  runs[2].wait_for_step("ppo", max(notes["ppo_steps_at_kill"]) + 4)
  notes["ppo_steps_at_sigterm"] = _steps(workdir / "ppo")
  runs[2].signal(signal.SIGTERM)
  runs[2].wait()
  notes["ppo_steps_after_sigterm"] = _steps(workdir / "ppo")
  notes["ppo_done_after_sigterm"] = (workdir / "ppo" / "DONE.json").exists()

  runs.append(Run(workdir, cache))
  runs[3].wait()
  return {"reference": reference, "runs": runs, "workdir": workdir, "cache": cache, **notes}


def test_kill_9_mid_sft_resumes_from_the_last_checkpoint(interrupted):
  first, second = interrupted["runs"][:2]
  assert first.proc.returncode == -signal.SIGKILL
  workdir = interrupted["workdir"]
  at_kill = interrupted["sft_steps_at_kill"]
  assert at_kill and max(at_kill) < SFT_STEPS, f"killed after SFT finished: {at_kill}"
  assert "[sft] complete" not in second.stdout
  assert _resumed_from(second.stderr, "sft") == [max(at_kill)]
  assert "[sft] starting" in second.stdout
  assert (workdir / "sft" / "DONE.json").is_file()


def test_kill_9_mid_ppo_resumes_from_the_last_checkpoint(interrupted):
  second, third = interrupted["runs"][1:3]
  assert second.proc.returncode == -signal.SIGKILL
  at_kill = interrupted["ppo_steps_at_kill"]
  assert at_kill and max(at_kill) < PPO_ITERATIONS, f"killed after PPO finished: {at_kill}"
  assert "[sft] complete" in third.stdout
  assert _resumed_from(third.stderr, "ppo") == [max(at_kill)]


def test_sigterm_saves_a_checkpoint_and_exits_0(interrupted):
  third, fourth = interrupted["runs"][2:]
  assert third.proc.returncode == 0, third.stderr[-3000:]
  saved = re.findall(r"\[ppo\] SIGTERM: checkpoint saved at step (\d+); exiting", third.stderr)
  assert len(saved) == 1, third.stderr[-3000:]
  step = int(saved[0])
  assert step > max(interrupted["ppo_steps_at_sigterm"]) or step in interrupted["ppo_steps_at_sigterm"]
  assert step == max(interrupted["ppo_steps_after_sigterm"])  # the newest checkpoint is the SIGTERM one
  assert not interrupted["ppo_done_after_sigterm"]
  # The rerun picks up exactly there and completes.
  assert _resumed_from(fourth.stderr, "ppo") == [step]
  assert fourth.proc.returncode == 0, fourth.stderr[-3000:]
  assert (interrupted["workdir"] / "ppo" / "DONE.json").is_file()


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(interrupted):
  reference = interrupted["reference"]
  assert reference.proc.returncode == 0, reference.stderr[-3000:]
  assert not _resumed_from(reference.stderr, "sft") and not _resumed_from(reference.stderr, "ppo")
  resumed, uninterrupted = final_trees(interrupted["workdir"]), final_trees(reference.workdir)
  for stage in ("sft", "ppo"):
    assert_trees_equal(resumed[stage], uninterrupted[stage])
  assert int(resumed["ppo"]["step"]) > 0


@pytest.mark.parametrize("stage,steps", [("sft", SFT_STEPS), ("ppo", PPO_ITERATIONS)])
def test_resumed_metrics_have_every_step_once(interrupted, stage, steps):
  rows = read_metrics(interrupted["workdir"] / "metrics" / f"{stage}.jsonl")
  train_rows = [r["step"] for r in rows if "loss" in r]
  assert train_rows == list(range(1, steps + 1))
  if stage == "sft":
    eval_rows = [r["step"] for r in rows if "eval_loss" in r]
    assert eval_rows == list(range(6, steps + 1, 6))
  # ... and the same rows, in the same order, with the same values as the uninterrupted run.
  assert rows == read_metrics(interrupted["reference"].workdir / "metrics" / f"{stage}.jsonl")


# -- checkpoints: pickle-free, torn directories, another config -------------------------------------
def test_checkpoints_need_no_pickle(interrupted, no_pickle):
  del no_pickle
  for workdir in (interrupted["workdir"], interrupted["reference"].workdir):
    for path in workdir.rglob("*"):
      assert path.suffix not in (".pkl", ".pickle", ".pck"), path
  trees = final_trees(interrupted["workdir"])  # restores with unpickling disabled
  assert set(trees) == {"sft", "ppo"}


def test_torn_newest_checkpoint_is_skipped_and_the_stage_redone(interrupted, tmp_path):
  """Truncate a data file of the newest SFT step: the rerun resumes from the previous step, saves the
  torn step again and ends with the parameters of the uninterrupted run."""
  workdir = tmp_path / "torn"
  shutil.copytree(interrupted["reference"].workdir, workdir, ignore=shutil.ignore_patterns("run*.out", "run*.err"))
  sft_dir = workdir / "sft"
  newest, previous = _steps(sft_dir)[-1], _steps(sft_dir)[-2]
  assert newest == SFT_STEPS
  data = sorted((p for p in (sft_dir / str(newest) / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                key=lambda p: p.stat().st_size)[-1]
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  (sft_dir / "DONE.json").unlink()

  run = Run(workdir, interrupted["cache"])
  assert run.wait() == 0, run.stderr[-3000:]
  assert _resumed_from(run.stderr, "sft") == [previous]
  assert "[ppo] complete" in run.stdout
  assert _steps(sft_dir)[-1] == newest and list(sft_dir.glob(f"unreadable.{newest}.*"))
  reference = final_trees(interrupted["reference"].workdir)
  assert_trees_equal(final_trees(workdir)["sft"], reference["sft"])


def test_checkpointer_skips_a_torn_step_and_saves_it_again(tmp_path):
  def tree(v):
    return {"params": {"w": np.full((8, 4), v, np.float32)}, "step": np.asarray(v, np.int32)}

  ckpt = StageCheckpointer(tmp_path / "stage", max_to_keep=3)
  for step in (1, 2, 3):
    ckpt.save(step, tree(step))
  (tmp_path / "stage" / "3" / "meta" / "metadata").write_text('{"ste')  # torn mid-write
  restored, meta = StageCheckpointer(tmp_path / "stage").restore(tree(0))
  assert meta["step"] == 2 and np.array_equal(restored["params"]["w"], tree(2)["params"]["w"])
  again = StageCheckpointer(tmp_path / "stage", max_to_keep=3)
  assert again.steps() == [1, 2]
  again.save(3, tree(3))
  assert again.restore(tree(0))[1]["step"] == 3


def test_no_readable_checkpoint_says_what_to_do(tmp_path):
  ckpt = StageCheckpointer(tmp_path / "stage")
  ckpt.save(1, {"w": np.ones(3, np.float32)})
  (tmp_path / "stage" / "1" / "meta" / "metadata").unlink()
  with pytest.raises(CheckpointError, match=r"no readable checkpoint.*step 1.*Delete .*stage"):
    StageCheckpointer(tmp_path / "stage").restore({"w": np.zeros(3, np.float32)})


def test_cli_checkpoint_from_another_config_names_the_key(interrupted):
  run = Run(interrupted["workdir"], interrupted["cache"], "--config.model.hidden_size=48")
  assert run.wait() != 0
  assert "model.hidden_size: trained with 32, this run has 48" in run.stderr
  assert "Traceback" not in run.stderr


def test_a_stage_that_stops_on_an_error_shows_only_that_error(tmp_path):
  """No orbax traceback ("cannot schedule new futures after interpreter shutdown") after the real error.

  The reward-model stage finds no finished SFT stage and stops at once, while the SFT directory holds
  many leftover entries (set-aside unreadable steps) for orbax's start-up scan of temporary
  directories: a scan still running in its own thread at exit printed that traceback.
  """
  workdir = tmp_path / "run"
  for i in range(2000):
    (workdir / "sft" / f"unreadable.{i}.20260101-000000").mkdir(parents=True)
  result = subprocess.run([sys.executable, "-m", "safecomp.train", "--config", f"{DEMO}:size=tiny",
                           "--config.stages=('rm',)", "--workdir", str(workdir)],
                          cwd=REPO_ROOT, env=_env(tmp_path / "jax_cache"), capture_output=True, text=True,
                          timeout=TIMEOUT)
  assert result.returncode == 1
  assert "error: stage 'sft' has no complete checkpoint" in result.stderr
  assert "cannot schedule new futures" not in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- NaN / inf ---------------------------------------------------------------------------------------
def _toy_state():
  return train_state.TrainState.create(apply_fn=None, params={"w": np.zeros(3, np.float32)}, tx=optax.sgd(0.1))


def _toy_step(bad_steps):
  """Gradient 1 on every weight; a NaN loss and gradient on the (0-based) steps in `bad_steps`."""
  history = []

  def step_fn(state, step):
    value = np.nan if step in bad_steps else 1.0
    grads = {"w": np.full(3, value, np.float32)}
    before = np.asarray(state.params["w"])
    state, nonfinite = loop_lib.apply_if_finite(state, grads, np.float32(value))
    history.append((before, np.asarray(state.params["w"])))
    return state, {"loss": np.float32(value), "nonfinite": nonfinite}

  return step_fn, history


def test_isolated_nonfinite_steps_are_skipped_and_reported(tmp_path, capfd):
  step_fn, history = _toy_step(bad_steps={3, 7})
  state = loop_lib.run_loop(
      _toy_state(), step_fn, lambda step: step, StageCheckpointer(tmp_path / "toy"), MetricWriter(tmp_path, "toy", False),
      loop_lib.LoopConfig(total_steps=10, log_every=2, checkpoint_every=5, max_consecutive_nonfinite=2, desc="toy"))
  err = capfd.readouterr().err
  for step, (before, after) in enumerate(history):
    if step in (3, 7):
      assert np.array_equal(before, after), step  # not applied
    else:
      assert not np.array_equal(before, after), step
  assert re.findall(r"\[toy\] non-finite loss or update at step (\d+)", err) == ["4", "8"]
  assert int(state.step) == 8 and np.allclose(state.params["w"], -0.8)
  rows = read_metrics(tmp_path / "metrics" / "toy.jsonl")
  assert [r["step"] for r in rows] == list(range(1, 11))
  assert [r["step"] for r in rows if r["nonfinite"]] == [4, 8] and rows[3]["loss"] == "nan"


def test_repeated_nonfinite_steps_stop_with_the_last_good_checkpoint_intact(tmp_path, capfd):
  step_fn, history = _toy_step(bad_steps=set(range(6, 100)))
  ckpt = StageCheckpointer(tmp_path / "toy")
  with pytest.raises(loop_lib.NonFiniteLossError) as info:
    loop_lib.run_loop(
        _toy_state(), step_fn, lambda step: step, ckpt, MetricWriter(tmp_path, "toy", False),
        loop_lib.LoopConfig(total_steps=20, log_every=1, checkpoint_every=5, max_consecutive_nonfinite=3,
                            desc="toy"))
  message = str(info.value)
  assert "3 consecutive non-finite steps (last at step 9)" in message
  assert f"last good checkpoint is step 5 in {ckpt.directory}" in message
  assert re.findall(r"non-finite loss or update at step (\d+)", capfd.readouterr().err) == ["7", "8", "9"]
  assert len(history) == 9 and np.array_equal(history[-1][0], history[-1][1])
  assert ckpt.steps() == [5]
  tree, meta = StageCheckpointer(tmp_path / "toy").restore(
      jax.tree.map(np.asarray, loop_lib.checkpoint_tree(_toy_state())))
  assert meta["step"] == 5 and int(tree["step"]) == 5 and np.allclose(tree["params"]["w"], -0.5)


def test_corrupt_token_in_a_real_sft_batch_is_skipped(tmp_path, capfd):
  """A token id past the vocabulary makes the real SFT loss NaN: that step is reported and not applied."""
  from safecomp.training import batching  # pylint: disable=import-outside-toplevel
  from safecomp.training import sft  # pylint: disable=import-outside-toplevel
  config = _config()
  p = pipeline.Pipeline(config, tmp_path)
  conversations, _ = p.task.sft_conversations("train")
  arrays = batching.conversations_to_arrays(p.tokenizer, conversations, config.chat_template, config.max_seq_len,
                                            "SFT rows")
  model, params = p.init_model(("lm",), seed_offset=1)
  state = loop_lib.new_state(params, loop_lib.make_optimizer(config.sft, 6))  # pylint: disable=protected-access
  template = jax.tree.map(np.asarray, loop_lib.checkpoint_tree(state))  # the step donates `state`
  step = sft.make_sft_step(model)
  params_seen = []

  def step_fn(state, batch):
    params_seen.append(jax.device_get(state.params))
    return step(state, batch)

  def batch_fn(i):
    batch = batching.take(arrays, batching.batch_indices(i, len(conversations), 8, 0))
    if i in (2, 4, 5):
      batch["tokens"] = batch["tokens"].copy()
      batch["tokens"][0, 5] = p.tokenizer.vocab_size + 7
    return batch

  ckpt = StageCheckpointer(tmp_path / "sft")
  with pytest.raises(loop_lib.NonFiniteLossError, match="last good checkpoint is step 3"):
    loop_lib.run_loop(state, step_fn, batch_fn, ckpt, MetricWriter(tmp_path, "sft", False),
                      loop_lib.LoopConfig(6, 1, 3, max_consecutive_nonfinite=2, desc="sft"))
  assert re.findall(r"non-finite loss or update at step (\d+)", capfd.readouterr().err) == ["3", "5", "6"]
  rows = read_metrics(tmp_path / "metrics" / "sft.jsonl")
  assert [r["loss"] for r in rows if r["nonfinite"]] == ["nan"] * 3
  assert all(math.isfinite(r["loss"]) for r in rows if not r["nonfinite"])
  assert_trees_equal(params_seen[2], params_seen[3])  # step 3 (index 2) left the parameters alone
  assert not np.array_equal(params_seen[3]["embed"]["embedding"], params_seen[4]["embed"]["embedding"])
  tree, _ = StageCheckpointer(tmp_path / "sft").restore(template)
  assert_trees_equal(tree["params"], params_seen[3])  # the step-3 checkpoint: after steps 1, 2 (3 skipped)


def test_infinite_learning_rate_stops_the_pipeline_with_the_checkpoint_intact(tmp_path, capfd):
  config = _config(**{"stages": ("sft",), "sft.steps": 6, "sft.learning_rate": float("inf")})
  with pytest.raises(loop_lib.NonFiniteLossError, match=r"5 consecutive non-finite steps.*last good checkpoint "
                                                        r"is step 3"):
    pipeline.run(config, tmp_path)
  assert re.findall(r"\[sft\] non-finite loss or update at step (\d+)",
                    capfd.readouterr().err) == ["1", "2", "3", "4", "5"]
  p = pipeline.Pipeline(config, tmp_path)
  _, init = p.init_model(("lm",), seed_offset=1)
  abstract = jax.eval_shape(lambda: loop_lib.checkpoint_tree(
      loop_lib.new_state(init, loop_lib.make_optimizer(config.sft, 6))))  # pylint: disable=protected-access
  tree, meta = p.checkpointer("sft").restore(abstract)
  assert meta["step"] == 3 and int(tree["step"]) == 0  # no update was ever applied
  assert_trees_equal(tree["params"], init)
  assert not (tmp_path / "sft" / "DONE.json").exists()


# -- missing data ------------------------------------------------------------------------------------
def test_missing_public_dataset_says_how_to_build_it(tmp_path):
  # Importing the builders registers the public datasets with tfds.
  from safecomp.data import public  # pylint: disable=import-outside-toplevel,unused-import
  from safecomp.data import readers  # pylint: disable=import-outside-toplevel
  with pytest.raises(FileNotFoundError) as info:
    readers.load_split("xstest/prompts", "test", data_dir=tmp_path)
  message = str(info.value)
  assert "'xstest/prompts' is not prepared" in message and str(tmp_path) in message
  assert "download_and_prepare()" in message


def test_missing_sft_file_is_named(tmp_path):
  config = _config(stages=("sft",))
  config.sft.train_file = str(tmp_path / "no_such_rows.jsonl")
  with pytest.raises(ConfigError, match=r"sft\.train_file.*no_such_rows\.jsonl"):
    pipeline.run(config, tmp_path / "run")
