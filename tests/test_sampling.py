"""KV-cache sampler: exactness against full forwards, log-probs, filters, seeding, EOS handling."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp import models as M

PAD, EOS = 0, 2
N_NEW = 8


@pytest.fixture(scope="module")
def setup():
  # Large init so the random model's continuations vary (not one repeated token).
  cfg = M.tiny(vocab_size=61, initializer_range=0.5, heads=("lm", "value"))
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  return M.Transformer(cfg), params


def _prompts(side):
  """Three prompts of lengths 5, 3, 1 padded on `side` to length 5."""
  rows = [[11, 12, 13, 14, 15], [21, 22, 23], [31]]
  tokens = np.full((3, 5), PAD, np.int32)
  mask = np.zeros((3, 5), np.int32)
  for i, r in enumerate(rows):
    sl = slice(5 - len(r), 5) if side == "left" else slice(0, len(r))
    tokens[i, sl], mask[i, sl] = r, 1
  return jnp.asarray(tokens), jnp.asarray(mask), rows


@functools.lru_cache(maxsize=None)
def _gen(model, **kw):
  # EOS ids are a traced argument so tests that only change them share one compilation.
  return jax.jit(lambda p, t, m, k, eos: M.generate(model, p, t, m, k, eos_id=eos, **kw))


def _run(setup, tokens, mask, key=0, eos_id=None, **kw):
  model, params = setup
  kw.setdefault("max_new_tokens", N_NEW)
  kw.setdefault("pad_id", PAD)
  eos = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
  eos = jnp.asarray(eos + [-1] * (3 - len(eos)), jnp.int32)  # -1 matches no token
  return _gen(model, **kw)(params, tokens, mask, jax.random.PRNGKey(key), eos)


@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_cache_equals_repeated_full_forward(setup, side):
  model, params = setup
  tokens, mask, rows = _prompts(side)
  out = _run(setup, tokens, mask, greedy=True, eos_id=None)
  # Reference: each row alone, no padding before it, one full forward per new token.
  total = 5 + N_NEW
  fwd = lambda ids, m: M.logits(model, params, ids, m)
  for b, row in enumerate(rows):
    seq = list(row)
    for _ in range(N_NEW):
      ids = np.full((1, total), PAD, np.int32)
      ids[0, :len(seq)] = seq
      m = (np.arange(total) < len(seq)).astype(np.int32)[None]
      seq.append(int(jnp.argmax(fwd(jnp.asarray(ids), jnp.asarray(m))[0, len(seq) - 1])))
    np.testing.assert_array_equal(np.asarray(out.response_tokens[b]), seq[len(row):])
  assert len(set(np.asarray(out.response_tokens).ravel().tolist())) > 3  # not a degenerate loop
  np.testing.assert_array_equal(np.asarray(out.sequences[:, :5]), np.asarray(tokens))
  np.testing.assert_array_equal(np.asarray(out.response_mask), 1)


@pytest.mark.parametrize("side", ["left", "right"])
def test_logprobs_equal_training_forward(setup, side):
  model, params = setup
  tokens, mask, _ = _prompts(side)
  temperature = 0.7
  out = _run(setup, tokens, mask, key=3, temperature=temperature, top_k=7, top_p=0.9, eos_id=EOS)
  full_mask = jnp.concatenate([mask, out.response_mask], axis=1)
  logits = M.logits(model, params, out.sequences, full_mask)
  ref = M.response_logprobs(logits, out.sequences, mask, temperature)
  got = np.asarray(out.response_logprobs)
  rm = np.asarray(out.response_mask).astype(bool)
  np.testing.assert_allclose(got[rm], np.asarray(ref)[rm], atol=1e-5, rtol=0)
  assert np.all(got[~rm] == 0)
  # Untruncated: top-k / top-p change which tokens are drawn, not their reported log-prob.
  assert np.all(got[rm] < 0)
  if side == "left":  # for left padding the plain shift is the same thing
    shifted = M.token_logprobs(logits[:, 4:-1], out.sequences[:, 5:], temperature)
    np.testing.assert_allclose(got[rm], np.asarray(shifted)[rm], atol=1e-5, rtol=0)


def test_top_k_one_equals_greedy(setup):
  tokens, mask, _ = _prompts("left")
  greedy = _run(setup, tokens, mask, greedy=True, eos_id=None)
  top1 = _run(setup, tokens, mask, key=5, top_k=1, temperature=1.3, eos_id=None)
  np.testing.assert_array_equal(np.asarray(top1.sequences), np.asarray(greedy.sequences))


def test_filter_logits_nucleus_and_top_k():
  probs = jnp.array([[0.05, 0.5, 0.15, 0.3]])
  logits = jnp.log(probs)
  kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
  assert kept(M.filter_logits(logits, top_p=0.45)) == [False, True, False, False]
  assert kept(M.filter_logits(logits, top_p=0.75)) == [False, True, False, True]
  assert kept(M.filter_logits(logits, top_p=0.85)) == [False, True, True, True]
  assert kept(M.filter_logits(logits, top_k=2)) == [False, True, False, True]
  assert kept(M.filter_logits(logits, top_k=2, top_p=0.45)) == [False, True, False, False]
  np.testing.assert_array_equal(np.asarray(M.filter_logits(logits)), np.asarray(logits))


def test_top_p_samples_stay_in_nucleus(setup):
  model, params = setup
  batch, top_p, temperature = 64, 0.6, 1.0
  tokens = jnp.tile(jnp.array([[11, 12, 13]], jnp.int32), (batch, 1))
  mask = jnp.ones_like(tokens)
  first_logits = np.asarray(M.logits(model, params, tokens[:1], mask[:1])[0, -1])
  order = np.argsort(-first_logits)
  p = np.exp(first_logits - first_logits.max())
  p = p[order] / p.sum()
  nucleus = set(order[(np.cumsum(p) - p) < top_p].tolist())
  assert 1 < len(nucleus) < 61
  out = _run(setup, tokens, mask, key=1, top_p=top_p, temperature=temperature, eos_id=None,
             max_new_tokens=1)
  drawn = set(np.asarray(out.response_tokens[:, 0]).tolist())
  assert drawn <= nucleus
  assert len(drawn) > 1


def test_same_key_same_sample_different_key_different(setup):
  tokens, mask, _ = _prompts("right")
  kw = dict(temperature=0.7, top_k=7, top_p=0.9, eos_id=None)  # compiled once for the log-prob test
  a = _run(setup, tokens, mask, key=7, **kw)
  b = _run(setup, tokens, mask, key=7, **kw)
  c = _run(setup, tokens, mask, key=8, **kw)
  np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))
  np.testing.assert_array_equal(np.asarray(a.response_logprobs), np.asarray(b.response_logprobs))
  assert not np.array_equal(np.asarray(a.sequences), np.asarray(c.sequences))


def test_eos_stops_and_masks(setup):
  tokens, mask, _ = _prompts("left")
  free = np.asarray(_run(setup, tokens, mask, greedy=True, eos_id=None).response_tokens)
  # EOS := the first token row 0 emits at step >= 1 that it did not emit before.
  step = next(i for i in range(1, N_NEW) if free[0, i] not in free[0, :i])
  eos = int(free[0, step])
  out = _run(setup, tokens, mask, greedy=True, eos_id=eos)
  toks, m = np.asarray(out.response_tokens), np.asarray(out.response_mask)
  lp, fin = np.asarray(out.response_logprobs), np.asarray(out.finished)
  for b in range(3):
    hits = np.flatnonzero(free[b] == eos)
    if hits.size:
      stop = hits[0]
      assert fin[b]
      np.testing.assert_array_equal(toks[b, :stop + 1], free[b, :stop + 1])
      np.testing.assert_array_equal(m[b], (np.arange(N_NEW) <= stop).astype(np.int32))
      assert np.all(toks[b, stop + 1:] == PAD) and np.all(lp[b, stop + 1:] == 0)
    else:
      assert not fin[b]
      np.testing.assert_array_equal(toks[b], free[b])
      assert np.all(m[b] == 1)
  assert fin[0] and m[0].sum() == step + 1


def test_all_finished_stops_early_with_pads(setup):
  tokens, mask, _ = _prompts("left")
  free = np.asarray(_run(setup, tokens, mask, greedy=True, eos_id=None).response_tokens)
  eos = tuple(int(t) for t in free[:, 0])  # every row ends on its first token
  out = _run(setup, tokens, mask, greedy=True, eos_id=eos)
  assert np.all(np.asarray(out.finished))
  np.testing.assert_array_equal(np.asarray(out.response_mask)[:, 0], 1)
  assert np.all(np.asarray(out.response_tokens)[:, 1:] == PAD)


def test_generate_inside_larger_jit_then_score(setup):
  model, params = setup

  @jax.jit
  def rollout(params, tokens, mask, key):
    out = M.generate(model, params, tokens, mask, key, max_new_tokens=4, temperature=0.9,
                     eos_id=EOS, pad_id=PAD)
    full = jnp.concatenate([mask, out.response_mask], axis=1)
    return out, M.forward(model.config, params, out.sequences, full)["values"]

  tokens, mask, _ = _prompts("left")
  out, values = rollout(params, tokens, mask, jax.random.PRNGKey(0))
  assert out.sequences.shape == (3, 9) and values.shape == (3, 9)
  assert np.all(np.isfinite(np.asarray(values)))


def test_cached_chunks_equal_full_forward(setup):
  model, params = setup
  tokens, mask, _ = _prompts("right")
  full = M.forward(model.config, params, tokens, mask)["logits"]
  cache = M.init_cache(model.config, 3, 5)
  first = M.forward(model.config, params, tokens[:, :3], mask[:, :3], cache=cache, cache_index=0)
  second = M.forward(model.config, params, tokens[:, 3:], mask[:, 3:], cache=first["cache"],
                     cache_index=3)
  chunked = jnp.concatenate([first["logits"], second["logits"]], axis=1)
  m = np.asarray(mask).astype(bool)
  np.testing.assert_allclose(np.asarray(chunked)[m], np.asarray(full)[m], atol=1e-5, rtol=0)


def _scoring_layout(side):
  """Random logits [B, P+N, V] and values [B, P+N] over prompts padded on `side` and responses
  right-padded after EOS (the rollout's layout), with the prompt lengths."""
  rng = np.random.default_rng(1)
  b, p, n, v = 4, 5, 6, 9
  lengths, response_lengths = np.array([5, 3, 1, 2]), np.array([6, 2, 1, 4])
  slots = np.arange(p)[None]
  prompt_mask = (slots >= p - lengths[:, None]) if side == "left" else (slots < lengths[:, None])
  response_mask = (np.arange(n)[None] < response_lengths[:, None]).astype(np.int32)
  sequences = rng.integers(0, v, (b, p + n)).astype(np.int32)
  logits = jnp.asarray(rng.normal(size=(b, p + n, v)) * 3, jnp.float32)
  values = jnp.asarray(rng.normal(size=(b, p + n)), jnp.float32)
  return (logits, values, jnp.asarray(sequences), jnp.asarray(prompt_mask.astype(np.int32)),
          jnp.asarray(response_mask), lengths)


@pytest.mark.parametrize("jit", [False, True])
def test_response_logprobs_left_padding_is_the_plain_shift_bit_for_bit(jit):
  """Left-padded prompts: the one alignment (`response_outputs`) is the shift the rollout and the PPO
  update used before they shared it, to the bit, with the response's right padding scoring 0."""
  logits, values, sequences, prompt_mask, response_mask, _ = _scoring_layout("left")
  p, n, temperature = prompt_mask.shape[1], response_mask.shape[1], 0.7
  wrap = jax.jit if jit else (lambda f: f)
  got = wrap(lambda lg, s, pm, rm: M.response_logprobs(lg, s, pm, temperature, rm))(
      logits, sequences, prompt_mask, response_mask)
  shift = wrap(lambda lg, s, rm: M.token_logprobs(lg[:, -n - 1:-1], s[:, -n:], temperature) * rm)(
      logits, sequences, response_mask)
  assert np.asarray(got).tobytes() == np.asarray(shift).tobytes()
  assert np.all(np.asarray(got)[np.asarray(response_mask) == 0] == 0)
  np.testing.assert_array_equal(wrap(M.response_outputs)(values, prompt_mask),
                                np.asarray(values)[:, p - 1:-1])


def test_response_outputs_right_padding_reads_the_last_prompt_token():
  """Right-padded prompts: response token 0 is predicted at the last real prompt token, the rest at
  the response's own slots; logits, values and log-probs all follow that one alignment."""
  logits, values, sequences, prompt_mask, response_mask, lengths = _scoring_layout("right")
  p, temperature = prompt_mask.shape[1], 0.7
  rows = np.arange(len(lengths))
  for x in (logits, values):
    expected = np.concatenate([np.asarray(x)[rows, lengths - 1][:, None], np.asarray(x)[:, p:-1]], 1)
    np.testing.assert_array_equal(M.response_outputs(x, prompt_mask), expected)
  got = np.asarray(M.response_logprobs(logits, sequences, prompt_mask, temperature, response_mask))
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits) / np.float32(temperature), axis=-1))
  for b, length in enumerate(lengths):
    for i in range(response_mask.shape[1]):
      pos = length - 1 if i == 0 else p - 1 + i
      want = logp[b, pos, sequences[b, p + i]] * response_mask[b, i]
      np.testing.assert_allclose(got[b, i], want, atol=1e-5, rtol=0)
  # A plain shift reads padding for every row whose prompt is shorter than P.
  shift = np.asarray(M.token_logprobs(logits[:, p - 1:-1], sequences[:, p:], temperature))
  assert not np.allclose(got[lengths < p, 0], shift[lengths < p, 0])
