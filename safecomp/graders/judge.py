"""`judge`: a frozen LM from a local checkpoint, prompted with the spec's rubrics, scored from logits.

Any checkpoint `safecomp.models.load_pretrained` reads (an instruction-tuned Llama / Qwen2 / Gemma /
Mistral, or a safety classifier of those families) can judge. For each rubric (safety, direct and
indirect helpfulness) the judge reads the rubric filled with the conversation and the answer (the
reasoning stripped: it judges what a user sees) and the distribution over its score tokens "1".."4"
is the grade: severity as a distribution over the four levels, helpfulness as the expected score.
The mode comes from the response-mode classifier. See `safecomp.rewards.judge` for the scoring core
that the compiled rollout shares.
"""
from __future__ import annotations

import functools
import hashlib
import pathlib
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from safecomp import models
from safecomp.graders.base import Grade, full_name, judged, ungraded
from safecomp.prompts import Prompt, content_uid
from safecomp.rewards import composite
from safecomp.rewards import judge as core
from safecomp.tokenizers import load_tokenizer, strip_reasoning


def checkpoint_version(path: str | pathlib.Path) -> str:
  """`<directory name>@<hash of its config and weight file names and sizes>`: which judge graded."""
  path = pathlib.Path(path)
  digest = hashlib.sha1()
  for f in sorted(path.iterdir()):
    if f.is_file() and (f.suffix in (".json", ".safetensors", ".model")):
      digest.update(f.name.encode())
      digest.update(str(f.stat().st_size).encode())
      if f.name == "config.json":
        digest.update(f.read_bytes())
  return f"{path.name}@{digest.hexdigest()[:10]}"


@functools.lru_cache(maxsize=8)
def _scores_fn(model: models.Transformer):
  return jax.jit(functools.partial(core.judge_scores, model))


