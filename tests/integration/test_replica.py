"""The replica's paths with real PostgreSQL 15: clone over the replication protocol, restart, refusals.

These run the agent's Bootstrap in-process with one stand-in: the DNS lookup (a function returning
the loopback address for the primary's FQDN). Real DNS (BIND, negative caching, SRV) is exercised by
the end-to-end tests on the emulated StatefulSet; everything else here is real.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.bootstrap import Bootstrap, World, observe_and_plan, postgres_account
from agent.config import load_config
from agent.errors import AuthenticationFailed, DataDirConflict, SystemIdentifierMismatch
from agent.runner import Runner
from tests.integration.agentctl import (
    REPLICATION_PASSWORD,
    connect,
    loopback_dns,
    pod_env,
    wait_for,
)
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


class ListLog:
    """Collects log events in memory (a structlog-shaped logger)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _add(self, level: str, event: str, **fields: Any) -> None:
        self.events.append({"level": level, "event": event, **fields})

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, **fields)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


def bootstrap_replica(volume: Path, port: int, **extra: str) -> tuple[ListLog, Any]:
    """Run a replica's bootstrap in-process (up to, not including, exec of postgres)."""
    env = pod_env(volume, 1, port, **extra)
    config = load_config(env)
    runner = Runner(postgres_account())
    plan, _ = observe_and_plan(config, runner)
    log = ListLog()
    world = World(runner=runner, lookup=loopback_dns, sleep=lambda _s: None)
    Bootstrap(config, plan, world, log).run()
    return log, plan


def start_postgres(pgdata: Path, port: int) -> subprocess.Popen[bytes]:
    """What exec_postgres does, as a child: postgres on its own port, as the postgres user."""
    account = postgres_account()
    assert account is not None
    return subprocess.Popen(
        ["postgres", "-D", str(pgdata), "-p", str(port), "-c", "listen_addresses=127.0.0.1"],
        user=account.uid,
        group=account.gid,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


def test_replica_ordinal_refuses_a_former_primary(primary: Any, volume_root: Path) -> None:
    bootstrap_replica(volume_root, primary.port)
    (volume_root / "pgdata" / "standby.signal").unlink()
    with pytest.raises(DataDirConflict, match="two"):
        bootstrap_replica(volume_root, primary.port)


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
