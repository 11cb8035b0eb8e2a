"""What every benchmark gets: how many runs, the time budget, a place for logs, progress output."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


class OutOfTime(RuntimeError):
    """The whole bench's time budget is spent: the remaining measurements are skipped."""


@dataclass
class Ctx:
    """Options and shared state of one `make bench` run."""

    runs: int
    dns_trials: int
    quick: bool
    deadline: float
    logdir: Path
    pgbench_scale: int
    started: float = field(default_factory=time.monotonic)

    def say(self, msg: str) -> None:
        """Progress on stderr, with the seconds since the start."""
        sys.stderr.write(f"[{time.monotonic() - self.started:6.1f}s] {msg}\n")
        sys.stderr.flush()

    def remaining(self) -> float:
        """Seconds left in the budget."""
        return self.deadline - time.monotonic()

    def check_time(self, need: float = 0.0) -> None:
        """Raise OutOfTime unless `need` seconds are left."""
        if self.remaining() < need:
            raise OutOfTime(f"time budget spent ({self.remaining():.0f} s left, {need:.0f} s needed)")
