"""9. Switchover write outage: the primary ordinal moved back and forth under three write loads.

The emulated StatefulSet from k8s/ with the manifest's own probe periods (not the tests' faster
scale), so the rollout takes as long as it would on a cluster. Three clients, each in its own
namespace, write one row at a time: through README's libpq multi-host URI (connection kept,
target_session_attrs=read-write); through the postgresql-rw Service with a connection kept; and
through postgresql-rw with a new connection per write. The outage of a switch is the longest pause
between two acknowledged writes from the apply until the next switch. Switches up (0 -> 1: the
former primary's preStop hook hands over) and down (1 -> 0: the hook hands over too, as pod 2 is
rolled first and names ordinal 0, but the rollout then restarts the new primary, pod 0) are
reported apart.
"""

from __future__ import annotations

import time

from bench.common import Row, Section, Series
from bench.context import Ctx
from emulator.controller import Cluster
from emulator.waiting import wait_until
from tests.e2e.load_support import Load, outage, streaming_from, switch

MEMBERS = 3
CLIENTS = {
    "multihost": {},
    "rw_kept": {"write_to": "postgresql-rw"},
    "rw_new": {"write_to": "postgresql-rw", "fresh": True},
}
LABELS = {
    "multihost": "switchover write outage, multi-host URI",
    "rw_kept": "same, postgresql-rw, connection kept",
    "rw_new": "same, postgresql-rw, new connection per write",
}
DIRECTIONS = {"up": "0 -> 1", "down": "1 -> 0, the new primary then restarted by the rollout"}
GOALS = {"multihost": 2.0, "rw_kept": 10.0, "rw_new": 10.0}
SWITCH_NEEDS_S = 90.0


def run(ctx: Ctx) -> Section:
    """`ctx.runs` switches (0 -> 1, 1 -> 0, ...), each under the three loads; one row per client."""
    sec = Section("switchover", "9. Switchover write outage (emulated StatefulSet, the manifest's probe periods)")
    ctx.check_time(SWITCH_NEEDS_S * 2)
    series = {(name, way): Series() for name in CLIENTS for way in DIRECTIONS}
    rollouts = Series()
    cluster = Cluster(replicas=MEMBERS, backoff_base=0.5, backoff_cap=4.0, grace_period=15)
    with cluster:
        cluster.wait_ready(timeout=180)
        cluster.wait_streaming(timeout=120, replicas=MEMBERS)
        primary = cluster.sts.pod_name(0)
        cluster.psql(primary, "; ".join(f"create table {name} (n int primary key)" for name in CLIENTS))
        loads = [Load(cluster, seconds=ctx.remaining(), table=name, members=MEMBERS, **kw)  # type: ignore[arg-type]
                 for name, kw in CLIENTS.items()]  # fmt: skip
        try:
            wait_until(lambda: all(len(load.acked()) > 20 for load in loads), 60, 0.1, "the loads writing")
            started, target = [], 0
            for _ in range(ctx.runs):
                if ctx.remaining() < SWITCH_NEEDS_S:
                    sec.notes.append(f"stopped after {len(started)} switches: time budget")
                    break
                target = 1 - target
                done = switch(cluster, loads, target, MEMBERS)
                started.append(done["started"])
                rollouts.add(done["rollout_s"])
                wait_until(lambda t=target: len(streaming_from(cluster, cluster.sts.pod_name(t))) == MEMBERS - 1,
                           60, 0.2, "every member streaming")  # fmt: skip
            ends = [*started[1:], time.time()]
        finally:
            lines = {load.table: load.stop() for load in loads}
    for name in CLIENTS:
        acked = [x for x in lines[name] if "ack" in x]
        for n, (since, until) in enumerate(zip(started, ends)):
            series[name, "up" if n % 2 == 0 else "down"].add(outage(acked, since, until))
    for way, which in DIRECTIONS.items():
        for name in CLIENTS:
            values = series[name, way]
            key = f"switchover_{name}" + ("" if way == "up" else "_down")
            row = Row(key, f"{LABELS[name]} ({which})", "s", values, goal=f"< {GOALS[name]:g} s")
            row.ok = values.median is not None and max(values.values) < GOALS[name]
            sec.rows.append(row)
    sec.data["rollout_s"] = rollouts.to_dict()
    sec.notes.append(f"{len(started)} switches; rollout (apply to every pod updated and Ready) median "
                     f"{rollouts.median or 0:.1f} s; a client's worst outage counts against its goal")  # fmt: skip
    ctx.say("switchover: " + ", ".join(f"{n} {way} {series[n, way].median or 0:.2f}s" for n in CLIENTS
                                       for way in DIRECTIONS))  # fmt: skip
    return sec
