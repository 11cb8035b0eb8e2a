"""The replica's paths with real PostgreSQL 15: clone over the replication protocol, restart, refusals.

These run the agent's Bootstrap in-process with one stand-in: the DNS lookup (a function returning
the loopback address for the primary's FQDN). Real DNS (BIND, negative caching, SRV) is exercised by
the end-to-end tests on the emulated StatefulSet; everything else here is real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent import discovery
from agent.bootstrap import Bootstrap, World, observe_and_plan, postgres_account
from agent.config import load_config
from agent.errors import AuthenticationFailed, CommandFailed, DataDirConflict, ReplicaDiverged, SystemIdentifierMismatch
from agent.runner import Runner
from tests.integration.agentctl import (
    REPLICATION_PASSWORD,
    SUPERUSER_PASSWORD,
    ListLog,
    connect,
    loopback_dns,
    own_port_announcer,
    pod_env,
    wait_for,
)
from tests.integration.conftest import free_port, sized_volume

pytestmark = pytest.mark.integration


def bootstrap_replica(volume: Path, port: int, **extra: str) -> tuple[ListLog, Any]:
    """Run a replica's bootstrap in-process (up to, not including, exec of postgres)."""
    env = pod_env(volume, 1, port, **extra)
    config = load_config(env)
    runner = Runner(postgres_account())
    plan, _ = observe_and_plan(config, runner)
    log = ListLog()
    world = World(runner=runner, lookup=loopback_dns, sleep=lambda _s: None, announcer=own_port_announcer)
    Bootstrap(config, plan, world, log).run()
    return log, plan


def start_postgres(pgdata: Path, port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """What exec_postgres does, as a child: postgres on its own port, as the postgres user."""
    account = postgres_account()
    assert account is not None
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        ["postgres", "-D", str(pgdata), "-p", str(port), "-c", "listen_addresses=127.0.0.1"],
        user=account.uid,
        group=account.gid,
        stdout=out,
        stderr=out,
    )


def stop_postgres(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)
    proc.wait(timeout=30)


def test_replica_clones_streams_and_restarts_without_recloning(primary: Any, volume_root: Path) -> None:
    log, plan = bootstrap_replica(volume_root, primary.port)
    assert plan.action == "clone"
    names = log.names()
    for event in (
        "dns_wait",
        "primary_wait",
        "slot_ready",
        "clone_started",
        "clone",
        "config_written",
        "moved_into_place",
    ):
        assert event in names, names
    clone = next(e for e in log.events if e["event"] == "clone")
    assert clone["percent"] == 100 and clone["total_mb"] > 0

    pgdata = volume_root / "pgdata"
    assert (pgdata / "standby.signal").exists()
    settings = (pgdata / "pg-sfs-agent.conf").read_text()
    assert "primary_slot_name = 'postgresql_sfs_1'" in settings
    assert "passfile=" in settings and "application_name=''postgresql-sfs-1''" in settings
    passfile = volume_root / ".pg-sfs-agent" / "replication.pgpass"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    for path in [*pgdata.glob("*.conf"), *pgdata.glob("postgresql.auto.conf")]:
        assert REPLICATION_PASSWORD not in path.read_text(), path
    assert not list(volume_root.glob("*.pgsfs-work"))

    replica_port = free_port()
    proc = start_postgres(pgdata, replica_port)
    try:
        with connect(primary.port) as conn:
            conn.execute("CREATE TABLE rows (v text)")
            conn.execute("INSERT INTO rows VALUES ('written on the primary')")

            def streaming() -> bool:
                row = conn.execute(
                    "SELECT state FROM pg_stat_replication WHERE application_name = 'postgresql-sfs-1'"
                ).fetchone()
                return row == ("streaming",)

            wait_for(streaming, 30, "the replica to stream from its slot")
            slot = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'postgresql_sfs_1'"
            ).fetchone()
            assert slot == (True,)

        def replicated() -> bool:
            with connect(replica_port) as rconn:
                return rconn.execute("SELECT v FROM rows").fetchone() == ("written on the primary",)

        wait_for(replicated, 30, "the row to reach the replica")
    finally:
        stop_postgres(proc)

    (pgdata / "marker-from-first-start").write_text("kept")
    log, plan = bootstrap_replica(volume_root, primary.port)
    assert plan.action == "start"
    assert "clone" not in log.names() and "primary_check" in log.names()
    assert (pgdata / "marker-from-first-start").read_text() == "kept"


