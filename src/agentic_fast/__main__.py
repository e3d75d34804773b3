"""``python -m agentic_fast``: the same command line as ``agentic-fast``."""

from agentic_fast.cli.commands import main

raise SystemExit(main())
