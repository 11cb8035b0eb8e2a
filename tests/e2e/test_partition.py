"""Partitions: a member cut off silently (its bridge port down: packets dropped, no RST, no ICMP).

A replica cut off from the primary must leave the read Service quickly (readiness), must not be
restarted for it (liveness is local), and must stream again by itself once the network heals.
"""

from __future__ import annotations

import time

from emulator.waiting import wait_until
from tests.e2e.cluster_support import pod, require_pods
from tests.e2e.fault_support import PRIMARY, healthy, make_cluster, report

require_pods()


def test_a_cut_off_replica_turns_unready_stays_alive_and_streams_again_when_healed() -> None:
    c = make_cluster(replicas=2)
    with c:
        healthy(c)
        c.psql(PRIMARY, "create table during (n int)")
        wait_until(lambda: c.try_psql(pod(1), "select count(*) from during").stdout.strip() == "0", 30, 0.2,
                   "the table on pod 1")  # fmt: skip
        restarts = c.restarts(pod(1))
        c.network.partition(pod(1))
        cut = time.monotonic()
        try:
            wait_until(lambda: not c.is_ready(pod(1)), 60, 0.1, "pod 1 no longer Ready")
            unready_s = time.monotonic() - cut
            # The primary goes on taking writes meanwhile; the replica has none of them.
            c.psql(PRIMARY, "insert into during select generate_series(1, 1000)")
            # Liveness is local: the receiver's timeout (10 s) and its retries restart nothing.
            wait_until(lambda: time.monotonic() - cut > 25, 30, 0.5, "25 s of partition")
            assert c.restarts(pod(1)) == restarts
        finally:
            c.network.partition(pod(1), cut=False)
        healed = time.monotonic()
        wait_until(lambda: c.is_ready(pod(1)), 60, 0.2, "pod 1 Ready again")
        ready_again_s = time.monotonic() - healed
        wait_until(lambda: c.try_psql(pod(1), "select count(*) from during").stdout.strip() == "1000", 60, 0.2,
                   "pod 1 has the writes made during the partition")  # fmt: skip
        assert c.restarts(pod(1)) == restarts
        # The manifest's probes run 5x faster here (probe_scale 0.2): 7.5 s of silence, then 2 x 0.4 s.
        assert unready_s < 15, unready_s
        report("partitioned_replica", unready_s=round(unready_s, 1), ready_again_s=round(ready_again_s, 1),
               restarts=c.restarts(pod(1)) - restarts)  # fmt: skip


def test_a_cut_off_primary_is_not_replaced_and_everyone_streams_again_when_healed() -> None:
    # No automatic failover, by design: with the primary cut off from every replica (and its
    # clients), nothing promotes by itself, no member restarts, and once the network heals the
    # replicas stream from it again, with what it took meanwhile.
    c = make_cluster(replicas=3)
    with c:
        healthy(c)
        c.psql(PRIMARY, "create table during (n int)")
        restarts = {name: c.restarts(name) for name in (PRIMARY, pod(1), pod(2))}
        c.network.partition(PRIMARY)
        cut = time.monotonic()
        try:
            c.psql(PRIMARY, "insert into during select generate_series(1, 100)")  # over its Unix socket
            wait_until(lambda: not c.is_ready(pod(1)) and not c.is_ready(pod(2)), 60, 0.2,
                       "the replicas no longer Ready")  # fmt: skip
            wait_until(lambda: time.monotonic() - cut > 30, 40, 0.5, "30 s of partition")
            for name in (pod(1), pod(2)):
                assert c.psql(name, "select pg_is_in_recovery()") == "t", f"{name} accepts writes"
        finally:
            c.network.partition(PRIMARY, cut=False)
        c.wait_ready(timeout=60)
        c.wait_streaming(timeout=60, replicas=3)
        for name in (pod(1), pod(2)):
            wait_until(lambda name=name: c.try_psql(name, "select count(*) from during").stdout.strip() == "100", 30,
                       0.2, f"{name} has the primary's writes")  # fmt: skip
        assert {name: c.restarts(name) for name in restarts} == restarts
        assert c.psql(PRIMARY, "select pg_is_in_recovery()") == "f"
        report("partitioned_primary", promoted=0, restarts=0)
