"""Tests for the RL math: GAE, KL estimators and controller, advantages, losses, log-probs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safecomp.errors import ConfigError
from safecomp import rl


def _gae_loop(rewards, values, mask, gamma, lam):
  """Reference GAE: a plain Python loop per row."""
  b, n = rewards.shape
  adv = np.zeros((b, n))
  for i in range(b):
    last = 0.0
    for t in reversed(range(n)):
      if not mask[i, t]:
        last = 0.0
        continue
      next_v = values[i, t + 1] if t + 1 < n and mask[i, t + 1] else 0.0
      delta = rewards[i, t] + gamma * next_v - values[i, t]
      last = delta + gamma * lam * last
      adv[i, t] = last
  return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7), (1.0, 1.0)])
def test_gae_matches_python_loop(gamma, lam):
  rng = np.random.default_rng(0)
  b, n = 5, 9
  rewards = rng.normal(size=(b, n))
  values = rng.normal(size=(b, n))
  lengths = np.array([9, 1, 4, 0, 7])
  mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
  mask[0, 5] = 0.0  # a hole in the middle is not bootstrapped across
  adv, ret = rl.compute_gae(
      jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma, lam)
  ref_adv, ref_ret = _gae_loop(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(adv)[mask == 0] == 0)


def test_gae_hand_computed():
  # One row of 3 valid tokens + 1 pad, gamma=1, lam=0.5.
  rewards = jnp.array([[0.0, 0.0, 1.0, 5.0]])
  values = jnp.array([[0.5, 0.25, 0.5, 9.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  adv, ret = rl.compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
  # deltas: t2 = 1 - 0.5 = 0.5 (no bootstrap past the end), t1 = 0 + 0.5 - 0.25 = 0.25,
  # t0 = 0 + 0.25 - 0.5 = -0.25; A2 = 0.5, A1 = 0.25 + 0.5*0.5 = 0.5, A0 = -0.25 + 0.5*0.5 = 0.
  np.testing.assert_allclose(adv, [[0.0, 0.5, 0.5, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ret, [[0.5, 0.75, 1.0, 0.0]], atol=1e-6)


def test_kl_estimators():
  key = jax.random.key(0)
  v = 6
  p_logits = jax.random.normal(key, (v,))
  q_logits = jax.random.normal(jax.random.key(1), (v,)) * 0.5
  logp_all, logq_all = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
  true_kl = float(jnp.sum(jnp.exp(logp_all) * (logp_all - logq_all)))
  samples = jax.random.categorical(jax.random.key(2), p_logits, shape=(200_000,))
  logp, logq = logp_all[samples], logq_all[samples]
  k1, k2, k3 = rl.kl_k1(logp, logq), rl.kl_k2(logp, logq), rl.kl_k3(logp, logq)
  assert true_kl > 0.05
  np.testing.assert_allclose(float(k1.mean()), true_kl, rtol=0.05)
  np.testing.assert_allclose(float(k3.mean()), true_kl, rtol=0.05)
  assert float(k3.min()) >= 0.0 and float(k2.min()) >= 0.0
  assert float(k1.min()) < 0.0  # k1 is negative on some tokens
  np.testing.assert_allclose(rl.kl_estimate(logp, logq, "k3"), k3)
  with pytest.raises(ConfigError, match="kl_estimator"):
    rl.kl_estimate(logp, logq, "k4")


def test_k3_nonnegative_on_random_pairs():
  a = jax.random.normal(jax.random.key(3), (1000,)) * 3
  b = jax.random.normal(jax.random.key(4), (1000,)) * 3
  assert float(rl.kl_k3(a, b).min()) >= 0.0
  np.testing.assert_allclose(rl.kl_k3(a, a), 0.0, atol=1e-7)


def test_adaptive_kl_controller():
  up = rl.adaptive_kl_coef(0.1, observed_kl=12.0, n_steps=64, target=6.0, horizon=10000)
  down = rl.adaptive_kl_coef(0.1, observed_kl=3.0, n_steps=64, target=6.0, horizon=10000)
  # KL twice the target: error clipped to +0.2; half: -0.5 clipped to -0.2.
  np.testing.assert_allclose(up, 0.1 * (1 + 0.2 * 64 / 10000), rtol=1e-6)
  np.testing.assert_allclose(down, 0.1 * (1 - 0.2 * 64 / 10000), rtol=1e-6)
  small = rl.adaptive_kl_coef(0.1, observed_kl=6.6, n_steps=100, target=6.0, horizon=1000)
  np.testing.assert_allclose(small, 0.1 * (1 + 0.1 * 0.1), rtol=1e-5)
  assert float(rl.update_kl_coef(0.1, 100.0, 64, None, 10000)) == pytest.approx(0.1)
  with pytest.raises(ConfigError):
    rl.adaptive_kl_coef(0.1, 1.0, 1, target=0.0, horizon=10)


def test_token_rewards_places_score_at_last_valid_token():
  scores = jnp.array([1.0, 2.0, 3.0])
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
  logp = jnp.full((3, 4), -1.0)
  ref = jnp.full((3, 4), -1.5)
  r = rl.token_rewards(scores, logp, ref, mask, kl_coef=0.2, estimator="k1")
  np.testing.assert_allclose(
      r, [[-0.1, -0.1, 0.9, 0.0], [1.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], atol=1e-6)


def test_masked_whiten():
  x = jax.random.normal(jax.random.key(0), (4, 6)) * 3 + 2
  mask = jnp.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1, 0, 0, 0, 0, 0]])
  w = rl.masked_whiten(x, mask)
  valid = np.asarray(w)[np.asarray(mask) > 0]
  assert abs(valid.mean()) < 1e-5
  np.testing.assert_allclose(valid.std(ddof=1), 1.0, rtol=1e-4)
  assert np.all(np.asarray(w)[np.asarray(mask) == 0] == 0)
  scaled = np.asarray(rl.masked_whiten(x, mask, shift_mean=False))
  xv = np.asarray(x)[np.asarray(mask) > 0]
  np.testing.assert_allclose(scaled[np.asarray(mask) > 0], xv / xv.std(ddof=1), rtol=1e-4)


def test_grpo_and_rloo_advantages():
  scores = jnp.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
  g = rl.grpo_advantages(scores, group_size=4)
  np.testing.assert_allclose(g[:4], np.array([0.5, -0.5, -0.5, 0.5]) / np.std([1, 0, 0, 1], ddof=1),
                             rtol=1e-5)
  np.testing.assert_allclose(g[4:], 0.0, atol=1e-6)  # a constant group gives no signal
  np.testing.assert_allclose(rl.grpo_advantages(scores, 4, normalize_std=False)[:4],
                             [0.5, -0.5, -0.5, 0.5])
  r = rl.rloo_advantages(jnp.array([3.0, 0.0, 0.0]), group_size=3)
  np.testing.assert_allclose(r, [3.0, -1.5, -1.5])
  mask = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
  tok = rl.rloo_advantages(jnp.array([3.0, 0.0, 0.0]), 3, mask=mask)
  np.testing.assert_allclose(tok, [[3, 3, 0], [-1.5, 0, 0], [-1.5, -1.5, -1.5]])
  with pytest.raises(ConfigError, match="group_size"):
    rl.grpo_advantages(scores, group_size=3)


def test_eos_penalty():
  responses = jnp.array([[5, 2, 0], [5, 5, 5], [5, 5, 2]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 1, 0]])  # EOS (2) of row 3 is past the mask
  out = rl.eos_penalty(jnp.array([1.0, 1.0, 1.0]), responses, mask, eos_id=2, penalty=0.5)
  np.testing.assert_allclose(out, [1.0, 0.5, 0.5])


def test_running_moments_match_numpy():
  rng = np.random.default_rng(1)
  batches = [rng.normal(2.0, 3.0, size=n) for n in (5, 17, 8)]
  stats = rl.init_running_moments()
  for batch in batches:
    stats = rl.update_running_moments(stats, jnp.asarray(batch))
  allx = np.concatenate(batches)
  np.testing.assert_allclose(stats.mean, allx.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats.var, allx.var(), rtol=1e-5)
  assert float(stats.count) == len(allx)
  z = rl.normalize_scores(jnp.asarray(allx), stats)
  np.testing.assert_allclose(float(z.mean()), 0.0, atol=1e-5)
  np.testing.assert_allclose(float(z.std()), 1.0, rtol=1e-4)


def test_policy_loss_gradient_vanishes_outside_clip_range():
  eps = 0.2
  old = jnp.zeros((1, 6))
  # log-ratios: far above, inside, far below the clip range, for A > 0 then A < 0.
  logp = jnp.log(jnp.array([[1.5, 1.05, 0.5, 1.5, 0.95, 0.5]]))
  adv = jnp.array([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
  mask = jnp.ones((1, 6))
  grad = jax.grad(lambda lp: rl.policy_loss(lp, old, adv, mask, eps)[0])(logp)
  grad = np.asarray(grad)[0]
  assert grad[0] == 0.0  # ratio > 1 + eps, A > 0: clipped
  assert grad[5] == 0.0  # ratio < 1 - eps, A < 0: clipped
  # Inside the range, and on the pessimistic side (A > 0 low ratio, A < 0 high ratio), d/dlogp of
  # -A * ratio / 6 is -A * ratio / 6.
  for i, ratio in [(1, 1.05), (2, 0.5), (3, 1.5), (4, 0.95)]:
    np.testing.assert_allclose(grad[i], -float(adv[0, i]) * ratio / 6, rtol=1e-5)
  _, metrics = rl.policy_loss(logp, old, adv, mask, eps)
  np.testing.assert_allclose(metrics["clipfrac"], 2 / 6, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_max"], 1.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_min"], 0.5, rtol=1e-6)
  assert float(metrics["approx_kl"]) > 0


def test_policy_loss_masks_tokens():
  old = jnp.zeros((2, 3))
  logp = jnp.full((2, 3), 0.1)
  adv = jnp.array([[1.0, 1.0, 100.0], [1.0, 1.0, 1.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1]])
  loss, m = rl.policy_loss(logp, old, adv, mask, 0.2)
  np.testing.assert_allclose(loss, -float(jnp.exp(0.1)), rtol=1e-6)
  np.testing.assert_allclose(m["approx_kl"], float(jnp.expm1(0.1) - 0.1), rtol=1e-5)


def test_value_loss_clipping():
  old = jnp.zeros((1, 2))
  returns = jnp.array([[1.0, 1.0]])
  values = jnp.array([[0.5, 2.0]])
  mask = jnp.ones((1, 2))
  loss, m = rl.value_loss(values, old, returns, mask, clip_eps=0.2)
  # token 0: unclipped err 0.25, clipped (0.2) err 0.64 -> 0.64; token 1: err 1, clipped 0.64 -> 1.
  np.testing.assert_allclose(loss, 0.5 * (0.64 + 1.0) / 2, rtol=1e-5)
  np.testing.assert_allclose(m["vf_clipfrac"], 0.5)
  grad = jax.grad(lambda v: rl.value_loss(v, old, returns, mask, 0.2)[0])(values)
  assert float(grad[0, 0]) == 0.0 and float(grad[0, 1]) > 0.0
  unclipped, _ = rl.value_loss(values, old, returns, mask, clip_eps=None)
  np.testing.assert_allclose(unclipped, 0.5 * (0.25 + 1.0) / 2, rtol=1e-5)


def test_entropy_and_explained_variance():
  v = 8
  logits = jnp.zeros((2, 3, v)).at[1, :, 0].set(50.0)
  mask = jnp.array([[1, 1, 1], [0, 0, 0]])
  np.testing.assert_allclose(rl.entropy(logits, mask), np.log(v), rtol=1e-5)
  np.testing.assert_allclose(rl.entropy(logits, 1 - mask), 0.0, atol=1e-5)
  returns = jax.random.normal(jax.random.key(0), (3, 5))
  ones = jnp.ones((3, 5))
  np.testing.assert_allclose(rl.explained_variance(returns, returns, ones), 1.0, rtol=1e-6)
  mean_pred = jnp.full_like(returns, returns.mean())
  np.testing.assert_allclose(rl.explained_variance(mean_pred, returns, ones), 0.0, atol=1e-5)
  noisy = returns + 0.5 * jax.random.normal(jax.random.key(1), (3, 5))
  ev = float(rl.explained_variance(noisy, returns, ones))
  assert 0.0 < ev < 1.0
