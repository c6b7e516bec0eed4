"""`python -m safecomp.datagen`: the command line (`safecomp.datagen.cli`), with errors as exit status 2."""
import sys

from safecomp.datagen.cli import main
from safecomp.errors import SafecompError

if __name__ == "__main__":
  try:
    sys.exit(main())
  except (SafecompError, OSError) as exc:
    print(f"datagen: error: {exc}", file=sys.stderr)
    sys.exit(2)
