"""Integration tests: real PostgreSQL 15 programs, run by the agent's own code.

The whole test process moves into a private network and mount namespace first, so that every
connection stays on its own loopback and the pod FQDNs resolve through a private /etc/hosts:
nothing can leave the machine, and no real resolver is ever asked.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
FQDNS = [f"postgresql-sfs-{n}.postgresql-svc.pg.svc.cluster.local" for n in range(3)]
_isolated: dict[str, str] = {}


def _isolate() -> str:
    """unshare(2) this process into new network + mount namespaces; returns why not, or ''."""
    if os.geteuid() != 0:
        return "needs root (to unshare a private network namespace and run postgres as its user)"
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL 15 is not installed in {PG_BIN}"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        return f"unshare failed: {os.strerror(ctypes.get_errno())}"
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    etc = Path(tempfile.mkdtemp(prefix="pgsfs-etc-"))
    (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {name}\n" for name in FQDNS))
    # A nameserver on our own loopback where nothing listens: every DNS question fails here, fast.
    (etc / "resolv.conf").write_text(
        "nameserver 127.0.0.1\nsearch pg.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
    for name in ("hosts", "resolv.conf"):
        subprocess.run(["mount", "--bind", str(etc / name), f"/etc/{name}"], check=True)
    run_dir = Path("/var/run/postgresql")
    run_dir.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=2775", "tmpfs", str(run_dir)], check=True)
    shutil.chown(run_dir, "postgres", "postgres")
    os.environ["PATH"] = f"{PG_BIN}:{os.environ['PATH']}"
    return ""


def pytest_configure(config: pytest.Config) -> None:
    """Isolate before any test runs, while the process is still single-threaded."""
    args = [str(a) for a in config.args]
    only_integration = args and all("integration" in a for a in args)
    if not only_integration:
        _isolated["skip"] = "run on its own (make test-integration): it moves the process into private namespaces"
        return
    _isolated["skip"] = _isolate()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip with the reason when isolation was not possible."""
    reason = _isolated.get("skip", "")
    if reason:
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


def free_port() -> int:
    """A TCP port free on this (private) loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def volume_root() -> Iterator[Path]:
    """A fresh directory standing in for a pod's volume mount (traversable by postgres)."""
    root = Path(tempfile.mkdtemp(prefix="pgsfs-vol-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
