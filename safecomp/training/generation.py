"""Answers from a policy for a list of prompts (eval stage, reward-model samples, eval CLI), and the
prompt-length check every stage applies to a task's prompts."""
from __future__ import annotations

from typing import Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from safecomp import parallel
from safecomp.errors import ConfigError
from safecomp.prompts import Prompt
from safecomp.tokenizers import encode_prompt, end_of_turn
from safecomp.training import batching
from safecomp.training import rollout as rollout_lib
from safecomp.training.metrics import progress


def stop_ids(tokenizer, family: str) -> tuple[int, ...]:
  """The ids that end a response: the tokenizer's EOS and the chat format's end-of-turn token."""
  ids = [tokenizer.eos_id, tokenizer.token_to_id(end_of_turn(family)) if end_of_turn(family) else None]
  return tuple(dict.fromkeys(i for i in ids if i is not None))


def decode_responses(tokenizer, tokens: np.ndarray, mask: np.ndarray, stop: tuple[int, ...] = ()) -> list[str]:
  """Response text up to (not including) the stop token, keeping `<think>` markers for graders to strip."""
  specials = {tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id, *stop}
  out = []
  for row, row_mask in zip(np.asarray(tokens), np.asarray(mask)):
    ids = [int(t) for t, m in zip(row, row_mask) if m and int(t) not in specials]
    out.append(tokenizer.decode(ids, skip_special_tokens=False))
  return out


def _sampler(model, params, cfg: rollout_lib.RolloutConfig, mesh, rules, batch_size: int):
  """(params on the devices, `sample(params, batch, rng)`) for batches of `batch_size` rows.

  On a mesh of several devices the policy is split as in training (`param_shardings` under `rules`) and
  each batch over the data axes; every process passes the whole batch and gets every row back.
  """
  def sample_fn(params, batch, rng):
    return rollout_lib.sample(model, params, batch["tokens"], batch["attention_mask"], rng, cfg)

  if mesh is None or mesh.devices.size == 1:
    jitted = jax.jit(sample_fn)
    return params, lambda params, batch, rng: jax.device_get(jitted(params, batch, rng))
  param_sh = parallel.param_shardings(model.config, mesh, rules)
  example = {"tokens": np.zeros((batch_size, 1), np.int32), "attention_mask": np.zeros((batch_size, 1), np.int32)}
  batch_sh = parallel.batch_shardings(example, mesh, rules)
  step = parallel.ShardedStep(jax.jit(sample_fn, in_shardings=(param_sh, batch_sh, parallel.replicated(mesh))),
                              mesh, rules, batch_sh, batch_size)
  rows = parallel.host_rows(batch_sh["tokens"], batch_size)

  def sample(params, batch, rng):
    out = step(params, {k: v[rows] for k, v in batch.items()}, rng)
    return multihost_utils.process_allgather(out, tiled=True)

  return parallel.place(params, param_sh), sample


def generate_texts(model, params, tokenizer, conversations: Sequence[list[dict]], family: str,
                   max_prompt_len: int, cfg: rollout_lib.RolloutConfig, batch_size: int, seed: int,
                   desc: str, *, mesh=None, rules=parallel.DEFAULT_RULES) -> list[str]:
  """Responses for every conversation, in batches of a fixed shape (one compilation).

  With `mesh` (the run's training mesh, `rules` its logical-axis rules) the policy stays split over the
  devices as in training and each batch is split over the data axes, so a model too large for one device
  can answer; `batch_size` is then rounded up to a multiple of the batch axes. The same seed gives the
  same responses either way (greedy decoding token for token; see tests/test_sharding.py).
  """
  arrays = batching.prompts_to_arrays(tokenizer, conversations, family, max_prompt_len)
  n = len(conversations)
  if mesh is not None:
    divisor = parallel.batch_divisor(mesh, rules)
    batch_size = -(-batch_size // divisor) * divisor
  params, sample = _sampler(model, params, cfg, mesh, rules, batch_size)
  texts: list[str] = []
  bar = progress(n, desc)
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size) % n  # pad the last batch by wrapping around
    out = sample(params, {"tokens": arrays["tokens"][index], "attention_mask": arrays["attention_mask"][index]},
                 jax.random.key(seed + start))
    width = cfg.max_new_tokens
    batch_texts = decode_responses(tokenizer, out["sequences"][:, -width:], out["response_mask"],
                                   tuple(np.atleast_1d(cfg.eos_id).tolist()))
    take = min(batch_size, n - start)
    texts.extend(batch_texts[:take])
    bar.update(take)
  bar.close()
  return texts


def fitting_prompts(prompts: Sequence[Prompt], tokenizer, family: str, max_prompt_len: int,
                    what: str) -> list[Prompt]:
  """The prompts whose chat-formatted ids fit `max_prompt_len`; the others are reported and left out."""
  fits = [len(encode_prompt(tokenizer, p.message_list, family)) <= max_prompt_len for p in prompts]
  kept = [p for p, ok in zip(prompts, fits) if ok]
  if len(kept) < len(prompts):
    first = prompts[fits.index(False)]
    print(f"[{what}] {len(prompts) - len(kept)} of {len(prompts)} prompts are longer than max_prompt_len="
          f"{max_prompt_len} tokens and are left out (first: {first.uid!r} from {first.source or 'no source'}); "
          "raise max_prompt_len to keep them", flush=True)
  if not kept:
    raise ConfigError(f"config key 'max_prompt_len': no {what} prompt fits {max_prompt_len} tokens")
  return kept
