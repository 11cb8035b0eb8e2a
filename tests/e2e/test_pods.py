"""The emulated StatefulSet itself (pods, kubelet, controller, endpoints -> DNS), with stand-in
containers instead of the agent: a small Python program whose behaviour is steered by flag files
on its volume, and exec probes that look at files. Runs as root with real namespaces and BIND.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:
    pytest.skip("needs root (network, mount and PID namespaces)", allow_module_level=True)
for _tool in ("ip", "nsenter", "named"):
    if shutil.which(_tool) is None and not Path("/usr/sbin", _tool).exists():
        pytest.skip(f"{_tool} is not installed", allow_module_level=True)

from emulator import netns as nsx  # noqa: E402
from emulator import volumes  # noqa: E402
from emulator.controller import Cluster  # noqa: E402
from emulator.manifests import Probe, parse_quantity  # noqa: E402
from emulator.network import Network  # noqa: E402
from emulator.waiting import wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NSCLIENT = REPO / "emulator" / "nsclient.py"
VOL = "/var/lib/postgresql/data"
SVC = "postgresql-svc.pg.svc.cluster.local"

# The stand-in container. Flags on its volume: `crash` makes it exit 3 at start,
# `ignore-sigint` makes it ignore the stop signal. It marks itself started in its private /dev/shm.
STANDIN = r"""
import os, pathlib, signal, sys, time
vol = pathlib.Path(os.environ["STANDIN_VOLUME"])
def on_sigint(signum, frame):
    if (vol / "ignore-sigint").exists():
        print("ignoring SIGINT", flush=True)
        return
    print("SIGINT: exiting", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, on_sigint)
print(f"standin pid={os.getpid()} host={os.uname().nodename}", flush=True)
if (vol / "crash").exists():
    print("crash flag: exit 3", flush=True)
    sys.exit(3)
t0 = time.monotonic()
ready_after = float(os.environ.get("STANDIN_READY_AFTER", "0"))
while time.monotonic() - t0 < 600:
    if time.monotonic() - t0 >= ready_after:
        pathlib.Path("/dev/shm/started").touch()
    time.sleep(0.05)
"""
COMMAND = [sys.executable, "-c", STANDIN]


def _probe(script: str, period: float = 0.2, failures: int = 1) -> Probe:
    return Probe(argv=("sh", "-c", script), period=period, timeout=2.0, failure_threshold=failures)


def _standin_cluster(**kw: object) -> Cluster:
    env = {"STANDIN_VOLUME": VOL, "STANDIN_READY_AFTER": str(kw.pop("ready_after", 0))}
    return Cluster(command=COMMAND, env=env, no_probes=True, grace_period=kw.pop("grace_period", 5),
                   **kw)  # type: ignore[arg-type]


def _query(c: Cluster, pod: str, name: str, rdtype: str = "A", search: bool = False) -> dict:
    """Resolve from inside `pod` with dnspython and the pod's own resolv.conf."""
    q = [{"name": name, "type": rdtype, "search": search, "lifetime": 3}]
    res = c.exec_in_pod(pod, [sys.executable, "-I", str(NSCLIENT)], input_text=json.dumps(q))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[0])


def _rdata(result: dict, rdtype: str) -> list[str]:
    return sorted(r["rdata"] for r in result.get("answer", []) if r["type"] == rdtype)


def _starts(c: Cluster, pod: str) -> list[float]:
    return [t for t, _, what in c.events(pod) if what.startswith("started container")]


# ---------------------------------------------------------------------------- shared cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """3 stand-in pods, Parallel, records only for Ready pods; readiness/liveness via flags."""
    c = _standin_cluster(
        replicas=3, policy="Parallel", publish_not_ready_addresses=False,
        backoff_base=0.4, backoff_cap=1.6,
        startup_probe=_probe("test -f /dev/shm/started", period=0.1, failures=100),
        readiness_probe=_probe(f"test ! -e {VOL}/unready"),
        liveness_probe=_probe(f"test ! -e {VOL}/unhealthy", failures=2),
    )  # fmt: skip
    with c:
        c.wait_ready(timeout=30)
        yield c


def _flag(c: Cluster, pod: str, name: str, on: bool) -> None:
    """Set or clear a flag file on the pod's volume (from the host, like a PV's backing dir)."""
    path = c.volume_dir(pod) / name
    if on:
        path.touch()
    else:
        path.unlink(missing_ok=True)


