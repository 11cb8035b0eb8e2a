"""`python -m emulator demo|up|status|down` (see emulator/cli.py)."""

import sys

from .cli import main

sys.exit(main())
