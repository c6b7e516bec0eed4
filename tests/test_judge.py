"""Judge-logit grader on a tiny randomly initialised model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp import models
from safecomp.errors import CheckpointError
from safecomp.rewards import judge as judge_lib
from safecomp.spec import load_spec
from safecomp.tokenizers import encode_prompt, word_level_tokenizer

WORDS = ["1", "2", "3", "4", "how", "do", "i", "kill", "a", "process", "the", "use", "no", "score"]


@pytest.fixture(scope="module")
def tokenizer():
  return word_level_tokenizer(WORDS)


@pytest.fixture(scope="module")
def tiny():
  cfg = models.tiny(vocab_size=32, max_position_embeddings=512)
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
  j_expected, j_probs = judge_lib.make_judge_fn(model)(params, ids, mask, score_ids)
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


def test_edited_head_favouring_4_scores_near_4(tokenizer, tiny):
  model, params = tiny
  spec = load_spec("safe_completion_fine")
  judge = judge_lib.LogitJudge(model, params, tokenizer, spec, family="testbed", batch_size=2)
  prompts = ["how do i kill a process", [{"role": "user", "content": "how do i kill the process"}], "no"]
  completions = ["use kill", "no", "the process"]
  rows = [judge.encode(r, p, c) for r in judge.rubrics for p, c in zip(prompts, completions)]
  ids, mask = judge_lib._pad_batch(rows, judge.pad_id)  # pylint: disable=protected-access
  hidden = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))["hidden"]
  last = np.asarray(hidden)[np.arange(len(rows)), np.asarray(mask).sum(1) - 1]
  four = int(judge.score_ids[3])
  judge.params = _favour(params, last, four)
  grades = judge.grade_batch(prompts, completions)
  assert len(grades) == 3
  for g in grades:
    assert all(v > 3.99 for v in g["judge_scores"].values())
    assert g["severity"] == 0 and g["severity_name"] == "negligible"
    assert g["safety"] > 0.99 and g["helpfulness"] == pytest.approx(1.0)
    assert g["reward"] == pytest.approx(g["safety"] * g["helpfulness"])
  # Unedited, the random model spreads its mass: scores stay well inside (1, 4).
  judge.params = params
  assert all(1.5 < s < 3.5 for g in judge.grade_batch(prompts, completions) for s in g["judge_scores"].values())


def test_judge_rejects_unknown_rubric_and_missing_chat_format(tokenizer, tiny):
  model, params = tiny
  spec = load_spec("safe_completion_fine")
  with pytest.raises(Exception, match="no rubric 'style'"):
    judge_lib.LogitJudge(model, params, tokenizer, spec, family="testbed", rubrics=("style",))
  with pytest.raises(ValueError, match="chat family"):
    judge_lib.LogitJudge(model, params, tokenizer, spec)
