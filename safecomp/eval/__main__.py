"""`python -m safecomp.eval --workdir DIR ...`: see `safecomp.eval.cli`."""
import sys

from safecomp.eval.cli import main

if __name__ == "__main__":
  sys.exit(main())
