"""A write load for switchovers, shared by the e2e tests and `make bench`: switch_load.py clients in
namespaces of their own, the ordinal move that waits for the rollout, and the write outage seen."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from emulator.controller import Cluster
from emulator.waiting import wait_until
from tests.e2e.cluster_support import pod

LOAD = Path(__file__).with_name("switch_load.py")


class Load:
    """The switch_load.py client in its own namespace; stopped (by PID) at exit."""

    def __init__(self, c: Cluster, seconds: float, table: str = "acked", write_to: str | None = None,
                 fresh: bool = False, members: int = 3) -> None:
        self.c = c
        self.table = table
        self.out = c.run_dir / f"switch-load-{table}.jsonl"
        self.stop_file = c.run_dir / f"switch-load-{table}.stop"
        host = c.network.add_host(f"client-{table}".replace("_", "-"))
        c.dns.configure_host(host, c.sts.namespace)
        env = c.sts.env_for("", "")
        hosts = ",".join(f"{pod(n)}.{c.sts.service_name}" for n in range(members))
        with open(self.out, "w") as fh:
            self.proc = c.network.spawn(
                host,
                [sys.executable, str(LOAD), "--members", hosts, "--user", env.get("POSTGRES_USER", "postgres"),
                 "--seconds", str(seconds), "--stop-file", str(self.stop_file), "--table", table,
                 *(["--write-to", write_to] if write_to else []), *(["--fresh"] if fresh else [])],
                stdout=fh, stderr=fh, env={**os.environ, "PGPASSWORD": env["POSTGRES_PASSWORD"],
                                           "PYTHONPATH": str(LOAD.parents[2])},
            )  # fmt: skip

    def lines(self) -> list[dict[str, Any]]:
        """Every complete JSON line so far."""
        out = []
        for line in self.out.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def acked(self) -> list[dict[str, Any]]:
        """The acknowledged writes, in order."""
        return [x for x in self.lines() if "ack" in x]

    def stop(self) -> list[dict[str, Any]]:
        """Ask it to end, wait for it (bounded), and return everything it said."""
        self.stop_file.write_text("")
        self.c.network.stop_process(self.proc, grace=20)
        return self.lines()


def streaming_from(c: Cluster, primary: str) -> list[str]:
    res = c.try_psql(primary, "select application_name from pg_stat_replication where state = 'streaming' order by 1")
    return res.stdout.split() if res.returncode == 0 else []


def switch(c: Cluster, loads: list[Load], to: int, members: int) -> dict[str, Any]:
    """Move the primary ordinal to `to`, wait for the rollout and for every member to stream."""
    before = [len(load.acked()) for load in loads]
    started = time.time()
    c.update_template({"PGSFS_PRIMARY_ORDINAL": str(to)})
    wait_until(c.rolled_out, 300, 0.2, f"rollout to primary ordinal {to}")
    rolled = time.time() - started
    others = [pod(n) for n in range(members) if n != to]
    wait_until(lambda: streaming_from(c, pod(to)) == others, 60, 0.2, f"{others} streaming from {pod(to)}")
    # Writes resume on the new primary (each client finds it by itself).
    for load, count in zip(loads, before):
        wait_until(lambda load=load, count=count: len(load.acked()) > count + 20, 60, 0.1,
                   f"writes to {load.table} after the switchover")  # fmt: skip
    assert c.psql(pod(to), "select pg_is_in_recovery()") == "f"
    return {"rollout_s": round(rolled, 1), "started": started}


def outage(acks: list[dict[str, Any]], since: float, until: float) -> float:
    """The longest pause between two acknowledged writes between `since` and `until` (the write outage)."""
    times = [a["t"] for a in acks if since <= a["t"] <= until]
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)
