"""Helpers for the fault matrix (tests/e2e/test_faults.py, test_soak.py) on the emulated StatefulSet:
per-container agent logs, exits and restarts from the controller's events, per-pod environment
overrides, and scans of argv, environments, logs and volumes for secrets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from emulator.controller import Cluster
from emulator.manifests import with_overrides
from emulator.pod import PodError
from emulator.waiting import wait_until
from tests.e2e.cluster_support import agent_events, pod

VOL = "/var/lib/postgresql/data"
PGDATA = f"{VOL}/pgdata"
STATE = f"{VOL}/.pg-sfs-agent"
PRIMARY = "postgresql-sfs-0"
# Hostile passwords (the field's escaping bugs): quote, backslash, space, &, =, @, colon.
SU_PW = "su' \\ &=@:pass-1"
REPL_PW = "re' \\ &=@:pass-2"
SECRETS = (SU_PW, REPL_PW)
# Settings that keep every wait short; a test that needs another value sets it per pod.
BASE_ENV = {
    "POSTGRES_PASSWORD": SU_PW,
    "PGSFS_REPLICATION_PASSWORD": REPL_PW,
    "PGSFS_LOG_FORMAT": "json",
    "PGSFS_WAIT_TIMEOUT": "30",
    "PGSFS_RESTART_CHECK_TIMEOUT": "4",
}
_EXITED = re.compile(r"^container #(\d+) exited code=(-?\d+|None)$")
_STARTED = re.compile(r"^started container #(\d+) ")

# Run inside a pod: every process's argv (NUL-joined) as one JSON document.
_PROC_SCAN = r"""
import json, os, sys
want = sys.argv[1]
out = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/{want}", "rb") as fh:
            out[pid] = fh.read().decode("utf-8", "replace")
    except OSError:
        continue
print(json.dumps(out))
"""


def make_cluster(**kw: Any) -> Cluster:
    """A cluster from k8s/ (2 pods unless told) at a fast probe and back-off time scale."""
    env = {**BASE_ENV, **kw.pop("env", {})}
    kw.setdefault("replicas", 2)
    kw.setdefault("probe_scale", 0.2)
    kw.setdefault("backoff_base", 0.5)
    kw.setdefault("backoff_cap", 4.0)
    kw.setdefault("grace_period", 15)
    return Cluster(env=env, **kw)


# ---------------------------------------------------------------------------- logs


# One parser for the agent's JSON lines, shared with the scenario tests.
agent_lines = agent_events


def runs(c: Cluster, name: str) -> list[str]:
    """The raw output of every container run the pod name ever had (recreated pods included)."""
    log = c.run_dir / "logs" / f"{name}.log"
    try:
        data = log.read_bytes()
        starts = [int(line.split()[1]) for line in log.with_name(log.name + ".starts").read_text().splitlines() if line]
    except OSError:
        return []
    bounds = [*starts, len(data)]
    return [data[a:b].decode(errors="replace") for a, b in zip(bounds, bounds[1:])]


def run_lines(c: Cluster, name: str) -> list[list[dict[str, Any]]]:
    """The agent's lines of every container run, oldest first."""
    return [agent_lines(text) for text in runs(c, name)]


def current(c: Cluster, name: str) -> list[dict[str, Any]]:
    """The agent's lines of the current container run."""
    return agent_lines(c.logs(name))


