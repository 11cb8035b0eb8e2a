"""Emulated pod network: one bridge namespace per run, one namespace per host, addresses in 198.18.0.0/15.

Nothing but the guard route `unreachable 198.18.0.0/15` touches the root network namespace: veth pairs
are created inside the bridge namespace with their peer moved straight into the host namespace.
Every run has a unique prefix (`pgsfs-<6 hex>`); its namespaces are `<prefix>-br` and
`<prefix>-<host>`, and its owner is recorded in /run/pgsfs-emulator/<prefix>.pid so that a later
`Network.cleanup_stale()` can tell leftovers of a crashed run from a live one.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

from . import netns as nsx

T = TypeVar("T")

GUARD_NET = ipaddress.IPv4Network("198.18.0.0/15")
STATE_DIR = Path("/run/pgsfs-emulator")
WORK_BASE = Path(tempfile.gettempdir()) / "pgsfs-emulator"
NETNS_ETC = Path("/etc/netns")
BRIDGE = "br0"
PREFIX_RE = re.compile(r"^pgsfs-[0-9a-f]{6}$")
_NS_RE = re.compile(r"^(pgsfs-[0-9a-f]{6})-")
_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")


@dataclass(frozen=True)
class Host:
    """A host (pod) of the emulated network: its name, network namespace and IPv4 address."""

    name: str
    netns: str
    ip: str


HostRef = Union[Host, str]


@dataclass
class _Proc:
    pid: int
    start_time: int
    host: str | None
    popen: subprocess.Popen[Any] | None


# ---------------------------------------------------------------- run registry (all runs of ours)


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    """Serialise registry changes and the guard-route decision between concurrent runs."""
    STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_runs() -> dict[str, dict[str, Any]]:
    """All recorded runs: prefix -> pid-file content plus `alive` (owner still running)."""
    runs: dict[str, dict[str, Any]] = {}
    for path in STATE_DIR.glob("pgsfs-*.pid"):
        prefix = path.name[: -len(".pid")]
        try:
            info = json.loads(path.read_text())
            info["alive"] = nsx.pid_alive(int(info["pid"]), int(info["start_time"]))
        except (OSError, ValueError, KeyError, TypeError):
            info = {"alive": False}
        runs[prefix] = info
    return runs


def _guard_route_present() -> bool:
    out = nsx.ip("route", "show", "exact", str(GUARD_NET), check=False).stdout
    return "unreachable" in out


def _drop_guard_route_if_unused(own_prefix: str | None) -> None:
    """Delete the guard route when no other live run needs it (caller holds the registry lock)."""
    others = [p for p, info in _read_runs().items() if info["alive"] and p != own_prefix]
    if not others and _guard_route_present():
        nsx.ip("route", "del", "unreachable", str(GUARD_NET), check=False)


def _remove_run_files(prefix: str, workdir: str | None, owned_workdir: bool) -> None:
    for path in NETNS_ETC.glob(f"{prefix}-*"):
        shutil.rmtree(path, ignore_errors=True)
    if workdir and owned_workdir and Path(workdir).name == prefix:
        shutil.rmtree(workdir, ignore_errors=True)
    (STATE_DIR / f"{prefix}.pid").unlink(missing_ok=True)


# ---------------------------------------------------------------- signals


_sigterm_installed = False


def _install_sigterm_handler() -> None:
    """Make SIGTERM unwind like Ctrl-C does (so `with` blocks and atexit run close())."""
    global _sigterm_installed  # noqa: PLW0603 - once per process
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):

        def on_sigterm(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)
    _sigterm_installed = True


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up, then deliver them: a 2nd Ctrl-C can't cut close()."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


# ---------------------------------------------------------------- the network


class Network:
    """One emulated L2 network (a Linux bridge in its own namespace) and the hosts attached to it."""

    def __init__(
        self,
        prefix: str | None = None,
        subnet: str | None = None,
        workdir: str | Path | None = None,
        keep_workdir: bool = False,
        kill_grace: float = 5.0,
    ) -> None:
        """Describe a run; nothing is created before `start()` (or entering the context)."""
        self.prefix = prefix or f"pgsfs-{secrets.token_hex(3)}"
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix must look like pgsfs-<6 hex>, got {self.prefix!r}")
        if subnet is None:
            # A /24 derived from the prefix: runs rarely share one, which eases debugging.
            index = int(self.prefix[-6:], 16) % 512
            subnet = f"{GUARD_NET.network_address + index * 256}/24"
        self.subnet = ipaddress.IPv4Network(subnet)
        if self.subnet.prefixlen != 24 or not self.subnet.subnet_of(GUARD_NET):
            raise ValueError(f"subnet must be a /24 inside {GUARD_NET}, got {subnet}")
        self.bridge_netns = f"{self.prefix}-br"
        self._owned_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else WORK_BASE / self.prefix
        self.keep_workdir = keep_workdir
        self.kill_grace = kill_grace
        self._hosts: dict[str, Host] = {}
        self._veths: dict[str, str] = {}
        self._procs: list[_Proc] = []
        self._ip_cursor = 1
        self._veth_counter = 0
        self._lock = threading.RLock()
        self._state = "new"

    # -- lifecycle

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """True between a successful start() and close()."""
        return self._state == "started"

    def start(self) -> Network:
        """Record the run, add the guard route, create the bridge namespace. Idempotent."""
        with self._lock:
            if self._state == "started":
                return self
            if self._state != "new":
                raise RuntimeError(f"network {self.prefix} is {self._state}; create a new one")
            if os.geteuid() != 0:
                raise PermissionError("the emulated network needs root (network namespaces)")
            if not shutil.which("ip"):
                raise FileNotFoundError("`ip` (iproute2) is required")
            if self.bridge_netns in nsx.list_netns():
                raise RuntimeError(f"namespace {self.bridge_netns} already exists")
            self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _registry_lock():
                # The pid file comes first: a namespace of ours without one is an orphan.
                record = {
                    "pid": os.getpid(),
                    "start_time": nsx.proc_start_time(os.getpid()),
                    "workdir": str(self.workdir),
                    "owned_workdir": self._owned_workdir,
                    "subnet": str(self.subnet),
                }
                (STATE_DIR / f"{self.prefix}.pid").write_text(json.dumps(record))
                self._state = "started"
                nsx.ip("route", "replace", "unreachable", str(GUARD_NET))
            atexit.register(self.close)
            _install_sigterm_handler()
            try:
                self._add_netns(self.bridge_netns)
                nsx.ip("-n", self.bridge_netns, "link", "add", BRIDGE, "type", "bridge")
                nsx.ip("-n", self.bridge_netns, "link", "set", BRIDGE, "up")
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Kill our processes (by PID), delete our namespaces and files, drop the guard route.

        Idempotent, safe from atexit and after Ctrl-C; raises RuntimeError at the end if
        something could not be removed (after having tried everything).
        """
        with self._lock:
            if self._state != "started":
                self._state = "closed"
                return
            self._state = "closing"
            problems: list[str] = []
            with _signals_deferred():
                survivors = self._kill_registered(self._procs)
                ours = [ns for ns in nsx.list_netns() if ns.startswith(f"{self.prefix}-")]
                survivors += nsx.sweep_netns(ours, self.kill_grace)
                if survivors:
                    problems.append(f"processes survived SIGKILL: {survivors}")
                # Hosts first, the bridge last (deleting a host namespace deletes its veth pair).
                for ns in sorted(ours, key=lambda n: n == self.bridge_netns):
                    res = nsx.ip("netns", "delete", ns, check=False)
                    if res.returncode != 0:
                        problems.append(f"ip netns delete {ns}: {res.stderr.strip()}")
                with _registry_lock():
                    _remove_run_files(
                        self.prefix, str(self.workdir), self._owned_workdir and not self.keep_workdir
                    )
                    _drop_guard_route_if_unused(self.prefix)
                self._hosts.clear()
                self._procs.clear()
                self._state = "closed"
            atexit.unregister(self.close)
        if problems:
            raise RuntimeError(f"network {self.prefix} cleanup incomplete: {'; '.join(problems)}")

    @classmethod
    def cleanup_stale(cls, grace: float = 2.0) -> list[str]:
        """Remove namespaces, processes and files left by dead runs of ours; return their prefixes.

        A run is dead when the owner recorded in /run/pgsfs-emulator/<prefix>.pid is gone, or when
        its namespaces exist without any pid file. The guard route goes if no live run remains.
        Loop volumes still mounted under .emulator/runs/<prefix>/volumes/ by a run that is not live
        are unmounted (their images stay, in the run directory).
        """
        from .volumes import release_stale

        with _registry_lock():
            runs = _read_runs()
            namespaces = nsx.list_netns()
            stale = {p for p, info in runs.items() if not info["alive"]}
            for ns in namespaces:
                m = _NS_RE.match(ns)
                if m and m.group(1) not in runs:
                    stale.add(m.group(1))
            for prefix in sorted(stale):
                theirs = [ns for ns in namespaces if ns.startswith(f"{prefix}-")]
                # Podman containers of a dead run are named after its namespaces (emulator/podman.py).
                from .podman import remove_named_after

                remove_named_after(prefix)
                nsx.sweep_netns(theirs, grace)
                for ns in theirs:
                    nsx.ip("netns", "delete", ns, check=False)
                info = runs.get(prefix, {})
                _remove_run_files(prefix, info.get("workdir"), bool(info.get("owned_workdir")))
            _drop_guard_route_if_unused(None)
            # Not only the prefixes above: a run whose network closed (its record gone) may have
            # died before unmounting its volumes.
            release_stale({p for p, info in runs.items() if info["alive"]})
        return sorted(stale)

    @staticmethod
    def live_runs() -> list[str]:
        """Prefixes of the runs of ours whose owner process is alive (this process included)."""
        with _registry_lock():
            return sorted(p for p, info in _read_runs().items() if info["alive"])

    @staticmethod
    def guard_route_present() -> bool:
        """True if the root namespace holds `unreachable 198.18.0.0/15`."""
        return _guard_route_present()

    # -- hosts

    @property
    def hosts(self) -> dict[str, Host]:
        """The hosts currently attached, by name."""
        return dict(self._hosts)

    def netns_of(self, name: str) -> str:
        """Namespace name a host called `name` has (or would have) in this run."""
        return f"{self.prefix}-{name}"

    def add_host(self, name: str, ip: str | None = None) -> Host:
        """Create namespace `<prefix>-<name>` with `eth0` on the bridge and an address in the /24.

        `ip` pins the address (e.g. to give a restarted pod its old one); otherwise the next
        never-used address is taken (wrapping to the lowest free one when the /24 is exhausted).
        The MAC address is derived from the IP, so peers' ARP caches stay right across restarts.
        """
        if not _HOST_RE.match(name) or name == "br":
            raise ValueError(f"invalid host name {name!r} (DNS label, not 'br')")
        with self._lock:
            self._require_running()
            if name in self._hosts:
                raise ValueError(f"host {name!r} already exists")
            addr = self._pick_ip(ip)
            netns = self.netns_of(name)
            self._veth_counter += 1
            veth = f"vh{self._veth_counter}"
            octets = addr.packed
            mac = "02:00:" + ":".join(f"{b:02x}" for b in octets)
            self._add_netns(netns)
            try:
                nsx.ip("-n", netns, "link", "set", "lo", "up")
                nsx.ip(
                    "-n", self.bridge_netns, "link", "add", veth, "type", "veth",
                    "peer", "name", "eth0", "address", mac, "netns", netns,
                )  # fmt: skip
                nsx.ip("-n", self.bridge_netns, "link", "set", veth, "master", BRIDGE, "up")
                nsx.ip("-n", netns, "addr", "add", f"{addr}/{self.subnet.prefixlen}", "dev", "eth0")
                nsx.ip("-n", netns, "link", "set", "eth0", "up")
            except BaseException:
                nsx.ip("netns", "delete", netns, check=False)
                raise
            host = Host(name=name, netns=netns, ip=str(addr))
            self._hosts[name] = host
            self._veths[name] = veth
            return host

    def partition(self, name: str, *, cut: bool = True) -> None:
        """Cut the host off silently: its bridge port goes down, so the bridge drops what is sent to
        it and its own eth0, with no carrier, drops what it sends (no RST, no ICMP: a dead switch
        port or a lost node, as the other side sees it). `cut=False` heals it."""
        with self._lock:
            self._require_running()
            veth = self._veths[name]
        nsx.ip("-n", self.bridge_netns, "link", "set", veth, "down" if cut else "up")

    def remove_host(self, name: str) -> None:
        """Kill the host's processes (registered ones gracefully, then any left by PID) and delete it."""
        with self._lock:
            host = self._hosts.pop(name, None)
            if host is None:
                raise KeyError(f"no host {name!r}")
            veth = self._veths.pop(name, None)
            mine = [p for p in self._procs if p.host == name]
            self._procs = [p for p in self._procs if p.host != name]
            survivors = self._kill_registered(mine) + nsx.sweep_netns([host.netns], self.kill_grace)
            # Unplug first: a socket (e.g. in TIME_WAIT) can keep a deleted namespace, and with
            # it the address, alive for a while; a removed pod must vanish from the network now.
            if veth is not None:
                nsx.ip("-n", self.bridge_netns, "link", "del", veth, check=False)
            nsx.ip("netns", "delete", host.netns)
            shutil.rmtree(NETNS_ETC / host.netns, ignore_errors=True)
        if survivors:
            raise RuntimeError(f"processes of host {name} survived SIGKILL: {survivors}")

    def _pick_ip(self, wanted: str | None) -> ipaddress.IPv4Address:
        used = {ipaddress.IPv4Address(h.ip) for h in self._hosts.values()}
        candidates = list(self.subnet.hosts())
        if wanted is not None:
            addr = ipaddress.IPv4Address(wanted)
            if addr not in candidates:
                raise ValueError(f"{addr} is not a host address of {self.subnet}")
            if addr in used:
                raise ValueError(f"{addr} is already in use")
            return addr
        for offset in range(len(candidates)):
            index = (self._ip_cursor - 1 + offset) % len(candidates)
            if candidates[index] not in used:
                self._ip_cursor = index + 2
                return candidates[index]
        raise RuntimeError(f"no free address left in {self.subnet}")

    # -- commands and processes

    def netns(self, host_or_netns: HostRef) -> str:
        """Namespace name for a Host, a host name of this run, or a namespace name."""
        if isinstance(host_or_netns, Host):
            return host_or_netns.netns
        if host_or_netns in self._hosts:
            return self._hosts[host_or_netns].netns
        return host_or_netns

    def exec_argv(self, host_or_netns: HostRef, argv: Sequence[str]) -> list[str]:
        """`["ip", "netns", "exec", NS, *argv]`: runs argv inside the host's namespace."""
        return ["ip", "netns", "exec", self.netns(host_or_netns), *argv]

    def run(
        self, host: HostRef, argv: Sequence[str], **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside the host (defaults: check, capture text output, 60 s timeout)."""
        check = kw.pop("check", True)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.exec_argv(host, argv), check=check, **kw)

    def spawn(
        self, host: HostRef, argv: Sequence[str], log: str | Path | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start a long-running process inside the host; it is killed (by PID) at close.

        `ip netns exec` execs the program, so the returned PID is the program's own. The child
        gets its own session (a terminal Ctrl-C reaches only us; we stop it in order at close).
        `log` appends stdout and stderr to that file.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        with self._lock:
            self._require_running()
            if log is not None:
                with open(log, "ab") as fh:
                    proc = subprocess.Popen(
                        self.exec_argv(host, argv), stdout=fh, stderr=subprocess.STDOUT, **kw
                    )
            else:
                proc = subprocess.Popen(self.exec_argv(host, argv), **kw)
            self._record(proc.pid, host, proc)
            return proc

    def register_pid(self, pid: int, host: HostRef | None = None) -> None:
        """Record a process started elsewhere (e.g. a daemon) so close() kills it by PID."""
        with self._lock:
            self._record(pid, host, None)

    def stop_process(
        self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float | None = None
    ) -> int:
        """Send `sig`, wait up to `grace` s, SIGKILL if needed; return the exit code."""
        grace = self.kill_grace if grace is None else grace
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with self._lock:
            self._procs = [p for p in self._procs if p.popen is not proc]
        return int(proc.returncode)

    def call_in(
        self, host: HostRef, fn: Callable[..., T], *args: Any, timeout: float = 60.0, **kw: Any
    ) -> T:
        """Run `fn` in a thread inside the host's namespace (sockets it opens live there)."""
        return nsx.call_in_netns(self.netns(host), fn, *args, timeout=timeout, **kw)

    def write_etc(self, host: HostRef, filename: str, text: str) -> Path:
        """Write /etc/netns/<ns>/<filename>: `ip netns exec` bind-mounts it over /etc/<filename>."""
        if "/" in filename:
            raise ValueError("a plain file name under /etc is expected")
        directory = NETNS_ETC / self.netns(host)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename
        path.write_text(text)
        return path

    def write_resolv_conf(
        self, host: HostRef, nameserver: str, search: Sequence[str] = (), ndots: int = 5
    ) -> Path:
        """Give the host a resolv.conf like a pod's (nameserver, search list, ndots)."""
        lines = [f"nameserver {nameserver}"]
        if search:
            lines.append("search " + " ".join(search))
        lines.append(f"options ndots:{ndots}")
        return self.write_etc(host, "resolv.conf", "\n".join(lines) + "\n")

    # -- internals

    def _require_running(self) -> None:
        if self._state != "started":
            raise RuntimeError(f"network {self.prefix} is not running ({self._state})")

    def _add_netns(self, netns: str) -> None:
        nsx.ip("netns", "add", netns)

    def _record(self, pid: int, host: HostRef | None, popen: subprocess.Popen[Any] | None) -> None:
        started = nsx.proc_start_time(pid)
        if started is None:
            return  # already gone
        name = host.name if isinstance(host, Host) else host
        self._procs.append(_Proc(pid=pid, start_time=started, host=name, popen=popen))

    def _kill_registered(self, procs: list[_Proc]) -> list[int]:
        """SIGTERM all, bounded wait, SIGKILL; reap our children so they leave no zombie."""
        targets = {p.pid: p.start_time for p in procs if nsx.pid_alive(p.pid, p.start_time)}
        survivors = nsx.kill_pids(targets, self.kill_grace) if targets else []
        for p in procs:
            if p.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(1)
        return survivors
