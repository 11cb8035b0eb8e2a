"""Backups on the emulated StatefulSet (k8s-overlays/backup): every volume lost, the cluster comes back.

The overlay adds k8s/components/backup: one claim every pod mounts (ReadWriteMany in a real
cluster) holding the pgBackRest repository, and PGSFS_BACKUP_REPO. The pods run under the shipped
securityContext with real pgBackRest and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json

from emulator.controller import Cluster
from emulator.manifests import ClusterSpec, load_spec
from emulator.waiting import wait_until
from tests.e2e.cluster_support import pod, require_pods
from tests.e2e.fault_support import PRIMARY, current, event_names, healthy, make_cluster, run_lines, scale_down_to

require_pods("mkfs.ext4", "losetup", "pgbackrest")

SIZE = 1024 * 1024 * 1024


def backup_spec() -> ClusterSpec:
    """The backup overlay, its repository claim at 1 GiB (the manifest asks 20Gi)."""
    spec = load_spec(overlay="backup")
    sts = spec.statefulset
    claims = tuple(dataclasses.replace(c, size_bytes=SIZE) for c in sts.shared_claims)
    return dataclasses.replace(spec, statefulset=dataclasses.replace(sts, shared_claims=claims))


def _rows(c: Cluster, name: str) -> list[str]:
    return c.psql(name, "select string_agg(id::text, ',' order by id) from t").split(",")


def test_every_volume_lost_the_cluster_comes_back_from_its_archive_to_a_point_in_time() -> None:
    with make_cluster(spec=backup_spec(), replicas=3, volume_size="1Gi") as c:
        lose_every_volume_and_restore(c, replicas=3)


def lose_every_volume_and_restore(c: Cluster, replicas: int) -> None:
    """Back up, write past a target time, lose every data volume, restore to the target: each member
    shows exactly the rows before it, and the archive goes on (shared with the image's test)."""
    healthy(c, timeout=120)
    c.psql(PRIMARY, "create table t (id int); insert into t values (1)")
    done = c.exec_in_pod(PRIMARY, ["pg-sfs-agent", "backup"], timeout=120)
    assert done.returncode == 0, done.stderr
    stopped = json.loads(done.stdout)["stopped"].replace("T", " ").replace("Z", "+00")
    later = f"select clock_timestamp() > '{stopped}'::timestamptz + interval '1 second'"
    wait_until(lambda: c.psql(PRIMARY, later) == "t", 5, 0.05, "the second after the backup's end")
    c.psql(PRIMARY, "insert into t values (2)")
    target = c.psql(PRIMARY, "select clock_timestamp()")
    c.psql(PRIMARY, "insert into t values (3)")
    # The rows after the target reach the archive too: a restore must leave them out on purpose.
    segment = c.psql(PRIMARY, "select pg_walfile_name(pg_switch_wal())")
    wait_until(lambda: c.psql(PRIMARY, "select last_archived_wal from pg_stat_archiver") >= segment, 60, 0.1,
               "the last segment archived")  # fmt: skip
    # A standby archives nothing; its settings are the primary's.
    assert c.psql(pod(1), "show archive_mode") == "on"
    assert c.psql(pod(1), "select archived_count from pg_stat_archiver") == "0"

    # Every data volume is lost (the repository's claim stays), and the template says restore.
    scale_down_to(c, 0)
    for n in range(replicas):
        c.wipe_volume(pod(n))
    c.update_template({"PGSFS_RESTORE_FROM": "postgresql-sfs", "PGSFS_RESTORE_TARGET": f"time={target}",
                       "PGSFS_RESTORE_CONTINUE_ARCHIVE": "true"})  # fmt: skip
    c.scale(replicas)
    healthy(c, timeout=240)
    events = event_names(current(c, PRIMARY))
    assert "restore" in events and "initdb" not in events, events
    wait_until(lambda: c.psql(PRIMARY, "select pg_is_in_recovery()") == "f", 60, 0.1, "the promotion")
    for n in range(replicas):
        wait_until(lambda n=n: _rows(c, pod(n)) == ["1", "2"], 60, 0.1, f"{pod(n)} to show the restored rows")
    # The replicas cloned the restored cluster and carry no recovery target of their own.
    for n in range(1, replicas):
        assert c.psql(pod(n), "show recovery_target_time") == ""
        assert "clone" in event_names(current(c, pod(n)))
    # The archive goes on, on the new timeline.
    c.psql(PRIMARY, "insert into t values (4)")
    segment = c.psql(PRIMARY, "select pg_walfile_name(pg_switch_wal())")
    assert segment.startswith("00000002")
    wait_until(lambda: c.psql(PRIMARY, "select last_archived_wal from pg_stat_archiver") >= segment, 60, 0.1,
               "the new timeline archived")  # fmt: skip


def test_a_killed_primarys_switchover_keeps_the_archive_continuous() -> None:
    # Pod 0 acknowledges rows over three WAL segments it cannot archive (its archive_command fails), pod 1
    # streams them (and, a standby, marks them done), then pod 0's node fails as the primary ordinal
    # moves to 1. Pod 0's agent pushes them at its next start, before the handoff: after losing every
    # volume, a restore to the end of the archive must bring back every acknowledged row (without the
    # push it silently stopped at the gap with only the first row).
    with make_cluster(spec=backup_spec(), replicas=2, volume_size="1Gi", grace_period=5) as c:
        healthy(c, timeout=120)
        c.psql(PRIMARY, "create table t (id int); insert into t values (1)")
        done = c.exec_in_pod(PRIMARY, ["pg-sfs-agent", "backup"], timeout=120)
        assert done.returncode == 0, done.stderr
        c.psql(PRIMARY, "alter system set archive_command = '/bin/false'")
        c.psql(PRIMARY, "select pg_reload_conf()")
        for n in (2, 3, 4):
            c.psql(PRIMARY, f"insert into t values ({n}); select pg_switch_wal()")
        wait_until(lambda: _rows(c, pod(1)) == ["1", "2", "3", "4"], 30, 0.1, "pod 1 to have every row")
        assert c.psql(PRIMARY, "select failed_count > 0 from pg_stat_archiver") == "t"
        c.update_template_as_pod_dies({"PGSFS_PRIMARY_ORDINAL": "1"}, PRIMARY)
        wait_until(c.rolled_out, 240, 0.2, "the rollout to primary ordinal 1")
        pushed = [line for run in run_lines(c, PRIMARY) for line in run if line["event"] == "archive_backlog_pushed"]
        assert pushed and pushed[0]["segments"] >= 3, pushed
        wait_until(lambda: c.psql(pod(1), "select pg_is_in_recovery()") == "f", 60, 0.1, "pod 1 promoted")
        c.psql(pod(1), "insert into t values (5)")
        segment = c.psql(pod(1), "select pg_walfile_name(pg_switch_wal())")
        wait_until(lambda: c.psql(pod(1), "select last_archived_wal from pg_stat_archiver") >= segment, 60, 0.1,
                   "the new primary's segment archived")  # fmt: skip

        scale_down_to(c, 0)
        for n in range(2):
            c.wipe_volume(pod(n))
        c.update_template({"PGSFS_PRIMARY_ORDINAL": "0", "PGSFS_RESTORE_FROM": "postgresql-sfs",
                           "PGSFS_RESTORE_CONTINUE_ARCHIVE": "true"})  # fmt: skip
        c.scale(2)
        healthy(c, timeout=240)
        wait_until(lambda: c.psql(PRIMARY, "select pg_is_in_recovery()") == "f", 60, 0.1, "the promotion")
        assert _rows(c, PRIMARY) == ["1", "2", "3", "4", "5"]