def test_replica_refuses_data_of_another_cluster(primary: Any, volume_root: Path) -> None:
    # A standby PGDATA from an unrelated cluster: initdb elsewhere, then mark it as a standby.
    other = volume_root / "pgdata"
    account = postgres_account()
    assert account is not None
    volume_root.chmod(0o777)
    subprocess.run(
        ["initdb", "-D", str(other), "-U", "postgres", "--auth=trust"],
        check=True,
        user=account.uid,
        group=account.gid,
        capture_output=True,
    )
    (other / "standby.signal").write_text("")
    before = sorted(p.name for p in other.iterdir())
    with pytest.raises(SystemIdentifierMismatch) as caught:
        bootstrap_replica(volume_root, primary.port)
    assert caught.value.exit_code == 7
    assert "left untouched" in caught.value.message
    assert sorted(p.name for p in other.iterdir()) == before


def test_a_former_primary_on_the_primarys_history_rejoins_without_copying(primary: Any, volume_root: Path) -> None:
    # Data that ran as a primary (no standby.signal), shut down cleanly at a point the primary has:
    # it follows again as it is.
    bootstrap_replica(volume_root, primary.port)
    replica_port = free_port()
    proc = start_postgres(volume_root / "pgdata", replica_port)
    try:
        _replayed_up_to_the_primary(primary.port, replica_port)
    finally:
        stop_postgres(proc)  # fast shutdown: pg_control says "shut down in recovery"
    (volume_root / "pgdata" / "standby.signal").unlink()
    (volume_root / "pgdata" / "marker").write_text("kept")
    log, plan = bootstrap_replica(volume_root, primary.port)
    assert "rejoin_or_rewind" in plan.steps
    assert "rejoining" in log.names() and "clone" not in log.names() and "rewound" not in log.names()
    assert (volume_root / "pgdata" / "standby.signal").exists()
    assert (volume_root / "pgdata" / "marker").read_text() == "kept"


def test_a_former_primary_refuses_while_the_primary_does_not_answer(volume_root: Path) -> None:
    with sized_volume("pgsfs-former-") as other:
        from tests.integration.agentctl import agent_postgres

        port = free_port()
        with agent_postgres(pod_env(other, 0, port), other / "agent.log"):
            pass  # initialised, then shut down cleanly: a former primary's data
        shutil.move(str(other / "pgdata"), str(volume_root / "pgdata"))
    with pytest.raises(DataDirConflict, match="former primary"):
        bootstrap_replica(volume_root, free_port(), PGSFS_RESTART_CHECK_TIMEOUT="1")
    assert not (volume_root / "pgdata" / "standby.signal").exists()


def _any_member_on_loopback(name: str, rdtype: str) -> discovery.DnsAnswer:
    if rdtype == "A" and name.startswith("postgresql-sfs-"):
        return discovery.DnsAnswer(name, rdtype, discovery.FOUND, records=("127.0.0.1",), authoritative=True)
    return discovery.DnsAnswer(name, rdtype, discovery.NO_RECORD, negative_ttl=5, authoritative=True)


