"""Where this member's data ends, against an upstream's timeline history: shared by every path that
starts streaming from another member (a restarting replica, the primary ordinal holding a standby)."""

from __future__ import annotations

from agent import history, replication, walend
from agent.context import Part
from agent.errors import AgentError, CommandFailed


def through_local_wal(part: Part, position: history.LocalPosition, control: str,
                      known_end: int | None = None) -> history.LocalPosition:  # fmt: skip
    """A standby's history goes as far as the WAL in its pg_wal, replayed or not (pg_control only
    proves what was replayed and flushed): received WAL past a fork is a fork too (review M7).
    `known_end`: the end a handoff just read (serving added no WAL), so pg_waldump is not run again."""
    try:
        layout = walend.layout(control)
        end = known_end if known_end is not None else walend.local_wal_end(part.world.runner, part.pgdata, control)
    except (AgentError, KeyError, ValueError) as exc:
        part.log.warning("wal_end_unknown", detail=getattr(exc, "message", str(exc)),
                         note="the history check uses pg_control's position alone")  # fmt: skip
        return position
    if layout.timeline != position.timeline or end <= position.lsn:
        return position
    part.log.info("local_wal_past_control", control=history.format_lsn(position.lsn),
                  wal_end=history.format_lsn(end), timeline=position.timeline)  # fmt: skip
    return history.LocalPosition(position.timeline, end, position.clean, position.state)


def compare_with(
    part: Part, endpoint: replication.Endpoint, info: replication.SystemInfo, local: history.LocalPosition
) -> history.Verdict:
    """`local` against the history of the upstream that answered `info` (its history file read when
    it is on a later timeline)."""
    text = ""
    if local.timeline < info.timeline:
        import psycopg

        try:
            text = part.world.timeline_history(endpoint, info.timeline)
        except psycopg.Error as exc:
            raise CommandFailed(
                f"could not read the timeline history {info.timeline} of {endpoint.host}: "
                f"{' '.join(str(exc).split())}",
                hint="the next start tries again; the data here was left untouched",
            ) from exc
    return history.compare(local, info.timeline, history.parse_lsn(info.xlogpos), history.parse_history(text))
