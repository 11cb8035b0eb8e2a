"""Where a former primary's WAL ends, read with pg_waldump, against where PostgreSQL itself stops.

A handoff promotes the successor only once it has received the former primary's WAL to this end
(review C1), so the number must be exactly where PostgreSQL's own recovery finds the end: the
primary is stopped (killed, or shut down cleanly), the agent reads the end, then the same data
is started as a standby connected to nobody and, once its startup process waits for more WAL,
its replay position must equal that end and lie at or past every commit the primary acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent import walend
from agent.bootstrap import postgres_account
from agent.history import format_lsn, parse_lsn
from agent.postgres import child_env, controldata
from agent.runner import Runner
from tests.integration.agentctl import wait_for
from tests.integration.conftest import free_port, sized_volume

pytestmark = pytest.mark.integration

# Rows that cross WAL pages (and segments, with 16 MB of them), small commits, a segment switch.
WORKLOADS = {
    "wide_rows": "insert into t select g, repeat(md5(g::text), 300) from generate_series(1, 30000) g",
    "small_commits": "do $$ begin for i in 1..2000 loop insert into t values (i, 'x'); commit; end loop; end $$",
    "segment_switch": "insert into t values (1, 'x'); select pg_switch_wal(); insert into t values (2, 'y')",
    # The last record is one message spanning several WAL pages, each with its page header inside.
    "record_across_pages": "select pg_logical_emit_message(false, 'pgsfs', repeat('x', 30000))",
}


class Server:
    """One postgres on a data directory, run as the postgres account, on a private socket."""

    def __init__(self, runner: Runner, pgdata: Path, socket_dir: Path) -> None:
        self.runner, self.pgdata, self.socket_dir, self.port = runner, pgdata, socket_dir, free_port()
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        argv = ["postgres", "-D", str(self.pgdata), "-c", f"port={self.port}", "-c", "listen_addresses=",
                "-c", f"unix_socket_directories={self.socket_dir}", "-c", "max_wal_size=1GB",
                "-c", "checkpoint_timeout=1h", "-c", "hot_standby=on"]  # fmt: skip
        self.proc = self.runner.spawn(argv, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.connect, 60, "postgres to accept connections")

    def connect(self) -> psycopg.Connection[Any]:
        assert self.proc is not None and self.proc.poll() is None, "postgres exited"
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True, connect_timeout=3)  # fmt: skip

    def sql(self, statement: str) -> Any:
        with self.connect() as conn:
            conn.execute(statement)
            return conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()

    def query(self, statement: str) -> Any:
        with self.connect() as conn:
            return conn.execute(statement).fetchone()

    def stop(self, sig: int) -> None:
        assert self.proc is not None
        if sig == signal.SIGKILL:  # the node dies: the whole process group at once, no checkpoint
            self.runner.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        else:
            self.runner.stop(self.proc, grace=60, sig=sig)
        self.proc = None


@pytest.fixture
def cluster() -> Iterator[Server]:
    account = postgres_account()
    runner = Runner(run_as=account)
    with sized_volume("pgsfs-walend-") as root:
        pgdata, sockets = root / "pgdata", root / "sockets"
        for directory in (pgdata, sockets):
            directory.mkdir(mode=0o700)
            if account is not None:
                os.chown(directory, account.uid, account.gid)
        done = runner.run(["initdb", "-D", str(pgdata), "-U", "postgres", "--no-sync", "-A", "trust"],
                          env=child_env(), timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        server = Server(runner, pgdata, sockets)
        try:
            yield server
        finally:
            runner.stop_all()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["killed", "shut_down_cleanly"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_the_end_read_is_where_postgres_recovery_stops(cluster: Server, workload: str, stop: int) -> None:
    cluster.start()
    cluster.sql("create table t (n int, s text); checkpoint")
    [acknowledged] = cluster.sql(WORKLOADS[workload])
    # A non-transactional message is not flushed by its own statement: wait for the WAL writer.
    wait_for(lambda: cluster.query("select pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()")[0], 30,
             "the WAL written to disk")  # fmt: skip
    [acknowledged] = cluster.query("select pg_current_wal_flush_lsn()::text")
    cluster.stop(stop)

    control = controldata(cluster.runner, cluster.pgdata)
    end = walend.local_wal_end(cluster.runner, cluster.pgdata, control)
    assert end >= parse_lsn(acknowledged), f"{format_lsn(end)} < acknowledged {acknowledged}"

    (cluster.pgdata / "standby.signal").touch()
    cluster.start()
    # The startup process waits for more WAL (nothing to stream from): local WAL is exhausted.
    wait_for(lambda: cluster.query("select 1 from pg_stat_activity where backend_type = 'startup' and "
                                   "wait_event = 'RecoveryRetrieveRetryInterval'"), 120, "replay to end")  # fmt: skip
    [replayed] = cluster.query("select pg_last_wal_replay_lsn()::text")
    assert format_lsn(end) == replayed
    cluster.stop(signal.SIGINT)
