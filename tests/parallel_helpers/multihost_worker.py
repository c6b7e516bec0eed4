"""One process of a multi-process sharded SFT step on CPU (gloo collectives).

Started by tests/test_multihost.py, once per process:

    python tests/parallel_helpers/multihost_worker.py --process_id 0 --num_processes 2 \
        --port 12345 --local_devices 2 --out /tmp/dir

Each process owns `local_devices` CPU devices; together they form a data=2 x fsdp=2 mesh. Every
process loads only its own rows of the global batch (`parallel.host_rows`), runs one sharded SFT
step, and writes `result_<id>.json` (loss, rows it loaded); process 0 also writes the gathered
updated parameters to `params.npz`.

With `--workdir DIR --stages sft,rm` each process instead runs `pipeline.run` of the tiny demo config
into the shared DIR, and `result_<id>.json` lists the files of DIR the process wrote itself (seen by
an audit hook; the checkpoint step directories, which orbax writes from every process, are left out).
"""
import argparse
import json
import os
import pathlib
import re
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

B, T = 8, 16


def sft_batch():
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 64, (B, T)).astype(np.int32)
  attention = np.ones((B, T), np.int32)
  attention[::2, -4:] = 0
  loss_mask = attention.copy()
  loss_mask[:, :5] = 0
  return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}


def optimizer():
  import optax  # pylint: disable=import-outside-toplevel
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.01))


def record_writes(workdir: pathlib.Path) -> list[str]:
  """Starts recording the files under `workdir` this process opens for writing, renames or deletes."""
  root = str(workdir.resolve())
  written = []
  # Checkpoint steps (and orbax's temporary ones) are written by every process, by design.
  orbax = re.compile(r"^[a-z]+/(\d+|[^/]*orbax-checkpoint-tmp[^/]*)(/|$)")
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

  def note(path):
    if isinstance(path, (str, bytes, os.PathLike)):
      path = os.path.abspath(os.fsdecode(path))
      if path.startswith(root + os.sep):
        relative = path[len(root) + 1:]
        if not orbax.match(relative):
          written.append(relative)

  def hook(event, args):
    if event == "open" and args[0] is not None:
      mode, flags = args[1], args[2]
      if (isinstance(mode, str) and set(mode) & set("wax+")) or (mode is None and flags & write_flags):
        note(args[0])
    elif event in ("os.rename", "os.remove", "shutil.rmtree"):
      note(args[0])
      if event == "os.rename":
        note(args[1])

  sys.addaudithook(hook)
  return written


def run_pipeline(args):
  """`pipeline.run` of the tiny demo config, this process being one of `num_processes`."""
  from safecomp import config as config_lib  # pylint: disable=import-outside-toplevel
  from safecomp.training import pipeline  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(args.workdir)
  repo = pathlib.Path(__file__).resolve().parents[2]
  config = config_lib.load_config(f"{repo / 'configs' / 'demo.py'}:size=tiny", [
      f"stages={tuple(args.stages.split(','))!r}", "distributed.initialize=True",
      f"distributed.coordinator_address=127.0.0.1:{args.port}",
      f"distributed.num_processes={args.num_processes}", f"distributed.process_id={args.process_id}"])
  written = record_writes(workdir)
  summaries = pipeline.run(config, workdir)
  (pathlib.Path(args.out) / f"result_{args.process_id}.json").write_text(json.dumps({
      "written": sorted(set(written)), "summaries": summaries, "process_count": jax.process_count()},
      default=str))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--local_devices", type=int, default=2)
  parser.add_argument("--out", required=True)
  parser.add_argument("--workdir", help="run the tiny pipeline into this shared workdir")
  parser.add_argument("--stages", default="sft")
  args = parser.parse_args()

  jax.config.update("jax_num_cpu_devices", args.local_devices)
  if args.workdir:
    run_pipeline(args)
    return
  import ml_collections  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax.training import train_state  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  from safecomp import models, parallel  # pylint: disable=import-outside-toplevel
  from safecomp.training import sft as sft_lib  # pylint: disable=import-outside-toplevel

  config = ml_collections.ConfigDict({
      "distributed": {"initialize": True, "coordinator_address": f"127.0.0.1:{args.port}",
                      "num_processes": args.num_processes, "process_id": args.process_id,
                      "local_device_ids": "", "cpu_collectives": "gloo"},
      "mesh": {"data": 2, "fsdp": -1, "tensor": 1},
  })
  assert parallel.maybe_initialize_distributed(config)
  assert jax.process_count() == args.num_processes, jax.process_count()

  cfg = models.tiny()
  model = models.Transformer(cfg)
  # Same seed on every process: each keeps only the slices its devices hold.
  params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
  tx = optimizer()
  create = lambda p: train_state.TrainState.create(apply_fn=None, params=p, tx=tx)
  mesh = parallel.make_mesh(config.mesh)
  state, shardings = parallel.init_sharded_state(
      create, params, parallel.param_shardings(cfg, mesh), mesh)

  full = sft_batch()
  batch_sh = parallel.batch_shardings(full, mesh)
  rows = parallel.host_rows(batch_sh["tokens"], B)
  local = {k: v[rows] for k, v in full.items()}  # this process loads only its rows
  step = parallel.shard_step(sft_lib.make_sft_step(model), mesh, parallel.DEFAULT_RULES,
                             shardings, batch_sh, global_batch=B)
  new_state, metrics = step(state, local)

  # Metrics come back replicated, so every process can read them like local arrays.
  loss = float(jax.device_get(metrics["loss"]))
  # PRNG keys (e.g. the PPO update's) become replicated global keys as well.
  key = parallel.put_batch({"rng": jax.random.key(5)}, {"rng": parallel.replicated(mesh)})["rng"]
  key_ok = bool(np.array_equal(np.asarray(jax.random.key_data(key).addressable_data(0)),
                               np.asarray(jax.random.key_data(jax.random.key(5)))))
  q = new_state.params["layers"]["attn"]["q"]["kernel"]
  gathered = multihost_utils.process_allgather(new_state.params, tiled=True)
  out = pathlib.Path(args.out)
  (out / f"result_{args.process_id}.json").write_text(json.dumps({
      "loss": loss, "rows": rows.tolist(), "key_ok": key_ok, "process_count": jax.process_count(),
      "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
      "q_fully_addressable": bool(q.is_fully_addressable),
      "q_local_shards": len(q.addressable_shards)}))
  if args.process_id == 0:
    flat = {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(gathered)[0]}
    np.savez(out / "params.npz", **flat)
  multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
  main()
