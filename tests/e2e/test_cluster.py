"""End-to-end scenarios of the StatefulSet from k8s/ on the emulator, running the real pg-sfs-agent:
cold starts (OrderedReady; Parallel behind a slow, negatively caching DNS), restarts of a replica
and of the primary, scaling out and in, and a clone interrupted by a pod deletion.

Every wait has a stated deadline (the constants below). Timings measured are printed (`-s`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:
    pytest.skip("needs root (network, mount and PID namespaces)", allow_module_level=True)
for _tool in ("ip", "nsenter", "named", "unbound"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} is not installed", allow_module_level=True)

from emulator.controller import Cluster, slot_name  # noqa: E402
from emulator.waiting import wait_until  # noqa: E402
from tests.e2e.cluster_support import (  # noqa: E402
    PG_BIN,
    PRIMARY,
    PY39_BIN,
    agent_events,
    container_pid1,
    dir_size,
    event_time,
    lines_before_exec,
    log_events,
    names,
    pod,
    read_marker,
    slots,
    system_identifier,
    the_event,
    wait_event,
    wait_visible,
    walsender_pids,
    write_marker,
)

if not (PG_BIN / "initdb").exists():
    pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN})", allow_module_level=True)

PROBE_SCALE = 0.2
BACKOFF_BASE, BACKOFF_CAP = 0.5, 4.0
REPLICAS = [pod(1), pod(2)]

# Deadlines (s). Measured on a 2-core machine: a cold start takes ~6 s.
COLD_START = 60.0  # three pods Running and Ready (created together: Parallel, as shipped)
STREAMING = 30.0  # every replica streaming once its pod is Ready
VISIBLE = 15.0  # a committed row read on a replica
RESTART = 45.0  # a deleted pod recreated, Ready and streaming again
SCALE_UP = 60.0  # two more pods cloned, Ready and streaming
SCALE_DOWN = 30.0  # two pods stopped (fast shutdown) and gone
# Scenario 2: the record appears PROPAGATION s after pod 0; a replica that asked before saw
# NXDOMAIN, which the cache in front keeps for NEGATIVE_TTL s.
PROPAGATION, NEGATIVE_TTL = 10.0, 30
PARALLEL_START = PROPAGATION + NEGATIVE_TTL + 35.0
REACTION = NEGATIVE_TTL + 5.0  # record published -> replica saw it
# Scenario 5: the clone is throttled to CLONE_RATE_MB MB/s.
CLONE_RATE, CLONE_RATE_MB = "2M", 2.0
FILLER_ROWS = 150_000  # ~45 MB of table data: a throttled clone takes ~30 s

PRIMARY_STORY = ["agent_start", "plan", "peer_check", "initdb", "config_written", "initdb_setup",
                 "moved_into_place", "exec_postgres"]
REPLICA_STORY = ["agent_start", "plan", "dns_wait", "srv_check", "primary_wait", "slot_ready",
                 "clone_started", "clone", "config_written", "moved_into_place", "exec_postgres"]
STEPS = {
    "init": ["check_peers_for_data", "initdb", "write_config", "create_roles_single_user", "sync_volume",
             "move_into_place", "fix_ownership", "exec_postgres"],
    "clone": ["wait_for_primary_record", "wait_for_primary", "ensure_slot", "clone", "write_config",
              "move_into_place", "fix_ownership", "exec_postgres"],
}
# Plan fields that do not depend on what PGDATA holds: the same before and after the first start.
STABLE_PLAN_FIELDS = ("pod", "ordinal", "role", "pgdata", "primary", "slot", "server_major")


COLD_LOGS: dict[str, str] = {}


def _report(what: str, seconds: float) -> None:
    print(f"[measured] {what}: {seconds:.1f}s", flush=True)


def _use_py39() -> bool:
    return (PY39_BIN / "pg-sfs-agent").exists()


# ---------------------------------------------------------------------------- the shared cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The StatefulSet as shipped (Parallel, 3 replicas), agent on the image's Python 3.9."""
    c = Cluster(probe_scale=PROBE_SCALE, backoff_base=BACKOFF_BASE, backoff_cap=BACKOFF_CAP,
                agent_bin_dir=PY39_BIN if _use_py39() else None)
    with c:
        started = time.monotonic()
        c.wait_ready(timeout=COLD_START)
        ready = time.monotonic()
        c.wait_streaming(timeout=STREAMING)
        _report("cold start (Parallel, as shipped), 3 pods Ready", ready - started)
        _report("cold start (Parallel, as shipped), replicas streaming", time.monotonic() - started)
        # The first containers' logs, for the checks of the cold start whatever runs before them.
        COLD_LOGS.update({name: c.logs(name) for name in (PRIMARY, *REPLICAS)})
        yield c
    COLD_LOGS.clear()


