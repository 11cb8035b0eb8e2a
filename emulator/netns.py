"""Network-namespace primitives: `ip netns` wrappers, per-thread setns, process sweeps by PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
_IP_TIMEOUT = 30.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS...` (bounded in time) and return the completed process."""
    return subprocess.run(
        ["ip", *args], check=check, capture_output=True, text=True, timeout=_IP_TIMEOUT
    )


def list_netns() -> list[str]:
    """Names of the named network namespaces (`ip netns list`, without the id suffix)."""
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    """PIDs of the processes living in `netns` (never our own process)."""
    res = ip("netns", "pids", netns, check=False)
    if res.returncode != 0:
        return []
    return [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter_netns(netns: str) -> None:
    """Move the *calling thread* (only it: the network namespace is per-thread) into `netns`."""
    path = netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


def call_in_netns(
    netns: str, fn: Callable[..., T], *args: Any, timeout: float = 60.0, **kwargs: Any
) -> T:
    """Run `fn(*args, **kwargs)` in a fresh thread that first enters `netns`; return its result.

    Sockets created by `fn` belong to `netns`. The thread dies with the call, so no thread of
    ours ever goes back to the root namespace by mistake. Raises TimeoutError after `timeout`.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            enter_netns(netns)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=runner, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in netns {netns} did not finish within {timeout}s")
    if error:
        raise error[0]
    return result[0]


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def pid_alive(pid: int, start_time: int) -> bool:
    """True if `pid` runs (not a zombie) and still has the given start time (no PID reuse)."""
    return proc_start_time(pid) == start_time


def kill_pids(pids: dict[int, int], grace: float) -> list[int]:
    """SIGTERM every pid (pid -> start time, guarding against reuse), SIGKILL after `grace` s.

    Returns the pids still alive after SIGKILL and a further bounded wait (should be empty).
    """

    def alive() -> dict[int, int]:
        return {p: st for p, st in pids.items() if pid_alive(p, st)}

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = alive()
        if not pids:
            break
    return sorted(pids)


def sweep_netns(namespaces: list[str], grace: float) -> list[int]:
    """Terminate every process still living in `namespaces` (by PID), then return survivors."""
    pids: dict[int, int] = {}
    for ns in namespaces:
        for pid in netns_pids(ns):
            started = proc_start_time(pid)
            if started is not None:
                pids[pid] = started
    return kill_pids(pids, grace) if pids else []
