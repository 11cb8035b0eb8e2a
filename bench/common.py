"""Shared pieces of the benchmarks: paths, the pods' environment, statistics, results, waits."""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
FLOORS = BENCH / "floors"
POD_SH = FLOORS / "pod.sh"
STUB_DIR = BENCH / "stub"
RESULTS = BENCH / "results"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(sys.executable).parent
AGENT = VENV_BIN / "pg-sfs-agent"
TIME = Path("/usr/bin/time")
# The official image's docker-entrypoint.sh (14.5), from the reference copy beside the checkout.
OFFICIAL_ENTRYPOINT = Path(
    os.environ.get("PGSFS_OFFICIAL_ENTRYPOINT", REPO.parent / "shared/reference/official-image/docker-entrypoint.sh")
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# A throw-away cluster's passwords (the bench's namespaces are reachable from nowhere else).
SUPERUSER_PASSWORD = "bench-superuser-password"
REPLICATION_PASSWORD = "bench-replication-password"
REPLICATION_USER = "replicator"
NAMESPACE = "pg"
SERVICE = "postgresql-svc"
PORT_NAME = "postgresql-port"
PORT = 5432


def pod_env(
    pod: str,
    ip: str,
    volume: Path,
    *,
    service: str = SERVICE,
    stub: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A container's environment as the StatefulSet gives it, for the agent and the floors alike.

    `stub` puts bench/stub first on PATH: a `postgres` that ends the run at the agent's exec.
    """
    path = [str(STUB_DIR)] if stub else []
    path += [str(VENV_BIN), str(PG_BIN), BASE_PATH]
    env = {
        "PATH": ":".join(path),
        "HOME": "/root",
        "HOSTNAME": pod,
        "POD_NAME": pod,
        "POD_NAMESPACE": NAMESPACE,
        "POD_IP": ip,
        "PGDATA": str(volume / "pgdata"),
        "PGPORT": str(PORT),
        "POSTGRES_PASSWORD": SUPERUSER_PASSWORD,
        "PGSFS_REPLICATION_PASSWORD": REPLICATION_PASSWORD,
        "PGSFS_SERVICE_NAME": service,
        "PGSFS_LOG_FORMAT": "json",
        "PGSFS_INITDB_DIR": str(volume / "no-initdb.d"),
    }
    env.update(extra or {})
    return env


def fqdn(pod: str, service: str = SERVICE) -> str:
    """A pod's name under its headless Service."""
    return f"{pod}.{service}.{NAMESPACE}.svc.cluster.local"


# ------------------------------------------------------------------------------ statistics


@dataclass
class Series:
    """Repeated measurements of one figure (seconds, MB, queries/s, ...)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        """Record one measurement."""
        self.values.append(float(value))

    @property
    def median(self) -> float | None:
        """The median, or None without data."""
        return statistics.median(self.values) if self.values else None

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile (p95 of 20 values is the 19th smallest)."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
        return ordered[rank - 1]

    def to_dict(self) -> dict[str, Any]:
        """median, min, max, n and the raw values, for the JSON file."""
        if not self.values:
            return {"n": 0}
        return {
            "median": round(statistics.median(self.values), 4),
            "min": round(min(self.values), 4),
            "max": round(max(self.values), 4),
            "n": len(self.values),
            "values": [round(v, 4) for v in self.values],
        }


@dataclass
class Row:
    """One line of the results table: the agent's figure beside its floor, and the goal."""

    key: str
    label: str
    unit: str
    agent: Series
    floor: Series | None = None
    floor_label: str = ""
    goal: str = ""
    ok: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """agent median / floor median."""
        if self.floor is None or not self.floor.values or not self.agent.values:
            return None
        base = self.floor.median or 0.0
        return (self.agent.median or 0.0) / base if base > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The row as plain data."""
        out: dict[str, Any] = {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "agent": self.agent.to_dict(),
            "goal": self.goal,
            "ok": self.ok,
            "note": self.note,
        }
        if self.floor is not None:
            out["floor"] = self.floor.to_dict()
            out["floor_label"] = self.floor_label
            out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        out.update(self.extra)
        return out


@dataclass
class Section:
    """The rows of one benchmark, with what it measured and under which conditions."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The section as plain data."""
        return {
            "key": self.key,
            "title": self.title,
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
            "data": self.data,
            "error": self.error,
            "seconds": round(self.seconds, 1),
        }


# ------------------------------------------------------------------------------ helpers


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `predicate` until truthy; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def agent_events(text: str) -> list[dict[str, Any]]:
    """The agent's JSON lines in a log (postgres' own lines skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def event(events: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The first agent event called `name`."""
    return next((e for e in events if e.get("event") == name), None)


def event_time(entry: dict[str, Any]) -> float:
    """An agent line's ISO-8601 UTC timestamp as seconds since the epoch."""
    stamp = str(entry["timestamp"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


class Timing(NamedTuple):
    """What /usr/bin/time reports about one run."""

    wall: float
    peak_mb: float
    cpu: float


TIME_FORMAT = "@time %e %M %U %S"


def timed(argv: Sequence[str]) -> list[str]:
    """argv under GNU time: wall (10 ms resolution), peak RSS (of it and its children), CPU."""
    return [str(TIME), "-f", TIME_FORMAT, *argv]


def parse_time_output(stderr: str) -> Timing:
    """The Timing from the last `@time` line of stderr."""
    for line in reversed(stderr.strip().splitlines()):
        parts = line.split()
        if len(parts) == 5 and parts[0] == "@time":
            return Timing(float(parts[1]), int(parts[2]) / 1024.0, float(parts[3]) + float(parts[4]))
    raise ValueError(f"no /usr/bin/time line in: {stderr[-500:]!r}")


def postmaster_pid(pgdata: Path) -> int | None:
    """The PID in postmaster.pid, if the file is there."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def stop_postmaster(pgdata: Path, timeout: float = 30.0) -> None:
    """Fast shutdown (SIGINT) of the postmaster running on `pgdata`, SIGKILL after `timeout`."""
    pid = postmaster_pid(pgdata)
    if pid is None or not pid_alive(pid):
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pid_alive(pid):
            return


def fmt(value: float | None, unit: str = "") -> str:
    """A number for the table: 3 significant digits or so."""
    if value is None:
        return "-"
    if unit == "MB" or abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return text