@pytest.mark.parametrize("stop", ["clean_but_written_after_the_promotion", "killed"])
def test_a_diverged_former_primary_is_rewound_and_follows(volume_root: Path, stop: str) -> None:
    # A is the primary, B its replica. B is promoted; A goes on writing (or is killed), so A holds WAL
    # B never had. Restarted as a replica of B, A is rewound (pg_rewind) and streams from B.
    from tests.integration.agentctl import agent_postgres

    with sized_volume("pgsfs-old-primary-") as vol_a:
        port_a = free_port()
        env_a = pod_env(vol_a, 0, port_a)
        with agent_postgres(env_a, vol_a / "agent.log") as server_a:
            bootstrap_replica(volume_root, port_a)
            port_b = free_port()
            b = start_postgres(volume_root / "pgdata", port_b)
            try:
                with connect(port_a) as conn:
                    conn.execute("CREATE TABLE story (v text)")
                    conn.execute("INSERT INTO story VALUES ('before the promotion')")
                _replayed_up_to_the_primary(port_a, port_b)
                wait_for(lambda: connect(port_b).execute("SELECT pg_promote()").fetchone() == (True,), 30, "promotion")
                with connect(port_b) as conn:
                    conn.execute("INSERT INTO story VALUES ('on the new primary')")
                with connect(port_a) as conn:
                    conn.execute("INSERT INTO story VALUES ('lost: written on the old primary after it')")
                    conn.execute("SELECT pg_switch_wal()")
                if stop == "killed":
                    server_a.stop(signal.SIGKILL)
            except BaseException:
                stop_postgres(b)
                raise
        try:
            env = pod_env(vol_a, 0, port_b, PGSFS_PRIMARY_ORDINAL="1")
            config = load_config(env)
            runner = Runner(postgres_account())
            plan, _ = observe_and_plan(config, runner)
            assert plan.action == "start" and "rejoin_or_rewind" in plan.steps
            log = ListLog()
            world = World(runner=runner, lookup=_any_member_on_loopback, sleep=lambda _s: None,
                          announcer=own_port_announcer)  # fmt: skip
            Bootstrap(config, plan, world, log).run()
            check = next(e for e in log.events if e["event"] == "primary_check")
            assert check["decision"] == "rewind" and check["former_primary"] is True, check
            assert "rewound" in log.names()
            [saved] = list(vol_a.glob("pgdata.diverged-wal-*"))  # what only A had, kept for forensics
            assert any(p.name.startswith("00000001") for p in saved.iterdir())
            port_a2 = free_port()
            a = start_postgres(vol_a / "pgdata", port_a2, vol_a / "rejoined.log")
            try:
                def streams() -> bool:
                    with connect(port_b) as conn:
                        row = conn.execute(
                            "SELECT state FROM pg_stat_replication WHERE application_name = 'postgresql-sfs-0'"
                        ).fetchone()
                    return row == ("streaming",)

                wait_for(streams, 60, "the rewound former primary to stream from the new one")

                def caught_up() -> list[str]:
                    with connect(port_a2) as conn:
                        rows = [r[0] for r in conn.execute("SELECT v FROM story ORDER BY v").fetchall()]
                    return rows if "on the new primary" in rows else []

                rows = wait_for(caught_up, 30, "the new primary's rows on the rewound member")
                assert rows == ["before the promotion", "on the new primary"]  # the diverged write is gone
            finally:
                stop_postgres(a)
        finally:
            stop_postgres(b)


def test_wrong_replication_password_is_named_and_never_shown(primary: Any, volume_root: Path) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        bootstrap_replica(volume_root, primary.port, PGSFS_REPLICATION_PASSWORD="not-the-password")
    error = caught.value
    assert error.exit_code == 5
    assert "replicator" in error.message and "PGSFS_REPLICATION_PASSWORD" in error.hint
    assert error.fields["attempts"] == 3
    assert "not-the-password" not in json.dumps({"m": error.message, "h": error.hint, **error.fields}, default=str)
    assert not (volume_root / "pgdata").exists()


