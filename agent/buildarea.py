"""Building a cluster beside PGDATA: a marked work directory, renamed into place when complete."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import builddir
from agent.context import Part
from agent.files import fsync_dir, sync_filesystem
from agent.pgdata import builds_inside

# How often a clone's written data is flushed while pg_basebackup runs.
WRITE_BEHIND_S = 0.5


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

    def make_durable(self, built: Path) -> float:
        """initdb and pg_basebackup ran with --no-sync: flush the build's filesystem (and the WAL
        directory's, when it lives elsewhere) in one syncfs each, before the build becomes PGDATA.

        Returns the seconds it took (a field of the caller's phase).
        """
        started = self.world.clock()
        sync_filesystem(built)
        waldir = self.config.waldir
        if waldir is not None and waldir.exists():
            sync_filesystem(waldir)
        return round(self.world.clock() - started, 3)

    @contextlib.contextmanager
    def writing_behind(self, built: Path, interval: float = WRITE_BEHIND_S) -> Iterator[None]:
        """While a long copy writes the build, flush its filesystem every `interval` seconds, so the
        disk writes along with the network instead of all at the end (make_durable's syncfs then has
        little left). PostgreSQL's own *_flush_after settings do the same for its files."""
        stop = threading.Event()

        def flush() -> None:
            while not stop.wait(interval):
                with contextlib.suppress(OSError):  # make_durable's syncfs is the one that counts
                    sync_filesystem(built.parent)

        flusher = threading.Thread(target=flush, name="write-behind", daemon=True)
        flusher.start()
        try:
            yield
        finally:
            stop.set()
            flusher.join()

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
