"""KV-cache generation: `safecomp.models.generate` (jitted) against Hugging Face `generate`.

Both sides run the same weights: a random `LlamaForCausalLM` is saved with `save_pretrained` and
read back with `safecomp.models.load_pretrained`. Both decode greedily for exactly `max_new_tokens`
tokens (HF: `min_new_tokens = max_new_tokens`; safecomp: `eos_id=None`) after the same full-length
prompts.
"""
from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from safecomp import models
from safecomp.models import sampling


@dataclasses.dataclass(frozen=True)
class LlamaShape:
  vocab_size: int = 4096
  hidden_size: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 64
  intermediate_size: int = 768
  max_position_embeddings: int = 2048


@dataclasses.dataclass
class GenerationResult:
  batch: int
  prompt_len: int
  new_tokens: int
  safecomp: common.Timing
  safecomp_compile_s: float
  safecomp_xla_bytes: int | None
  hf: common.Timing
  token_agreement: float  # fraction of generated tokens equal on both sides
  torch_threads: int
  prefill: common.Timing  # safecomp's prompt forward alone (filling the cache, first logits)
  model_flops: float  # matmul FLOPs of one call: prompt forward + one step per new token
  peak_flops_per_s: float | None  # the float32 matmul peak of this run

  @property
  def bound_s(self) -> float | None:
    """Time of one call at the matmul peak: the fastest any implementation could run it here."""
    return None if not self.peak_flops_per_s else self.model_flops / self.peak_flops_per_s

  @property
  def decode_step_s(self) -> float:
    """safecomp's time per decode step (call minus prefill, over the new tokens)."""
    return max(self.safecomp.median - self.prefill.median, 0.0) / self.new_tokens

  @property
  def safecomp_tps(self) -> float:
    return self.batch * self.new_tokens / self.safecomp.median

  @property
  def hf_tps(self) -> float:
    return self.batch * self.new_tokens / self.hf.median


def call_flops(config: models.ModelConfig, batch: int, prompt_len: int, new_tokens: int) -> float:
  """Forward matmul FLOPs of one generate call: 2 N per token of the prompt and of each decode step,
  plus the attention products over the cache (the full prompt square for the prompt; each step's
  query against the prompt and the tokens drawn so far)."""
  n = common.matmul_params(config)
  prompt = batch * prompt_len * (2 * n + common.attention_flops_per_token(config, prompt_len))
  steps = sum(batch * (2 * n + common.attention_flops_per_token(config, prompt_len + i + 1))
              for i in range(new_tokens))
  return float(prompt + steps)