def test_pg_hba_rejection_is_named(primary: Any, volume_root: Path) -> None:
    hba = Path(json.loads(json.dumps(str(primary.log_path.parent / "pgdata" / "pg_hba.conf"))))
    original = hba.read_text()
    hba.write_text("local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n")
    with connect(primary.port) as conn:
        conn.execute("SELECT pg_reload_conf()")
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            bootstrap_replica(volume_root, primary.port)
        assert caught.value.fields["reason"] == "hba_rejected"
        assert "pg_hba" in caught.value.hint
    finally:
        hba.write_text(original)
        with connect(primary.port) as conn:
            conn.execute("SELECT pg_reload_conf()")


def test_unfinished_clone_beside_pgdata_is_removed_and_never_used(primary: Any, volume_root: Path) -> None:
    work = volume_root / "pgdata.pgsfs-work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "PG_VERSION").write_text("15\n")
    (work / "pg-sfs-agent-work.json").write_text(json.dumps({"kind": "clone", "pgdata": str(volume_root / "pgdata")}))
    log, plan = bootstrap_replica(volume_root, primary.port)
    assert plan.steps[0] == "remove_leftover"
    assert log.names()[0] == "leftover_removed"
    assert (volume_root / "pgdata" / "standby.signal").exists()
    assert not work.exists()


def _as_postgres(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    account = postgres_account()
    assert account is not None
    return subprocess.run(
        argv, check=False, user=account.uid, group=account.gid, capture_output=True, text=True, **kwargs
    )


def _copy_of_the_primary(primary_port: int, target: Path) -> None:
    """A base backup of the primary, taken now: its data as a restored volume would hold it."""
    env = {**os.environ, "PGPASSWORD": REPLICATION_PASSWORD}
    done = _as_postgres(
        ["pg_basebackup", "-h", "127.0.0.1", "-p", str(primary_port), "-U", "replicator", "-D", str(target),
         "-X", "stream", "-c", "fast"],
        env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _replayed_up_to_the_primary(primary_port: int, replica_port: int) -> None:
    """Write 4 MB on the primary and wait until the replica has replayed all of it."""
    with connect(primary_port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS later (v text)")
        conn.execute("INSERT INTO later SELECT repeat('x', 1000) FROM generate_series(1, 4000)")
        target = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]

    def replayed() -> bool:
        with connect(replica_port) as rconn:
            return bool(rconn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(target),)).fetchone()[0])

    wait_for(replayed, 30, "the replica to replay the primary's writes")


@pytest.mark.parametrize("how", ["restored_without_promotion", "promoted_copy"])
def test_replica_refuses_a_primary_whose_history_it_is_not_on(primary: Any, volume_root: Path, how: str) -> None:
    # The replica streams and replays writes made after a copy of the primary was taken; then that
    # older copy becomes the primary: started as it was (same timeline, behind the replica), or
    # promoted (a new timeline forking off before the replica's position).
    bootstrap_replica(volume_root, primary.port)
    with sized_volume("pgsfs-older-") as other_volume:
        older = other_volume / "pgdata"
        other_volume.chmod(0o777)
        _copy_of_the_primary(primary.port, older)
        _diverge_and_check(primary, volume_root, older, how)