def named(lines: Iterable[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """The lines whose event is `event`."""
    return [line for line in lines if line["event"] == event]


def event_names(lines: Iterable[dict[str, Any]]) -> list[str]:
    """Event names in order (for assertion messages)."""
    return [line["event"] for line in lines]


def wait_line(
    c: Cluster,
    name: str,
    event: str,
    timeout: float,
    where: Callable[[dict[str, Any]], bool] = lambda _line: True,
    run_index: int | None = None,
) -> dict[str, Any]:
    """Wait until a container run of the pod (default: any run from `run_index` on, else the
    current one) logs `event` matching `where`; return that line."""

    def found() -> dict[str, Any] | None:
        c.check()
        all_runs = run_lines(c, name)
        pool = all_runs[run_index:] if run_index is not None else all_runs[-1:]
        for lines in pool:
            for line in named(lines, event):
                if where(line):
                    return line
        return None

    return wait_until(found, timeout, 0.1, f"{event} in {name}'s log")  # type: ignore[no-any-return]


def run_count(c: Cluster, name: str) -> int:
    """How many container runs the pod name has logged so far (all incarnations)."""
    return len(runs(c, name))


# ---------------------------------------------------------------------------- controller events


@dataclass(frozen=True)
class Exit:
    """One container exit as the controller saw it."""

    at: float
    restart: int
    code: int | None


def exits(c: Cluster, name: str, since: float = 0.0) -> list[Exit]:
    """Container exits of the pod name after `since` (epoch seconds), oldest first."""
    out = []
    for when, _, what in c.events(name):
        m = _EXITED.match(what)
        if m and when >= since:
            code = None if m.group(2) == "None" else int(m.group(2))
            out.append(Exit(when, int(m.group(1)), code))
    return out


def starts(c: Cluster, name: str, since: float = 0.0) -> list[float]:
    """Times (epoch) the pod name's containers were started after `since`."""
    return [when for when, _, what in c.events(name) if _STARTED.match(what) and when >= since]


def wait_exit(c: Cluster, name: str, since: float, timeout: float, count: int = 1) -> list[Exit]:
    """Wait until the pod has `count` container exits after `since`; return them."""

    def seen() -> list[Exit] | None:
        c.check()
        found = exits(c, name, since)
        return found if len(found) >= count else None

    return wait_until(seen, timeout, 0.05, f"{count} exit(s) of {name}")  # type: ignore[no-any-return]


def healthy(c: Cluster, timeout: float = 60.0) -> None:
    """Every pod Ready and every replica streaming (the precondition of a shared-cluster test)."""
    c.wait_ready(timeout=timeout)
    c.wait_streaming(timeout=timeout)


@contextlib.contextmanager
def env_for_new_pods(c: Cluster, env: Mapping[str, str | None]) -> Iterator[None]:
    """Pods *created* inside the block get `env` on top of the StatefulSet's (like a pod template
    change; restarts of existing pods keep their old environment, as in Kubernetes)."""
    saved = c.spec
    c.spec = with_overrides(saved, env=env)
    c.sts = c.spec.statefulset
    try:
        yield
    finally:
        c.spec = saved
        c.sts = saved.statefulset


def set_env(c: Cluster, env: Mapping[str, str | None]) -> None:
    """Change the StatefulSet's environment for every pod created from now on (a Secret edit)."""
    c.spec = with_overrides(c.spec, env=env)
    c.sts = c.spec.statefulset


def create_with_env(c: Cluster, ordinal: int, env: Mapping[str, str | None], timeout: float = 60) -> None:
    """Scale up to include `ordinal` (it must be the next one) with its own environment."""
    name = pod(ordinal)
    with env_for_new_pods(c, env):
        c.scale(ordinal + 1)
        wait_until(lambda: name in c.pod_names(), timeout, 0.05, f"{name} created")


def scale_down_to(c: Cluster, replicas: int, timeout: float = 60) -> None:
    """Scale down and wait until the removed pods are gone."""
    c.scale(replicas)
    wanted = [pod(i) for i in range(replicas)]
    wait_until(lambda: c.pod_names() == wanted, timeout, 0.05, f"scaled to {replicas}")


# ---------------------------------------------------------------------------- processes and files


def proc_files(c: Cluster, name: str, what: str = "cmdline") -> dict[int, str]:
    """pid -> /proc/<pid>/<what> of every process in the pod (NULs kept), seen from the node:
    the container's root lacks CAP_SYS_PTRACE, so it cannot read postgres' environ."""
    try:
        res = c.exec_in_pod(name, [sys.executable, "-I", "-c", _PROC_SCAN, what], timeout=20, privileged=True)
    except PodError:
        return {}  # the container ended between listing the pods and this look: nothing to see
    if res.returncode != 0:
        return {}
    return {int(pid): text for pid, text in json.loads(res.stdout).items()}


def environ_of(text: str) -> dict[str, str]:
    """A /proc/<pid>/environ text as a dict."""
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)


def files_holding(root: Path, needles: Iterable[str]) -> list[Path]:
    """Regular files below `root` whose bytes contain any needle (each file read whole)."""
    wanted = [n.encode() for n in needles if n]
    hits = []
    for dirpath, _, filenames in os.walk(root):
        for fname in filenames:
            path = Path(dirpath) / fname
            try:
                if not path.is_file() or path.is_symlink():
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in wanted):
                hits.append(path)
    return hits


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """relative path -> (mode, size, mtime_ns) of everything below `root` (the root included)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for fname in [".", *dirnames, *filenames]:
            path = Path(dirpath) / fname if fname != "." else Path(dirpath)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def dir_size(path: Path) -> int:
    """Bytes in the regular files below `path` (0 if absent); tolerates files vanishing."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for fname in filenames:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / fname).lstat().st_size
    return total


