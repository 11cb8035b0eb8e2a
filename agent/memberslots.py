"""Member slots on a member that is not the primary: a demoted primary's, moved out of its way.

Members stream from the primary ordinal and keep their slots there; a standby on a replica
ordinal never serves one. A former primary that rejoins as a standby still holds every member's
slot from its time as primary, frozen: on a standby they pin WAL and, once past
max_slot_wal_keep_size, are invalidated, so a later switch back would find them lost and clone
healthy members again (review M1). Before its postgres starts they are moved (never deleted) to
the state directory, where a slot's few bytes stay for whoever wants to look.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agent.files import fsync_dir


def member_slots(pgdata: Path, names: set[str]) -> list[str]:
    """The slot directories in PGDATA/pg_replslot named as members' slots, sorted."""
    try:
        with os.scandir(pgdata / "pg_replslot") as entries:
            return sorted(e.name for e in entries if e.name in names and e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def set_aside(pgdata: Path, state_dir: Path, names: set[str], log: Any) -> list[str]:
    """Move the member slots of a standby's PGDATA to `state_dir/set-aside-slots`; postgres must be
    stopped. Returns the names moved; one that cannot be moved is logged and left."""
    found = member_slots(pgdata, names)
    if not found:
        return []
    target = state_dir / "set-aside-slots"
    target.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for name in found:
        try:
            os.rename(pgdata / "pg_replslot" / name, target / f"{name}-{stamp}")
            moved.append(name)
        except OSError as exc:
            log.warning("member_slot_left", slot=name, detail=str(exc))
    if moved:
        fsync_dir(pgdata / "pg_replslot")
        fsync_dir(target)
        log.info("member_slots_set_aside", slots=moved, moved_to=str(target),
                 note="slots of members, left from this member's time as primary: a standby serves none, and "
                 "kept they would pin WAL here and go stale")  # fmt: skip
    return moved