@pytest.mark.parametrize("how", ["restored_without_promotion", "promoted_copy"])
def test_received_but_unreplayed_wal_past_the_fork_is_refused_too(primary: Any, volume_root: Path, how: str) -> None:
    # Review M7: pg_control proves only what a standby replayed. Here its replay is paused before a
    # copy of the primary is taken, then it receives 4 MB more: pg_control says it is behind the copy,
    # its pg_wal says it went past. Started against the copy it would replay that WAL and never
    # stream (or mix two histories); the agent must refuse with the data untouched.
    bootstrap_replica(volume_root, primary.port)
    replica_port = free_port()
    proc = start_postgres(volume_root / "pgdata", replica_port)
    with sized_volume("pgsfs-older-") as other_volume:
        try:
            wait_for(lambda: connect(replica_port).execute("SELECT pg_is_in_recovery()").fetchone() == (True,), 30,
                     "the replica to run")  # fmt: skip
            with connect(replica_port) as conn:
                conn.execute("SELECT pg_wal_replay_pause()")
                paused_at = conn.execute("SELECT pg_last_wal_replay_lsn()").fetchone()[0]
            older = other_volume / "pgdata"
            other_volume.chmod(0o777)
            _copy_of_the_primary(primary.port, older)
            with connect(primary.port) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS later (v text)")
                conn.execute("INSERT INTO later SELECT repeat('x', 1000) FROM generate_series(1, 4000)")
                target = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]
            wait_for(lambda: connect(replica_port).execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn",
                                                           (str(target),)).fetchone() == (True,),
                     30, "the replica to receive the writes")  # fmt: skip
            with connect(replica_port) as conn:
                assert conn.execute("SELECT pg_last_wal_replay_lsn()").fetchone()[0] == paused_at
        finally:
            stop_postgres(proc)
        _start_older_and_expect_refusal(volume_root, older, how)


@contextlib.contextmanager
def _older_copy_as_primary(older: Path, how: str) -> Iterator[int]:
    """The older copy started as the primary (promoted first for `promoted_copy`); yields its port."""
    older_port = free_port()
    if how == "promoted_copy":
        (older / "standby.signal").write_text("")
        shutil.chown(older / "standby.signal", "postgres", "postgres")
    older_proc = start_postgres(older, older_port)
    try:
        if how == "promoted_copy":
            wait_for(lambda: connect(older_port).execute("SELECT pg_promote()").fetchone() == (True,), 30, "promotion")
        wait_for(
            lambda: connect(older_port).execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,),
            30, "the older copy to accept writes",
        )  # fmt: skip
        yield older_port
    finally:
        stop_postgres(older_proc)


def _refused_untouched(volume_root: Path, older_port: int, how: str) -> ReplicaDiverged:
    """The replica's restart against the older copy: refused (exit 12) with PGDATA untouched."""
    pgdata = volume_root / "pgdata"
    before = {p.name: p.stat().st_mtime_ns for p in pgdata.iterdir()}
    with pytest.raises(ReplicaDiverged) as caught:
        bootstrap_replica(volume_root, older_port)
    expected = "ahead_of_primary" if how == "restored_without_promotion" else "forked"
    assert caught.value.fields["outcome"] == expected
    assert {p.name: p.stat().st_mtime_ns for p in pgdata.iterdir()} == before
    return caught.value


def _start_older_and_expect_refusal(volume_root: Path, older: Path, how: str) -> None:
    with _older_copy_as_primary(older, how) as older_port:
        _refused_untouched(volume_root, older_port, how)


def _run_past_the_primary(pgdata: Path, primary_port: int) -> None:
    """Start the replica in `pgdata`, let it replay 4 MB more of the primary's writes, stop it."""
    replica_port = free_port()
    proc = start_postgres(pgdata, replica_port)
    try:
        _replayed_up_to_the_primary(primary_port, replica_port)
    finally:
        stop_postgres(proc)


def _diverge_and_check(primary: Any, volume_root: Path, older: Path, how: str) -> None:
    _run_past_the_primary(volume_root / "pgdata", primary.port)

    with _older_copy_as_primary(older, how) as older_port:
        refused = _refused_untouched(volume_root, older_port, how)
        assert refused.exit_code == 12 and refused.event == "replica_diverged"
        assert (refused.fields["switch_lsn"] is None) == (how == "restored_without_promotion")
        assert "left untouched" in refused.message

        # Allowed: the data is moved aside (kept) and the replica clones the primary it must follow.
        log, _ = bootstrap_replica(volume_root, older_port, PGSFS_ON_DIVERGENCE="reclone")
        assert "replica_diverged_recloning" in log.names() and "clone" in log.names()
        aside = list(volume_root.glob("pgdata.diverged-*"))
        assert len(aside) == 1 and (aside[0] / "PG_VERSION").exists()
        log, _ = bootstrap_replica(volume_root, older_port)
        check = next(e for e in log.events if e["event"] == "primary_check")
        assert check["history"] == "on_history"


