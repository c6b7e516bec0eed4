"""Training stages (SFT, reward model, PPO, eval) and the machinery they share."""
