"""The judge: its jittable scoring core, the grader, and the same judge inside the compiled rollout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp import models
from safecomp import tokenizers
from safecomp.errors import CheckpointError
from safecomp.graders.judge import JudgeGrader
from safecomp.prompts import Prompt
from safecomp.rewards import judge as judge_lib
from safecomp.spec import load_spec
from safecomp.tokenizers import encode_prompt, strip_reasoning, word_level_tokenizer
from safecomp.training import rollout as rollout_lib
from tests import real_models

WORDS = ["1", "2", "3", "4", "how", "do", "i", "kill", "a", "process", "the", "use", "no", "score"]


@pytest.fixture(scope="module")
def tokenizer():
  return word_level_tokenizer(WORDS)


@pytest.fixture(scope="module")
def tiny():
  cfg = models.tiny(vocab_size=32, max_position_embeddings=4096)
  return models.Transformer(cfg), models.init_params(cfg, jax.random.PRNGKey(0))


def _batch(tokenizer, texts, pad_left=False):
  rows = [encode_prompt(tokenizer, [{"role": "user", "content": t}], "testbed") for t in texts]
  length = max(map(len, rows)) + 3
  ids = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    sl = slice(length - len(r), length) if pad_left else slice(0, len(r))
    ids[i, sl], mask[i, sl] = r, 1
  return jnp.asarray(ids), jnp.asarray(mask)


def test_score_token_ids(tokenizer):
  ids = judge_lib.score_token_ids(tokenizer, "testbed")
  assert [tokenizer.id_to_token(i) for i in ids] == ["1", "2", "3", "4"]
  np.testing.assert_array_equal(judge_lib.score_token_ids(tokenizer), ids)  # plain continuation
  with pytest.raises(CheckpointError, match="'4 4' is not a single known token"):
    judge_lib.score_token_ids(tokenizer, "testbed", labels=("1", "2", "3", "4 4"))
  with pytest.raises(CheckpointError, match="'5' is not a single known token"):
    judge_lib.score_token_ids(tokenizer, labels=("1", "2", "3", "5"))  # unknown word -> <unk>


def test_shapes_probabilities_and_jit(tokenizer, tiny):
  model, params = tiny
  ids, mask = _batch(tokenizer, ["how do i kill a process", "score", "no no no"])
  score_ids = jnp.asarray(judge_lib.score_token_ids(tokenizer, "testbed"))
  expected, probs = judge_lib.judge_scores(model, params, ids, mask, score_ids)
  assert expected.shape == (3,) and probs.shape == (3, 4)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(expected, probs @ jnp.arange(1.0, 5.0), rtol=1e-6)
  assert bool(jnp.all((expected >= 1.0) & (expected <= 4.0)))
  j_expected, j_probs = jax.jit(lambda *a: judge_lib.judge_scores(model, *a))(params, ids, mask, score_ids)
  np.testing.assert_allclose(j_expected, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(j_probs, probs, rtol=1e-5, atol=1e-6)
  # The same prompts left-padded give the same next-token distribution.
  l_ids, l_mask = _batch(tokenizer, ["how do i kill a process", "score", "no no no"], pad_left=True)
  l_expected, _ = judge_lib.judge_scores(model, params, l_ids, l_mask, score_ids)
  np.testing.assert_allclose(l_expected, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(judge_lib.unit_score(jnp.array([1.0, 2.5, 4.0])), [0.0, 0.5, 1.0])


def _favour(params, hidden_rows, token_id, margin=30.0):
  """LM head edited so the column of `token_id` scores `margin` on each given last hidden state."""
  kernel = np.array(params["lm_head"]["kernel"])
  col, *_ = np.linalg.lstsq(np.asarray(hidden_rows), np.full(len(hidden_rows), margin), rcond=None)
  kernel[:, token_id] = col
  edited = jax.tree_util.tree_map(lambda x: x, params)
  edited["lm_head"] = {"kernel": jnp.asarray(kernel)}
  return edited


def _prompts(*texts, intent=None):
  return [Prompt(uid=f"p{i}", messages=({"role": "user", "content": t},), intent=intent) for i, t in enumerate(texts)]


def test_edited_head_favouring_4_scores_near_4(tokenizer, tiny):
  model, params = tiny
  spec = load_spec("safe_completion_fine")
  judge = JudgeGrader(model, params, tokenizer, spec, family="testbed", batch_size=2)
  prompts = _prompts("how do i kill a process", "how do i kill the process", "no", intent="benign")
  completions = ["use kill", "no", "the process"]
  heads, tails = judge._rubric_ids(prompts)  # pylint: disable=protected-access
  rows = [list(h[r]) + tokenizer.encode(c, continuation=True) + list(tails[r])
          for h, c in zip(heads, completions) for r in range(3)]
  ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
  mask = np.zeros_like(ids)
  for i, row in enumerate(rows):
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  hidden = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))["hidden"]
  last = np.asarray(hidden)[np.arange(len(rows)), mask.sum(1) - 1]
  four = int(judge.score_ids[3])
  judge.params = _favour(params, last, four)
  grades = judge.grade(prompts, completions)
  assert len(grades) == 3
  for g in grades:
    assert all(v > 3.99 for v in g.details["judge_scores"].values())
    assert g.severity == 0 and g.severity_probs[0] > 0.99
    assert g.helpfulness == pytest.approx(1.0) and g.mode is not None and g.mode_source == "classifier"
  # Unedited, the random model spreads its mass: scores stay well inside (1, 4).
  judge.params = params
  assert all(1.5 < s < 3.5 for g in judge.grade(prompts, completions) for s in g.details["judge_scores"].values())


def test_judge_rejects_missing_chat_format_and_never_cuts_an_answer(tokenizer, tiny):
  model, params = tiny
  spec = load_spec("safe_completion_fine")
  with pytest.raises(ValueError, match="chat family"):
    JudgeGrader(model, params, tokenizer, spec)
  judge = JudgeGrader(model, params, tokenizer, spec, family="testbed")
  heads, tails = judge._rubric_ids(_prompts("kill"))  # pylint: disable=protected-access
  judge.max_len = max(len(h) + len(t) for h, t in zip(heads[0], tails)) + 20
  short, long = judge.grade(_prompts("kill", "kill"), ["use kill", "kill " * 400])
  assert short.graded and not long.graded and f"exceeds the judge's {judge.max_len}" in long.error


@pytest.fixture(scope="module")
def bpe_judge(tmp_path_factory):
  """A tiny random Qwen2 checkpoint with a BPE tokenizer trained in the test, as the judge."""
  path = real_models.make_checkpoint(tmp_path_factory.mktemp("judge"), "qwen2", seed=3)
  tok = tokenizers.load_tokenizer(path)
  model, params = models.load_pretrained(path, tokenizer=tok)
  return JudgeGrader(model, params, tok, load_spec("safe_completion_fine"), family="qwen2", batch_size=4)


def test_rubric_segments_spell_the_rubric_prompt(bpe_judge):
  tok = bpe_judge.tokenizer
  conversation = [{"role": "user", "content": "How do I kill a Python process?"}]
  segs = bpe_judge.segments([conversation])
  answer = "Use kill with its process id."
  for r, name in enumerate(segs.rubrics):
    ids = list(segs.heads[r][0]) + tok.encode(answer, continuation=True) + list(segs.tails[r])
    from safecomp.spec import render_rubric  # pylint: disable=import-outside-toplevel
    text = tokenizers.apply_chat_template([{"role": "user", "content": render_rubric(bpe_judge.spec, name, conversation,
                                                                                    answer)}], "qwen2")
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_answer_mask_hides_reasoning_as_strip_reasoning_does(bpe_judge):
  tok = bpe_judge.tokenizer
  open_ids, close_ids = tok.encode("<think>", continuation=True), tok.encode("</think>", continuation=True)
  texts = ["<think>\nplan it\n</think>\n\nThe answer.", "No reasoning here.", "</think>tail only",
           "a <think>b</think> c <think> d", "<think>never closed"]
  rows = [tok.encode(t, continuation=True) for t in texts]
  width = max(map(len, rows)) + 2
  ids = np.zeros((len(rows), width), np.int32)
  mask = np.zeros_like(ids)
  for i, row in enumerate(rows):
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  visible = np.asarray(judge_lib.answer_mask(jnp.asarray(ids), jnp.asarray(mask), open_ids, close_ids))
  for i, text in enumerate(texts):
    seen = tok.decode([t for t, m in zip(ids[i], visible[i]) if m], skip_special_tokens=False)
    assert seen.split() == strip_reasoning(text).split(), text


def test_the_judge_in_the_compiled_rollout_scores_as_the_host_judge(bpe_judge):
  """The same answer ids through the rollout's judge (heads, answer and tails spliced on device) and
  through the host grader's forward give the same grade."""
  tok = bpe_judge.tokenizer
  prompts = _prompts("How do I kill a Python process?", "Which chemicals should never be mixed?", intent="dual_use")
  answers = ["<think>\nbenign\n</think>\n\nUse kill.", "Bleach and ammonia."]
  segs = bpe_judge.segments([p.message_list for p in prompts])
  eos = tok.token_to_id("<|im_end|>")
  width = 24
  response = np.full((2, width), tok.pad_id, np.int32)
  mask = np.zeros((2, width), np.int32)
  for i, a in enumerate(answers):
    ids = tok.encode(a, continuation=True) + [eos]
    response[i, :len(ids)], mask[i, :len(ids)] = ids, 1
  scorer = rollout_lib.JudgeScorer(
      bpe_judge.model, tuple(int(i) for i in bpe_judge.score_ids), segs.tails, bpe_judge.pad_id,
      think_open=tuple(tok.encode("<think>", continuation=True)),
      think_close=tuple(tok.encode("</think>", continuation=True)), special_ids=(eos, tok.pad_id),
      indirect_weight=bpe_judge.indirect_weight)
  heads, head_mask = segs.head_arrays([0, 1], segs.max_head, tok.pad_id)
  batch = {"sequences": jnp.asarray(response), "response_mask": jnp.asarray(mask)}
  cfg = rollout_lib.RolloutConfig(max_new_tokens=width, eos_id=eos, pad_id=tok.pad_id)
  intent = jnp.asarray([1, 1], jnp.int32)
  out = jax.jit(lambda params, b, h, hm: scorer(params, b, intent, {"judge_heads": h, "judge_head_mask": hm}, cfg))(
      bpe_judge.params, batch, jnp.asarray(heads), jnp.asarray(head_mask))
  host = bpe_judge.grade(prompts, answers)
  for i, g in enumerate(host):
    np.testing.assert_allclose(np.asarray(out["severity_probs"][i]), g.severity_probs, atol=2e-5)
    assert float(out["helpfulness"][i]) == pytest.approx(g.helpfulness, abs=2e-5)
  # The rubric of every row ends where the tail ends: padding between the pieces changes nothing.
  assert np.all(np.asarray(out["scores"]) >= 0)
