"""safecomp: output-centric safe-completion safety training in JAX/Flax."""

__version__ = "0.1.0"
