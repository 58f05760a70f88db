"""`python -m lab.bench`: see lab.bench.cli."""

import sys

from lab.bench.cli import main

sys.exit(main())
