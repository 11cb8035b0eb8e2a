"""Reading the data directory into plain data: what is there, and what of it is the agent's."""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from agent.files import read_limited

WORK_SUFFIX = ".pgsfs-work"
# Names only the agent gives (see builddir.py): a work directory being made, and one being deleted.
STAGING_SUFFIX = ".pgsfs-new"
TOMBSTONE_SUFFIX = ".pgsfs-discard"
WORK_MARKER = "pg-sfs-agent-work.json"


@dataclass(frozen=True)
class Leftover:
    """An unfinished init or clone beside PGDATA, and whether it is provably the agent's own."""

    path: str
    kind: str
    ours: bool


@dataclass(frozen=True)
class DataDirState:
    """What PGDATA holds, as far as the decision needs to know."""

    path: str
    exists: bool
    empty: bool
    is_mountpoint: bool
    pg_version: str | None
    # standby.signal, unless an unfinished handoff wrote it (PGDATA is then a former primary's)
    standby_signal: bool
    recovery_signal: bool
    system_identifier: int | None
    sample_entries: tuple[str, ...]
    owner_uid: int | None
    mode: int | None
    leftover: Leftover | None
    # pg_wal is a link to a directory elsewhere (initdb --waldir, POSTGRES_INITDB_WALDIR)
    wal_linked: bool = False

    @property
    def initialised(self) -> bool:
        """PGDATA holds a cluster (PG_VERSION present)."""
        return self.pg_version is not None


# Written before a former primary's own WAL is served as a standby (switchover.OwnWalServer) and
# removed once its successor is promoted: while it exists, standby.signal is the handoff's, not a standby's.
HANDOFF_MARKER = "pgsfs.handoff"
# A fresh filesystem's own directory: never data, never in the way (a real PV's root has it).
LOST_FOUND = "lost+found"


def builds_inside(pgdata: Path) -> bool:
    """PGDATA is its volume's mount point (the official image's VOLUME, or a PVC mounted there):
    nothing can be renamed onto it, so the build happens in hidden directories inside it instead,
    and its entries are moved up when complete (see agent/buildarea.py)."""
    return os.path.ismount(pgdata)


def volume_dir(pgdata: Path) -> Path:
    """The directory whose filesystem holds PGDATA and what the agent puts beside it."""
    return pgdata if builds_inside(pgdata) else pgdata.parent


def _site(pgdata: Path, suffix: str) -> Path:
    if builds_inside(pgdata):
        return pgdata / suffix
    return pgdata.with_name(pgdata.name + suffix)


def work_dir_for(pgdata: Path) -> Path:
    """Where an init or clone is built before it is moved into place (same filesystem)."""
    return _site(pgdata, WORK_SUFFIX)


def staging_dir_for(pgdata: Path) -> Path:
    """Where a work directory is made with its marker before it gets its name."""
    return _site(pgdata, STAGING_SUFFIX)


def tombstone_for(pgdata: Path) -> Path:
    """The name a work directory takes before it is deleted."""
    return _site(pgdata, TOMBSTONE_SUFFIX)


def _ours_inside(pgdata: Path, name: str) -> bool:
    """Entries of a mount-point PGDATA that are not data: lost+found, the agent's build names, its
    state directory, and a major upgrade's build and the old cluster it kept (agent/upgrade.py)."""
    return builds_inside(pgdata) and (name in (LOST_FOUND, WORK_SUFFIX, STAGING_SUFFIX, TOMBSTONE_SUFFIX,
                                               STATE_DIR_INSIDE) or name.startswith(UPGRADE_INSIDE_PREFIX))  # fmt: skip


def data_entries(pgdata: Path) -> list[str]:
    """PGDATA's entries that are data: what is not lost+found or the agent's own (see _ours_inside)."""
    return sorted(e for e in os.listdir(pgdata) if not _ours_inside(pgdata, e))


# The agent's state directory inside a mount-point PGDATA (review F-L11): on the volume, not the
# container's filesystem. PostgreSQL's temporary-file prefix keeps it out of every base backup (a
# replica never gets the primary's passfile or applied secrets); pg_rewind and postgres leave it.
STATE_DIR_INSIDE = "pgsql_tmp.pg-sfs-agent"
# A major upgrade inside a mount-point PGDATA: its build and the old cluster kept aside, under the same
# prefix, so base backups, pg_rewind and postgres leave them alone too.
UPGRADE_INSIDE_PREFIX = "pgsql_tmp.pgsfs-"
STATE_DIR_BESIDE = ".pg-sfs-agent"


def default_state_dir(pgdata: Path) -> Path:
    """PGSFS_STATE_DIR's default: beside PGDATA on its volume, or inside it when PGDATA is the
    volume's mount point (nothing beside it is on the volume then)."""
    return pgdata / STATE_DIR_INSIDE if builds_inside(pgdata) else pgdata.parent / STATE_DIR_BESIDE


