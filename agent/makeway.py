"""Data that must make way for the primary's history: rewound (its own WAL copied aside first), or
moved aside whole and cloned again. Never deleted, and only when the volume has room for it."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import history, probe
from agent.context import Part
from agent.errors import CommandFailed, DataDirConflict, NoRoomToMoveAside, ReplicaDiverged
from agent.files import fix_tree_ownership, free_bytes, fsync_dir, tree_size
from agent.pgdata import builds_inside, volume_dir
from agent.postgres import rewind

if TYPE_CHECKING:
    from agent.replica import Replica

# Room kept free beyond a copy's own size (for a clone: the WAL written while it runs).
COPY_MARGIN = 64 * 1048576


class MakeWay(Part):
    """What a restarting replica does when its data cannot follow the primary as it is."""

    def __init__(self, ctx: Any, replica: Replica) -> None:
        super().__init__(ctx)
        self.replica = replica

    def rewind(self, address: str) -> bool:
        """pg_rewind onto the primary's history; if it cannot, move aside and clone (True then)."""
        cfg = self.config
        started = self.world.clock()
        self.world.beat("rewind")
        self._save_diverged_wal()
        self.clear_stale_lock()
        try:
            said = rewind(self.world.runner, self.pgdata, host=cfg.primary_fqdn.rstrip("."), hostaddr=address,
                          port=cfg.port, user=cfg.superuser, password=cfg.superuser_password.reveal())  # fmt: skip
        except CommandFailed as exc:
            self.log.warning("rewind_failed", detail=exc.message, note="moving the data aside to clone again")
            self.move_aside_and_clone("rewind-failed", "replica_recloning", f"pg_rewind failed ({exc.message})")
            return True
        self._phase("rewound", started, primary=cfg.primary_fqdn.rstrip("."), pg_rewind=said)
        self.replica.ensure_slot(address)
        return False

    def clear_stale_lock(self) -> None:
        if probe.remove_stale_lock(self.pgdata):
            self.log.info("stale_lock_removed", file=str(self.pgdata / "postmaster.pid"),
                          note="left by a postgres that was killed")  # fmt: skip

    def _save_diverged_wal(self) -> None:
        """pg_rewind replaces this member's WAL past the fork with the primary's: the transactions
        only it has would be gone. Copy its pg_wal aside first (never deleted), if there is room."""
        wal = self.pgdata / "pg_wal"
        needed, free = room_for_copy(wal, volume_dir(self.pgdata))
        if needed > free:
            raise NoRoomToMoveAside(
                f"this former primary must be rewound, which discards the WAL only it has; a copy of its pg_wal "
                f"({needed // 1048576} MB with a margin) does not fit on the volume. The data here was left untouched",
                hint="grow the PersistentVolumeClaim, or copy PGDATA/pg_wal elsewhere and delete it from there "
                "if its transactions are not needed",
                needed_mb=needed // 1048576,
            )
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if builds_inside(self.pgdata):
            aside = self.pgdata / f".pgsfs-diverged-wal-{stamp}"
        else:
            aside = self.pgdata.with_name(f"{self.pgdata.name}.diverged-wal-{stamp}")
        shutil.copytree(wal, aside, symlinks=True)
        size = needed - COPY_MARGIN
        if self.owner is not None:
            fix_tree_ownership(aside, *self.owner)
        self.log.warning(
            "diverged_wal_saved", copy=str(aside), size_mb=round(size / 1048576, 1),
            note="pg_rewind drops the transactions only this member had; their WAL is kept here "
            "(read it with pg_waldump); delete it once you no longer need it",
        )  # fmt: skip

    def diverged(self, verdict: history.Verdict, *, reclone: bool) -> None:
        """Not on the primary's history: refuse with the data untouched, or clone again if allowed."""
        where = {
            history.AHEAD_OF_PRIMARY: "it has replayed WAL the primary has not written: the primary's data is "
            "older than this replica's (a restored or copied volume started without promotion)",
            history.FORKED: "it went on past the point where the primary's history left its timeline",
            history.NEWER_TIMELINE: "it is on a newer timeline than the primary",
            history.NOT_IN_HISTORY: "its timeline is not in the primary's history",
        }[verdict.outcome]
        fields = asdict(verdict)
        hint = (
            "find out which copy holds the writes you need. If it is the primary's, set PGSFS_ON_DIVERGENCE=reclone "
            "on this pod (its data is moved aside, never deleted, and it clones again) or delete its PVC; if it is "
            "this replica's, make it the primary instead"
        )
        if verdict.outcome == history.NEWER_TIMELINE:
            hint = (
                "this member went on after a promotion the primary never saw, so its writes are the newest: make it "
                f"the primary (set the primary ordinal to {self.config.identity.ordinal} and apply). Only if its "
                "writes are not needed, move its PGDATA aside or delete its PVC (PGSFS_ON_DIVERGENCE=reclone never "
                "discards a newer timeline)"
            )
        if not reclone:
            raise ReplicaDiverged(
                f"this replica's data is not on the primary's history: {where} (replica timeline "
                f"{verdict.local_timeline} at {verdict.local_lsn}, primary timeline {verdict.primary_timeline} "
                f"at {verdict.primary_lsn}); streaming would silently mix the two. The data here was left untouched",
                hint=hint,
                **fields,
            )
        self.move_aside_and_clone(
            "diverged",
            "replica_diverged_recloning",
            f"this replica's data is not on the primary's history ({where})",
            outcome=verdict.outcome,
        )

    def reclone_after_lost_slot(self, missing: bool = False) -> None:
        """The primary removed WAL this replica needs: move its data aside and clone again."""
        slot = self.config.identity.slot_name
        if missing:
            self.move_aside_and_clone(
                "wal-gone", "slot_missing_wal_gone",
                f"the primary has no slot {slot} for this replica (it was away during a switchover, or the slot "
                "was dropped) and no longer has the WAL this replica would resume from: a new slot would stream "
                "nothing", slot=slot,
            )  # fmt: skip
            return
        self.move_aside_and_clone(
            "slot-invalidated",
            "slot_invalidated",
            f"slot {slot} was invalidated (the primary removed WAL this replica still needed, max_slot_wal_keep_size)",
            slot=slot,
        )

    def move_aside_and_clone(self, suffix: str, event: str, why: str, **fields: Any) -> None:
        """Rename PGDATA to `$PGDATA.<suffix>-<time>` and clone again, only if a new copy fits beside it.

        The data is never deleted; a crash at any point leaves either the old data in place (this
        runs again) or an empty PGDATA (a clone); the clone drops and recreates an invalidated slot.
        """
        if builds_inside(self.pgdata):
            raise DataDirConflict(
                f"{why}, so it must clone again, but PGDATA {self.pgdata} is its volume's mount point and "
                "cannot be moved aside; the data here was left untouched",
                hint="set PGDATA to a subdirectory of the volume (like /var/lib/postgresql/data/pgdata, after "
                "moving the data there), or, if this replica's data is not needed, empty the volume",
                **fields,
            )
        needed, free = room_for_copy(self.pgdata, self.pgdata.parent)
        if needed > free:
            raise NoRoomToMoveAside(
                f"{why}, so it must clone again; its data stays and a new copy needs about {needed // 1048576} MB, "
                f"but the volume has {free // 1048576} MB free. PGDATA was not touched",
                hint="grow the PersistentVolumeClaim, or, if this replica's data is not needed (the primary "
                "has everything it had), delete the PVC (or move PGDATA away) so the pod clones afresh",
                needed_mb=needed // 1048576,
                free_mb=free // 1048576,
                **fields,
            )
        waldir = self._external_wal_room(why, fields, needed - COPY_MARGIN)
        aside = self.pgdata.with_name(f"{self.pgdata.name}.{suffix}-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(self.pgdata, aside)
        fsync_dir(self.pgdata.parent)
        wal_aside = None
        if waldir is not None:
            settle_aside_wal(aside, waldir, self.owner)
            wal_aside = wal_aside_name(waldir, aside)
        self.log.warning(
            event,
            moved_aside=str(aside),
            **({"wal_moved_aside": str(wal_aside)} if wal_aside is not None else {}),
            note=f"{why}; cloning again. Delete the moved-aside copy once you no longer need it",
            **fields,
        )
        self.replica.clone()

    def _external_wal_room(self, why: str, fields: dict[str, Any], pgdata_bytes: int) -> Path | None:
        """PGDATA's WAL directory when it lies elsewhere (POSTGRES_INITDB_WALDIR): it moves aside with
        the data, so it must not be a mount point and its volume needs room for the clone's WAL too
        (and for the new PGDATA, `pgdata_bytes`, when one volume holds both)."""
        waldir = linked_wal_dir(self.pgdata)
        if waldir is None:
            return None
        if os.path.ismount(waldir):
            raise DataDirConflict(
                f"{why}, so it must clone again, but its WAL directory {waldir} (POSTGRES_INITDB_WALDIR) is a "
                "mount point and cannot be moved aside with the data; the data here was left untouched",
                hint="set POSTGRES_INITDB_WALDIR to a subdirectory of the WAL volume (after moving the WAL there), "
                "or, if this replica's data is not needed, empty both volumes", **fields,
            )  # fmt: skip
        needed, free = room_for_copy(waldir, waldir.parent)
        if os.stat(waldir.parent).st_dev == os.stat(volume_dir(self.pgdata)).st_dev:
            needed += pgdata_bytes  # one volume holds both new copies
        if needed > free:
            raise NoRoomToMoveAside(
                f"{why}, so it must clone again; its WAL stays and the new copy's WAL needs about "
                f"{needed // 1048576} MB, but the WAL directory's volume has {free // 1048576} MB free. PGDATA "
                "was not touched", hint="grow the WAL volume, or, if this replica's data is not needed, delete its "
                "PVCs so the pod clones afresh", needed_mb=needed // 1048576, free_mb=free // 1048576, **fields,
            )  # fmt: skip
        return waldir



def room_for_copy(source: Path, volume: Path, margin: int = COPY_MARGIN) -> tuple[int, int]:
    """Bytes a copy of `source` needs on `volume` (its size plus a margin: for a new clone beside
    moved-aside data, the WAL written meanwhile), and the bytes free there."""
    return tree_size(source) + margin, free_bytes(volume)


def linked_wal_dir(pgdata: Path) -> Path | None:
    """The directory PGDATA's pg_wal links to (an external WAL directory), or None when it is inside."""
    link = pgdata / "pg_wal"
    if not link.is_symlink():
        return None
    return pgdata / os.readlink(link)  # an absolute target (initdb, pg_basebackup) replaces pgdata


def wal_aside_name(waldir: Path, aside: Path) -> Path:
    """Where the external WAL of moved-aside data `aside` goes: beside `waldir`, named after it."""
    return waldir.with_name(f"{waldir.name}.{aside.name}")


def settle_aside_wal(aside: Path, waldir: Path, owner: tuple[int, int] | None) -> bool:
    """Give moved-aside data `aside` its own external WAL directory (`wal_aside_name`), so a clone
    finds `waldir` empty (pg_basebackup --waldir refuses any other, review L4); True if it moved any.

    Safe to run again after a kill at any step: the link is re-pointed first (a rename in the same
    directory), then `waldir` renamed to where it now points, then made again, empty.
    """
    target = wal_aside_name(waldir, aside)
    current = linked_wal_dir(aside)
    if current is None or current not in (waldir, target):
        return False
    moved = False
    if current == waldir:
        staged = aside / "pg_wal.pgsfs-new"
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        os.symlink(target, staged)
        os.replace(staged, aside / "pg_wal")
        fsync_dir(aside)
    if waldir.exists() and not target.exists():
        os.rename(waldir, target)
        fsync_dir(waldir.parent)
        moved = True
    if not waldir.exists():
        waldir.mkdir(mode=0o700)
        if owner is not None:
            os.chown(waldir, *owner)
        fsync_dir(waldir.parent)
    return moved


def settle_moved_aside_wal(pgdata: Path, waldir: Path | None, owner: tuple[int, int] | None) -> list[Path]:
    """Before a clone: finish what a kill interrupted, for every moved-aside copy of PGDATA beside it."""
    if waldir is None or builds_inside(pgdata) or not pgdata.parent.is_dir():
        return []
    settled = []
    for aside in sorted(pgdata.parent.glob(f"{pgdata.name}.*")):
        if aside.is_dir() and not aside.is_symlink() and settle_aside_wal(aside, waldir, owner):
            settled.append(wal_aside_name(waldir, aside))
    return settled
