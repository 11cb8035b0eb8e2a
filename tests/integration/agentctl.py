"""Running the agent and PostgreSQL for integration tests: processes, logs, connections."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from agent import discovery
from agent.announce import Announcer

SUPERUSER_PASSWORD = "su 'pw' \\ &=@:x"
REPLICATION_PASSWORD = "r'e\\p l&a=y@:x"


def pod_env(volume: Path, ordinal: int, port: int, **extra: str) -> dict[str, str]:
    """The environment the StatefulSet gives a pod, for a volume mounted at `volume`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PGSFS_", "POSTGRES_", "PG", "POD_"))}
    env.update(
        POD_NAME=f"postgresql-sfs-{ordinal}",
        POD_NAMESPACE="pg",
        PGDATA=str(volume / "pgdata"),
        PGPORT=str(port),
        POSTGRES_PASSWORD=SUPERUSER_PASSWORD,
        PGSFS_REPLICATION_PASSWORD=REPLICATION_PASSWORD,
        PGSFS_LOG_FORMAT="json",
        PGSFS_INITDB_DIR=str(volume / "no-initdb.d"),
    )
    env.update(extra)
    return env


# A mount namespace of its own whose resolv.conf has no Kubernetes search list: `docker run` outside
# a cluster (this test process's resolv.conf names pg.svc.cluster.local, which means a namespace).
OUTSIDE_KUBERNETES = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount --bind /dev/null /etc/resolv.conf && exec "$@"', "outside-kubernetes"]  # fmt: skip


def agent_argv(*args: str, standalone: bool = False) -> list[str]:
    """`pg-sfs-agent ARGS` as the shipped manifest runs it: root with only the container's
    capabilities and no_new_privs, the interpreter readable by postgres as in the image; with
    `standalone`, as `docker run` outside any cluster."""
    from emulator import hostroot
    from emulator.manifests import REPO_ROOT, shipped_security
    from emulator.pod import security_prefix

    argv = [*security_prefix(shipped_security()), sys.executable, "-m", "agent", *args]
    wrapped = hostroot.wrap(argv, [os.path.realpath(sys.executable), sys.prefix, str(REPO_ROOT)])
    return [*OUTSIDE_KUBERNETES, *wrapped] if standalone else wrapped


def run_agent(env: Mapping[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `pg-sfs-agent ARGS` to completion, as the manifest runs it."""
    return subprocess.run(
        agent_argv(*args),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines in a stream, skipping postgres' own lines."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@dataclass
class Server:
    """A postgres started through `pg-sfs-agent postgres` (the agent exec'd into it)."""

    proc: subprocess.Popen[str]
    port: int
    log_path: Path
    lines: list[dict[str, Any]] = field(default_factory=list)

    def agent_log(self) -> list[dict[str, Any]]:
        """The agent's JSON lines so far."""
        return json_lines(self.log_path.read_text())

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Stop like Kubernetes does with the image's STOPSIGNAL (fast shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


class ListLog:
    """Collects log events in memory (a structlog-shaped logger)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _add(self, level: str, event: str, **fields: Any) -> None:
        self.events.append({"level": level, "event": event, **fields})

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, **fields)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last error: {last_error}")


def connect(
    port: int, *, user: str = "postgres", password: str = SUPERUSER_PASSWORD, dbname: str = "postgres"
) -> psycopg.Connection[Any]:
    """A TCP connection (so pg_hba's host rules and SCRAM apply)."""
    return psycopg.connect(
        host="127.0.0.1", port=port, user=user, password=password, dbname=dbname, connect_timeout=3, autocommit=True
    )


@contextmanager
def agent_postgres(
    env: Mapping[str, str],
    log_path: Path,
    *args: str,
    ready_timeout: float = 60,
    ready_user: str | None = None,
    ready_password: str | None = None,
    standalone: bool = False,
) -> Iterator[Server]:
    """Start `pg-sfs-agent postgres ARGS`, wait until it accepts connections (as POSTGRES_USER unless
    `ready_user` is given), stop it afterwards."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            agent_argv("postgres", *args, standalone=standalone),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Server(proc=proc, port=int(env["PGPORT"]), log_path=log_path)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"agent exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            user = ready_user or env.get("POSTGRES_USER", "postgres")
            password = ready_password or env["POSTGRES_PASSWORD"]
            with connect(server.port, user=user, password=password,
                         dbname=env.get("POSTGRES_DB", env.get("POSTGRES_USER", "postgres"))):  # fmt: skip
                return True

        wait_for(up, ready_timeout, "postgres started by the agent to accept connections")
        yield server
    finally:
        server.stop()


def own_port_announcer(_port: int, message: str) -> Announcer:
    """The replica's announcer on a port of its own: in-process replicas here share the primary's port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return Announcer(port, message, host="127.0.0.1")


def loopback_dns(name: str, rdtype: str) -> discovery.DnsAnswer:
    """Stand-in for cluster DNS (real DNS is the e2e suite's): the primary's pod resolves to loopback."""
    if rdtype == "A" and name.startswith("postgresql-sfs-0."):
        return discovery.DnsAnswer(name, rdtype, discovery.FOUND, records=("127.0.0.1",), authoritative=True)
    return discovery.DnsAnswer(name, rdtype, discovery.NO_RECORD, negative_ttl=5, authoritative=True)
