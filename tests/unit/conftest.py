"""Shared seams for the unit tests: a fake clock, a list-collecting logger, a config builder.

Nothing here mocks a real part: the clock and logger are the agent's own injection points, and
configs are built by the real `load_config` from an env dict and temporary files.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from agent import secret
from agent.announce import GSSENC_REQUEST, SSL_REQUEST, read_exact
from agent.config import Config, load_config

# The smallest environment load_config accepts (namespace comes from POD_NAMESPACE).
BASE_ENV: dict[str, str] = {
    "POD_NAME": "postgresql-sfs-0",
    "POD_NAMESPACE": "pg",
    "POSTGRES_PASSWORD": "super-secret-pw",
    "PGSFS_REPLICATION_PASSWORD": "repl-secret-pw",
}


@pytest.fixture(autouse=True)
def _isolated_secret_registry() -> Iterator[None]:
    """Secrets registered by one test must not make another test's argv or logs look secret."""
    saved = set(secret._KNOWN)
    secret._KNOWN.clear()
    try:
        yield
    finally:
        secret._KNOWN.clear()
        secret._KNOWN.update(saved)


@dataclass
class FakeClock:
    """A monotonic clock that only moves when `sleep` is called; records every sleep asked for."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class ListLogger:
    """Collects (level, event, fields) like a structlog bound logger would emit them."""

    lines: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def _add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.lines.append((level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, fields)

    def events(self, name: str, level: str | None = None) -> list[dict[str, Any]]:
        """The fields of every line with this event name (and level, if given)."""
        return [f for lvl, ev, f in self.lines if ev == name and (level is None or lvl == level)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log() -> ListLogger:
    return ListLogger()


@pytest.fixture
def no_kube_files(tmp_path: Path) -> dict[str, Any]:
    """load_config keyword arguments pointing at files that do not exist (no pod context)."""
    return {
        "hostname": lambda: "not-a-statefulset-pod",
        "resolv_conf": tmp_path / "absent-resolv.conf",
        "sa_namespace_file": tmp_path / "absent-namespace",
        "hosts_file": tmp_path / "absent-hosts",
    }


@pytest.fixture
def make_config(no_kube_files: dict[str, Any]) -> Callable[..., Config]:
    """Build a real Config from BASE_ENV plus overrides (a value of None removes the variable)."""

    def build(**overrides: str | None) -> Config:
        env = dict(BASE_ENV)
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return load_config(env, **no_kube_files)

    return build


@pytest.fixture
def base_env() -> dict[str, str]:
    """A fresh copy of the smallest valid environment."""
    return dict(BASE_ENV)



# An AuthenticationSASL request, the first thing a running PostgreSQL sends a client it will admit.
AUTH_REQUEST = b"R" + struct.pack("!II", 23, 10) + b"SCRAM-SHA-256\0\0"


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and answers each startup packet with `reply` (None: never
    answers, like a frozen server). Stands in for a PostgreSQL server where a test needs one
    answer; the integration and e2e tests meet real ones."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(5.0)
        self.port = self.sock.getsockname()[1]
        self.startups: list[bytes] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5.0)
            try:
                while True:
                    length, code = struct.unpack("!II", read_exact(conn, 8))
                    if code in (SSL_REQUEST, GSSENC_REQUEST):
                        conn.sendall(b"N")  # no encryption here: the client goes on in plain text
                        continue
                    self.startups.append(read_exact(conn, length - 8))
                    if self.reply is not None:
                        conn.sendall(self.reply)
                    break
            except (OSError, ConnectionError):
                pass
            if self.reply is None:
                self._held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self.sock.close()
        self.thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        assert not self.thread.is_alive()


@pytest.fixture
def upstream() -> Iterator[ScriptedServer]:
    """A server that asks every client to authenticate, as a running PostgreSQL does."""
    server = ScriptedServer(AUTH_REQUEST)
    try:
        yield server
    finally:
        server.close()
