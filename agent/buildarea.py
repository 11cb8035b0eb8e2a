"""Building a cluster beside PGDATA: a marked work directory, renamed into place when complete."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agent import builddir
from agent.context import Part
from agent.files import fsync_dir
from agent.pgdata import builds_inside


class BuildArea(Part):
    """The work directory beside PGDATA (see agent/builddir.py for the protocol that makes it safe)."""

    kind = "init"

    def remove_leftover(self, path: Path) -> None:
        """Remove an unfinished init or clone that is provably ours (never used, never started)."""
        started = self.world.clock()
        if path == self.work and builds_inside(self.pgdata):
            builddir.reclaim_moved(self.pgdata, path)
        size = builddir.discard(path)
        self._phase("leftover_removed", started, path=str(path), size_mb=round(size / 1048576, 1))

    def _marker(self, kind: str) -> dict[str, Any]:
        return {
            "kind": kind,
            "pgdata": str(self.pgdata),
            "pod": self.config.identity.pod_name,
            "pid": os.getpid(),
            "started": time.time(),
        }

    def start(self, kind: str) -> Path:
        """A fresh work directory (its marker first); returns where to build the cluster."""
        self.kind = kind
        return builddir.create(self.pgdata, self._marker(kind), self.owner) / "data"

    def move_into_place(self, built: Path) -> None:
        """The complete build becomes PGDATA: one rename, or, into a mount point, a journaled move."""
        started = self.world.clock()
        if builds_inside(self.pgdata):
            builddir.move_up(built, self.pgdata, self.work, self._marker(self.kind), self.owner)
        else:
            # rename(2) atomically replaces a missing or empty PGDATA; then make the rename durable.
            os.rename(built, self.pgdata)
            fsync_dir(self.pgdata.parent)
        builddir.discard(self.work)
        self._phase("moved_into_place", started, pgdata=str(self.pgdata))