def build_hf_llama(shape: LlamaShape, seed: int = 0):
  """A random `LlamaForCausalLM` (float32, eval mode)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  cfg = transformers.LlamaConfig(
      vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
      intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
      num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
      head_dim=shape.head_dim, max_position_embeddings=shape.max_position_embeddings,
      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, pad_token_id=0,
      bos_token_id=1, eos_token_id=2)
  torch.manual_seed(seed)
  return transformers.LlamaForCausalLM(cfg).to(torch.float32).eval()


def hf_generate_fn(hf_model, prompts: np.ndarray, new_tokens: int):
  """A closure running HF greedy `generate` for exactly `new_tokens` tokens; returns new tokens."""
  import torch  # pylint: disable=import-outside-toplevel
  input_ids = torch.from_numpy(prompts.astype(np.int64)).to(hf_model.device)
  attention = torch.ones_like(input_ids)
  gen = hf_model.generation_config
  gen.do_sample, gen.num_beams, gen.temperature, gen.top_p, gen.top_k = False, 1, None, None, None

  def run():
    with torch.inference_mode():
      out = hf_model.generate(input_ids=input_ids, attention_mask=attention,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              num_beams=1, use_cache=True, pad_token_id=0)
    return out[:, prompts.shape[1]:]

  return run


def run_generation(shape: LlamaShape, batches: Sequence[int], prompt_len: int, new_tokens: int,
                   min_reps: int = 3, max_reps: int = 10, target_s: float = 3.0,
                   seed: int = 0, torch_threads: object = "auto",
                   peak_flops_per_s: float | None = None) -> list[GenerationResult]:
  """Tokens/s of both implementations at each batch size (prefill included, compilation not).

  `peak_flops_per_s` (the float32 matmul peak) turns the call's model FLOPs into the share of the
  matmul-bound rate and the best speed-up over HF the machine allows.
  """
  hf_model = build_hf_llama(shape, seed)
  with tempfile.TemporaryDirectory() as tmp:
    hf_model.save_pretrained(tmp)
    model, params = models.load_pretrained(tmp)
  hf_model.to(common.torch_device())
  gen = jax.jit(functools.partial(models.generate, model, max_new_tokens=new_tokens, greedy=True,
                                  eos_id=None))
  # The prompt forward `generate` starts with, timed alone: the decode loop's share is the call minus it.
  prefill = jax.jit(functools.partial(sampling.prefill, model, max_len=prompt_len + new_tokens))
  rng = np.random.default_rng(seed)
  results = []
  for batch in batches:
    prompts = rng.integers(3, shape.vocab_size, (batch, prompt_len), dtype=np.int32)
    tokens, mask = jnp.asarray(prompts), jnp.ones((batch, prompt_len), jnp.int32)
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    compiled = common.compile_lowered(gen.lower(params, tokens, mask, key))
    compile_s = time.perf_counter() - t0
    hf_run = hf_generate_fn(hf_model, prompts, new_tokens)
    threads = common.set_torch_threads(
        torch_threads, hf_generate_fn(hf_model, prompts, min(new_tokens, 8)))
    timings = common.measure_interleaved(
        {"safecomp": lambda: compiled(params, tokens, mask, key), "hf": hf_run}, min_reps,
        max_reps, target_s)
    ours, theirs = timings["safecomp"], timings["hf"]
    prefill_compiled = common.compile_lowered(prefill.lower(params, tokens, mask))
    prefill_timing = common.measure_adaptive(lambda: prefill_compiled(params, tokens, mask),
                                             min_reps, max_reps, target_s / 2)
    ours_tokens = np.asarray(compiled(params, tokens, mask, key).response_tokens)
    hf_tokens = hf_run().cpu().numpy()
    same_shape = ours_tokens.shape == hf_tokens.shape
    agreement = float(np.mean(ours_tokens == hf_tokens)) if same_shape else 0.0
    results.append(GenerationResult(
        batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, safecomp=ours,
        safecomp_compile_s=compile_s, safecomp_xla_bytes=common.xla_bytes(compiled), hf=theirs,
        token_agreement=agreement, torch_threads=threads, prefill=prefill_timing,
        model_flops=call_flops(model.config, batch, prompt_len, new_tokens),
        peak_flops_per_s=peak_flops_per_s))
  return results


def generation_rows(results: Sequence[GenerationResult]) -> list[dict]:
  """The generation table as JSON rows (numbers, not formatted text)."""
  return [{"batch": r.batch, "prompt_len": r.prompt_len, "new_tokens": r.new_tokens,
           "safecomp_tokens_per_s": r.safecomp_tps, "hf_tokens_per_s": r.hf_tps,
           "speedup_vs_hf": r.safecomp_tps / r.hf_tps, "safecomp_call_s": r.safecomp.median,
           "hf_call_s": r.hf.median, "safecomp_compile_s": r.safecomp_compile_s,
           "safecomp_xla_bytes": r.safecomp_xla_bytes, "torch_threads": r.torch_threads,
           "token_agreement": r.token_agreement, "safecomp_prefill_s": r.prefill.median,
           "safecomp_decode_step_s": r.decode_step_s, "model_flops": r.model_flops,
           "matmul_bound_s": r.bound_s,
           "share_of_matmul_bound": None if r.bound_s is None else r.bound_s / r.safecomp.median,
           "hf_over_matmul_bound": None if r.bound_s is None else r.hf.median / r.bound_s}
          for r in results]


def generation_table(results: Sequence[GenerationResult], shape: LlamaShape) -> str:
  rows = []
  for r in results:
    rows.append((r.batch, f"{r.prompt_len} + {r.new_tokens}",
                 common.fmt_rate(r.safecomp_tps, "tok/s"), common.fmt_rate(r.hf_tps, "tok/s"),
                 common.fmt_ratio(r.safecomp_tps / r.hf_tps), common.fmt_s(r.safecomp.median),
                 common.fmt_s(r.hf.median), common.fmt_s(r.safecomp_compile_s),
                 common.fmt_mib(r.safecomp_xla_bytes),
                 r.torch_threads, f"{r.token_agreement:.1%}"))
  del shape
  return common.markdown_table(
      ["batch", "prompt + new", "safecomp tokens/s", "HF tokens/s", "safecomp / HF",
       "safecomp call", "HF call", "safecomp compile", "safecomp XLA memory",
       "torch threads", "same greedy tokens"], rows)


def generation_profile_table(results: Sequence[GenerationResult]) -> str:
  """Where safecomp's call goes (prompt forward vs decode steps) and how far it is from the matmul
  bound; the last column is the largest safecomp / HF ratio the measured peak allows."""
  rows = []
  for r in results:
    bound = r.bound_s
    rows.append((r.batch, common.fmt_s(r.safecomp.median), common.fmt_s(r.prefill.median),
                 common.fmt_s(r.decode_step_s), f"{r.model_flops / 1e9:.2f} GFLOP",
                 common.fmt_s(bound), "n/a" if bound is None else f"{bound / r.safecomp.median:.0%}",
                 "n/a" if bound is None else common.fmt_ratio(r.hf.median / bound)))
  return common.markdown_table(
      ["batch", "safecomp call", "prompt forward", "per decode step", "model FLOPs / call",
       "call at matmul peak", "share of matmul-bound rate", "HF call ÷ call at peak"], rows)
