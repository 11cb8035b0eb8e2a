"""E2E checks of the emulated pod network: connectivity, isolation, guard route, cleanup."""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import netns as nsx
from emulator.network import STATE_DIR, Host, Network
from emulator.waiting import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)
if not shutil.which("ip"):
    pytest.skip("needs iproute2 (`ip`)", allow_module_level=True)


@pytest.fixture
def net() -> Iterator[Network]:
    with Network() as network:
        yield network
    assert not _our_namespaces(network.prefix)


def _our_namespaces(prefix: str) -> list[str]:
    return [ns for ns in nsx.list_netns() if ns.startswith(f"{prefix}-")]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping(dst: str, timeout: float = 2.0) -> bool:
    """One ICMP echo over a raw socket (no ping binary needed); True if the reply came back."""
    ident = os.getpid() & 0xFFFF
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    payload = b"pgsfs-ping"
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, (src, _) = sock.recvfrom(2048)
            except TimeoutError:
                return False
            icmp = data[(data[0] & 0x0F) * 4 :]
            if src == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
    return False


def _tcp_roundtrip(net: Network, server: Host, client: Host, port: int = 7000) -> bytes:
    """Echo one message over TCP from `client` to `server`, both inside their namespaces."""
    listening = threading.Event()
    received: list[bytes] = []

    def serve() -> None:
        with socket.socket() as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((server.ip, port))
            srv.listen(1)
            srv.settimeout(10)
            listening.set()
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                received.append(conn.recv(64))
                conn.sendall(received[-1].upper())

    def connect() -> bytes:
        with socket.create_connection((server.ip, port), timeout=5) as conn:
            conn.sendall(b"hello")
            conn.settimeout(5)
            return conn.recv(64)

    thread = threading.Thread(target=net.call_in, args=(server, serve), daemon=True)
    thread.start()
    assert listening.wait(10), "server never listened"
    reply = net.call_in(client, connect)
    thread.join(10)
    assert received == [b"hello"]
    return reply


def test_two_hosts_ping_and_tcp(net: Network) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    assert a.ip != b.ip
    assert a.ip.startswith(str(net.subnet.network_address)[:-1])
    assert net.exec_argv(a, ["true"]) == ["ip", "netns", "exec", a.netns, "true"]
    assert net.call_in(a, _ping, b.ip)
    assert net.call_in(b, _ping, a.ip)
    assert _tcp_roundtrip(net, a, b) == b"HELLO"
    assert net.run(b, ["ip", "-o", "-4", "addr", "show", "eth0"]).stdout.count(b.ip) == 1


def _connect_outcome(ip: str) -> str:
    try:
        socket.create_connection((ip, 7000), timeout=1.5).close()
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "connected"


def test_a_partition_drops_silently_both_ways_and_heals(net: Network) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    assert net.call_in(a, _ping, b.ip)
    net.partition("b")
    # Silent for the others: no answer, no refusal, no "unreachable"; only a timeout. Inside the cut
    # host nothing leaves (its link has no carrier): a new connection fails there once its neighbour
    # lookup does, an established one just stops hearing anything.
    assert not net.call_in(a, _ping, b.ip, 1.0) and not net.call_in(b, _ping, a.ip, 1.0)
    assert net.call_in(a, _connect_outcome, b.ip) == "timeout"
    assert net.call_in(b, _connect_outcome, a.ip) in ("timeout", "EHOSTUNREACH")
    net.partition("b", cut=False)
    assert any(net.call_in(a, _ping, b.ip, 1.0) for _ in range(5)), "the link never came back"
    assert net.call_in(a, _connect_outcome, b.ip) == "ECONNREFUSED"  # healed: nothing listens there


def test_root_namespace_cannot_reach_pods(net: Network) -> None:
    a = net.add_host("a")
    assert Network.guard_route_present()
    with pytest.raises(OSError) as info:
        socket.create_connection((a.ip, 7000), timeout=2).close()
    # The guard route answers at once; anything else would mean traffic left for the real network.
    assert info.value.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)