def _slot_states(c: Cluster) -> dict[str, tuple[str, str, str]]:
    return {s: (v["type"], v["active"], v["wal_status"]) for s, v in slots(c).items()}


def _all_streaming(c: Cluster, count: int = 3) -> None:
    c.wait_ready([pod(i) for i in range(count)], timeout=RESTART)
    c.wait_streaming(timeout=STREAMING, replicas=count)


# ---------------------------------------------------------------------------- 1. cold start


def test_cold_start_streams_from_own_slots(cluster: Cluster) -> None:
    rows = cluster.replication()
    assert [(r["application_name"], r["state"], r["slot"]) for r in rows] == [
        (p, "streaming", slot_name(p)) for p in REPLICAS
    ], rows
    assert _slot_states(cluster) == {slot_name(p): ("physical", "t", "reserved") for p in REPLICAS}
    assert [cluster.role(p) for p in (PRIMARY, *REPLICAS)] == ["primary", "replica", "replica"]
    # Parallel: the replicas were created with the primary, before it was Ready, and waited for it.
    events = cluster.events()
    ready = next(t for t, who, what in events if who == PRIMARY and what == "ready")
    for replica in REPLICAS:
        created = next(t for t, who, what in events if who == replica and what.startswith("created"))
        assert created < ready, replica

    token = uuid.uuid4().hex
    cluster.psql(PRIMARY, "create table cold_start (token text primary key)")
    cluster.psql(PRIMARY, f"insert into cold_start values ('{token}')")
    took = wait_visible(cluster, REPLICAS, "select token from cold_start", token, VISIBLE)
    _report("row written on the primary visible on both replicas", took)


def test_startup_story_is_short(cluster: Cluster) -> None:
    """About ten lines per start, one per phase, no per-poll info lines."""
    primary = agent_events(COLD_LOGS[PRIMARY])
    assert names(primary) == PRIMARY_STORY
    for name in REPLICAS:
        events = agent_events(COLD_LOGS[name])
        progress = [e for e in events if e["event"] == "clone_progress"]
        # Created with the primary, a replica waits for it: one line per change of what it sees.
        waits = [e for e in events if e["event"] in ("dns_wait_state", "primary_wait_state")]
        story = [e for e in events if e not in progress and e not in waits]
        assert names(story) == REPLICA_STORY, names(events)
        assert len(waits) <= 4, names(events)
        # clone_progress only comes every 5 s of copying.
        assert len(progress) <= the_event(events, "clone")["duration_s"] / 5 + 1
        dns_wait = the_event(events, "dns_wait")
        assert dns_wait["elapsed_s"] < 5, dns_wait
        assert the_event(events, "srv_check")["primary_listed"] is True
        assert the_event(events, "slot_ready")["slot"] == slot_name(name)
    for name in (PRIMARY, *REPLICAS):
        events = agent_events(COLD_LOGS[name])
        assert {e["level"] for e in events} == {"info"}
        assert {(e["pod"], e["ordinal"]) for e in events} == {(name, int(name[-1]))}
        # Postgres' own output only once the agent has exec'd it.
        assert lines_before_exec(COLD_LOGS[name]) == []


def test_plan_event_matches_plan_command(cluster: Cluster) -> None:
    """The logged plan has the shape `pg-sfs-agent plan` prints; now the plan is to start."""
    for name in (PRIMARY, *REPLICAS):
        logged = the_event(agent_events(COLD_LOGS[name]), "plan")
        res = cluster.exec_in_pod(name, ["pg-sfs-agent", "plan"], timeout=30)
        assert res.returncode == 0, res.stderr
        printed = json.loads(res.stdout)
        assert set(printed) == set(logged) - {"timestamp", "level", "event"}
        for key in STABLE_PLAN_FIELDS:
            assert printed[key] == logged[key], key
        expected = "init" if name == PRIMARY else "clone"
        assert (logged["action"], logged["steps"]) == (expected, STEPS[expected])
        assert logged["remove_leftover"] is None and logged["refusal"] is None
        assert logged["role"] == ("primary" if name == PRIMARY else "replica")
        assert printed["action"] == "start" and printed["refusal"] is None
        assert printed["data_major"] == printed["server_major"] == 15
        if name != PRIMARY:
            assert logged["slot"] == slot_name(name)
            assert logged["primary"] == f"{PRIMARY}.postgresql-svc.pg.svc.cluster.local."


