"""The build directory beside PGDATA: made, finished and discarded so that a crash at any instant
leaves only what the next start can prove is the agent's own.

- made under a staging name, holding nothing but its marker, then renamed to the work name: a work
  directory always has its marker, and a staging one never holds anything else;
- discarded by renaming it to the tombstone name first, then deleting: deleting starts only once the
  directory carries a name that only this step gives.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from agent.files import fsync_dir, tree_size, write_atomic
from agent.pgdata import (
    STAGING_SUFFIX,
    TOMBSTONE_SUFFIX,
    WORK_MARKER,
    WORK_SUFFIX,
    moving_entries,
    staging_dir_for,
    tombstone_for,
    work_dir_for,
)


def create(pgdata: Path, marker: dict[str, Any], owner: tuple[int, int] | None = None) -> Path:
    """A new work directory with its marker, beside PGDATA; returns it."""
    staging, work = staging_dir_for(pgdata), work_dir_for(pgdata)
    if staging.exists():
        discard(staging)
    staging.mkdir(mode=0o700)
    if owner is not None:
        os.chown(staging, *owner)
    write_atomic(staging / WORK_MARKER, json.dumps(marker), mode=0o600, owner=owner)
    fsync_dir(staging)
    os.rename(staging, work)
    fsync_dir(work.parent)
    return work


def discard(path: Path) -> int:
    """Delete a work, staging or tombstone directory of ours, tombstone first; returns bytes freed.

    A build whose pg_wal is a link elsewhere (POSTGRES_INITDB_WALDIR, --waldir) wrote its WAL there:
    that directory is emptied first, or the next initdb would refuse it as not empty, forever.
    """
    size = tree_size(path)
    size += _empty_external_wal(path / "data" / "pg_wal", path)
    pgdata = _pgdata_of(path)
    tombstone = tombstone_for(pgdata)
    if path != tombstone:
        if tombstone.exists():
            shutil.rmtree(tombstone)
        os.rename(path, tombstone)
        fsync_dir(path.parent)
    shutil.rmtree(tombstone)
    fsync_dir(path.parent)
    return size


# Emptying an external WAL directory goes through the tombstone name: only discarding gives it.
DISCARDED_WAL = TOMBSTONE_SUFFIX


def move_up(built: Path, pgdata: Path, work: Path, marker: dict[str, Any], owner: tuple[int, int] | None) -> None:
    """Move a complete build's entries into a mount-point PGDATA, PG_VERSION last.

    The entries are first written into the work directory's marker (a journal): until PG_VERSION
    arrives, those names in PGDATA are the build's (inspect ignores them, `reclaim_moved` takes them
    back), and once it is there the cluster is complete.
    """
    entries = sorted(os.listdir(built), key=lambda name: (name == "PG_VERSION", name))
    write_atomic(work / WORK_MARKER, json.dumps({**marker, "moving": entries}), mode=0o600, owner=owner)
    fsync_dir(work)
    for name in entries:
        os.rename(built / name, pgdata / name)
    fsync_dir(pgdata)


def reclaim_moved(pgdata: Path, work: Path) -> None:
    """Take back into the build what an interrupted `move_up` left in PGDATA (PG_VERSION absent)."""
    if (pgdata / "PG_VERSION").exists():
        return
    names = moving_entries(pgdata)
    (work / "data").mkdir(exist_ok=True)
    for name in sorted(names):
        if (pgdata / name).exists() or (pgdata / name).is_symlink():
            os.rename(pgdata / name, work / "data" / name)
    fsync_dir(pgdata)


def _empty_external_wal(link: Path, build: Path) -> int:
    """Empty the directory a build's pg_wal link points to (it only ever held that build's WAL:
    initdb and pg_basebackup refuse a WAL directory that is not empty). Each entry is moved into a
    subdirectory whose name only this step gives, then that is deleted, so a crash midway leaves
    only what the next discard removes. Returns the bytes freed."""
    if not link.is_symlink():
        return 0
    target = Path(os.path.realpath(link))
    if not target.is_dir() or build.resolve() in target.parents:
        return 0
    graveyard = target / DISCARDED_WAL
    graveyard.mkdir(mode=0o700, exist_ok=True)
    for entry in os.listdir(target):
        if entry != DISCARDED_WAL:
            os.rename(target / entry, graveyard / entry)
    size = tree_size(graveyard)
    shutil.rmtree(graveyard)
    fsync_dir(target)
    return size


def _pgdata_of(path: Path) -> Path:
    for suffix in (WORK_SUFFIX, STAGING_SUFFIX, TOMBSTONE_SUFFIX):
        if path.name == suffix:  # inside a mount-point PGDATA
            return path.parent
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    raise ValueError(f"{path} is not a build directory of the agent's")
