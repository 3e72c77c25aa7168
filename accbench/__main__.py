"""`python -m accbench`: the same as the `accbench` command."""

import sys

from accbench.cli import main

if __name__ == "__main__":  # spawned processes (vLLM's engine core, workers) import this module too
    sys.exit(main())
