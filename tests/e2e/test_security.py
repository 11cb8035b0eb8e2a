"""The agent under each securityContext we ship or document, on the emulated StatefulSet.

The shipped manifest (root with five capabilities, no_new_privs, read-only root, fsGroup) and the
two overlays in k8s-overlays/ (uid 999; OpenShift's arbitrary uid with group 0 and no passwd entry):
each initialises a primary and clones a replica that streams, postgres runs as the expected user
with no capability, and a restart reuses the data. The securityContext is read from the manifests,
never restated here. On the shipped manifest, a failure while the temporary server runs (an
initdb.d script that fails) ends in one JSON error line: the path that crash-looped the first build.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.e2e

from tests.e2e.cluster_support import require_pods  # noqa: E402

require_pods()

from emulator.controller import Cluster  # noqa: E402
from emulator.manifests import load_spec  # noqa: E402
from emulator.waiting import wait_until  # noqa: E402
from tests.e2e.cluster_support import PRIMARY, PY39_BIN, agent_events, log_events, pod, the_event  # noqa: E402
from tests.e2e.fault_support import runs  # noqa: E402

VOL = "/var/lib/postgresql/data"
PROBE_SCALE = 0.2
START = 90.0


def _cluster(overlay: str | None, image: str | None = None, **kwargs: object) -> Cluster:
    """The StatefulSet of k8s/ (or an overlay): the host's agent on Python 3.9, or `image` (podman)."""
    agent = PY39_BIN if (PY39_BIN / "pg-sfs-agent").exists() else None
    settings: dict[str, object] = {"probe_scale": PROBE_SCALE, "backoff_base": 1.0, "backoff_cap": 4.0}
    settings.update(kwargs)
    return Cluster(spec=load_spec(overlay=overlay), agent_bin_dir=agent, image=image,
                   **settings)  # type: ignore[arg-type]


def secured_cluster(overlay: str | None, image: str | None = None) -> Iterator[tuple[str | None, Cluster]]:
    """Two members (primary and one replica) under the variant's securityContext, streaming."""
    c = _cluster(overlay, image, replicas=2)
    with c:
        c.wait_ready(timeout=START)
        c.wait_streaming(timeout=START, replicas=2)
        yield overlay, c


def _status_of_pid1(c: Cluster, name: str) -> dict[str, str]:
    """/proc/1/status of the pod, as fields (Uid, Gid, CapEff, ...)."""
    res = c.exec_in_pod(name, ["cat", "/proc/1/status"], timeout=10)
    assert res.returncode == 0, res.stderr
    fields = {}
    for line in res.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _comm_of_pid1(c: Cluster, name: str) -> str:
    res = c.exec_in_pod(name, ["cat", "/proc/1/comm"], timeout=10)
    return res.stdout.strip()


VARIANTS = {"params": [None, "non-root", "openshift"], "ids": ["shipped", "non-root", "openshift"]}


@pytest.fixture(scope="module", **VARIANTS)  # type: ignore[call-overload]
def secured(request: pytest.FixtureRequest) -> Iterator[tuple[str | None, Cluster]]:
    """The host's agent under each variant (tests/container runs the same tests on the image)."""
    yield from secured_cluster(request.param)


def test_each_member_runs_postgres_unprivileged_as_the_manifest_says(
    secured: tuple[str | None, Cluster],
) -> None:
    overlay, c = secured
    sc = c.sts.security
    for name in (PRIMARY, pod(1)):
        assert _comm_of_pid1(c, name) == "postgres"
        status = _status_of_pid1(c, name)
        uid = status["Uid"].split()
        assert len(set(uid)) == 1, uid  # real, effective, saved, filesystem: all the same
        if sc.run_as_user is None:
            assert c.sts.security.capabilities, "the shipped manifest starts as root with capabilities"
            assert int(uid[0]) != 0
        else:
            assert int(uid[0]) == sc.run_as_user
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == ("1" if sc.no_new_privs else "0")
        start = the_event(log_events(c, name), "agent_start")
        assert start["started_as"] == ("root" if sc.run_as_user is None else "non-root")
        if overlay == "openshift":
            # No passwd entry for the uid: initdb and psql get nss_wrapper's.
            the_event(log_events(c, name), "nss_wrapper")
        assert "Traceback" not in c.logs(name)


