"""The built image, run the way the StatefulSet runs it: podman containers in the emulator's pods.

Each pod of the emulated StatefulSet is a container of pg-sfs-agent:14.5-standin (`make image`) in the pod's
network namespace (198.18.0.0/15, BIND as cluster DNS), with the manifest's securityContext as
podman flags, its volume and emptyDirs; probes and `kubectl exec` go through `podman exec`. Nothing
of the securityContext is restated here: it comes from k8s/. Figures are printed as [measured].
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.container

if os.geteuid() != 0:
    pytest.skip("needs root (podman, network namespaces)", allow_module_level=True)
if shutil.which("podman") is None:
    pytest.skip("podman is not installed (make deps)", allow_module_level=True)

from emulator import podman  # noqa: E402
from emulator.controller import Cluster  # noqa: E402
from emulator.manifests import load_spec  # noqa: E402
from tests.e2e.cluster_support import (  # noqa: E402
    PRIMARY,
    agent_events,
    lines_before_exec,
    log_events,
    pod,
    the_event,
)

IMAGE = os.environ.get("PGSFS_IMAGE", "localhost/pg-sfs-agent:14.5-standin")
START = 120.0

if not podman.image_exists(IMAGE):
    pytest.fail(f"{IMAGE} is not built: run `make image` first", pytrace=False)


def _report(what: str, value: str) -> None:
    print(f"[measured] {what}: {value}", flush=True)


def _podman_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A one-off container of the image, with no network at all."""
    return subprocess.run(["podman", "run", "--rm", "--pull=never", "--network=none", IMAGE, *args],
                          env=podman.podman_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A primary and a replica of the image, under the shipped manifest's securityContext."""
    c = Cluster(spec=load_spec(), replicas=2, image=IMAGE, probe_scale=0.5, backoff_base=2.0,
                backoff_cap=8.0)
    with c:
        started = time.monotonic()
        c.wait_ready(timeout=START)
        c.wait_streaming(timeout=START, replicas=2)
        _report("image: primary and replica Ready and streaming", f"{time.monotonic() - started:.1f}s")
        yield c


def _pid1_status(c: Cluster, name: str) -> dict[str, str]:
    """/proc/<pid>/status of the pod's PID 1, read from the host."""
    container = c.pod(name).container
    assert container is not None and container.pid1 is not None
    with open(f"/proc/{container.pid1}/status") as fh:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in fh)}


def test_echo_hello_prints_exactly_hello() -> None:
    done = _podman_run("echo", "hello")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello\n", "")


def test_a_shell_command_is_pid_1() -> None:
    done = _podman_run("sh", "-c", "echo $$")
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr


def test_the_security_context_is_the_manifests(cluster: Cluster) -> None:
    sc = cluster.sts.security
    # As shipped: root start with five capabilities, no_new_privs, read-only root, fsGroup 999.
    assert sc.run_as_user is None and sc.no_new_privs and sc.read_only_root_filesystem
    assert sc.capabilities == ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")
    assert sc.fs_group == 999


def test_pid_1_is_postgres_as_uid_999_with_no_capability(cluster: Cluster) -> None:
    for name in (PRIMARY, pod(1)):
        status = _pid1_status(cluster, name)
        assert status["Name"] == "postgres"
        assert status["Uid"].split() == ["999"] * 4 and status["Gid"].split() == ["999"] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        # The bounding set is the container's: only the manifest's five.
        assert int(status["CapBnd"], 16) == sum(1 << n for n in (0, 1, 3, 6, 7))


def test_logs_are_json_lines_telling_the_start(cluster: Cluster) -> None:
    for name, action in ((PRIMARY, "init"), (pod(1), "clone")):
        text = cluster.logs(name)
        events = agent_events(text)
        assert events[0]["event"] == "agent_start" and events[-1]["event"] == "exec_postgres"
        assert the_event(events, "plan")["action"] == action
        assert the_event(events, "agent_start")["started_as"] == "root"
        assert "Traceback" not in text
        # Every line before postgres' own is the agent's JSON.
        assert lines_before_exec(text) == []
        _report(f"image: {name} bootstrap until exec", f"{events[-1]['duration_s']}s")


def test_the_three_probes_pass_through_exec(cluster: Cluster) -> None:
    for kind in ("startup", "readiness", "liveness"):
        for name in (PRIMARY, pod(1)):
            started = time.monotonic()
            res = cluster.exec_in_pod(name, ["pg-sfs-agent", "probe", kind], timeout=10)
            took = time.monotonic() - started
            assert res.returncode == 0, (name, kind, res.stdout, res.stderr)
        _report(f"image: {kind} probe through podman exec", f"{took:.2f}s")


def test_the_root_filesystem_is_read_only(cluster: Cluster) -> None:
    res = cluster.exec_in_pod(PRIMARY, ["sh", "-c", "touch /usr/x 2>&1; touch /tmp/ok && echo tmp-ok"])
    assert "Read-only file system" in res.stdout and "tmp-ok" in res.stdout, res.stdout


def test_dev_shm_is_the_manifests_and_no_service_account_is_mounted(cluster: Cluster) -> None:
    shm = cluster.exec_in_pod(PRIMARY, ["df", "-B1", "--output=size", "/dev/shm"]).stdout.split()
    assert int(shm[-1]) == 256 * 1024 * 1024, shm  # not podman's 64 MiB
    sa = cluster.exec_in_pod(PRIMARY, ["ls", "/var/run/secrets/kubernetes.io/serviceaccount"])
    assert sa.returncode != 0, sa.stdout


def test_stop_signal_stops_cleanly_and_restart_reuses_the_data(cluster: Cluster) -> None:
    cluster.psql(PRIMARY, "create table restart_check(v int); insert into restart_check values (42)")
    for name in (pod(1), PRIMARY):
        container = cluster.pod(name).container
        assert container is not None
        started = time.monotonic()
        cluster.delete_pod(name)
        took = time.monotonic() - started
        assert container.status.exit_code == 0, cluster.describe()
        _report(f"image: {name} stop with STOPSIGNAL", f"{took:.2f}s")
        cluster.wait_ready([name], timeout=START)
        assert "database system is shut down" in cluster.logs(name, previous=True)
        events = log_events(cluster, name)
        assert the_event(events, "plan")["action"] == "start"
    cluster.wait_streaming(timeout=START, replicas=2)
    assert cluster.psql(pod(1), "select v from restart_check") == "42"
