"""`python -m deploy.bench`: see deploy.bench.cli."""

import sys

from deploy.bench.cli import main

sys.exit(main())
