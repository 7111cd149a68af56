"""`python -m powersampling` runs the CLI."""

from powersampling.cli import main

raise SystemExit(main())
