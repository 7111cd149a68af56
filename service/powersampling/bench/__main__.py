"""``python -m powersampling.bench quality ...``: the bench commands without the main CLI."""

import sys

from powersampling.bench.cli import main

sys.exit(main())