def test_a_stalled_clone_is_ended_and_discarded(primary: Any, volume_root: Path) -> None:
    # The primary's walsenders for this clone are frozen (SIGSTOP) mid-copy: bytes stop arriving
    # while every connection stays open. The agent must end the clone itself within its bound.
    with connect(primary.port) as conn:
        conn.execute("CREATE TABLE ballast AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 20000)")
    outcome: dict[str, Any] = {}

    def clone() -> None:
        try:
            bootstrap_replica(volume_root, primary.port, PGSFS_CLONE_MAX_RATE="64", PGSFS_CLONE_STALL_TIMEOUT="3")
        except Exception as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=clone, daemon=True)
    worker.start()
    frozen: list[int] = []
    try:
        def walsenders() -> list[int]:
            with connect(primary.port) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'postgresql-sfs-1-clone'"
                    " AND backend_type = 'walsender' AND state IS NOT NULL"
                ).fetchall()
            return [int(r[0]) for r in rows] if len(rows) == 2 else []

        pids = wait_for(walsenders, 30, "the clone's two walsenders (base backup and WAL stream)")
        wait_for((volume_root / "pgdata.pgsfs-work" / "data" / "base").exists, 30, "data to arrive")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
        stalled_at = time.monotonic()
        worker.join(30)
        assert not worker.is_alive(), "the stalled clone was never ended"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    error = outcome.get("error")
    assert isinstance(error, CommandFailed), error
    assert error.fields["reason"] == "stalled" and "no progress for 3 s" in error.message
    took = outcome["ended"] - stalled_at
    print(f"stalled clone ended {took:.2f} s after the primary froze (stall timeout 3 s)")
    assert took < 3 + 3, "ended later than the stall bound (plus one poll and the stop)"
    assert not (volume_root / "pgdata.pgsfs-work").exists() and not (volume_root / "pgdata").exists()


def test_synchronous_commits_wait_for_a_replica_and_go_on_once_one_streams(volume_root: Path) -> None:
    # PGSFS_SYNCHRONOUS_STANDBYS=ANY 1: initialisation never waits (the temporary server has no
    # synchronous standbys); afterwards a commit waits (SyncRep) until a replica streams.
    from tests.integration.agentctl import agent_postgres

    with sized_volume("pgsfs-sync-") as primary_volume:
        port = free_port()
        env = pod_env(primary_volume, 0, port, PGSFS_SYNCHRONOUS_STANDBYS="ANY 1")
        with agent_postgres(env, primary_volume / "agent.log"):
            with connect(port) as conn:
                names = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
                assert names.startswith('ANY 1 ("postgresql-sfs-1", "postgresql-sfs-2"'), names
                # This session opts out (synchronous_commit is per transaction): the table is there at once.
                conn.execute("SET synchronous_commit = local")
                conn.execute("CREATE TABLE acked (v text)")
            outcome: dict[str, Any] = {}

            def write() -> None:
                with connect(port) as writer:
                    writer.execute("INSERT INTO acked VALUES ('waited for a standby')")
                outcome["committed"] = time.monotonic()

            writer = threading.Thread(target=write, daemon=True)
            writer.start()

            def waiting_for_a_standby() -> bool:
                with connect(port) as conn:
                    rows = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                    ).fetchone()
                return bool(rows and rows[0] >= 1)

            wait_for(waiting_for_a_standby, 30, "a commit waiting for a synchronous standby")
            assert "committed" not in outcome
            bootstrap_replica(volume_root, port)
            replica = start_postgres(volume_root / "pgdata", free_port())
            try:
                writer.join(60)
                assert "committed" in outcome, "the commit never returned although a replica streams"
                with connect(port) as conn:
                    row = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchone()
                    assert row == ("quorum",), row
            finally:
                stop_postgres(replica)