def test_pod_is_a_container(cluster: Cluster) -> None:
    pod = "postgresql-sfs-1"
    ip = cluster.pod_ip(pod)
    assert cluster.exec_in_pod(pod, ["hostname"]).stdout.strip() == pod
    cmdline = cluster.exec_in_pod(pod, ["cat", "/proc/1/cmdline"]).stdout.split("\0")
    assert cmdline[:3] == [*COMMAND[:2], STANDIN]  # the container command is PID 1, no wrapper
    resolv = cluster.exec_in_pod(pod, ["cat", "/etc/resolv.conf"]).stdout
    assert resolv.splitlines() == [
        f"nameserver {cluster.dns.nameserver_ip}",
        "search pg.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ]
    hosts = cluster.exec_in_pod(pod, ["cat", "/etc/hosts"]).stdout
    assert f"{ip}\t{pod}.{SVC}\t{pod}" in hosts
    # automountServiceAccountToken: false in the manifest: no service account's files at all.
    ns = cluster.exec_in_pod(pod, ["ls", "/var/run/secrets/kubernetes.io/serviceaccount"])
    assert ns.returncode != 0 and "No such file" in ns.stderr
    mounts = cluster.exec_in_pod(pod, ["findmnt", "-rn", "-o", "TARGET,SOURCE,FSTYPE"]).stdout
    targets = {line.split()[0]: line for line in mounts.splitlines()}
    # The volume is the claim's own filesystem (its loop device), not a directory of the node's.
    volume = volumes.mount_at(cluster.volume_dir(pod))
    assert volume is not None and targets[VOL].split()[1:] == [volume.source, "ext4"], targets[VOL]
    assert "tmpfs" in targets["/run/postgresql"]
    # /dev/shm is the manifest's memory emptyDir, of its sizeLimit, not the runtime's 64 MiB.
    shm = cluster.exec_in_pod(pod, ["df", "-B1", "--output=size", "/dev/shm"]).stdout.split()
    assert "tmpfs" in targets["/dev/shm"] and int(shm[-1]) == 256 * 1024 * 1024, shm
    # The manifest's read-only root gives postgres' socket directory an emptyDir: 0777 (with the
    # setgid bit and fsGroup as its group, as the kubelet makes it).
    mode = cluster.exec_in_pod(pod, ["stat", "-c", "%a %g", "/var/run/postgresql"]).stdout.split()
    assert mode == ["2777", str(cluster.sts.security.fs_group)]
    env = dict(line.split("=", 1) for line in
               cluster.exec_in_pod(pod, ["cat", "/proc/1/environ"]).stdout.split("\0") if "=" in line)
    assert env["POD_NAME"] == pod and env["POD_NAMESPACE"] == "pg" and env["POD_IP"] == ip
    assert env["HOSTNAME"] == pod
    assert env["PGDATA"] == f"{VOL}/pgdata"
    assert env["PGSFS_REPLICATION_PASSWORD"]  # from the Secret manifest
    assert env["PATH"].split(":")[:2] == [str(Path(sys.executable).parent), "/usr/lib/postgresql/15/bin"]
    # Only the pod's own processes are visible (PID namespace), and /dev/shm is its own.
    pids = [p for p in cluster.exec_in_pod(pod, ["ls", "/proc"]).stdout.split() if p.isdigit()]
    assert "1" in pids and len(pids) < 10
    assert cluster.exec_in_pod(pod, ["ls", "/dev/shm"]).stdout.split() == ["started"]
    # A probe as the postgres user works through the same namespaces.
    assert cluster.exec_in_pod(pod, ["id", "-un"], user="postgres").stdout.strip() == "postgres"


def test_volume_and_logs_survive_restart_and_deletion(cluster: Cluster) -> None:
    pod = "postgresql-sfs-1"
    cluster.exec_in_pod(pod, ["sh", "-c", f"echo kept > {VOL}/marker"])
    restarts = cluster.restarts(pod)
    first_log = cluster.logs(pod)
    assert cluster.kill_pod(pod, signal.SIGKILL)
    wait_until(lambda: cluster.restarts(pod) == restarts + 1 and cluster.is_ready(pod), 10, 0.05,
               "restart after SIGKILL")
    assert cluster.pod(pod).containers[-2].status.exit_code == 137
    assert cluster.logs(pod, previous=True) == first_log
    assert "standin pid=1" in cluster.logs(pod)
    assert cluster.exec_in_pod(pod, ["cat", f"{VOL}/marker"]).stdout == "kept\n"
    old_ip = cluster.pod_ip(pod)
    cluster.delete_pod(pod, timeout=15)
    cluster.wait_ready([pod], timeout=15)
    assert cluster.restarts(pod) == 0  # a new pod object
    assert cluster.pod_ip(pod) != old_ip
    assert cluster.exec_in_pod(pod, ["cat", f"{VOL}/marker"]).stdout == "kept\n"


def test_stop_signal_then_sigkill_after_grace(cluster: Cluster) -> None:
    pod = "postgresql-sfs-2"
    old = cluster.pod(pod)
    t0 = time.monotonic()
    cluster.delete_pod(pod, grace=5)
    quick = time.monotonic() - t0
    assert old.container is not None and old.container.status.exit_code == 0
    assert quick < 3, quick
    assert "SIGINT: exiting" in cluster.logs(pod)
    cluster.wait_ready([pod], timeout=15)

    _flag(cluster, pod, "ignore-sigint", True)
    try:
        old = cluster.pod(pod)
        t0 = time.monotonic()
        cluster.delete_pod(pod, grace=1.0)
        took = time.monotonic() - t0
    finally:
        _flag(cluster, pod, "ignore-sigint", False)
    assert 1.0 <= took < 4, took
    assert old.container is not None and old.container.status.exit_code == 137
    assert "ignoring SIGINT" in cluster.logs(pod)
    assert any("killed after grace period" in what for _, _, what in cluster.events(pod))
    cluster.wait_ready([pod], timeout=15)


def test_crashloop_backoff_doubles(cluster: Cluster) -> None:
    pod = "postgresql-sfs-0"
    before = cluster.restarts(pod)
    _flag(cluster, pod, "crash", True)
    try:
        killed_at = time.time()
        cluster.kill_pod(pod, signal.SIGKILL)
        wait_until(lambda: cluster.restarts(pod) >= before + 4, 15, 0.05, "4 restarts")
    finally:
        _flag(cluster, pod, "crash", False)
    starts = [t for t in _starts(cluster, pod) if t > killed_at][:4]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # The first restart at once, then after 0.4 s, 0.8 s, 1.6 s (plus the crash's own run time).
    assert starts[0] - killed_at < 0.4, starts
    assert 0.4 <= gaps[0] < 0.8 + 0.4, gaps
    assert 0.8 <= gaps[1] < 1.6, gaps
    assert 1.6 <= gaps[2] < 2.4, gaps
    assert cluster.status(roles=False)[0].restarts >= before + 4
    cluster.wait_ready([pod], timeout=15)
    assert "crash flag" in cluster.logs(pod, previous=True)


def test_liveness_failure_restarts_container(cluster: Cluster) -> None:
    pod = "postgresql-sfs-0"
    cluster.wait_ready([pod], timeout=15)
    before = cluster.restarts(pod)
    _flag(cluster, pod, "unhealthy", True)
    try:
        wait_until(lambda: cluster.restarts(pod) > before, 15, 0.05, "liveness restart")
    finally:
        _flag(cluster, pod, "unhealthy", False)
    assert any("Unhealthy (liveness)" in what for _, _, what in cluster.events(pod))
    cluster.wait_ready([pod], timeout=15)


def test_readiness_drives_dns_records(cluster: Cluster) -> None:
    pod, asker = "postgresql-sfs-2", "postgresql-sfs-0"
    cluster.wait_ready(timeout=15)
    fqdn = f"{pod}.{SVC}."
    ip = cluster.pod_ip(pod)

    def records() -> tuple[str, list[str], list[str]]:
        a = _query(cluster, asker, fqdn)
        srv = _query(cluster, asker, f"_postgresql-port._tcp.{SVC}.", "SRV")
        return a["outcome"], _rdata(a, "A"), _rdata(srv, "SRV")

    wait_until(lambda: records()[1] == [ip], 10, 0.1, "record of a Ready pod")
    assert len(records()[2]) == 3
    _flag(cluster, pod, "unready", True)
    try:
        wait_until(lambda: not cluster.is_ready(pod), 10, 0.05, "pod not Ready")
        outcome, _, srv = wait_until(lambda: (r := records())[0] == "nxdomain" and r, 10, 0.1,
                                     "record withdrawn")
        assert outcome == "nxdomain" and len(srv) == 2
        assert all(" 50 5432 " in s for s in srv)  # weight floor(100/2)
    finally:
        _flag(cluster, pod, "unready", False)
    wait_until(lambda: records()[1] == [ip], 10, 0.1, "record back once Ready")
    # The pod's search list resolves the short name too, like a pod's resolver does.
    short = _query(cluster, asker, f"{pod}.postgresql-svc", search=True)
    assert _rdata(short, "A") == [ip]


def test_scale_down_removes_highest_ordinals_keeps_volumes(cluster: Cluster) -> None:
    cluster.wait_ready(timeout=15)
    cluster.scale(1)
    try:
        wait_until(lambda: cluster.pod_names() == ["postgresql-sfs-0"], 15, 0.05, "scaled to 1")
        # The claims stay (and stay mounted) without their pods.
        assert volumes.mount_at(cluster.volume_dir("postgresql-sfs-2")) is not None
        assert [n for n, _ in cluster.endpoints()] == ["postgresql-sfs-0"]
    finally:
        cluster.scale(3)
    cluster.wait_ready(timeout=15)
    assert (cluster.volume_dir("postgresql-sfs-1") / "marker").read_text() == "kept\n"


# ---------------------------------------------------------------------------- volumes


def _statvfs_in_pod(c: Cluster, pod: str) -> tuple[int, int, int]:
    """(total, free, available to non-root) bytes of the pod's volume, as statfs(2) in the pod says."""
    script = ("import os, sys; st = os.statvfs(sys.argv[1]);"
              " print(st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize)")
    res = c.exec_in_pod(pod, [sys.executable, "-I", "-c", script, VOL])
    assert res.returncode == 0, res.stderr
    total, free, avail = map(int, res.stdout.split())
    return total, free, avail


def test_volume_is_a_filesystem_of_the_requested_size(cluster: Cluster) -> None:
    pod = "postgresql-sfs-0"
    size = parse_quantity("10Gi")
    assert cluster.volume_size_bytes == size  # the volumeClaimTemplate's storage request
    total, free, avail = _statvfs_in_pod(cluster, pod)
    # ext4's own metadata (inode tables, journal) takes about 2.5 % of 10 GiB.
    assert 0.96 * size <= total <= size, total
    # mkfs -m 0, as the kubelet formats volumes: no 5 % for root, only ext4's own allocation
    # reserve (resv_clusters: at most 4096 blocks) between free and available.
    assert free - avail <= 4096 * 4096, (free, avail)
    assert cluster.exec_in_pod(pod, ["stat", "-f", "-c", "%T", VOL]).stdout.strip() == "ext2/ext3"
    assert "lost+found" in cluster.exec_in_pod(pod, ["ls", "-a", VOL]).stdout.split()
    host_dir = cluster.volume_dir(pod)
    entry = volumes.mount_at(host_dir)
    assert entry is not None and entry.fstype == "ext4" and entry.source.startswith("/dev/loop"), entry
    # Sparse: a 10 GiB volume costs the disk only what was written to it.
    image = cluster.run_dir / "volume-images" / f"data-{pod}.img"
    assert image.stat().st_size == size
    assert image.stat().st_blocks * 512 < 64 * 2**20, image.stat().st_blocks
    assert image.stat().st_mode & 0o777 == 0o600  # it holds every file's bytes
    # fsGroup went to the filesystem's root (the mount), not to the directory below it.
    fs_group = cluster.sts.security.fs_group
    assert fs_group is not None
    st = os.stat(host_dir)
    assert st.st_gid == fs_group and st.st_mode & 0o2070 == 0o2070, oct(st.st_mode)


def test_a_small_volume_fills_up_outlives_its_pod_and_is_kept(tmp_path: Path) -> None:
    """16 MiB: ENOSPC inside the pod; the data outlives the pod; wipe_volume; keep_volumes."""
    pod = "postgresql-sfs-0"
    c = _standin_cluster(replicas=1, volume_size="16Mi", keep_volumes=True)
    try:
        with c:
            c.wait_ready(timeout=30)
            total, _, avail = _statvfs_in_pod(c, pod)
            assert 12 * 2**20 < avail <= total <= 16 * 2**20, (total, avail)
            fill = c.exec_in_pod(pod, ["dd", "if=/dev/zero", f"of={VOL}/fill", "bs=1M", "count=32"])
            assert fill.returncode != 0 and "No space left on device" in fill.stderr, fill
            assert c.exec_in_pod(pod, ["rm", f"{VOL}/fill"]).returncode == 0
            assert c.exec_in_pod(pod, ["sh", "-c", f"echo kept > {VOL}/marker"]).returncode == 0
            device = volumes.mount_at(c.volume_dir(pod))
            c.delete_pod(pod, timeout=15)
            c.wait_ready([pod], timeout=15)
            # The new pod mounts the same filesystem (never formatted again), data and all.
            assert volumes.mount_at(c.volume_dir(pod)) == device
            assert c.exec_in_pod(pod, ["cat", f"{VOL}/marker"]).stdout == "kept\n"
            with pytest.raises(RuntimeError, match="still exists"):
                c.wipe_volume(pod)  # like pvc-protection: not while a pod uses it
            c.scale(0)
            wait_until(lambda: c.pod_names() == [], 15, 0.05, "scaled to 0")
            c.wipe_volume(pod)
            assert [p.name for p in c.volume_dir(pod).iterdir()] == ["lost+found"]
            c.scale(1)
            c.wait_ready([pod], timeout=15)
            assert c.exec_in_pod(pod, ["ls", "-A", VOL]).stdout.split() == ["lost+found"]
            assert c.exec_in_pod(pod, ["sh", "-c", f"echo after-wipe > {VOL}/marker"]).returncode == 0
        # close() unmounted everything; keep_volumes kept the images, data included.
        assert volumes.mounted_under(c.run_dir) == []
        wait_until(lambda: _loop_devices_under(c.run_dir) == [], 10, 0.1, "loop devices detached")
        look = tmp_path / "look"
        volumes.ensure_volume(look, parse_quantity("16Mi"), c.run_dir / "volume-images" / f"data-{pod}.img")
        try:
            assert (look / "marker").read_text() == "after-wipe\n"
        finally:
            volumes.release_volume(look)
    finally:
        if not volumes.mounted_under(c.run_dir):
            shutil.rmtree(c.run_dir, ignore_errors=True)


def test_stale_cleanup_unmounts_only_volumes_of_dead_runs(tmp_path: Path) -> None:
    """release_stale (behind `make e2e-clean`) takes exactly <runs>/<dead prefix>/volumes/<claim>."""
    runs = tmp_path / "runs"
    dead = runs / "pgsfs-dead00" / "volumes" / "data-postgresql-sfs-0"
    live = runs / "pgsfs-11fe00" / "volumes" / "data-postgresql-sfs-0"
    elsewhere = runs / "pgsfs-dead00" / "other" / "data-postgresql-sfs-0"
    paths = [dead, live, elsewhere]
    try:
        for i, path in enumerate(paths):
            volumes.ensure_volume(path, 4 * 2**20, tmp_path / "images" / f"{i}.img")
        assert volumes.release_stale({"pgsfs-11fe00"}, runs_dir=runs) == [dead]
        assert volumes.mount_at(dead) is None
        assert volumes.mount_at(live) is not None and volumes.mount_at(elsewhere) is not None
    finally:
        for path in paths:
            volumes.release_volume(path)
    assert volumes.mounted_under(tmp_path) == []


# ---------------------------------------------------------------------------- own clusters


def _created_and_ready(c: Cluster, pod: str) -> tuple[float, float]:
    created = next(t for t, _, what in c.events(pod) if what.startswith("created"))
    ready = next(t for t, _, what in c.events(pod) if what == "ready")
    return created, ready


def test_ordered_ready_creates_one_by_one_and_publishes_not_ready() -> None:
    # Asked for explicitly: the shipped manifest's policy may change (k8s/ now says Parallel).
    with _standin_cluster(replicas=3, ready_after=1.2, policy="OrderedReady",
                          readiness_probe=_probe("test -f /dev/shm/started", period=0.1)) as c:
        assert c.sts.pod_management_policy == "OrderedReady"
        assert c.svc.publish_not_ready_addresses
        pod0 = "postgresql-sfs-0"
        wait_until(lambda: pod0 in c.pod_names(), 10, 0.02, "pod 0 created")
        # publishNotReadyAddresses: the record exists while the pod is not Ready yet.
        ip = c.pod_ip(pod0)
        result = wait_until(lambda: (r := _query(c, pod0, f"{pod0}.{SVC}."))["outcome"] == "answer"
                            and r, 5, 0.05, "record of a not-Ready pod")
        assert not c.is_ready(pod0)
        assert _rdata(result, "A") == [ip]
        c.wait_ready(timeout=30)
        times = [_created_and_ready(c, f"postgresql-sfs-{i}") for i in range(3)]
    for (_, ready_prev), (created_next, _) in zip(times, times[1:]):
        assert created_next >= ready_prev


def test_parallel_creates_all_at_once() -> None:
    with _standin_cluster(replicas=3, policy="Parallel", ready_after=1.0,
                          readiness_probe=_probe("test -f /dev/shm/started", period=0.1)) as c:
        c.wait_ready(timeout=30)
        times = [_created_and_ready(c, f"postgresql-sfs-{i}") for i in range(3)]
    assert max(created for created, _ in times) < min(ready for _, ready in times)


# ---------------------------------------------------------------------------- cleanup


def _loop_devices_under(root: Path) -> list[str]:
    """Loop devices whose backing file is below `root` (an image left attached)."""
    res = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True, check=True, timeout=30)
    return [line for line in res.stdout.splitlines() if f"{root}/" in line]


