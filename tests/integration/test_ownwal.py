"""A killed former primary serves its own WAL from a read-only standby (agent/ownwal.py), for real.

Review M8: WAL that ends inside a transaction with more than 64 open subtransactions keeps hot
standby closed for ever (its snapshot is overflowed and no later record ends that transaction), so
the standby never served and every start of the former primary exited 15. Here a primary started by
the agent is killed in exactly that state, then the agent's own-WAL server runs on its data.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg
import pytest

from agent.bootstrap import World, observe_and_plan, postgres_account
from agent.config import load_config
from agent.context import Context
from agent.history import format_lsn
from agent.managed import ManagedFiles
from agent.ownwal import OwnWalServer
from agent.pgdata import HANDOFF_MARKER
from agent.replication import Endpoint, identify_system
from agent.runner import Runner
from tests.integration.agentctl import (
    REPLICATION_PASSWORD,
    SUPERUSER_PASSWORD,
    ListLog,
    agent_postgres,
    connect,
    loopback_dns,
    pod_env,
    wait_for,
)
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def _killed_inside_an_overflowed_transaction(env: dict[str, str], volume: Path) -> None:
    """The agent's primary holds a transaction with 100 subtransactions open across a checkpoint,
    acknowledges 1000 rows after it, and is killed (SIGKILL, no shutdown checkpoint)."""
    with agent_postgres(env, volume / "agent.log") as server:
        port = server.port
        with connect(port) as conn:
            conn.execute("CREATE TABLE acked (n int); CREATE TABLE sub (n int)")
        holder = psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=SUPERUSER_PASSWORD,
                                 dbname="postgres")  # fmt: skip
        try:
            for n in range(100):
                holder.execute(f"SAVEPOINT s{n}")
                holder.execute("INSERT INTO sub VALUES (%s)", (n,))
            with connect(port) as conn:
                conn.execute("CHECKPOINT")
                conn.execute("INSERT INTO acked SELECT generate_series(1, 1000)")
            os.kill(server.proc.pid, signal.SIGKILL)  # the agent exec'd into the postmaster
            server.proc.wait(timeout=30)
        finally:
            holder.close()
    wait_for(lambda: not _running_on(volume / "pgdata"), 30, "every process of the killed server to end")


def _running_on(pgdata: Path) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cwd").resolve() == pgdata.resolve():
                    return True
            except OSError:
                continue
    return False


def test_a_killed_primary_whose_wal_keeps_hot_standby_closed_still_serves_it(volume_root: Path) -> None:
    env = pod_env(volume_root, 0, free_port(), PGSFS_SWITCHOVER_TIMEOUT="30")
    _killed_inside_an_overflowed_transaction(env, volume_root)
    pgdata = volume_root / "pgdata"
    assert not (pgdata / "standby.signal").exists()

    config = load_config(env)
    runner = Runner(postgres_account())
    plan, _ = observe_and_plan(config, runner)
    log = ListLog()
    ctx = Context(config, plan, World(runner=runner, lookup=loopback_dns), log)
    own = OwnWalServer(ctx, ManagedFiles(ctx))
    endpoint = Endpoint(host="localhost", hostaddr="127.0.0.1", port=config.port, user="replicator",
                        password=REPLICATION_PASSWORD, application_name="test")  # fmt: skip
    with own.serving():
        assert own.opened, (config.state_dir / "own-wal-server.log").read_text()[-2000:]
        info = identify_system(endpoint)
        assert info.in_hot_standby and own.recovered_end is not None
        assert info.xlogpos == format_lsn(own.recovered_end), "it serves to the new end, nothing past it"
        with connect(config.port) as conn:
            assert conn.execute("SELECT count(*) FROM acked").fetchone() == (1000,)
            assert conn.execute("SELECT count(*) FROM sub").fetchone() == (0,), "never committed"
        assert (pgdata / HANDOFF_MARKER).exists() and (pgdata / "standby.signal").exists()
    [recovered] = [e for e in log.events if e["event"] == "own_wal_recovered_alone"]
    assert recovered["wal_end"] == format_lsn(own.recovered_end)
