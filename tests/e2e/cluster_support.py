"""Helpers for the end-to-end scenarios that run the real pg-sfs-agent on the emulated StatefulSet:
reading the agent's JSON log lines, markers in PGDATA, slots and replication state on the primary.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.officiallog import AGENT_LINES
from emulator.controller import Cluster
from emulator.manifests import REPO_ROOT
from emulator.waiting import wait_until

PY39_BIN = REPO_ROOT / ".venv39" / "bin"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PRIMARY = "postgresql-sfs-0"
MARKER = "e2e-marker"
# Keys every log line carries that are not the event's own fields.
ENVELOPE = frozenset({"timestamp", "level", "event"})


def require_pods(*tools: str) -> None:
    """Skip the calling test module unless it can run pods: root, and the programs they need."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network, mount and PID namespaces)", allow_module_level=True)
    for tool in ("ip", "nsenter", "named", "setpriv", *tools):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} is not installed", allow_module_level=True)


def pod(ordinal: int) -> str:
    """The StatefulSet's pod name for `ordinal`."""
    return f"postgresql-sfs-{ordinal}"


def agent_events(text: str) -> list[dict[str, Any]]:
    """The agent's JSON lines in one container's output, in order (postgres' lines skipped)."""
    events = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
    return events


def names(events: Iterable[dict[str, Any]]) -> list[str]:
    """The event names, in order."""
    return [e["event"] for e in events]


def the_event(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The single event called `name` (assertion error if absent or repeated)."""
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, f"expected one {name!r} event, got {len(found)}: {names(events)}"
    return found[0]


def event_time(event: dict[str, Any]) -> float:
    """The event's timestamp as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def lines_before_exec(text: str) -> list[str]:
    """Output lines that are not the agent's, seen before its exec_postgres line (or in all). The
    plain lines the agent prints as the official entrypoint does (agent/officiallog.py) are its own."""
    before = []
    for line in text.splitlines():
        if line.startswith("{"):
            if '"event": "exec_postgres"' in line or '"event":"exec_postgres"' in line:
                break
            continue
        if line.strip() and line not in AGENT_LINES:
            before.append(line)
    return before


def log_events(c: Cluster, name: str, previous: bool = False) -> list[dict[str, Any]]:
    """The agent's events in the pod's current (or previous) container log."""
    return agent_events(c.logs(name, previous=previous))


def wait_event(c: Cluster, name: str, event: str, timeout: float) -> dict[str, Any]:
    """Wait until the pod's current log has `event`; return it."""
    seen: list[dict[str, Any]] = []

    def found() -> bool:
        c.check()
        seen[:] = [e for e in log_events(c, name) if e["event"] == event]
        return bool(seen)

    wait_until(found, timeout, 0.1, f"{event} in {name}'s log")
    return seen[0]


def system_identifier(c: Cluster, name: str) -> str:
    """The cluster's system identifier as the pod's postgres reports it."""
    return c.psql(name, "select system_identifier from pg_control_system()")


def write_marker(c: Cluster, name: str, token: str) -> None:
    """Write `token` into a file in the pod's PGDATA (as postgres, like an operator's note)."""
    res = c.exec_in_pod(name, ["sh", "-c", f'printf %s "$1" > "$PGDATA/{MARKER}"', "sh", token],
                        user="postgres")
    assert res.returncode == 0, res.stderr


def read_marker(c: Cluster, name: str) -> str:
    """The marker file's content in the pod's PGDATA ('' when absent)."""
    res = c.exec_in_pod(name, ["sh", "-c", f'cat "$PGDATA/{MARKER}" 2>/dev/null || true'],
                        user="postgres")
    return res.stdout


def slots(c: Cluster) -> dict[str, dict[str, str]]:
    """The primary's replication slots: name -> type, active, wal_status, safe_wal_size."""
    out = c.psql(PRIMARY, "select slot_name, slot_type, active, coalesce(wal_status, ''),"
                 " coalesce(safe_wal_size::text, '') from pg_replication_slots order by slot_name")
    rows = {}
    for line in out.splitlines():
        slot, kind, active, wal_status, safe = line.split("|")
        rows[slot] = {"type": kind, "active": active, "wal_status": wal_status, "safe_wal_size": safe}
    return rows


def walsender_pids(c: Cluster) -> dict[str, str]:
    """application_name -> walsender pid of every streaming replica (a pid kept = no reconnect)."""
    out = c.psql(PRIMARY, "select application_name, pid from pg_stat_replication"
                 " where state = 'streaming'")
    return dict(line.split("|") for line in out.splitlines())


def wait_visible(c: Cluster, names_: Iterable[str], sql: str, expected: str, timeout: float) -> float:
    """Wait until `sql` returns `expected` on every pod; return the seconds it took."""
    started = time.monotonic()
    for name in names_:
        def seen(name: str = name) -> bool:
            res = c.try_psql(name, sql, timeout=5)
            return res.returncode == 0 and res.stdout.strip() == expected

        wait_until(seen, max(0.1, timeout - (time.monotonic() - started)), 0.1,
                   f"{sql!r} = {expected!r} on {name}")
    return time.monotonic() - started


def dir_size(path: Path) -> int:
    """Bytes in the regular files below `path` (0 if it does not exist); tolerates churn."""
    total = 0
    try:
        for f in path.rglob("*"):
            try:
                if f.is_file() and not f.is_symlink():
                    total += f.stat().st_size
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        return 0
    return total


def container_pid1(c: Cluster, name: str) -> int | None:
    """Host PID of the pod's current PID 1 (changes with every container start)."""
    container = c.pod(name).container
    return container.pid1 if container is not None else None
