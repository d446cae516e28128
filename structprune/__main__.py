"""`python -m structprune` runs the command-line interface."""

from structprune.cli import main

raise SystemExit(main())
