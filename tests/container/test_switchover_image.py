"""A switchover on the built image (PostgreSQL 14, the manifest's securityContext, read-only root,
volumes of the claim's size): the primary ordinal goes 0 -> 1 -> 0 and the StatefulSet rolls.

The e2e test (tests/e2e/test_switchover.py) measures it under a write load on the host's agent;
this one proves the same handoff runs as shipped: cascading, the slot on a standby, pg_promote over
the network, the rejoin, on the image's PostgreSQL.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = pytest.mark.container

if os.geteuid() != 0 or shutil.which("podman") is None:
    pytest.skip("needs root and podman", allow_module_level=True)

from emulator.controller import Cluster  # noqa: E402
from emulator.manifests import load_spec  # noqa: E402
from emulator.waiting import wait_until  # noqa: E402
from tests.container.test_image import IMAGE, START  # noqa: E402
from tests.e2e.cluster_support import PRIMARY, log_events, pod  # noqa: E402
from tests.e2e.fault_support import acked_rows_on_both, primary_dies_ahead_of_its_replica  # noqa: E402


def _streams_from(c: Cluster, primary: str, standby: str) -> bool:
    res = c.try_psql(primary, "select application_name from pg_stat_replication where state = 'streaming'")
    return res.returncode == 0 and res.stdout.split() == [standby]


def test_switchover_and_back_on_the_image() -> None:
    c = Cluster(spec=load_spec(), replicas=2, image=IMAGE, probe_scale=0.5, backoff_base=2.0, backoff_cap=8.0)
    with c:
        c.wait_ready(timeout=START)
        c.wait_streaming(timeout=START, replicas=2)
        assert c.psql(PRIMARY, "show server_version_num")[:2] == "14"
        c.psql(PRIMARY, "create table acked (n int); insert into acked select generate_series(1, 100)")
        for new, old in ((1, 0), (0, 1)):
            c.update_template({"PGSFS_PRIMARY_ORDINAL": str(new)})
            wait_until(c.rolled_out, 2 * START, 0.2, f"rollout to primary ordinal {new}")
            wait_until(lambda new=new, old=old: _streams_from(c, pod(new), pod(old)), 60, 0.2,
                       f"{pod(old)} streaming from {pod(new)}")  # fmt: skip
            assert c.psql(pod(new), "select pg_is_in_recovery()") == "f"
            c.psql(pod(new), f"insert into acked values ({100 + new + 1})")
            # 0 -> 1: pod 1, rolled first, names the new ordinal, so pod 0 hands over in its preStop hook
            # (as uid 999, postgres' own user: root has no CAP_KILL), and its next start tells it.
            # 1 -> 0: pod 1 is rolled first, when no pod names ordinal 0 yet: its hook cannot tell a
            # switchover, and its next start hands over. Either way it then rejoins without a copy.
            events = log_events(c, pod(old))
            said = [e["event"] for e in events]
            hook = [e.get("said") for e in events if e["event"] == "prestop_hook"]
            assert hook == (["prestop_fenced", "switchover_promoted"] if new == 1 else []), said
            assert ("switchover_promoted" in said) == (new == 0) and "rejoining" in said, said
        assert c.psql(PRIMARY, "select timeline_id from pg_control_checkpoint()") == "3"
        wait_until(lambda: c.try_psql(pod(1), "select count(*) from acked").stdout.strip() == "102", 30, 0.2,
                   "pod 1 has every row")  # fmt: skip


def test_a_switchover_whose_former_primary_is_killed_on_the_image() -> None:
    # As tests/e2e/test_switchover.py's killed case, on PostgreSQL 14 as shipped: pod 1 stops receiving,
    # pod 0 takes 50 more rows and its node fails as the ordinal moves; its agent serves its WAL from
    # a read-only standby (uid 999, read-only root) until pod 1 has it all, then promotes pod 1.
    c = Cluster(spec=load_spec(), replicas=2, image=IMAGE, probe_scale=0.5, backoff_base=2.0, backoff_cap=8.0)
    with c:
        c.wait_ready(timeout=START)
        c.wait_streaming(timeout=START, replicas=2)
        acked_rows_on_both(c)
        primary_dies_ahead_of_its_replica(c, pod(1), "insert into acked select generate_series(101, 150)",
                                          {"PGSFS_PRIMARY_ORDINAL": "1"})  # fmt: skip
        wait_until(c.rolled_out, 2 * START, 0.2, "rollout to primary ordinal 1")
        assert c.psql(pod(1), "select pg_is_in_recovery()") == "f"
        assert c.psql(pod(1), "select count(*) from acked") == "150"
        wait_until(lambda: _streams_from(c, pod(1), PRIMARY), 60, 0.2, "pod 0 streaming from pod 1")
        said = [e["event"] for e in log_events(c, PRIMARY)]
        assert "serving_own_wal" in said and "switchover_promoted" in said, said
