"""`python -m accbench`: the same as the `accbench` command."""

import sys

from accbench.cli import main

sys.exit(main())
