"""Pods without a controller: the emulator's network and BIND, one namespace per pod, nothing else.

Every program runs through `ip netns exec <pod> bench/floors/pod.sh`: its own network namespace
with a resolv.conf naming the emulated cluster DNS (never the host's resolver), and its own mount
namespace with a private /run/postgresql. Volumes live in one temporary directory. Closing the
sandbox kills every process left in its namespaces (by PID) and removes namespaces and volumes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, TypeVar

from bench.common import (
    NAMESPACE,
    POD_SH,
    PORT,
    PORT_NAME,
    REPLICATION_PASSWORD,
    REPLICATION_USER,
    SUPERUSER_PASSWORD,
    VENV_BIN,
    fqdn,
)
from emulator.dns import ClusterDNS
from emulator.network import Host, Network

T = TypeVar("T")


class Sandbox:
    """A network with cluster DNS, pods as namespaces, and a client namespace for measurements."""

    def __init__(self, *, negative_cache: bool = False, query_log: bool = True) -> None:
        self.network = Network()
        self.dns = ClusterDNS(self.network, negative_cache=negative_cache, query_log=query_log)
        self.tmp = Path(tempfile.mkdtemp(prefix="pgsfs-bench-"))
        os.chmod(self.tmp, 0o755)
        self.client: Host | None = None
        pw = pwd.getpwnam("postgres")
        self.postgres_ids = (pw.pw_uid, pw.pw_gid)

    def __enter__(self) -> Sandbox:
        try:
            self.network.start()
            self.dns.start()
            self.client = self.network.add_host("bench")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop DNS, kill what is left in our namespaces, delete them and the volumes."""
        try:
            self.dns.close()
        finally:
            try:
                self.network.close()
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- pods and volumes

    def pod(self, name: str, nameserver: str | None = None) -> Host:
        """A new pod namespace with a pod's resolv.conf (cluster DNS, or `nameserver`)."""
        host = self.network.add_host(name)
        self.network.write_resolv_conf(
            host, nameserver or self.dns.nameserver_ip, self.dns.search_path(NAMESPACE), ndots=5
        )
        return host

    def remove(self, host: Host) -> None:
        """Delete a pod namespace and whatever still runs in it."""
        with contextlib.suppress(KeyError):
            self.network.remove_host(host.name)

    def volume(self, name: str, *, postgres_owned: bool = False) -> Path:
        """A fresh, empty volume directory (what a new PVC mounts)."""
        path = self.tmp / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o755)
        if postgres_owned:
            os.chown(path, *self.postgres_ids)
        return path

    def drop_volume(self, path: Path) -> None:
        """Remove a volume directory."""
        shutil.rmtree(path, ignore_errors=True)

    # -- running programs in pods

    def argv(self, host: Host, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` in the pod (new mount namespace, private socket dir)."""
        return self.network.exec_argv(host, _in_pod(argv))

    def spawn(self, host: Host, argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[Any]:
        """Start `argv` in the pod, output appended to `log`; killed by PID at close at the latest."""
        return self.network.spawn(host, _in_pod(argv), log=log, env=dict(env))

    def run(
        self, host: Host, argv: Sequence[str], env: Mapping[str, str], timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the pod to completion (fresh mount namespace), capturing text output."""
        return subprocess.run(
            self.argv(host, argv), env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
        )

    def run_beside(
        self, pid: int, argv: Sequence[str], env: Mapping[str, str], timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the network and mount namespaces of process `pid` (e.g. a postmaster)."""
        cmd = ["nsenter", "-t", str(pid), "-n", "-m", "--", *argv]
        return subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 300.0, **kw: Any) -> T:
        """Run `fn` in a thread inside the client namespace (for psycopg pollers)."""
        assert self.client is not None
        return self.network.call_in(self.client, fn, *args, timeout=timeout, **kw)

    # -- DNS

    def publish(self, endpoints: list[tuple[str, str]], service: str = "postgresql-svc") -> float:
        """Publish a headless Service's endpoints; returns when BIND serves them (time.time())."""
        self.dns.set_endpoints(NAMESPACE, service, PORT_NAME, PORT, endpoints)
        self.dns.flush(timeout=30)
        return time.time()


# ---------------------------------------------------------------------------- pollers (client side)


def _in_pod(argv: Sequence[str]) -> list[str]:
    """argv as a pod of the shipped manifest runs it, for the agent and the floors alike: the
    container's capabilities and no_new_privs, the interpreter readable by postgres as in the image."""
    from emulator import hostroot
    from emulator.manifests import REPO_ROOT, shipped_security
    from emulator.pod import security_prefix

    exposed = [os.path.realpath(VENV_BIN / "python"), str(VENV_BIN.parent), str(REPO_ROOT)]
    return [str(POD_SH), *hostroot.wrap([*security_prefix(shipped_security()), *argv], exposed)]


def _ready_when(check: Callable[[], None], ip: str, deadline: float, alive: Callable[[], bool], interval: float,
                what: str) -> float:  # fmt: skip
    """Poll `check` (a psycopg session that raises until the server serves) every `interval`;
    time.time() at its first success. Gives up at `deadline`, or when the serving process exited."""
    import psycopg

    while True:
        try:
            check()
            return time.time()
        except psycopg.Error:
            pass
        if time.time() >= deadline:
            raise TimeoutError(f"{ip}:{PORT} did not accept {what} in time")
        if not alive():
            raise RuntimeError(f"the process serving {ip} exited before it was ready")
        time.sleep(interval)


def replication_ready(
    ip: str,
    deadline: float,
    alive: Callable[[], bool],
    interval: float = 0.02,
    password: str = REPLICATION_PASSWORD,
) -> float:
    """Poll until the server at `ip` answers IDENTIFY_SYSTEM to the replication role; time.time() then.

    That is "ready" for a primary: accepting connections with the replication role set up.
    """
    import psycopg

    def check() -> None:
        with psycopg.connect(host=fqdn("postgresql-sfs-0"), hostaddr=ip, port=PORT, user=REPLICATION_USER,
                             password=password, dbname="replication", replication="true", connect_timeout=2,
                             autocommit=True) as conn:  # fmt: skip
            conn.execute("IDENTIFY_SYSTEM").fetchone()

    return _ready_when(check, ip, deadline, alive, interval, "a replication connection")


def superuser_ready(
    ip: str, deadline: float, alive: Callable[[], bool], interval: float = 0.02, password: str = SUPERUSER_PASSWORD
) -> float:
    """Poll until the superuser gets a session over TCP (SCRAM) at `ip`; time.time() then."""

    def check() -> None:
        with superuser_conn(ip, password, timeout=2) as conn:
            conn.execute("SELECT 1").fetchone()

    return _ready_when(check, ip, deadline, alive, interval, "the superuser")


def superuser_conn(ip: str, password: str, timeout: float = 3.0) -> Any:
    """A superuser connection over TCP (SCRAM), autocommit."""
    import psycopg

    return psycopg.connect(
        host=ip, port=PORT, user="postgres", password=password, dbname="postgres",
        connect_timeout=max(1, int(timeout)), autocommit=True,
    )  # fmt: skip


def streaming_since(
    ip: str, password: str, names: set[str], deadline: float, interval: float = 0.02
) -> dict[str, float]:
    """Poll the primary's pg_stat_replication until every application name in `names` streams.

    Returns name -> time.time() first seen streaming. Connects (and reconnects) as needed.
    """
    import psycopg

    seen: dict[str, float] = {}
    conn = None
    try:
        while True:
            try:
                if conn is None:
                    conn = superuser_conn(ip, password)
                rows = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
                now = time.time()
                for name, state in rows:
                    if name in names and state == "streaming" and name not in seen:
                        seen[name] = now
                if set(seen) == names:
                    return seen
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            if time.time() >= deadline:
                raise TimeoutError(f"not streaming in time: {sorted(names - set(seen))}")
            time.sleep(interval)
    finally:
        if conn is not None:
            conn.close()
