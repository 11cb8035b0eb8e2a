"""Where a data directory's WAL ends: the end of its last valid record, read once with pg_waldump.

A former primary that was killed holds WAL past its last checkpoint that may carry acknowledged
commits; even one shut down cleanly may have a successor that lacks its tail. A handoff promotes
the successor only once it has received this WAL to its end. The end is fixed here, before any
server reads the WAL: the replay pointer of a standby serving it moves while it replays (hot standby
opens at the checkpoint's redo, long before the end), so it never stands in for the end.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import CommandFailed
from agent.history import controldata_values, format_lsn, parse_lsn
from agent.postgres import child_env
from agent.replication import segment_name_suffix
from agent.runner import Runner

_SEGMENT = re.compile(r"[0-9A-F]{24}")

# pg_waldump's record line: "rmgr: Heap len (rec/tot): 54/ 54, tx: 7, lsn: 0/0151E890, prev ...".
_RECORD = re.compile(rb"len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*\d+, lsn: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")
MAXALIGN = 8
SHORT_PAGE_HEADER = 24  # MAXALIGN(sizeof(XLogPageHeaderData))
LONG_PAGE_HEADER = 40  # MAXALIGN(sizeof(XLogLongPageHeaderData)): a segment's first page


@dataclass(frozen=True)
class WalLayout:
    """What pg_controldata says of the WAL to read: from where, on which timeline, in which units."""

    redo: int
    timeline: int
    page_size: int = 8192
    segment_size: int = 16 * 1048576


def layout(controldata_text: str) -> WalLayout:
    """The latest checkpoint's redo point and timeline, the WAL page and segment sizes."""
    values = controldata_values(controldata_text)
    return WalLayout(
        redo=parse_lsn(values["Latest checkpoint's REDO location"]),
        timeline=int(values["Latest checkpoint's TimeLineID"]),
        page_size=int(values.get("WAL block size", "8192")),
        segment_size=int(values.get("Bytes per WAL segment", str(16 * 1048576))),
    )


def _align(value: int) -> int:
    return (value + MAXALIGN - 1) // MAXALIGN * MAXALIGN


def record_end(start: int, total_len: int, page_size: int, segment_size: int) -> int:
    """The position after a record of `total_len` bytes starting at `start`, as PostgreSQL's reader
    counts it: a record that crosses pages continues after each page's header; the end is aligned."""
    position, remaining = start, total_len
    while True:
        page_end = (position // page_size + 1) * page_size
        if remaining <= page_end - position:
            return _align(position + remaining)
        remaining -= page_end - position
        header = LONG_PAGE_HEADER if page_end % segment_size == 0 else SHORT_PAGE_HEADER
        position = page_end + header


def last_record(line: bytes) -> tuple[int, int] | None:
    """(start, total length) of the record a pg_waldump line describes, or None for other lines."""
    match = _RECORD.search(line)
    if match is None:
        return None
    return parse_lsn(match.group(2).decode()), int(match.group(1))


def end_from_dump(last_line: bytes, wal: WalLayout) -> int | None:
    """The end of WAL given pg_waldump's last record line (None when there was no record)."""
    record = last_record(last_line)
    if record is None:
        return None
    return record_end(record[0], record[1], wal.page_size, wal.segment_size)


def _segment_range(waldir: Path, wal: WalLayout) -> list[str]:
    """The redo point's segment and the timeline's last one in pg_wal: named, the first is where
    pg_waldump learns the segment size; unnamed, it takes any segment in pg_wal, and PostgreSQL 14's
    fails on a zero-filled one ("header specifies 0 bytes"). Empty when the first is not there."""
    first = f"{wal.timeline:08X}{segment_name_suffix(wal.redo, wal.segment_size)}"
    try:
        names = [n for n in os.listdir(waldir) if _SEGMENT.fullmatch(n) and n.startswith(first[:8]) and n >= first]
    except OSError:
        return []
    return [first, max(names)] if first in names else []


def local_wal_end(runner: Runner, pgdata: Path, controldata_text: str, timeout: float = 600.0) -> int:
    """Read this PGDATA's WAL from the latest checkpoint's redo point to its last valid record; its end.

    pg_waldump always stops with an error at the end of WAL (that is how the end is found); what
    counts is the last record it printed. Raises CommandFailed when it printed none.
    """
    wal = layout(controldata_text)
    argv = ["pg_waldump", "--path", str(pgdata / "pg_wal"), "--timeline", str(wal.timeline),
            "--start", format_lsn(wal.redo)]  # fmt: skip
    argv += _segment_range(pgdata / "pg_wal", wal)
    last_line, stderr = runner.run_last_line(argv, env=child_env({"LC_ALL": "C", "LANG": "C"}), timeout=timeout)
    end = end_from_dump(last_line, wal)
    if end is None:
        said = " ".join(stderr.decode("utf-8", "replace").split())[-400:]
        raise CommandFailed(
            f"pg_waldump found no WAL record from the latest checkpoint's redo point {format_lsn(wal.redo)} on "
            f"timeline {wal.timeline}, so where this member's WAL ends is unknown: {said}",
            hint="the data here was left untouched; check PGDATA/pg_wal (the pod restarts and reads it again)",
        )
    return max(end, wal.redo)