def test_remove_and_readd_host(net: Network) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    assert _tcp_roundtrip(net, a, b) == b"HELLO"
    net.remove_host("a")
    assert a.netns not in nsx.list_netns()
    assert not net.call_in(b, _ping, a.ip, 0.5)
    again = net.add_host("a", ip=a.ip)
    assert again == a
    assert _tcp_roundtrip(net, again, b, port=7001) == b"HELLO"
    fresh = net.add_host("c")
    assert fresh.ip not in (a.ip, b.ip)
    with pytest.raises(ValueError, match="in use"):
        net.add_host("d", ip=b.ip)


def test_close_leaves_nothing() -> None:
    net = Network().start()
    try:
        a = net.add_host("a")
        registered = net.spawn(a, ["sleep", "300"])
        # A daemon-like process started behind our back (double fork, not registered).
        out = net.run(a, ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout
        stray = int(out.strip())
        stray_start = nsx.proc_start_time(stray)
        assert stray_start is not None
        net.write_resolv_conf(a, "198.18.0.53", ["pg.svc.cluster.local"])
        assert Network.guard_route_present()
        assert (STATE_DIR / f"{net.prefix}.pid").exists()
    finally:
        net.close()
    net.close()  # idempotent
    assert _our_namespaces(net.prefix) == []
    assert registered.poll() is not None
    assert not nsx.pid_alive(stray, stray_start)
    assert not Path(f"/etc/netns/{a.netns}").exists()
    assert not (STATE_DIR / f"{net.prefix}.pid").exists()
    assert not net.workdir.exists()
    if not Network.live_runs():
        assert not Network.guard_route_present()


def test_cleanup_stale_removes_dead_runs() -> None:
    prefix = "pgsfs-dead00"
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    record = {"pid": int(dead.stdout), "start_time": 1, "workdir": "/nonexistent/x"}
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / f"{prefix}.pid").write_text(json.dumps(record))
    orphan = "pgsfs-0a0a0a"  # namespaces without any pid file: orphans too
    created = [f"{prefix}-br", f"{prefix}-x", f"{orphan}-br"]
    sleeper = None
    try:
        for ns in created:
            nsx.ip("netns", "add", ns)
        sleeper = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-x", "sleep", "300"])
        wait_until(lambda: nsx.netns_pids(f"{prefix}-x"), 5, 0.05, "sleeper in namespace")
        cleaned = Network.cleanup_stale(grace=2.0)
        assert prefix in cleaned and orphan in cleaned
        assert not set(created) & set(nsx.list_netns())
        assert sleeper.wait(5) is not None
        assert not (STATE_DIR / f"{prefix}.pid").exists()
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(5)
        for ns in created:
            nsx.ip("netns", "delete", ns, check=False)
        (STATE_DIR / f"{prefix}.pid").unlink(missing_ok=True)


_CHILD = """
import sys, time
from emulator.network import Network
with Network() as net:
    host = net.add_host("a")
    proc = net.spawn(host, ["sleep", "300"])
    print(net.prefix, proc.pid, flush=True)
    time.sleep(120)  # the parent signals us long before
"""


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: signal.Signals(s).name
)
def test_signal_runs_cleanup(sig: signal.Signals) -> None:
    """Ctrl-C / SIGTERM: the run cleans up itself; SIGKILL: cleanup_stale() removes the rest."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "child network never came up"
        assert child.stdout is not None
        prefix, pid = child.stdout.readline().split()
        sleeper_start = nsx.proc_start_time(int(pid))
        assert sleeper_start is not None and _our_namespaces(prefix)
        child.send_signal(sig)
        child.wait(30)
        if sig == signal.SIGKILL:
            assert _our_namespaces(prefix), "nothing could clean up after SIGKILL"
            assert prefix in Network.cleanup_stale()
        assert _our_namespaces(prefix) == []
        assert not nsx.pid_alive(int(pid), sleeper_start)
        assert not (STATE_DIR / f"{prefix}.pid").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        Network.cleanup_stale()
