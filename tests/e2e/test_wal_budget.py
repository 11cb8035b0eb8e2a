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
from tests.e2e.cluster_support import dir_size, require_pods, slots
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