def _leftovers(prefix: str, pids: list[int]) -> list[str]:
    problems = [f"netns {ns}" for ns in nsx.list_netns() if ns.startswith(prefix)]
    problems += [f"pid {p}" for p in pids if nsx.proc_start_time(p) is not None]
    if (Path("/run/pgsfs-emulator") / f"{prefix}.pid").exists():
        problems.append("run record")
    return problems


def test_cleanup_leaves_nothing() -> None:
    with _standin_cluster(replicas=2, policy="Parallel") as c:
        c.wait_ready(timeout=30)
        # Stop only once the stand-ins handle SIGINT (PID 1 ignores it until then; grace 5 s).
        wait_until(lambda: all("standin" in c.logs(n) for n in c.pod_names()), 10, 0.05, "logs")
        prefix, run_dir = c.network.prefix, c.run_dir
        pids = [p for n in c.pod_names() for ct in c.pod(n).containers
                for p in (ct.shim.pid, ct.pid1) if p]
        assert run_dir.is_dir()
        assert len(volumes.mounted_under(run_dir)) == 2
    assert _leftovers(prefix, pids) == []
    assert volumes.mounted_under(run_dir) == []
    assert _loop_devices_under(run_dir) == []
    assert not run_dir.exists()
    if not Network.live_runs():
        assert not Network.guard_route_present()