def elapsed(since: float) -> float:
    """Seconds since `since` (time.monotonic)."""
    return round(time.monotonic() - since, 2)


def host_pids(c: Cluster, name: str, program: str) -> list[int]:
    """Host PIDs of the pod's processes running `program` (argv[0] basename), seen from outside
    the pod, so they can be checked after the pod's PID 1 is gone."""
    container = c.pod(name).container
    if container is None or container.pid1 is None:
        return []
    try:
        pidns = os.readlink(f"/proc/{container.pid1}/ns/pid")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != pidns:
                continue
            argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if os.path.basename(argv0) == program:
            found.append(int(entry))
    return found


def titled_pids(c: Cluster, name: str, prefix: str) -> list[int]:
    """Host PIDs of the pod's processes whose title (cmdline) starts with `prefix`, such as
    "postgres: walreceiver", seen from outside the pod."""
    container = c.pod(name).container
    if container is None or container.pid1 is None:
        return []
    pidns = os.readlink(f"/proc/{container.pid1}/ns/pid")
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/pid") == pidns and \
                    Path(f"/proc/{entry}/cmdline").read_bytes().startswith(prefix.encode()):
                found.append(int(entry))
    return found


def acked_rows_on_both(c: Cluster, rows: int = 100) -> None:
    """Table `acked` with rows 1..`rows` on pod 0, and pod 1 has replayed them."""
    c.psql(pod(0), f"create table acked (n int); insert into acked select generate_series(1, {rows})")
    wait_until(lambda: c.try_psql(pod(1), "select count(*) from acked").stdout.strip() == str(rows), 30, 0.2,
               "replica caught up")  # fmt: skip


def primary_dies_ahead_of_its_replica(c: Cluster, replica: str, sql: str, env: Mapping[str, str | None],
                                      check: Callable[[], None] = lambda: None) -> None:  # fmt: skip
    """Freeze pod 0's walsenders (so `replica` gets none of it, not even into its socket buffers),
    run `sql` on pod 0 (acknowledged there alone; `check` runs then), then apply `env` as pod 0's
    node fails (Cluster.update_template_as_pod_dies)."""
    assert titled_pids(c, replica, "postgres: walreceiver"), f"{replica} has no walreceiver"
    senders = titled_pids(c, pod(0), "postgres: walsender")
    assert senders, "pod 0 has no walsender"
    for pid in senders:
        os.kill(pid, signal.SIGSTOP)
    try:
        c.psql(pod(0), sql)
        check()
        c.update_template_as_pod_dies(env, pod(0))
    finally:
        for pid in senders:  # gone with the pod; resumed if the test failed before
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def wait_rolled_out(c: Cluster, what: str, timeout: float) -> None:
    """Until the rollout is complete; on timeout, the cluster's story and pod 0's last run are printed."""
    try:
        wait_until(c.rolled_out, timeout, 0.2, what)
    except TimeoutError:
        print(c.describe())
        for line in run_lines(c, pod(0))[-1]:
            print("   ", json.dumps(line)[:400])
        raise


def alive(pids: Iterable[int]) -> list[int]:
    """The PIDs among `pids` still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            out.append(pid)
    return out


def report(row: str, **facts: Any) -> None:
    """One line of a row's measured facts (visible with pytest -s or -rP)."""
    print(f"[{row}] " + " ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
