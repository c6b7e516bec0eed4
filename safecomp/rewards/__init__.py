"""Rewards: the composite r = h * s and its variants (`composite`), reward-model losses and metrics
(`reward_model`), the judge-logit scoring core (`judge`) and the response-mode classifier for real
text (`mode_classifier`).

Import the submodule you need (`from safecomp.rewards import composite`): this package imports
nothing itself, so that `composite` and `mode_classifier` stay usable without JAX (the testbed's
oracle uses them).
"""
