"""Backend of `pg-sfs-agent logs`: merge the agent's JSON lines and postgres' text
lines from `kubectl logs --prefix` of several pods into one aligned timeline.

Pure functions plus `run`; stdlib only, Python 3.9 compatible. Nothing here may raise on
arbitrary input: a line that cannot be understood is shown as text.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

__all__ = [
    "LEVELS",
    "LogRecord",
    "column_widths",
    "filter_records",
    "format_record",
    "merge",
    "parse_line",
    "parse_timestamp",
    "run",
]

# Severity ranks of the normalised level names; unknown or missing levels count as info.
LEVELS: dict[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_LEVEL_ALIASES = {
    "warn": "warning",
    "fatal": "critical",
    "panic": "critical",
    "exception": "error",
    "log": "info",
    "notice": "info",
    "trace": "debug",
}
# postgres severity tags, in the order elog.c knows them.
_PG_LEVELS = {
    "DEBUG1": "debug",
    "DEBUG2": "debug",
    "DEBUG3": "debug",
    "DEBUG4": "debug",
    "DEBUG5": "debug",
    "LOG": "info",
    "INFO": "info",
    "NOTICE": "info",
    "WARNING": "warning",
    "ERROR": "error",
    "FATAL": "critical",
    "PANIC": "critical",
}
# Secondary lines of a postgres message: they carry their message's severity, not their own.
_PG_SECONDARY = ("DETAIL", "HINT", "CONTEXT", "STATEMENT", "QUERY", "LOCATION")
_UNKNOWN = ""

# Keys shown in their own columns (or merged into the pod column), never as key=value.
_SHOWN = frozenset({"timestamp", "level", "event", "pod", "ordinal", "role"})
_MAX_WIDTH = {"pod": 40, "level": 8, "event": 40}

# `kubectl logs --prefix`: "[pod/<name>/<container>] ".
_PREFIX = re.compile(r"\[pod/(?P<pod>[^/\]\s]+)/(?P<container>[^\]\s]*)\] ?")
# `kubectl logs --timestamps`: the kubelet's RFC 3339 time, then a space.
_KUBELET_TS = re.compile(r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) ")
_ISO = re.compile(
    r"\s*(?P<y>\d{4})-(?P<mo>\d\d)-(?P<d>\d\d)[Tt ](?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)"
    r"(?:[.,](?P<frac>\d{1,9}))?\s*(?P<tz>[Zz]|UTC|GMT|[+-]\d\d(?::?\d\d)?)?\s*"
)
# postgres' default log_line_prefix '%m [%p] ': "2026-11-23 21:30:01.234 UTC [42] LOG:  ...".
_PG_LINE = re.compile(r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? (?:[A-Za-z]{1,6}|[+-]\d\d(?::?\d\d)?)) ")
_PG_TAG = re.compile(
    r"\b(?P<tag>DEBUG[1-5]|LOG|INFO|NOTICE|WARNING|ERROR|FATAL|PANIC|" + "|".join(_PG_SECONDARY) + r"):\s"
)
# Control characters (other than tab) would move the cursor or recolour the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_PLAIN = re.compile(r"[^\s\"'=\\]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BEFORE_ALL = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class LogRecord:
    """One log line: when, from which pod, how severe, what happened, and the rest."""

    timestamp: datetime | None
    pod: str
    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    # True for the agent's JSON lines; False for postgres' and any other text.
    structured: bool = False


# --- parsing -----------------------------------------------------------------------------------


def parse_timestamp(value: object) -> datetime | None:
    """An aware UTC datetime from an ISO-8601 string or Unix seconds; None if unusable."""
    try:
        if isinstance(value, str):
            return _parse_iso(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _EPOCH + timedelta(seconds=value)
    except (ValueError, OverflowError):
        pass
    return None


def _parse_iso(text: str) -> datetime | None:
    m = _ISO.fullmatch(text[:64])
    if m is None:
        return None
    frac = (m["frac"] or "0")[:6].ljust(6, "0")
    stamp = datetime(
        int(m["y"]),
        int(m["mo"]),
        int(m["d"]),
        int(m["h"]),
        int(m["mi"]),
        int(m["s"]),
        int(frac),
        tzinfo=_tz(m["tz"]),
    )
    # Normalise to UTC now, so ordering and display never convert (and never overflow) later.
    return stamp.astimezone(timezone.utc)


def _tz(text: str | None) -> timezone:
    """The zone of a timestamp suffix; none at all means UTC (what the agent and image use)."""
    if text is None or text.upper() in ("Z", "UTC", "GMT"):
        return timezone.utc
    digits = text[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or "0"))
    return timezone(-offset if text[0] == "-" else offset)


def normalize_level(value: object) -> str:
    """A level name from LEVELS, or "" when the value names no known level."""
    if not isinstance(value, str):
        return _UNKNOWN
    name = value.strip().lower()
    name = _LEVEL_ALIASES.get(name, name)
    return name if name in LEVELS else _UNKNOWN


def parse_line(line: str) -> LogRecord | None:
    """Parse one line of `kubectl logs --prefix` output; None for a blank line."""
    raw = line.rstrip("\r\n")
    body = raw
    pod = ""
    m = _PREFIX.match(body)
    if m is not None:
        pod = m["pod"]
        body = body[m.end() :]
    kubelet_time = None
    m = _KUBELET_TS.match(body)
    if m is not None:
        kubelet_time = parse_timestamp(m["ts"])
        body = body[m.end() :]
    if not body.strip():
        return None
    record = _parse_json(body, pod, raw, kubelet_time)
    if record is None:
        record = _parse_text(body, pod, raw, kubelet_time)
    return record


def _parse_json(body: str, pod: str, raw: str, fallback: datetime | None) -> LogRecord | None:
    text = body.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        # Not JSON (or nested too deep to parse): show it as text.
        return None
    if not isinstance(obj, dict):
        return None
    event = obj.get("event")
    if not isinstance(event, str):
        event = "" if event is None else _compact(event)
    if not pod and isinstance(obj.get("pod"), str):
        pod = obj["pod"]
    return LogRecord(
        timestamp=parse_timestamp(obj.get("timestamp")) or fallback,
        pod=pod,
        level=normalize_level(obj.get("level")),
        event=event,
        fields={k: v for k, v in obj.items() if k not in ("timestamp", "level", "event")},
        raw=raw,
        structured=True,
    )


def _parse_text(body: str, pod: str, raw: str, fallback: datetime | None) -> LogRecord:
    timestamp = fallback
    event = "text"
    msg = body
    m = _PG_LINE.match(body)
    if m is not None:
        timestamp = parse_timestamp(m["ts"]) or fallback
        event = "postgres"
        # The time has its own column; keep the rest ("[pid] LOG:  ...") as postgres wrote it.
        msg = body[m.end() :]
    fields: dict[str, Any] = {"msg": msg}
    level = _UNKNOWN
    # The severity tag follows the prefix ('%m [%p] ' by default), so look near its end;
    # a line without the prefix counts only when it starts with the tag.
    tag = _PG_TAG.search(body[m.end() :][:200]) if m is not None else _PG_TAG.match(body)
    if tag is not None:
        event = "postgres"
        fields["tag"] = tag["tag"]
        level = _PG_LEVELS.get(tag["tag"], _UNKNOWN)
    return LogRecord(timestamp=timestamp, pod=pod, level=level, event=event, fields=fields, raw=raw)


def inherit_levels(records: Iterable[LogRecord]) -> Iterator[LogRecord]:
    """Give postgres' DETAIL/HINT/STATEMENT... lines the level of the message they belong
    to (the previous postgres line of the same pod), so level filters keep them together."""
    last: dict[str, str] = {}
    for rec in records:
        if rec.structured or rec.event != "postgres":
            yield rec
        elif rec.fields.get("tag") in _PG_SECONDARY:
            yield replace(rec, level=last.get(rec.pod, rec.level))
        else:
            last[rec.pod] = rec.level
            yield rec


# --- ordering and filtering ------------------------------------------------------------------


def merge(records: Iterable[LogRecord]) -> list[LogRecord]:
    """Order records by time, stably; an untimed line stays right after its predecessor
    from the same pod (it sorts with that predecessor's time)."""
    keyed: list[tuple[datetime, LogRecord]] = []
    last: dict[str, datetime] = {}
    for rec in records:
        when = rec.timestamp if rec.timestamp is not None else last.get(rec.pod, _BEFORE_ALL)
        last[rec.pod] = when
        keyed.append((when, rec))
    # sorted() is stable: equal times keep their input order.
    keyed.sort(key=lambda pair: pair[0])
    return [rec for _, rec in keyed]


def filter_records(
    records: Iterable[LogRecord],
    pods: Sequence[str] | None = None,
    levels: str | None = None,
    events: Sequence[str] | None = None,
    postgres: bool = True,
) -> list[LogRecord]:
    """Keep records from `pods` (names, globs or ordinals), at least as severe as the
    level `levels`, whose event matches one of the `events` globs; `postgres=False`
    drops every non-JSON line."""
    minimum = LEVELS.get(normalize_level(levels), 0) if levels else 0
    kept = []
    for rec in records:
        if pods and not any(_pod_matches(rec, p) for p in pods):
            continue
        if LEVELS.get(rec.level, LEVELS["info"]) < minimum:
            continue
        if events and not any(fnmatch.fnmatchcase(rec.event, p) for p in events):
            continue
        if not postgres and not rec.structured:
            continue
        kept.append(rec)
    return kept


def _pod_matches(rec: LogRecord, pattern: str) -> bool:
    if pattern.isdigit():
        # "--pod 1" is ordinal 1 of whatever StatefulSet the lines came from.
        return rec.pod.endswith("-" + pattern) or str(rec.fields.get("ordinal")) == pattern
    return fnmatch.fnmatchcase(rec.pod, pattern)


# --- formatting --------------------------------------------------------------------------------


def _pod_label(rec: LogRecord) -> str:
    pod = rec.pod or "-"
    role = rec.fields.get("role")
    return f"{pod}({role})" if isinstance(role, str) and role else pod


def _columns(rec: LogRecord) -> dict[str, str]:
    return {
        "pod": _clean(_pod_label(rec)),
        "level": rec.level or "-",
        "event": _clean(rec.event) or "-",
    }


def column_widths(records: Iterable[LogRecord]) -> dict[str, int]:
    """Widths of the pod, level and event columns for `records`, capped so that one
    oversized value does not push every other line to the right."""
    widths = {name: 0 for name in _MAX_WIDTH}
    for rec in records:
        for name, value in _columns(rec).items():
            widths[name] = max(widths[name], min(len(value), _MAX_WIDTH[name]))
    return widths


def format_record(rec: LogRecord, widths: Mapping[str, int]) -> str:
    """One aligned line: time (HH:MM:SS.mmm UTC), pod, level, event, then key=value
    fields (or, for postgres and text lines, the line itself)."""
    if rec.timestamp is not None:
        when = rec.timestamp.strftime("%H:%M:%S.") + f"{rec.timestamp.microsecond // 1000:03d}"
    else:
        when = "--:--:--.---"
    cols = _columns(rec)
    parts = [when] + [cols[name].ljust(widths.get(name, 0)) for name in ("pod", "level", "event")]
    if not rec.structured and isinstance(rec.fields.get("msg"), str):
        rest = rec.fields["msg"]
    else:
        rest = " ".join(f"{_fmt_key(k)}={_fmt_value(v)}" for k, v in rec.fields.items() if k not in _SHOWN)
    # JSON quoting leaves DEL and C1 controls alone; nothing raw may reach the terminal.
    parts.append(_clean(rest))
    return "  ".join(parts).rstrip()


def _clean(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _compact(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):
        return "<unprintable>"


def _fmt_key(key: str) -> str:
    return key if _PLAIN.fullmatch(key) else _compact(key)


def _fmt_value(value: object) -> str:
    # Bare when unambiguous; strings with spaces, quotes, '=' or controls get JSON quotes.
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) and not _CONTROL.search(value) else _compact(value)
    return _compact(value)


# --- command line ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that prints help to the stream `run` was given."""

    def __init__(self, out: TextIO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._out = out

    def print_help(self, file: Any = None) -> None:
        super().print_help(self._out if file is None else file)


def _parser(out: TextIO) -> argparse.ArgumentParser:
    p = _Parser(
        out,
        prog="pg-sfs-agent logs",
        description="Merge `kubectl logs --prefix --tail=-1 -l app.kubernetes.io/name="
        "postgresql` output (on stdin) of all members into one timeline.",
    )
    p.add_argument(
        "--pod",
        action="append",
        default=[],
        metavar="POD",
        help="only this pod (name, glob or ordinal; repeatable or comma-separated)",
    )
    p.add_argument("--level", choices=list(LEVELS), default=None, help="minimum level to show")
    p.add_argument(
        "--event", action="append", default=[], metavar="GLOB", help="only events matching this glob (repeatable)"
    )
    p.add_argument("--no-postgres", action="store_true", help="hide postgres' own and other non-JSON lines")
    return p


def _lines(stream: TextIO) -> Iterator[str]:
    # Read bytes when possible: binary junk must not stop the viewer with a decode error.
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        for chunk in buffer:
            yield chunk.decode("utf-8", "replace")
    else:
        yield from stream


def _write(out: TextIO, text: str) -> None:
    try:
        out.write(text)
    except UnicodeEncodeError:
        # Lone surrogates from JSON escapes, or a non-UTF-8 terminal.
        encoding = getattr(out, "encoding", None) or "ascii"
        out.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))


def run(argv: list[str], stdin: TextIO, stdout: TextIO) -> int:
    """`pg-sfs-agent logs [--pod P] [--level L] [--event GLOB] [--no-postgres]` over
    stdin; returns the exit status (2 for bad arguments)."""
    try:
        args = _parser(stdout).parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed to stderr
        return e.code if isinstance(e.code, int) else 2
    pods = [p.strip() for value in args.pod for p in value.split(",") if p.strip()]
    parsed = (parse_line(line) for line in _lines(stdin))
    records = merge(inherit_levels(r for r in parsed if r is not None))
    shown = filter_records(
        records, pods=pods or None, levels=args.level, events=args.event or None, postgres=not args.no_postgres
    )
    widths = column_widths(shown)
    try:
        for rec in shown:
            _write(stdout, format_record(rec, widths) + "\n")
        stdout.flush()
    except BrokenPipeError:
        # `... | head`: stop quietly, and keep the interpreter's final flush from failing.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
            os.close(devnull)
    return 0