def test_ctrl_c_tears_everything_down(tmp_path: Path) -> None:
    """A process running a Cluster that gets SIGINT (Ctrl-C) leaves no namespace or process."""
    script = tmp_path / "run.py"
    script.write_text(f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from tests.e2e.test_pods import _standin_cluster
from emulator.waiting import wait_until
with _standin_cluster(replicas=2, policy="Parallel") as c:
    c.wait_ready(timeout=30)
    wait_until(lambda: all("standin" in c.logs(n) for n in c.pod_names()), 10, 0.05, "logs")
    pids = [p for n in c.pod_names() for ct in c.pod(n).containers for p in (ct.shim.pid, ct.pid1)]
    print(json.dumps({{"prefix": c.network.prefix, "pids": pids}}), flush=True)
    time.sleep(60)
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            Network.cleanup_stale()
    assert _leftovers(info["prefix"], info["pids"]) == []


def test_e2e_clean_unmounts_the_volumes_of_a_killed_run(tmp_path: Path) -> None:
    """A run killed with SIGKILL cannot unmount its volumes; Network.cleanup_stale (make e2e-clean)
    does, by their exact paths under the run directory."""
    script = tmp_path / "run.py"
    script.write_text(f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from tests.e2e.test_pods import _standin_cluster
c = _standin_cluster(replicas=2, policy="Parallel", volume_size="8Mi").start()
c.wait_ready(timeout=30)
pids = [p for n in c.pod_names() for ct in c.pod(n).containers for p in (ct.shim.pid, ct.pid1)]
print(json.dumps({{"prefix": c.network.prefix, "run_dir": str(c.run_dir), "pids": pids}}), flush=True)
time.sleep(60)
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    run_dir: Path | None = None
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        run_dir = Path(info["run_dir"])
        proc.kill()
        proc.wait(30)
        assert len(volumes.mounted_under(run_dir)) == 2  # nobody unmounted them
        assert info["prefix"] in Network.cleanup_stale()
        assert volumes.mounted_under(run_dir) == []
        wait_until(lambda: _loop_devices_under(run_dir) == [], 10, 0.1, "loop devices detached")
        assert _leftovers(info["prefix"], info["pids"]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        Network.cleanup_stale()
        if run_dir is not None and not volumes.mounted_under(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
