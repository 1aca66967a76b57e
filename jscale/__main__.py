"""`python -m jscale ...`: the same command line as `jscale ...` (how `jscale run --workers` starts its workers)."""

import sys

from jscale.cli import main

sys.exit(main())