def test_agent_runs_on_python39(cluster: Cluster) -> None:
    if not _use_py39():
        pytest.skip(f"{PY39_BIN} missing: run `make .venv39/.done`")
    for name in (PRIMARY, *REPLICAS):
        start = the_event(agent_events(COLD_LOGS[name]), "agent_start")
        assert str(start["python"]).startswith("3.9."), start


# ---------------------------------------------------------------------------- 3. restarts


def test_replica_restart_is_not_cloned_again(cluster: Cluster) -> None:
    name = pod(2)
    _all_streaming(cluster)
    sysid = system_identifier(cluster, name)
    assert sysid == system_identifier(cluster, PRIMARY)
    token = uuid.uuid4().hex
    write_marker(cluster, name, token)
    cluster.delete_pod(name, timeout=RESTART)
    started = time.monotonic()
    cluster.wait_ready([name], timeout=RESTART)
    cluster.wait_streaming(timeout=STREAMING)
    _report("deleted replica recreated and streaming", time.monotonic() - started)

    assert system_identifier(cluster, name) == sysid
    assert read_marker(cluster, name) == token
    events = log_events(cluster, name)
    assert the_event(events, "plan")["action"] == "start"
    assert not {"clone", "clone_started", "moved_into_place"} & set(names(events)), names(events)
    check = the_event(events, "primary_check")
    # The slot's wal_status on the primary, and the same cluster.
    assert check["slot_status"] in ("reserved", "extended") and check["system_identifier"] == sysid, check
    assert names(events)[-1] == "exec_postgres"
    assert lines_before_exec(cluster.logs(name)) == []


def test_primary_restart_replicas_reconnect(cluster: Cluster) -> None:
    _all_streaming(cluster)
    before = {name: (container_pid1(cluster, name), cluster.restarts(name)) for name in REPLICAS}
    sysid = system_identifier(cluster, PRIMARY)
    cluster.delete_pod(PRIMARY, timeout=RESTART)
    started = time.monotonic()
    cluster.wait_ready([PRIMARY], timeout=RESTART)
    ready = time.monotonic()
    cluster.wait_streaming(timeout=RESTART)
    _report("primary recreated and Ready", ready - started)
    _report("replicas streaming again after the primary was Ready", time.monotonic() - ready)

    # By themselves: the same containers, never restarted.
    assert {name: (container_pid1(cluster, name), cluster.restarts(name)) for name in REPLICAS} == before
    assert system_identifier(cluster, PRIMARY) == sysid
    assert the_event(log_events(cluster, PRIMARY), "plan")["action"] == "start"
    assert lines_before_exec(cluster.logs(PRIMARY)) == []
    token = uuid.uuid4().hex
    cluster.psql(PRIMARY, "create table after_primary_restart (token text)")
    cluster.psql(PRIMARY, f"insert into after_primary_restart values ('{token}')")
    wait_visible(cluster, REPLICAS, "select token from after_primary_restart", token, VISIBLE)


# ---------------------------------------------------------------------------- 4. scaling