def test_the_liveness_check_of_an_upstream_meets_a_real_server_and_leaves_no_trace(primary: Any) -> None:
    # agent/streamwatch.py: a running PostgreSQL asks a replication client to authenticate; the
    # check then hangs up before any password, which the server must not log as a failure.
    # Only the lines written after the check began count: the start's own readiness polling may log
    # "the database system is starting up".
    from agent.streamwatch import upstream_serves

    with connect(primary.port) as conn:
        conn.execute("select 1")
    before = primary.log_path.stat().st_size
    assert "ready to accept connections" in primary.log_path.read_text(), "the server's own log is read"
    for _ in range(5):
        assert upstream_serves("127.0.0.1", primary.port, "replicator")
    assert not upstream_serves("127.0.0.1", free_port(), "replicator")
    with connect(primary.port) as conn:
        conn.execute("select pg_sleep(0.2)")  # the server's log lines of the check come before this
    with open(primary.log_path, "rb") as handle:
        handle.seek(before)
        log = handle.read().decode()
    for trace in ("authentication failed", "FATAL", "could not receive data", "reset by peer"):
        assert trace not in log, log[-2000:]


def _member_one_at(address: str) -> Any:
    """Stand-in cluster DNS where only postgresql-sfs-1 exists, at `address` (a loopback one)."""

    def lookup(name: str, rdtype: str) -> discovery.DnsAnswer:
        if rdtype == "A" and name.startswith("postgresql-sfs-1."):
            return discovery.DnsAnswer(name, rdtype, discovery.FOUND, records=(address,), authoritative=True)
        return discovery.DnsAnswer(name, rdtype, discovery.NO_RECORD, negative_ttl=5, authoritative=True)

    return lookup


