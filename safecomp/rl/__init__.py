"""PPO / GRPO / RLOO math: GAE, KL estimators and controllers, advantages, losses, the update."""
from safecomp.rl.advantages import (RunningMoments, broadcast_to_tokens, contains_eos, eos_penalty,
                                    grpo_advantages, init_running_moments,
                                    masked_mean, masked_sum, masked_var, masked_whiten,
                                    normalize_scores, rloo_advantages, sequence_kl, token_rewards,
                                    update_running_moments)
from safecomp.rl.gae import compute_gae
from safecomp.rl.kl import (KL_ESTIMATORS, adaptive_kl_coef, kl_estimate, kl_k1, kl_k2, kl_k3,
                            update_kl_coef)
from safecomp.rl.losses import entropy, explained_variance, policy_loss, token_entropy, value_loss
from safecomp.rl.ppo import (PPOConfig, RLTrainState, create_rl_state, prepare_advantages,
                             ppo_update, response_logits_values, shaped_scores)