def moving_entries(pgdata: Path) -> frozenset[str]:
    """Entries a build of ours was moving up into a mount-point PGDATA when it stopped (its marker's
    journal); they are the build's, not data, until PG_VERSION (moved last) is there."""
    try:
        marker = json.loads(read_limited(work_dir_for(pgdata) / WORK_MARKER))
    except (OSError, ValueError):
        return frozenset()
    if not isinstance(marker, dict) or marker.get("pgdata") != str(pgdata):
        return frozenset()
    moving = marker.get("moving")
    return frozenset(str(n) for n in moving) if isinstance(moving, list) else frozenset()


def read_system_identifier(pgdata: Path) -> int | None:
    """The cluster's system identifier: the first 8 bytes of global/pg_control."""
    try:
        head = read_limited(pgdata / "global" / "pg_control", 8)
    except OSError:
        return None
    if len(head) != 8:
        return None
    return int(struct.unpack("<Q", head)[0])


_HISTORY_FILE = re.compile(r"^([0-9A-F]{8})\.history$")


def newest_timeline(pgdata: Path) -> int:
    """The newest timeline this data has seen: the highest timeline history file in pg_wal (a
    promotion writes one, and a standby that followed it receives it); 1 when there is none."""
    try:
        names = os.listdir(pgdata / "pg_wal")
    except OSError:
        return 1
    found = [int(m.group(1), 16) for m in map(_HISTORY_FILE.match, names) if m]
    return max(found, default=1)


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def read_leftover(pgdata: Path) -> Leftover | None:
    """An unfinished build beside PGDATA, if any, and whether it is provably ours.

    A tombstone is ours by its name (only discarding gives it); a staging directory when it holds
    nothing but our marker; a work directory when its marker names this PGDATA.
    """
    tombstone = tombstone_for(pgdata)
    if tombstone.exists() or tombstone.is_symlink():
        return Leftover(path=str(tombstone), kind="discarded", ours=_real_dir(tombstone))
    staging = staging_dir_for(pgdata)
    if staging.exists() or staging.is_symlink():
        try:
            names = set(os.listdir(staging)) if _real_dir(staging) else {"(not a directory)"}
        except OSError:
            names = {"(unreadable)"}
        return Leftover(path=str(staging), kind="staging", ours=names <= {WORK_MARKER, f".{WORK_MARKER}.tmp"})
    work = work_dir_for(pgdata)
    if not work.exists():
        return None
    try:
        marker = json.loads(read_limited(work / WORK_MARKER))
        ours = isinstance(marker, dict) and marker.get("pgdata") == str(pgdata)
        kind = str(marker.get("kind", "unknown")) if isinstance(marker, dict) else "unknown"
    except (OSError, ValueError):
        ours, kind = False, "unknown"
    return Leftover(path=str(work), kind=kind, ours=ours)


_VERSION = re.compile(r"^\d{1,3}(\.\d{1,3})?$")


def read_pg_version(pgdata: Path) -> str:
    """PG_VERSION's content when it is a version ("14"), else "(unreadable)". Read as root before
    the drop, from a file postgres may have replaced: 16 bytes at most, no link followed, and never
    anything but digits passed on (the text reaches the plan, the logs and `plan`'s output)."""
    try:
        text = read_limited(pgdata / "PG_VERSION", 16).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "(unreadable)"
    return text if _VERSION.match(text) else "(unreadable)"


def read_major(pgdata: Path) -> int | None:
    """PG_VERSION's major as a number; None when there is none or it is not one (nothing raised)."""
    version = read_pg_version(pgdata)
    return int(version) if version.isdigit() else None


def inspect(pgdata: Path) -> DataDirState:
    """Look at PGDATA without changing anything."""
    try:
        st = os.stat(pgdata)
        exists = True
    except FileNotFoundError:
        st = None
        exists = False
    entries: list[str] = []
    if exists and pgdata.is_dir():
        try:
            with os.scandir(pgdata) as it:
                for entry in it:
                    entries.append(entry.name)
        except OSError:
            entries = ["(unreadable)"]
    elif exists:
        entries = ["(not a directory)"]
    if exists and entries and entries[0] not in ("(unreadable)", "(not a directory)"):
        # lost+found, our build directories, and entries our interrupted move left are not data.
        moving = moving_entries(pgdata) if "PG_VERSION" not in entries else frozenset()
        entries = [e for e in entries if not _ours_inside(pgdata, e) and e not in moving]
    pg_version = read_pg_version(pgdata) if "PG_VERSION" in entries else None
    return DataDirState(
        path=str(pgdata),
        exists=exists,
        empty=not entries,
        is_mountpoint=exists and os.path.ismount(pgdata),
        pg_version=pg_version,
        standby_signal="standby.signal" in entries and HANDOFF_MARKER not in entries,
        recovery_signal="recovery.signal" in entries,
        system_identifier=read_system_identifier(pgdata) if pg_version else None,
        sample_entries=tuple(sorted(entries)[:8]),
        owner_uid=st.st_uid if st else None,
        mode=(st.st_mode & 0o7777) if st else None,
        leftover=read_leftover(pgdata),
        wal_linked=pg_version is not None and os.path.islink(pgdata / "pg_wal"),
    )
