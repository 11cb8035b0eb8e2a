"""Row 18: random pod kills (SIGKILL) and deletions under a write load on the emulated StatefulSet;
every write the primary acknowledged survives, and every replica streams the same rows again.

CI runs a short version (5 faults, about 2 minutes); `PGSFS_SOAK_KILLS=30` runs the full one.
`PGSFS_FAULT_SEED` replays a run's choice of targets.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:
    pytest.skip("needs root (network, mount and PID namespaces)", allow_module_level=True)
for _tool in ("ip", "nsenter", "named"):
    if shutil.which(_tool) is None and not Path("/usr/sbin", _tool).exists():
        pytest.skip(f"{_tool} is not installed", allow_module_level=True)
if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
    pytest.skip("postgresql-15 is not installed", allow_module_level=True)

import dns.resolver  # noqa: E402
import psycopg  # noqa: E402

from emulator import netns as nsx  # noqa: E402
from emulator.controller import Cluster  # noqa: E402
from emulator.waiting import wait_until  # noqa: E402
from tests.e2e.fault_support import PRIMARY, SU_PW, healthy, make_cluster, pod  # noqa: E402

KILLS = int(os.environ.get("PGSFS_SOAK_KILLS") or 5)
RECOVERY = 60.0  # seconds for every pod to be Ready again after one fault
PROGRESS = 20  # acknowledged writes required after each recovery (the load really resumes)
TIME_LIMIT = 60.0 + KILLS * (RECOVERY + 30.0)  # hard bound on the whole run
PRIMARY_FQDN = f"{PRIMARY}.postgresql-svc.pg.svc.cluster.local"


class Writer:
    """Inserts rows one by one from a client host, remembering every id the server acknowledged."""

    def __init__(self, c: Cluster, netns: str, deadline: float) -> None:
        self.c = c
        self.netns = netns
        self.deadline = deadline
        self.acked: list[int] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.settings: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._main, name="soak-writer", daemon=True)

    def _connect(self, resolver: dns.resolver.Resolver) -> psycopg.Connection[Any]:
        # The primary's address from cluster DNS at every connect: a deleted pod comes back with
        # another IP. tcp_user_timeout: a deleted pod's address vanishes without a reset.
        addr = resolver.resolve(PRIMARY_FQDN, "A", search=False, lifetime=2)[0].to_text()
        conn = psycopg.connect(host=addr, port=5432, user="postgres", password=SU_PW, dbname="postgres",
                               connect_timeout=2, autocommit=True, tcp_user_timeout=3000,
                               keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2)
        if not self.settings:
            for name in ("fsync", "synchronous_commit"):
                row = conn.execute(f"SHOW {name}").fetchone()
                self.settings[name] = str(row[0]) if row else ""
        return conn

    def _main(self) -> None:
        nsx.enter_netns(self.netns)  # this thread only
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.c.dns.nameserver_ip]
        conn: psycopg.Connection[Any] | None = None
        next_id = 1
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                if conn is None:
                    conn = self._connect(resolver)
                row_id, next_id = next_id, next_id + 1
                conn.execute("INSERT INTO soak (id) VALUES (%s)", (row_id,))
                self.acked.append(row_id)  # the commit was acknowledged
            except (psycopg.Error, dns.exception.DNSException, OSError) as exc:
                self.errors[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.1)  # pacing of reconnects while the primary is away
        if conn is not None:
            conn.close()


def _ids(c: Cluster, name: str) -> set[int]:
    return {int(x) for x in c.psql(name, "select id from soak", timeout=60).split()}


def test_acknowledged_writes_survive_random_kills() -> None:
    seed = int(os.environ.get("PGSFS_FAULT_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + TIME_LIMIT
    c = make_cluster(replicas=3, grace_period=10)
    with c:
        healthy(c, timeout=90)
        c.psql(PRIMARY, "create table soak (id bigint primary key, at timestamptz not null default now())")
        client = c.network.add_host("soak-client")
        writer = Writer(c, client.netns, deadline)
        writer.thread.start()
        faults: list[tuple[str, str, float]] = []
        try:
            wait_until(lambda: len(writer.acked) >= PROGRESS, 30, 0.1, "the load to start")
            for _ in range(KILLS):
                assert time.monotonic() < deadline, f"soak over its {TIME_LIMIT:.0f} s bound"
                target = pod(rng.randrange(3))
                action = rng.choice(("sigkill", "delete"))
                before, hit = len(writer.acked), time.monotonic()
                if action == "sigkill":
                    restarts = c.restarts(target)
                    assert c.kill_pod(target, signal.SIGKILL)
                    wait_until(lambda t=target, r=restarts: c.restarts(t) > r, 30, 0.05, f"{target} restart")
                else:
                    c.delete_pod(target, timeout=30)
                c.wait_ready(timeout=RECOVERY)
                wait_until(lambda b=before: len(writer.acked) >= b + PROGRESS, 30, 0.1, "writes to resume")
                faults.append((action, target, round(time.monotonic() - hit, 1)))
        finally:
            writer.stop.set()
            writer.thread.join(15)
        assert not writer.thread.is_alive()
        c.wait_streaming(timeout=60)
        on_primary = _ids(c, PRIMARY)
        for name in (pod(1), pod(2)):
            wait_until(lambda n=name: _ids(c, n) == on_primary, 60, 0.5, f"{name} to catch up")
    context = f"seed={seed} faults={faults} errors={dict(writer.errors)}"
    assert writer.settings == {"fsync": "on", "synchronous_commit": "on"}, context
    assert len(faults) == KILLS, context
    assert len(writer.acked) >= (KILLS + 1) * PROGRESS, context
    lost = sorted(set(writer.acked) - on_primary)
    assert lost == [], f"{len(lost)} acknowledged rows lost: {lost[:20]} ({context})"
    print(f"soak: {len(writer.acked)} acknowledged, {len(on_primary)} on the primary, "
          f"{time.monotonic() - started:.0f} s; {context}")
