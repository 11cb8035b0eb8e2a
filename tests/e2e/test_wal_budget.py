"""WAL never fills the primary's volume: on small PVCs, with a member scaled away, under a WAL burst.

The StatefulSet runs with 400 MiB volumes (loop-mounted ext4, as real PVs). Ordinal 2 is scaled
away (its PVC and its slot on the primary stay), then the primary writes three times its volume
in WAL. With PostgreSQL's defaults (wal_keep_size 1GB, max_slot_wal_keep_size 10GB) pg_wal fills
the volume and the primary PANICs; with the sizes the agent derives from the volume, the slot is
invalidated within its bound and the primary keeps serving. Scaled back, the member finds its slot
invalidated, moves its old data aside (its volume has room) and clones again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent import walbudget
from emulator.controller import Cluster
from emulator.waiting import wait_until
from tests.e2e.cluster_support import dir_size, require_pods, slots, walsender_pids
from tests.e2e.fault_support import (
    PRIMARY,
    current,
    event_names,
    healthy,
    make_cluster,
    report,
    scale_down_to,
)

require_pods("mkfs.ext4", "losetup")

VOLUME = "400Mi"
VOLUME_MB = 400
GONE = "postgresql-sfs-2"
SEGMENT_MB = 16
BURST_MB = 3 * VOLUME_MB  # WAL written while the member is away: three volumes' worth
BURST_DEADLINE = 300.0


def _write_wal(c: Cluster, megabytes: int) -> int:
    """Write about `megabytes` of WAL, a segment at a time; returns the largest pg_wal seen (bytes)."""
    c.psql(PRIMARY, "create table if not exists burst (id bigserial, v text)")
    wal_dir = c.volume_dir(PRIMARY) / "pgdata" / "pg_wal"
    largest = 0
    deadline = time.monotonic() + BURST_DEADLINE
    for _ in range(megabytes // SEGMENT_MB):  # bounded in count and in time
        assert time.monotonic() < deadline, "the WAL burst took too long"
        # A row of real data, then the rest of the segment: each switch consumes one 16 MB file.
        c.psql(PRIMARY, "insert into burst (v) select repeat('w', 2000) from generate_series(1, 200);"
                        " select pg_switch_wal()")  # fmt: skip
        largest = max(largest, dir_size(wal_dir))
    c.psql(PRIMARY, "checkpoint")
    return largest


@pytest.fixture(scope="module")
def burst() -> Iterator[dict[str, Any]]:
    c = make_cluster(replicas=3, volume_size=VOLUME)
    with c:
        healthy(c)
        settings = {name: c.psql(PRIMARY, f"show {name}") for name in
                    ("max_wal_size", "wal_keep_size", "max_slot_wal_keep_size")}  # fmt: skip
        st = os.statvfs(c.volume_dir(PRIMARY))
        expected = walbudget.defaults(st.f_blocks * st.f_frsize).conf_values()
        scale_down_to(c, 2)
        largest = _write_wal(c, BURST_MB)
        serving = c.try_psql(PRIMARY, "select count(*) from burst").stdout.strip()
        restarts = c.restarts(PRIMARY)
        gone_slot = slots(c).get("postgresql_sfs_2", {})
        c.scale(3)
        c.wait_ready(timeout=120)
        c.wait_streaming(timeout=120, replicas=3)
        yield {
            "settings": settings,
            "expected": expected,
            "largest_wal": largest,
            "serving": serving,
            "primary_restarts": restarts,
            "gone_slot": gone_slot,
            "returned": current(c, GONE),
            "slots_after": slots(c),
            "volume_after": sorted(p.name for p in c.volume_dir(GONE).iterdir()),
        }


def test_the_wal_settings_follow_the_volume(burst: dict[str, Any]) -> None:
    # The filesystem on a 400 MiB PV holds about 365 MB: max_wal_size is 10% of it, wal_keep_size
    # 5%, max_slot_wal_keep_size 25% (PostgreSQL's defaults would be 1GB, 1GB... and 10GB).
    assert burst["settings"] == burst["expected"]
    assert int(burst["settings"]["max_slot_wal_keep_size"].removesuffix("MB")) < VOLUME_MB // 3


def test_the_primary_keeps_serving_through_a_burst_larger_than_its_volume(burst: dict[str, Any]) -> None:
    assert burst["primary_restarts"] == 0
    assert int(burst["serving"]) == (BURST_MB // SEGMENT_MB) * 200
    assert burst["largest_wal"] < VOLUME_MB * 1048576 // 2, burst["largest_wal"]
    # The absent member's slot was bounded: PostgreSQL invalidated it instead of filling the disk.
    assert burst["gone_slot"]["wal_status"] == "lost", burst["gone_slot"]
    report("wal", burst_mb=BURST_MB, volume_mb=VOLUME_MB,
           largest_pg_wal_mb=round(burst["largest_wal"] / 1048576), settings=burst["settings"])


def test_the_member_that_comes_back_clones_again_and_streams(burst: dict[str, Any]) -> None:
    names = event_names(burst["returned"])
    assert "slot_invalidated" in names and "clone" in names and names[-1] == "exec_postgres", names
    check = next(e for e in burst["returned"] if e["event"] == "primary_check")
    assert check["decision"] == "reclone_lost_slot", check
    assert burst["slots_after"]["postgresql_sfs_2"]["wal_status"] in ("reserved", "extended")
    # The old data was moved aside on the same volume, never deleted.
    assert any(n.startswith("pgdata.slot-invalidated-") for n in burst["volume_after"]), burst["volume_after"]


def test_a_member_with_no_slot_whose_wal_is_gone_clones_again() -> None:
    # Review M6: a member away while the primary role moved finds no slot on the (new) primary; a
    # slot made now reserves from the primary's current position, so if the WAL it resumes from is
    # gone it would start and never stream, NotReady forever. Here its slot is dropped while it is
    # scaled away and 128 MB of WAL go by (wal_keep_size is 20 MB on these volumes): it must clone.
    c = make_cluster(replicas=2, volume_size=VOLUME)
    with c:
        healthy(c)
        scale_down_to(c, 1)
        c.psql(PRIMARY, "select pg_drop_replication_slot('postgresql_sfs_1')")
        _write_wal(c, 8 * SEGMENT_MB)
        c.scale(2)
        c.wait_ready(timeout=180)
        c.wait_streaming(timeout=120, replicas=2)
        said = event_names(current(c, "postgresql-sfs-1"))
        assert "slot_missing_wal_gone" in said and "clone" in said, said
        assert list(c.volume_dir("postgresql-sfs-1").glob("pgdata.wal-gone-*")), "the old data kept aside"
        report("slot_missing_wal_gone", events=len(said))


def test_a_cut_off_replica_never_fills_the_primary_and_heals_itself_once_healed() -> None:
    # Issue 19, items 6 and 9: a replica cut off silently (no RST) while the primary writes more WAL
    # than its slot may keep. The checkpoint that invalidates the slot waits for the replica's
    # walsender, which a dead connection holds until tcp_user_timeout (10 s for a walsender, from the
    # standby's primary_conninfo, not the server-wide 30 s): while it lingers the primary writes a
    # segment every 2 s (about 8 MB/s; what a volume can absorb in that window is README's bound),
    # then a burst of twice the slot's budget. The primary must never restart, and
    # once the network heals the replica, whose receiver then retries "can no longer get changes"
    # forever, must be restarted by its liveness (not streaming for 60 s while its upstream answers)
    # and re-cloned by its agent, with no person involved.
    c = make_cluster(replicas=2, volume_size="600Mi")
    replica = "postgresql-sfs-1"
    with c:
        healthy(c)
        c.psql(PRIMARY, "create table if not exists burst (id bigserial, v text)")
        restarts = c.restarts(replica)
        c.network.partition(replica)
        cut = time.monotonic()
        healed = None
        try:
            paced, paced_largest = 0, 0
            wal_dir = c.volume_dir(PRIMARY) / "pgdata" / "pg_wal"
            while replica in walsender_pids(c):  # bounded: tcp_user_timeout ends it after 10 s
                assert time.monotonic() - cut < 90, "the dead walsender outlived tcp_user_timeout"
                step = time.monotonic()
                c.psql(PRIMARY, "insert into burst (v) select repeat('p', 2000) from generate_series(1, 200);"
                                " select pg_switch_wal()")  # fmt: skip
                paced += 1
                paced_largest = max(paced_largest, dir_size(wal_dir))
                wait_until(lambda step=step: time.monotonic() - step >= 2.0, 5, 0.1, "the pace of one segment")
            lingered_s = time.monotonic() - cut
            largest = max(paced_largest, _write_wal(c, 2 * 136))
            lost = slots(c).get("postgresql_sfs_1", {}).get("wal_status")
            primary_restarts = c.restarts(PRIMARY)
        finally:
            c.network.partition(replica, cut=False)
            healed = time.monotonic()
        assert primary_restarts == 0
        assert lingered_s < 25, f"the dead walsender held on for {lingered_s:.0f} s, not tcp_user_timeout's 10 s"
        assert lost == "lost", lost
        assert largest < 600 * 1048576 // 2, largest
        wait_until(lambda: c.restarts(replica) > restarts, 180, 0.5, "liveness restarting the stuck replica")
        restarted_s = time.monotonic() - healed
        c.wait_ready(timeout=120)
        c.wait_streaming(timeout=120, replicas=2)
        check = next(e for e in current(c, replica) if e["event"] == "primary_check")
        assert check["decision"] == "reclone_lost_slot", check
        assert any(p.name.startswith("pgdata.slot-invalidated-") for p in c.volume_dir(replica).iterdir())
        killed = [what for _, _, what in c.events(replica) if what.startswith("liveness probe failed")]
        assert killed and "has not streamed for" in killed[0], killed
        report("partition_wal_burst", lingered_s=round(lingered_s, 1), paced_segments=paced,
               largest_pg_wal_mb=round(largest / 1048576), restarted_after_heal_s=round(restarted_s, 1))
