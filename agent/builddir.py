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
from agent.pgdata import WORK_MARKER, staging_dir_for, tombstone_for, work_dir_for


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
    fsync_dir(pgdata.parent)
    return work


def discard(path: Path) -> int:
    """Delete a work, staging or tombstone directory of ours, tombstone first; returns bytes freed."""
    size = tree_size(path)
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


def _pgdata_of(path: Path) -> Path:
    for maker in (work_dir_for, staging_dir_for, tombstone_for):
        suffix = maker(Path("x")).name[1:]
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    raise ValueError(f"{path} is not a build directory of the agent's")
