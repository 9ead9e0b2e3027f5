"""`python -m recast` is the `recast` command."""

import sys

from recast.cli import main

if __name__ == "__main__":
  sys.exit(main())
