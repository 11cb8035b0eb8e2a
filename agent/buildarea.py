"""Building a cluster beside PGDATA: a marked work directory, renamed into place when complete."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent import builddir
from agent.context import Part
from agent.files import fsync_dir


class BuildArea(Part):
    """The work directory beside PGDATA (see agent/builddir.py for the protocol that makes it safe)."""

    def remove_leftover(self, path: Path) -> None:
        """Remove an unfinished init or clone that is provably ours (never used, never started)."""
        started = self.world.clock()
        size = builddir.discard(path)
        self._phase("leftover_removed", started, path=str(path), size_mb=round(size / 1048576, 1))

    def start(self, kind: str) -> Path:
        marker = {
            "kind": kind,
            "pgdata": str(self.pgdata),
            "pod": self.config.identity.pod_name,
            "pid": os.getpid(),
            "started": time.time(),
        }
        return builddir.create(self.pgdata, marker, self.owner) / "data"

    def move_into_place(self, built: Path) -> None:
        started = self.world.clock()
        # rename(2) atomically replaces a missing or empty PGDATA; then make the rename durable.
        os.rename(built, self.pgdata)
        fsync_dir(self.pgdata.parent)
        builddir.discard(self.work)
        self._phase("moved_into_place", started, pgdata=str(self.pgdata))
