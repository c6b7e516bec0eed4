"""Errors a user can act on: each names the file, line, tensor or config key at fault."""


class SafecompError(Exception):
  """Base class for user-facing errors."""


class DataError(SafecompError):
  """A malformed data row; the message names the file and line."""

  def __init__(self, path, line, reason):
    self.path, self.line, self.reason = str(path), line, reason
    super().__init__(f"{path}:{line}: {reason}")


class CheckpointError(SafecompError):
  """A checkpoint that does not match the model (missing tensor, wrong shape, vocab mismatch)."""


class ConfigError(SafecompError):
  """An unknown or out-of-range config key."""