def test_scale_out_in_and_out_again(cluster: Cluster) -> None:
    three = [pod(i) for i in range(3)]
    added = [pod(3), pod(4)]
    _all_streaming(cluster)
    try:
        started = time.monotonic()
        cluster.scale(5)
        cluster.wait_ready(timeout=SCALE_UP)
        cluster.wait_streaming(timeout=STREAMING, replicas=5)
        _report("scale 3 -> 5, new pods streaming", time.monotonic() - started)
        tokens = {}
        for name in added:
            assert "clone" in names(log_events(cluster, name))
            tokens[name] = uuid.uuid4().hex
            write_marker(cluster, name, tokens[name])

        survivors = {name: (container_pid1(cluster, name), cluster.restarts(name))
                     for name in REPLICAS}
        kept = {k: v for k, v in walsender_pids(cluster).items() if k in REPLICAS}
        started = time.monotonic()
        cluster.scale(3)
        wait_until(lambda: cluster.pod_names() == three, SCALE_DOWN, 0.1, "scaled to 3")
        _report("scale 5 -> 3, removed pods gone", time.monotonic() - started)
        cluster.wait_streaming(timeout=STREAMING, replicas=3)
        # The survivors never noticed: same containers, same replication connections.
        assert {name: (container_pid1(cluster, name), cluster.restarts(name))
                for name in REPLICAS} == survivors
        assert {k: v for k, v in walsender_pids(cluster).items() if k in REPLICAS} == kept
        assert cluster.psql(PRIMARY, "show max_slot_wal_keep_size") != "-1"
        left = slots(cluster)
        for name in added:
            slot = left[slot_name(name)]
            assert slot["active"] == "f", slot
            # Bounded: safe_wal_size is only null when max_slot_wal_keep_size is -1.
            assert slot["wal_status"] in ("reserved", "extended") and slot["safe_wal_size"], slot
        for name in REPLICAS:
            assert left[slot_name(name)]["active"] == "t"

        started = time.monotonic()
        cluster.scale(5)
        cluster.wait_ready(timeout=SCALE_UP)
        cluster.wait_streaming(timeout=STREAMING, replicas=5)
        _report("scale 3 -> 5 again (volumes reused), streaming", time.monotonic() - started)
        for name in added:
            events = log_events(cluster, name)
            assert the_event(events, "plan")["action"] == "start"
            assert "clone" not in names(events) and "clone_started" not in names(events)
            assert read_marker(cluster, name) == tokens[name]
        assert {s: v["active"] for s, v in slots(cluster).items()} == {
            slot_name(pod(i)): "t" for i in range(1, 5)}
    finally:
        cluster.scale(3)
        wait_until(lambda: cluster.pod_names() == three, SCALE_DOWN, 0.1, "scaled back to 3")


# ---------------------------------------------------------------------------- 2. Parallel, slow DNS


def _published_at(c: Cluster, name: str, timeout: float) -> float:
    """Poll BIND (from its own namespace) until `name` has an A record; return when it did."""
    query = dns.message.make_query(f"{name}.postgresql-svc.pg.svc.cluster.local.", "A")
    host = c.dns.bind_host
    assert host is not None
    at: list[float] = []

    def answered() -> bool:
        c.check()
        resp = c.network.call_in(host, dns.query.udp, query, c.dns.bind_ip, timeout=1.0)
        if resp.rcode() == dns.rcode.NOERROR and resp.answer:
            at.append(time.time())
        return bool(at)

    wait_until(answered, timeout, 0.05, f"{name}'s record in BIND")
    return at[0]


def test_parallel_cold_start_behind_slow_negative_caching_dns() -> None:
    with Cluster(policy="Parallel", propagation_delay=PROPAGATION, negative_cache=True,
                 negative_ttl=NEGATIVE_TTL, probe_scale=PROBE_SCALE, backoff_base=BACKOFF_BASE,
                 backoff_cap=BACKOFF_CAP) as c:
        t0 = time.time()
        published = _published_at(c, PRIMARY, PROPAGATION + 15)
        c.wait_ready(timeout=PARALLEL_START - (time.time() - t0))
        c.wait_streaming(timeout=max(5.0, PARALLEL_START - (time.time() - t0)))
        _report("Parallel start: primary's record published after", published - t0)
        _report("Parallel start: all streaming after", time.time() - t0)
        _report("Parallel start: primary's record published -> all streaming", time.time() - published)
        # All three were created at once, none waited for another to be Ready.
        created = [t for t, _, what in c.events() if what.startswith("created")]
        assert len(created) == 3 and max(created) - min(created) < 2
        for name in REPLICAS:
            events = log_events(c, name)
            assert c.restarts(name) == 0, names(events)
            states = [e for e in events if e["event"] == "dns_wait_state"]
            assert states and states[0]["outcome"] == "no_record", states
            assert 0 < states[0]["negative_ttl"] <= NEGATIVE_TTL, states[0]
            assert event_time(states[0]) < published  # it asked before the record existed
            wait = the_event(events, "dns_wait")
            reaction = event_time(wait) - published
            _report(f"{name}: record published -> found (dns_wait)", reaction)
            _report(f"{name}: dns_wait elapsed_s={wait['elapsed_s']} attempts={wait['attempts']}", 0)
            assert -0.5 < reaction < REACTION, (reaction, wait)
            # Rate-limited: it waited out the cached NXDOMAIN (then a few quick re-asks as the
            # cache's TTL ran down to 0) instead of polling at its base pace of 0.5-1 s (~40 asks).
            assert wait["attempts"] <= 8 and wait["elapsed_s"] >= NEGATIVE_TTL - 10, wait
            assert wait["seen"].get("no_record", 0) >= 1 and wait["seen"].get("found") == 1, wait
            story = [n for n in names(events) if n not in ("dns_wait_state", "clone_progress")]
            assert story == REPLICA_STORY, names(events)


