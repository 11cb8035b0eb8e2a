"""`python -m tests.emulator demo|up|status|down` (see tests/emulator/cli.py)."""

import sys

from .cli import main

sys.exit(main())
