"""Sequence packing (`sft.packing`): several conversations per row, each attending to itself only, with
RoPE positions restarting per conversation and its own loss mask; the same numbers as one per row."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from safecomp import models
from safecomp.training import batching, pipeline
from safecomp.training import sft as sft_lib

from tests.conftest import demo_config

WIDTH = 24


def _conversations(n=7, seed=0):
  """Right-padded rows of varied length, with a loss mask on each row's second half."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, 13, n)
  tokens = np.zeros((n, WIDTH), np.int32)
  attention, loss = np.zeros_like(tokens), np.zeros_like(tokens)
  for i, length in enumerate(lengths):
    tokens[i, :length] = rng.integers(3, 64, length)
    attention[i, :length] = 1
    loss[i, length // 2:length] = 1
  return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss}, lengths


def _segments(packed, arrays, lengths):
  """(row, slots, conversation index) of every packed segment, matched by its tokens."""
  out = []
  for row in range(len(packed["tokens"])):
    seg = packed["segment_ids"][row]
    for s in sorted(set(seg[seg > 0].tolist())):
      where = np.flatnonzero(seg == s)
      match = [i for i in range(len(lengths)) if lengths[i] == len(where)
               and (arrays["tokens"][i, :len(where)] == packed["tokens"][row, where]).all()
               and (arrays["loss_mask"][i, :len(where)] == packed["loss_mask"][row, where]).all()]
      assert match, (row, s)
      out.append((row, where, match[0]))
  return out


def test_pack_rows_keeps_every_conversation_whole():
  arrays, lengths = _conversations()
  packed = batching.pack_rows(arrays, np.arange(len(lengths))[::-1])
  assert len(packed["tokens"]) < len(lengths)  # several per row
  segments = _segments(packed, arrays, lengths)
  for row, where, _ in segments:
    assert (np.diff(where) == 1).all() and (packed["positions"][row, where] == np.arange(len(where))).all()
  assert sorted(i for _, _, i in segments) == list(range(len(lengths)))
  assert packed["attention_mask"].sum() == lengths.sum() and (packed["attention_mask"] == (packed["segment_ids"] > 0)).all()


def test_a_packed_row_computes_what_each_conversation_computes_alone():
  cfg = models.tiny(max_position_embeddings=64)
  model, params = models.Transformer(cfg), models.init_params(cfg, jax.random.key(0))
  arrays, lengths = _conversations()
  packed = batching.pack_rows(arrays, np.arange(len(lengths)))
  alone = model.apply({"params": params}, arrays["tokens"], attention_mask=arrays["attention_mask"])["logits"]
  together = model.apply({"params": params}, packed["tokens"], attention_mask=packed["attention_mask"],
                         segment_ids=packed["segment_ids"])["logits"]  # positions derived from the segments
  for row, where, i in _segments(packed, arrays, lengths):
    np.testing.assert_allclose(together[row, where], alone[i, :lengths[i]], atol=2e-5, rtol=1e-5)


def test_the_packed_loss_is_the_token_weighted_loss_of_the_conversations():
  cfg = models.tiny(max_position_embeddings=64)
  model, params = models.Transformer(cfg), models.init_params(cfg, jax.random.key(1))
  arrays, lengths = _conversations(seed=3)
  packed = batching.pack_rows(arrays, np.random.default_rng(0).permutation(len(lengths)))
  plain_loss, plain = sft_lib.sft_loss(model, params, {k: jnp.asarray(v) for k, v in arrays.items()})
  packed_loss, metrics = sft_lib.sft_loss(model, params, {k: jnp.asarray(v) for k, v in packed.items()})
  assert float(metrics["target_tokens"]) == float(plain["target_tokens"])
  np.testing.assert_allclose(float(packed_loss), float(plain_loss), rtol=1e-5)


def test_the_sft_stage_trains_on_packed_rows(tmp_path, capsys):
  config = demo_config(**{"stages": ("sft",), "sft.packing": True})
  summary = pipeline.run(config, tmp_path)["sft"]
  assert np.isfinite(summary["eval_loss"])
  assert "[sft] packing:" in capsys.readouterr().out
  rows = [json.loads(line) for line in (tmp_path / "metrics" / "sft.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0]