# ---------------------------------------------------------------------------- 5. interrupted clone


def test_replica_deleted_mid_clone_is_cloned_cleanly() -> None:
    name = pod(1)
    with Cluster(replicas=2, start=False, env={"PGSFS_CLONE_MAX_RATE": CLONE_RATE},
                 probe_scale=PROBE_SCALE, backoff_base=BACKOFF_BASE, backoff_cap=BACKOFF_CAP) as c:
        c.scale(1)
        c.wait_ready([PRIMARY], timeout=COLD_START)
        c.psql(PRIMARY, "create table filler as select g as id, repeat(md5(g::text), 8) as pad"
               f" from generate_series(1, {FILLER_ROWS}) g", timeout=60)
        total_mb = int(c.psql(PRIMARY, "select sum(pg_database_size(datname)) from pg_database")) / 2**20
        expected = total_mb / CLONE_RATE_MB
        _report(f"primary holds {total_mb:.0f} MB; a throttled clone should take", expected)
        assert expected > 15, total_mb  # long enough to be interrupted reliably

        c.scale(2)
        wait_event(c, name, "clone_started", COLD_START)
        work = c.volume_dir(name) / "pgdata.pgsfs-work"
        wait_until(lambda: dir_size(work) > 4 * 2**20, 15, 0.1, "4 MB copied")
        # Mid-clone: copying into the work directory, nothing at PGDATA.
        assert "clone" not in names(log_events(c, name))
        assert not (c.volume_dir(name) / "pgdata").exists()
        old = c.pod(name)
        c.delete_pod(name, timeout=30)
        assert old.container is not None and old.container.status.exit_code == 130
        wait_until(lambda: name in c.pod_names() and c.pod(name) is not old and c.logs(name), 15,
                   0.1, "the pod recreated")
        first = log_events(c, name, previous=True)
        assert names(first)[-1] == "interrupted", names(first)
        assert {"clone", "moved_into_place", "exec_postgres"}.isdisjoint(names(first))
        assert lines_before_exec(c.logs(name, previous=True)) == []  # postgres never ran there

        started = time.monotonic()
        deadline = expected * 1.5 + 30
        c.wait_ready([name], timeout=deadline)
        c.wait_streaming(timeout=STREAMING)
        _report("re-clone after the interrupted one, to streaming", time.monotonic() - started)

        text = c.logs(name)
        events = log_events(c, name)
        plan = the_event(events, "plan")
        # The first start never put anything at PGDATA: the restart found it empty.
        assert plan["action"] == "clone"
        assert str(plan["remove_leftover"]).endswith("/pgdata.pgsfs-work"), plan
        removed = the_event(events, "leftover_removed")
        assert removed["size_mb"] >= 4, removed
        order = names(events)
        story = [n for n in order if n != "clone_progress"]
        assert story == ["agent_start", "plan", "leftover_removed", *REPLICA_STORY[2:]], order
        assert the_event(events, "slot_ready")["created"] is False  # the first attempt's slot
        assert lines_before_exec(text) == []  # postgres only ran after moved_into_place
        assert the_event(events, "clone")["percent"] == 100
        assert _slot_states(c) == {slot_name(name): ("physical", "t", "reserved")}
        assert system_identifier(c, name) == system_identifier(c, PRIMARY)
        assert c.psql(name, "select count(*) from filler") == str(FILLER_ROWS)