def _bucket(length: int) -> int:
  """Padded length of a batch: powers of two up to 512, then multiples of 128 (few shapes to compile,
  little of a long forward spent on padding)."""
  if length <= 512:
    return max(64, 1 << (length - 1).bit_length())
  return -(-length // 128) * 128


class JudgeGrader:
  """Grades (prompt, completion) pairs with a frozen LM and the spec's rubrics (see module doc)."""
  name = "judge"
  judges_harm = True

  def __init__(self, model: models.Transformer, params: Mapping, tokenizer: Any, spec: Any, *,
               family: Optional[str] = None, template: Optional[str] = None, batch_size: int = 8,
               max_len: Optional[int] = None, indirect_weight: float = composite.DEFAULT_INDIRECT_WEIGHT,
               version: str = "in-memory"):
    if family is None and template is None:
      template = getattr(tokenizer, "chat_template", None)
      if template is None:
        raise ValueError("the judge needs a chat family (judge.family, e.g. 'qwen2') or a tokenizer with a "
                         "chat template")
    self.model, self.params, self.tokenizer, self.spec = model, params, tokenizer, spec
    self.family, self.template = family or "llama3", template
    for rubric in core.JUDGE_RUBRICS:
      spec.rubric(rubric)  # fails early, naming the spec, for a missing rubric
    self.batch_size = int(batch_size)
    self.max_len = int(max_len or model.config.max_position_embeddings)
    self.indirect_weight = float(indirect_weight)
    self.score_ids = core.score_token_ids(tokenizer, family, core.SCORE_LABELS, template)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    self.pad_id = int(pad if pad is not None else 0)
    self.version = version
    self._heads: dict[str, tuple] = {}
    self._tails: tuple | None = None

  @classmethod
  def from_checkpoint(cls, path: str | pathlib.Path, spec: Any, *, family: Optional[str] = None,
                      dtype: str = "float32", **kw) -> "JudgeGrader":
    """Loads the judge from a local Hugging Face directory (weights, config and tokenizer)."""
    tokenizer = load_tokenizer(path)
    model, params = models.load_pretrained(path, dtype=dtype, heads=("lm",), tokenizer=tokenizer)
    return cls(model, params, tokenizer, spec, family=family, version=checkpoint_version(path), **kw)

  # -- rubric prompts ------------------------------------------------------------------------------
  def segments(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> core.RubricSegments:
    """The rubric prompts around the completion for `conversations` (in the judge's tokens)."""
    return core.rubric_segments(self.tokenizer, self.spec, conversations, self.family, self.template)

  def _rubric_ids(self, prompts: Sequence[Prompt]) -> tuple[list[tuple], tuple]:
    """Per prompt, the head ids of each rubric (cached by content); and the rubrics' tail ids."""
    keys = [content_uid(p.messages) for p in prompts]
    todo = {k: p for k, p in zip(keys, prompts) if k not in self._heads}
    if todo or self._tails is None:
      segs = self.segments([p.message_list for p in todo.values()])
      for i, key in enumerate(todo):
        self._heads[key] = tuple(segs.heads[r][i] for r in range(len(segs.rubrics)))
      self._tails = segs.tails
    return [self._heads[k] for k in keys], self._tails

  # -- grading -------------------------------------------------------------------------------------
  def probabilities(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Score-token probabilities [N, 4] of complete judge inputs (token id lists), batch by batch.

    Rows are batched by length (rubrics with and without the policy text differ tenfold), so little of
    each forward is padding; the results come back in the order of `rows`.
    """
    fn = _scores_fn(self.model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = []
    for start in range(0, len(rows), self.batch_size):
      chunk = [rows[i] for i in order[start:start + self.batch_size]]
      length = _bucket(max(len(r) for r in chunk))
      ids = np.full((self.batch_size, length), self.pad_id, np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for i, r in enumerate(chunk):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
      mask[len(chunk):, 0] = 1  # filler rows of a short last batch: one real token, results dropped
      _, probs = fn(self.params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(self.score_ids))
      out.append(np.asarray(probs)[:len(chunk)])
    if not out:
      return np.zeros((0, len(core.SCORE_LABELS)), np.float32)
    result = np.empty((len(rows), len(core.SCORE_LABELS)), np.float32)
    result[order] = np.concatenate(out)
    return result

  def grade(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Grade]:
    heads, tails = self._rubric_ids(prompts)
    name = full_name(self)
    rows, owners = [], []
    too_long = {}
    for i, (head, text) in enumerate(zip(heads, completions)):
      # Nothing added or stripped: the compiled rollout's judge reads the same ids (see answer_mask).
      answer = self.tokenizer.encode(strip_reasoning(text, joiner=""), continuation=True)
      inputs = [list(h) + answer + list(t) for h, t in zip(head, tails)]
      longest = max(len(x) for x in inputs)
      if longest > self.max_len:
        too_long[i] = longest
        continue
      rows.extend(inputs)
      owners.append(i)
    probs = self.probabilities(rows).reshape(len(owners), len(core.JUDGE_RUBRICS), len(core.SCORE_LABELS))
    scores = core.judgment(np.transpose(probs, (1, 0, 2)))
    out: list[Grade | None] = [None] * len(prompts)
    for j, i in enumerate(owners):
      out[i] = judged(name, severity_probs=scores["severity_probs"][j], direct=scores["helpfulness_direct"][j],
                      indirect=scores["helpfulness_indirect"][j], prompt=prompts[i],
                      indirect_weight=self.indirect_weight, mode=None, completion=strip_reasoning(completions[i]),
                      judge_scores={r: float(probs[j, k] @ np.arange(1, 5)) for k, r in enumerate(core.JUDGE_RUBRICS)})
    for i, longest in too_long.items():
      out[i] = ungraded(name, f"rubric prompt of {longest} tokens exceeds the judge's {self.max_len} "
                              "(judge.max_len); the judge cannot read the whole answer")
    return out  # type: ignore[return-value]
