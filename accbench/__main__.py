"""`python -m accbench ...`: the same command as the `accbench` script."""

import sys

from accbench.cli import main

sys.exit(main())