def test_the_root_filesystem_is_read_only_where_the_manifest_says(secured: tuple[str | None, Cluster]) -> None:
    _, c = secured
    assert c.sts.security.read_only_root_filesystem
    res = c.exec_in_pod(PRIMARY, ["sh", "-c", "touch /usr/pgsfs-probe 2>&1; touch /tmp/ok && echo tmp-ok"],
                        timeout=10)
    assert "Read-only file system" in res.stdout and "tmp-ok" in res.stdout, res.stdout


def test_probes_and_plan_work_under_the_security_context(secured: tuple[str | None, Cluster]) -> None:
    _, c = secured
    for kind in ("startup", "readiness", "liveness"):
        res = c.exec_in_pod(pod(1), ["pg-sfs-agent", "probe", kind], timeout=10)
        assert res.returncode == 0, (kind, res.stdout, res.stderr)
    res = c.exec_in_pod(pod(1), ["pg-sfs-agent", "plan"], timeout=30)
    assert res.returncode == 0 and '"action": "start"' in res.stdout, res.stderr


def test_restart_reuses_the_data(secured: tuple[str | None, Cluster]) -> None:
    _, c = secured
    c.psql(PRIMARY, "create table if not exists restart_check(v int); insert into restart_check values (1)")
    for name in (pod(1), PRIMARY):
        c.delete_pod(name)
        c.wait_ready([name], timeout=START)
        events = log_events(c, name)
        assert the_event(events, "plan")["action"] == "start"
        assert "Traceback" not in c.logs(name)
    c.wait_streaming(timeout=START, replicas=2)
    wait_until(lambda: c.try_psql(pod(1), "select count(*) from restart_check").stdout.strip() == "1",
               30, 0.2, "the row on the restarted replica")


FAILING_SCRIPT = """#!/bin/sh
# Fails while the temporary server runs: the agent must stop it (same uid) and report, not crash.
echo "initdb.d: failing on purpose" >&2
exit 3
"""


def test_a_failure_during_init_is_one_json_error_under_the_shipped_context() -> None:
    """The first real build's crash: the error path stopped a uid-999 server from root without
    CAP_KILL, and the pod printed a traceback (exit 1) at every start."""
    check_failure_during_init(None)


def check_failure_during_init(image: str | None) -> None:
    """An initdb.d script fails while the temporary server runs: exit 9, one JSON error, no
    traceback, nothing half-built in place."""
    # The first restart is immediate (as the kubelet's); the first container is the one checked.
    c = _cluster(None, image, replicas=1, no_probes=True, backoff_base=120.0, backoff_cap=120.0,
                 env={"PGSFS_INITDB_DIR": f"{VOL}/initdb.d"}, start=False)
    with c:
        volume = c.volume_dir(PRIMARY)
        (volume / "initdb.d").mkdir(parents=True)
        script = volume / "initdb.d" / "10-fail.sh"
        script.write_text(FAILING_SCRIPT)
        script.chmod(0o755)
        c.scale(1)

        def first_exited() -> bool:
            if PRIMARY not in c.pod_names() or not c.pod(PRIMARY).containers:
                return False
            return not c.pod(PRIMARY).containers[0].running()

        wait_until(first_exited, START, 0.1, "the primary's first container to exit")
        first = c.pod(PRIMARY).containers[0]
        text = runs(c, PRIMARY)[0]
        assert first.status.exit_code == 9, text
        assert "Traceback" not in text
        events = agent_events(text)
        last = events[-1]
        assert last["event"] == "command_failed" and last["exit_code"] == 9, last
        assert "10-fail.sh" in last["error"]
        assert "cleanup_failed" not in [e["event"] for e in events]
        # Nothing half-built is in place: the next start initialises from scratch again.
        assert not (volume / "pgdata").exists()