@pytest.mark.parametrize("how", ["restored_without_promotion", "promoted_copy"])
def test_the_primary_ordinals_standby_never_follows_a_writable_member_it_went_past(
    primary: Any, volume_root: Path, how: str
) -> None:
    # Review L8: the primary ordinal holding a standby (a switchover's successor) follows the one
    # writable member. If that member's data is older than this standby's (a restored copy), or forked
    # before its position, streaming would mix two histories: refused, data untouched, as a replica is.
    bootstrap_replica(volume_root, primary.port)
    with sized_volume("pgsfs-older-") as other_volume:
        older = other_volume / "pgdata"
        other_volume.chmod(0o777)
        _copy_of_the_primary(primary.port, older)
        _run_past_the_primary(volume_root / "pgdata", primary.port)
        port = free_port()  # every member's port; member 1 (the older copy) listens on 127.0.0.2
        if how == "promoted_copy":
            (older / "standby.signal").write_text("")
            shutil.chown(older / "standby.signal", "postgres", "postgres")
        account = postgres_account()
        assert account is not None
        writable = subprocess.Popen(
            ["postgres", "-D", str(older), "-p", str(port), "-c", "listen_addresses=127.0.0.2"],
            user=account.uid, group=account.gid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            def ask(sql: str) -> Any:
                with psycopg.connect(host="127.0.0.2", port=port, user="postgres", dbname="postgres",
                                     password=SUPERUSER_PASSWORD, autocommit=True) as conn:  # fmt: skip
                    return conn.execute(sql).fetchone()

            if how == "promoted_copy":
                wait_for(lambda: ask("SELECT pg_promote()") == (True,), 30, "promotion")
            wait_for(lambda: ask("SELECT NOT pg_is_in_recovery()") == (True,), 30, "member 1 to accept writes")

            pgdata = volume_root / "pgdata"
            before = {p.name: p.stat().st_mtime_ns for p in pgdata.iterdir()}
            env = pod_env(volume_root, 0, port, PGSFS_MEMBERS="2", PGSFS_PEER_CHECK_TIMEOUT="5")
            config = load_config(env)
            runner = Runner(postgres_account())
            plan, _ = observe_and_plan(config, runner)
            assert "follow_writable" in plan.steps
            log = ListLog()
            world = World(runner=runner, lookup=_member_one_at("127.0.0.2"), sleep=lambda _s: None,
                          announcer=own_port_announcer)  # fmt: skip
            with pytest.raises(ReplicaDiverged) as caught:
                Bootstrap(config, plan, world, log).run()
            expected = "ahead_of_primary" if how == "restored_without_promotion" else "forked"
            assert caught.value.fields["outcome"] == expected
            assert "left untouched" in caught.value.message and "postgresql-sfs-1" in caught.value.message
            assert {p.name: p.stat().st_mtime_ns for p in pgdata.iterdir()} == before
            check = next(e for e in log.events if e["event"] == "designated_history_check")
            assert check["decision"] == "refuse_diverged" and check["upstream"] == "postgresql-sfs-1"
        finally:
            writable.send_signal(signal.SIGINT)
            writable.wait(timeout=30)


def test_a_replica_with_its_wal_elsewhere_moves_that_aside_too_and_clones(primary: Any, volume_root: Path) -> None:
    # Review L4: with POSTGRES_INITDB_WALDIR, PGDATA's pg_wal is a link. Moving PGDATA aside left that
    # directory full, and pg_basebackup --waldir refuses a non-empty one: exit 9 at every start. Now
    # the WAL moves aside with its data (never deleted), also when a kill came between the two moves.
    waldir = volume_root / "wal"
    waldir.mkdir(mode=0o700)
    shutil.chown(waldir, "postgres", "postgres")
    walenv = {"POSTGRES_INITDB_WALDIR": str(waldir)}
    bootstrap_replica(volume_root, primary.port, **walenv)
    pgdata = volume_root / "pgdata"
    assert (pgdata / "pg_wal").is_symlink() and any(waldir.iterdir())
    with sized_volume("pgsfs-older-") as other_volume:
        older = other_volume / "pgdata"
        other_volume.chmod(0o777)
        _copy_of_the_primary(primary.port, older)
        _run_past_the_primary(pgdata, primary.port)
        with _older_copy_as_primary(older, "restored_without_promotion") as older_port:
            log, _ = bootstrap_replica(volume_root, older_port, PGSFS_ON_DIVERGENCE="reclone", **walenv)
            moved = next(e for e in log.events if e["event"] == "replica_diverged_recloning")
            aside = Path(moved["moved_aside"])
            wal_aside = Path(moved["wal_moved_aside"])
            assert wal_aside == volume_root / f"wal.{aside.name}"
            assert Path(os.readlink(aside / "pg_wal")) == wal_aside
            assert any(name.endswith("000000001") or len(name) == 24 for name in os.listdir(wal_aside))
            assert Path(os.readlink(pgdata / "pg_wal")) == waldir and any(waldir.iterdir())
            log, _ = bootstrap_replica(volume_root, older_port, **walenv)
            assert next(e for e in log.events if e["event"] == "primary_check")["history"] == "on_history"

            # A kill right after PGDATA was renamed: its link still names the WAL directory. The next
            # start (a clone, PGDATA being gone) finishes the move first.
            killed = volume_root / "pgdata.killed-halfway"
            os.rename(pgdata, killed)
            log, _ = bootstrap_replica(volume_root, older_port, **walenv)
            assert "wal_moved_aside" in log.names() and "clone" in log.names()
            assert Path(os.readlink(killed / "pg_wal")) == volume_root / "wal.pgdata.killed-halfway"
            assert any((volume_root / "wal.pgdata.killed-halfway").iterdir())
            assert Path(os.readlink(pgdata / "pg_wal")) == waldir
