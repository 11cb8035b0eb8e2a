"""Is a replica on the primary's history? WAL positions, timeline history files, pg_controldata.

A replica may stream from a primary only if everything it has replayed is also in the primary's
past: on the same timeline no further than the primary has written, or on an older timeline no
further than where the primary's history left that timeline. Anything else means the two histories
forked (or the primary's data is older than the replica's), and streaming would silently mix them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

ON_HISTORY = "on_history"
AHEAD_OF_PRIMARY = "ahead_of_primary"
FORKED = "forked"
NEWER_TIMELINE = "newer_timeline"
NOT_IN_HISTORY = "not_in_history"


def parse_lsn(text: str) -> int:
    """`16/B374D848` as an integer; ValueError when it is not an LSN."""
    match = _LSN.match(text.strip())
    if match is None:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """An integer WAL position in PostgreSQL's `X/X` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_history(text: str) -> dict[int, int]:
    """A timeline history file: for each ancestor timeline, the position where it was left."""
    switches: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        switches[int(fields[0])] = parse_lsn(fields[1])
    return switches


SHUT_DOWN = "shut down"


@dataclass(frozen=True)
class LocalPosition:
    """How far this data directory's history goes: the timeline and position it has reached, and
    whether it was shut down cleanly (otherwise WAL past `lsn` may exist that nobody else has)."""

    timeline: int
    lsn: int
    clean: bool = True
    # pg_controldata's "Database cluster state": "shut down in recovery" is clean for a standby, but a
    # former primary's WAL may go past the restartpoint it then wrote.
    state: str = SHUT_DOWN
    # `lsn` is where a record starts (a checkpoint's location), not where one ends (a min recovery
    # point): that record is part of this history, so a fork exactly there is already past it.
    record_start: bool = False


# The states a backup taken from a server in recovery may have in its pg_control (PostgreSQL's own
# check at the backup's first start: anything else is "backup_label contains data inconsistent with
# control file", at every start).
STANDBY_BACKUP_STATES = frozenset({"in archive recovery", "shut down in recovery"})


def unusable_clone(backup_label: str, cluster_state: str) -> str | None:
    """Why a fresh clone would never start, or None. A base backup taken from a server in recovery
    whose recovery ended while it was copied (a restore reaching its target runs an end-of-recovery
    checkpoint) carries a pg_control, copied last, that no longer says recovery."""
    from_standby = any(line.strip() == "BACKUP FROM: standby" for line in backup_label.splitlines())
    if from_standby and cluster_state not in STANDBY_BACKUP_STATES:
        return (f"the clone was taken from the primary while it was still in recovery, and its control file "
                f"says {cluster_state!r}: its recovery ended during the copy, and PostgreSQL refuses such a "
                "backup at every start")  # fmt: skip
    return None


def controldata_values(text: str) -> dict[str, str]:
    """pg_controldata's report (run with LC_ALL=C) as label -> value."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def parse_controldata(text: str) -> LocalPosition:
    """The furthest point pg_controldata proves this data reached: checkpoint or min recovery point."""
    values = controldata_values(text)
    timeline, lsn = int(values["Latest checkpoint's TimeLineID"]), parse_lsn(values["Latest checkpoint location"])
    record_start = True
    min_recovery = parse_lsn(values.get("Minimum recovery ending location", "0/0"))
    min_recovery_tli = int(values.get("Min recovery ending loc's timeline", "0") or 0)
    if min_recovery_tli and (min_recovery_tli, min_recovery) > (timeline, lsn):
        timeline, lsn, record_start = min_recovery_tli, min_recovery, False
    state = values.get("Database cluster state", SHUT_DOWN)
    return LocalPosition(timeline, lsn, state in (SHUT_DOWN, "shut down in recovery"), state, record_start)


@dataclass(frozen=True)
class Verdict:
    """Whether the replica may follow, and the numbers that show why."""

    outcome: str
    local_timeline: int
    local_lsn: str
    primary_timeline: int
    primary_lsn: str
    switch_lsn: str | None

    @property
    def may_follow(self) -> bool:
        """True when streaming from the primary continues this replica's own history."""
        return self.outcome == ON_HISTORY


def compare(local: LocalPosition, primary_timeline: int, primary_lsn: int, history: dict[int, int]) -> Verdict:
    """Decide whether `local` lies on the primary's history (`history`: its timeline history file)."""

    def verdict(outcome: str, switch: int | None = None) -> Verdict:
        return Verdict(
            outcome, local.timeline, format_lsn(local.lsn), primary_timeline, format_lsn(primary_lsn),
            format_lsn(switch) if switch is not None else None,
        )  # fmt: skip

    def within(limit: int) -> bool:
        # A record starting exactly at `limit` ends past it: not within.
        return local.lsn < limit if local.record_start else local.lsn <= limit

    if local.timeline == primary_timeline:
        return verdict(ON_HISTORY if within(primary_lsn) else AHEAD_OF_PRIMARY)
    if local.timeline > primary_timeline:
        return verdict(NEWER_TIMELINE)
    switch = history.get(local.timeline)
    if switch is None:
        return verdict(NOT_IN_HISTORY)
    return verdict(ON_HISTORY if within(switch) else FORKED, switch)
