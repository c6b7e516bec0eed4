"""Answers from a policy for a list of prompts (eval stage, reward-model samples, eval CLI), and the
prompt-length check every stage applies to a task's prompts."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

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


def generate_texts(model, params, tokenizer, conversations: Sequence[list[dict]], family: str,
                   max_prompt_len: int, cfg: rollout_lib.RolloutConfig, batch_size: int, seed: int,
                   desc: str) -> list[str]:
  """Responses for every conversation, in batches of a fixed shape (one compilation)."""
  arrays = batching.prompts_to_arrays(tokenizer, conversations, family, max_prompt_len)
  n = len(conversations)
  sample = jax.jit(lambda params, prompts, mask, rng: rollout_lib.sample(model, params, prompts, mask, rng, cfg))
  texts: list[str] = []
  bar = progress(n, desc)
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size) % n  # pad the last batch by wrapping around
    out = jax.device_get(sample(params, arrays["tokens"][index], arrays["attention_mask"][index],
                                jax.random.key(seed + start)))
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
