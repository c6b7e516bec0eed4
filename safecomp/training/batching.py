"""Token arrays for the stages, and batches that are a pure function of the step index."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from safecomp.tokenizers import encode_chat, encode_prompt


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int, left: bool = False) -> np.ndarray:
  """Pads (or, past `length`, truncates from the end) each row into an int32 [N, length] array."""
  out = np.full((len(rows), length), pad_id, dtype=np.int32)
  for i, row in enumerate(rows):
    row = list(row)[:length]
    if left:
      out[i, length - len(row):] = row
    else:
      out[i, :len(row)] = row
  return out


def conversations_to_arrays(tokenizer, conversations: Sequence[list[dict]], family: str, max_len: int,
                            what: str = "conversations") -> dict[str, np.ndarray]:
  """Right-padded `tokens`, `attention_mask` and `loss_mask` (assistant tokens) for SFT / RM inputs."""
  ids, masks = [], []
  for messages in conversations:
    tokens, assistant = encode_chat(tokenizer, messages, family)
    ids.append(tokens)
    masks.append(assistant)
  truncated = sum(len(t) > max_len for t in ids)
  if truncated:
    logging.warning("%d of %d %s are longer than max_seq_len=%d and were truncated",
                    truncated, len(ids), what, max_len)
  pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
  tokens = pad_rows(ids, max_len, pad_id)
  lengths = np.minimum([len(t) for t in ids], max_len)
  attention = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.int32)
  loss_mask = pad_rows(masks, max_len, 0)
  return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask * attention,
          "truncated": np.asarray(truncated)}


def prompts_to_arrays(tokenizer, prompts: Sequence[list[dict]], family: str, max_len: int) -> dict:
  """Left-padded prompt tokens (ending in the generation prompt) for sampling."""
  ids = [encode_prompt(tokenizer, messages, family) for messages in prompts]
  too_long = [i for i, t in enumerate(ids) if len(t) > max_len]
  if too_long:
    raise ValueError(f"{len(too_long)} prompts are longer than max_prompt_len={max_len} "
                     f"(first: index {too_long[0]}, {len(ids[too_long[0]])} tokens); raise max_prompt_len")
  pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
  tokens = pad_rows(ids, max_len, pad_id, left=True)
  lengths = np.asarray([len(t) for t in ids])
  mask = (np.arange(max_len)[None, :] >= (max_len - lengths)[:, None]).astype(np.int32)
  return {"tokens": tokens, "attention_mask": mask}


def pack_rows(arrays: dict[str, np.ndarray], order: Sequence[int]) -> dict[str, np.ndarray]:
  """Packs right-padded conversations into rows of the same width, several per row (sequence packing).

  Conversations are taken in `order` and each goes into the first row with room for it (first fit), so
  rows are filled in a fixed, seeded way. Every row gets `segment_ids` (1, 2, ... per conversation, 0
  for padding) and `positions` (RoPE positions restarting at 0 in each conversation); the model attends
  within a segment only, and `loss_mask` stays each conversation's own. Nothing is dropped or cut.
  """
  width = arrays["tokens"].shape[1]
  lengths = arrays["attention_mask"].sum(axis=1)
  fill, members = [], []
  for i in order:
    n = int(lengths[i])
    row = next((r for r, used in enumerate(fill) if used + n <= width), None)
    if row is None:
      fill.append(0)
      members.append([])
      row = len(fill) - 1
    members[row].append(i)
    fill[row] += n
  out = {k: np.zeros((len(fill), width), arrays[k].dtype) for k in ("tokens", "attention_mask", "loss_mask")}
  out["segment_ids"] = np.zeros((len(fill), width), np.int32)
  out["positions"] = np.zeros((len(fill), width), np.int32)
  for row, items in enumerate(members):
    start = 0
    for segment, i in enumerate(items, start=1):
      n = int(lengths[i])
      for key in ("tokens", "attention_mask", "loss_mask"):
        out[key][row, start:start + n] = arrays[key][i, :n]
      out["segment_ids"][row, start:start + n] = segment
      out["positions"][row, start:start + n] = np.arange(n)
      start += n
  return out


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
  """Indices of batch `step`: epochs are seeded permutations, so any step is computable on its own."""
  if num_examples <= 0:
    raise ValueError("no examples to batch")
  start = step * batch_size
  out = []
  while len(out) < batch_size:
    epoch, offset = divmod(start + len(out), num_examples)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    take = min(batch_size - len(out), num_examples - offset)
    out.extend(perm[offset:offset + take])
  return np.asarray(out, dtype=np.int64)


def take(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v[index] for k, v in arrays.items() if getattr(v, "ndim", 0) >= 1}


def trim_padding(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """Cuts right padding shared by the whole batch, keeping the length a multiple of `multiple`.

  Few distinct lengths means few compilations, and short batches stop paying for the longest row
  of the dataset.
  """
  if multiple <= 0:
    return batch
  full = batch["tokens"].shape[1]
  longest = int(batch["attention_mask"].sum(axis=1).max())
  length = min(full, -(-longest // multiple) * multiple)
  return {k: v[:, :length] if getattr(v, "ndim", 0) == 2 and v.shape[1] == full else v
          for k, v in batch.items()}
