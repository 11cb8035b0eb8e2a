"""Whether a standby has stopped streaming for good: the liveness side of a replica whose WAL is gone.

A running standby whose upstream no longer has its slot or the WAL it needs retries forever,
NotReady, and nothing would ever restart it. Liveness cannot ask the upstream what is wrong (it is
local, stdlib only, and must never fail because the primary is away), but it can see that the WAL
receiver has not streamed for a long time *while the upstream runs and takes replication
connections* (it asks a replication client to authenticate): then a restart
costs nothing and lets the agent ask the upstream and decide (re-create the slot, re-clone, or
refuse with the reason). A standby cut off from its upstream is never restarted for it: the time
only counts while the upstream answers. Stdlib only, like the probe that uses it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from agent.announce import read_exact
from agent.render import CONF_NAME

# How long a standby may fail to stream while its upstream runs and takes connections before liveness
# restarts it. Longer than a primary's restart or a switchover; README ("Probes") states it.
NOT_STREAMING_LIMIT_S = 60.0
MARK_NAME = "not-streaming-since"
UPSTREAM_CONNECT_S = 0.8

_CONF_LINE = re.compile(r"^\s*primary_conninfo\s*=\s*'((?:[^'\\]|''|\\.)*)'\s*(#.*)?$")
_CONNINFO_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)")


def _unquote_conf(raw: str) -> str:
    """The value of a postgresql.conf string literal (the inside of the quotes)."""
    return re.sub(r"''|\\(.)", lambda m: "'" if m.group(0) == "''" else m.group(1), raw)


def standby_conninfo(pgdata: Path) -> str | None:
    """The primary_conninfo postgres uses: the agent's file, then postgresql.auto.conf (read later,
    so it wins), each read with a size limit; None when neither sets it."""
    conninfo = None
    for name in (CONF_NAME, "postgresql.auto.conf"):
        try:
            with open(pgdata / name, "rb") as handle:
                text = handle.read(65536).decode("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = _CONF_LINE.match(line)
            if match:
                conninfo = _unquote_conf(match.group(1))
    return conninfo


def conninfo_values(conninfo: str) -> dict[str, str]:
    """The key/value pairs of a libpq conninfo string (quoted values unescaped)."""
    values = {}
    for key, raw in _CONNINFO_PAIR.findall(conninfo):
        values[key] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith("'") else raw
    return values


def _startup_message(user: str) -> bytes:
    """A protocol 3.0 StartupMessage for a physical replication connection as `user`."""
    body = struct.pack("!I", 196608) + b"".join(
        part.encode() + b"\0" for part in ("user", user, "replication", "true")) + b"\0"  # fmt: skip
    return struct.pack("!I", len(body) + 4) + body


def _read_auth_request(sock: socket.socket) -> bool:
    """Whether the server's first message is an authentication request ('R'). The whole message is
    read: closing a socket with unread bytes sends a reset, which the server logs as "could not
    receive data from client", while it ends an orderly close at this point silently."""
    header = read_exact(sock, 5)
    (length,) = struct.unpack("!I", header[1:])
    # An authentication request is a few dozen bytes (SASL lists its mechanisms); the bound keeps a
    # strange peer from making the probe read without end.
    if header[:1] != b"R" or not 8 <= length <= 1024:
        return False
    read_exact(sock, length - 4)
    return True


def upstream_serves(host: str, port: int, user: str, timeout: float = UPSTREAM_CONNECT_S) -> bool:
    """Whether the upstream is a running server that takes replication connections: it answers a
    StartupMessage by asking for authentication, within `timeout`, name lookup included.

    A server in crash recovery or shutting down refuses ("the database system is starting up"), a
    frozen one says nothing, an unreachable one does not connect: none of them counts, so replicas
    are never restarted because their primary is down or busy. No password is ever sent: the
    connection ends at the authentication request, which PostgreSQL does not log as a failure. The
    work runs in a daemon thread, so a cluster DNS that does not answer cannot hang the probe.
    """
    answered: list[bool] = []

    def ask() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                sock.sendall(_startup_message(user))
                answered.append(_read_auth_request(sock))
        except OSError:
            answered.append(False)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answered and answered[0])


def not_streaming_for(
    state_dir: Path,
    postmaster_start: str,
    streaming: bool,
    upstream_answers: Callable[[], bool],
    now: float,
) -> float:
    """Seconds this postmaster's standby has failed to stream while its upstream answered (0 when it
    streams or the upstream is unreachable: a partition never counts). Kept in a small file in the
    state dir, keyed by the postmaster's start time so that a restart starts the count afresh."""
    mark = state_dir / MARK_NAME
    if streaming or not upstream_answers():
        with contextlib.suppress(FileNotFoundError):
            mark.unlink()
        return 0.0
    # O_NOFOLLOW both ways: the probe never reads or writes through a planted symlink.
    try:
        with os.fdopen(os.open(mark, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
            started, since = handle.read(256).decode().split()
        if started == postmaster_start:
            return max(0.0, now - float(since))
    except (OSError, ValueError):
        pass
    try:
        with os.fdopen(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as handle:
            handle.write(f"{postmaster_start} {now}\n")
    except OSError:
        pass  # no count without the file: liveness then never fails for this
    return 0.0
