"""Teachers: an OpenAI-compatible server, any `messages -> text` function, or a local checkpoint; and
the spec-augmented prompt a teacher sees."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from safecomp import spec as spec_lib
from safecomp import tokenizers
from safecomp.datagen.protocols import Messages, PromptItem, TeacherPromptFn
from safecomp.graders.client import ChatClient, messages_key


@dataclasses.dataclass
class HttpTeacher:
  """A teacher behind an OpenAI-compatible server."""
  client: ChatClient
  temperature: float = 0.7
  max_tokens: int = 2048
  name: str = "http"

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    message = self.client.chat(messages, key=messages_key(messages), temperature=self.temperature,
                               max_tokens=self.max_tokens)
    content = message.get("content") or ""
    # vLLM / SGLang reasoning parsers put the chain of thought in a separate field.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
      return f"<think>{reasoning}</think>{content}"
    return content


@dataclasses.dataclass
class CallableTeacher:
  """Wraps any `messages -> text` function, e.g. sampling from a local safecomp model."""
  fn: Callable[[Sequence[Mapping[str, str]]], str]
  name: str = "local"

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    return self.fn(messages)


class LocalTeacher:
  """A local Hugging Face checkpoint as the teacher, no server needed: safecomp's KV-cache sampler over
  the checkpoint's chat format (e.g. an instruct model that reads the spec in its system turn).

  Sampling is seeded by `seed` and the request's content, so reruns and resumed runs draw the same text.
  """

  def __init__(self, path: str | os.PathLike, family: str, *, max_new_tokens: int = 512,
               temperature: float = 0.7, seed: int = 0, dtype: str = "float32"):
    # Lazy: JAX and model code, so that importing datagen (HTTP teachers, CLI) stays light.
    # pylint: disable=import-outside-toplevel
    import jax
    from safecomp import models
    from safecomp.training import generation
    self.tokenizer = tokenizers.load_tokenizer(path)
    self.model, self.params = models.load_pretrained(path, dtype=dtype, tokenizer=self.tokenizer)
    self.family, self.seed = family, seed
    self.stop = generation.stop_ids(self.tokenizer, family)
    self.name = f"local:{pathlib.Path(path).name}"
    self._lock = threading.Lock()
    pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.stop[0]
    self._pad = int(pad)
    self._generate = jax.jit(lambda params, ids, mask, rng: models.generate(
        self.model, params, ids, mask, rng, max_new_tokens=max_new_tokens, temperature=temperature,
        eos_id=self.stop, pad_id=self._pad))

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    # Lazy: JAX, only for a local teacher (already imported by __init__, so free here).
    # pylint: disable=import-outside-toplevel
    import jax
    from safecomp.training import generation
    ids = tokenizers.encode_prompt(self.tokenizer, list(messages), self.family)
    width = -(-len(ids) // 128) * 128  # few prompt lengths, few compilations
    tokens = np.full((1, width), self._pad, np.int32)
    mask = np.zeros((1, width), np.int32)
    tokens[0, width - len(ids):], mask[0, width - len(ids):] = ids, 1
    rng = jax.random.key(zlib.crc32(f"{self.seed}:{messages_key(messages)}".encode()))
    with self._lock:  # one generation at a time on the device
      out = jax.device_get(self._generate(self.params, tokens, mask, rng))
    return generation.decode_responses(self.tokenizer, out.response_tokens, out.response_mask, self.stop)[0]


def spec_teacher_prompt(spec_name: str, style: str | None = None) -> TeacherPromptFn:
  """The spec-augmented chat for the teacher: the policy and task as a system turn (only the
  item's category section when its `meta` names one), then the conversation."""
  spec = spec_lib.load_spec(spec_name)

  def render(item: PromptItem) -> Messages:
    category = item.meta.get("category")
    try:
      if category is not None:
        spec.section(category)
    except spec_lib.SpecError:
      category = None  # A category the spec does not know: show the whole policy.
    return spec_lib.render_teacher_messages(spec, list(item.messages), category=category,
                                            style=style)

  return render
