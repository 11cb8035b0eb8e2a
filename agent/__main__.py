"""`python -m agent` runs the same entrypoint as the console script."""

from agent.cli import entry

entry()
