"""Rewards: the composite r = h * s and its variants, reward-model losses and metrics, the judge-logit
grader and the response-mode classifier for real text.

`judge` (which needs `safecomp.models`) is imported on use: `from safecomp.rewards import judge`.
"""
from safecomp.rewards.composite import (DEFAULT_SEVERITY_TO_SAFETY, REWARD_KINDS, composite_reward,
                                        refusal_correctness, safety_from_severity)
from safecomp.rewards.mode_classifier import (ModeResult, classify_mode, complies, keyword_refusal_matcher,
                                              mode_complies)
from safecomp.rewards.reward_model import (accuracy, bradley_terry_loss, confusion_matrix,
                                           expected_calibration_error, helpfulness_from_logit,
                                           helpfulness_loss, pairwise_accuracy, pearson_correlation,
                                           reward_from_heads, rm_loss, severity_loss)

__all__ = [
    "DEFAULT_SEVERITY_TO_SAFETY", "REWARD_KINDS", "ModeResult", "accuracy", "bradley_terry_loss",
    "classify_mode", "complies", "composite_reward", "confusion_matrix", "expected_calibration_error",
    "helpfulness_from_logit", "helpfulness_loss", "keyword_refusal_matcher", "mode_complies",
    "pairwise_accuracy", "pearson_correlation", "refusal_correctness", "reward_from_heads", "rm_loss",
    "safety_from_severity", "severity_loss",
]
