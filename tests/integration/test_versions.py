"""What differs between PostgreSQL majors, checked on the major the suite runs (PGSFS_TEST_PG_BIN).

Version detection (`postgres -V`, PG_VERSION, server_version), the control file's system
identifier, postmaster.pid's status line for the probes, the replication protocol's answers
(in_hot_standby, RESERVE_WAL slots' wal_status, the missing-privilege message that PG 16 reworded),
and the refusal to start data of another major.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent import probe, replication
from agent.bootstrap import Bootstrap, World, observe_and_plan, postgres_account
from agent.config import load_config
from agent.pgdata import read_system_identifier
from agent.postgres import server_major
from agent.runner import Runner
from tests.integration.agentctl import (
    REPLICATION_PASSWORD,
    agent_postgres,
    connect,
    json_lines,
    loopback_dns,
    own_port_announcer,
    pod_env,
    run_agent,
    wait_for,
)
from tests.integration.conftest import DEFAULT_PG_BIN, PG_BIN, bin_major, free_port, is_default_bin

pytestmark = pytest.mark.integration
MAJOR = bin_major(PG_BIN) if (PG_BIN / "postgres").is_file() else 0


class _Log:
    """The structlog-shaped logger Bootstrap wants; keeps event names only."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def info(self, event: str, **_fields: Any) -> None:
        self.names.append(event)

    warning = debug = info


def _as_postgres(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    account = postgres_account()
    assert account is not None
    return subprocess.run(
        argv, user=account.uid, group=account.gid, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _endpoint(port: int, password: str = REPLICATION_PASSWORD) -> replication.Endpoint:
    return replication.Endpoint(host="127.0.0.1", port=port, user="replicator", password=password)


@pytest.mark.pg_binaries("pg_controldata")
def test_the_agent_detects_and_runs_the_major_on_path(volume_root: Path) -> None:
    assert server_major(Runner(postgres_account())) == MAJOR
    env = pod_env(volume_root, 0, free_port())
    plan = json.loads(run_agent(env, "plan").stdout)
    assert plan["server_major"] == MAJOR and plan["data_major"] is None

    with agent_postgres(env, volume_root / "agent.log") as server:
        pgdata = volume_root / "pgdata"
        assert (pgdata / "PG_VERSION").read_text().strip() == str(MAJOR)
        with connect(server.port) as conn:
            assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone() == (MAJOR,)
            assert conn.execute("SHOW data_checksums").fetchone() == ("on",)
            # Sized from the 2 GiB volume (agent/walbudget.py), not PostgreSQL's 1GB and 10GB.
            assert conn.execute("SHOW max_wal_size").fetchone() == ("204MB",)
            assert conn.execute("SHOW wal_keep_size").fetchone() == ("102MB",)
            assert conn.execute("SHOW max_slot_wal_keep_size").fetchone() == ("512MB",)
        info = replication.identify_system(_endpoint(server.port))
        assert info.server_version // 10000 == MAJOR and not info.in_hot_standby

        # The agent reads the identifier from pg_control's first bytes: the layout must hold on every major.
        controldata = _as_postgres([str(PG_BIN / "pg_controldata"), str(pgdata)])
        assert controldata.returncode == 0, controldata.stderr
        shown = re.search(r"Database system identifier:\s+(\d+)", controldata.stdout)
        assert shown is not None
        assert read_system_identifier(pgdata) == int(shown.group(1)) == info.system_identifier

        # The probes read postmaster.pid's status line (line 8) and socket directory (line 5).
        running = probe.postmaster_status(pgdata)
        assert running is not None and running[2] == "ready"
        readiness = run_agent(env, "probe", "readiness")
        assert (readiness.returncode, readiness.stdout.strip()) == (0, "primary ready")


def _clone_and_start(volume: Path, primary_port: int) -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    """Clone the primary with the agent's bootstrap, then start the standby as exec_postgres would."""
    env = pod_env(volume, 1, primary_port)
    config = load_config(env)
    runner = Runner(postgres_account())
    plan, _ = observe_and_plan(config, runner)
    assert plan.action == "clone"
    world = World(runner=runner, lookup=loopback_dns, sleep=lambda _s: None, announcer=own_port_announcer)
    Bootstrap(config, plan, world, _Log()).run()
    port = free_port()
    account = postgres_account()
    assert account is not None
    proc = subprocess.Popen(
        ["postgres", "-D", str(volume / "pgdata"), "-p", str(port), "-c", "listen_addresses=127.0.0.1"],
        user=account.uid,
        group=account.gid,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port, dict(env, PGPORT=str(port))


@pytest.mark.pg_binaries("pg_basebackup", "psql")
def test_replication_protocol_answers_on_this_major(primary: Any, volume_root: Path) -> None:
    created = replication.ensure_slot(_endpoint(primary.port), "versions_check")
    again = replication.ensure_slot(_endpoint(primary.port), "versions_check")
    assert (created, again) == (True, False)
    assert replication.slot_status(_endpoint(primary.port), "versions_check") == "reserved"
    replication.drop_slot(_endpoint(primary.port), "versions_check")
    assert replication.slot_status(_endpoint(primary.port), "versions_check") is None

    # PG 16 reworded "must be superuser or replication role to start walsender".
    with connect(primary.port) as conn:
        conn.execute("ALTER ROLE replicator NOREPLICATION")
        try:
            attempt = replication.try_identify(_endpoint(primary.port))
        finally:
            conn.execute("ALTER ROLE replicator REPLICATION")
    assert attempt.outcome == replication.NO_PRIVILEGE, attempt.detail

    proc, port, env = _clone_and_start(volume_root, primary.port)
    try:

        def answered() -> replication.Attempt | None:
            attempt = replication.try_identify(_endpoint(port))
            return attempt if attempt.info is not None else None

        standby = wait_for(answered, 30, "the standby to answer IDENTIFY_SYSTEM")
        # in_hot_standby (PostgreSQL 14+) is how a waiting replica tells a standby from the primary.
        assert standby.outcome == replication.IN_RECOVERY and standby.info.in_hot_standby
        assert standby.info.system_identifier == replication.identify_system(_endpoint(primary.port)).system_identifier
        running = probe.postmaster_status(volume_root / "pgdata")
        assert running is not None and running[2] in ("ready", "standby")

        def streaming() -> bool:
            done = run_agent(env, "probe", "readiness")
            return done.returncode == 0 and done.stdout.strip() == "replica streaming"

        wait_for(streaming, 30, "the readiness probe to see the replica streaming")
        # Review L7: a user who hardens local auth (README invites own rules) must not make the
        # standby un-Ready for good: the probe's psql gives the password from the container's env.
        hba = volume_root / "pgdata" / "pg_hba.conf"
        hardened = [
            " ".join([*line.split()[:-1], "scram-sha-256"]) if line.startswith("local") else line
            for line in hba.read_text().splitlines()
        ]
        hba.write_text("\n".join(hardened) + "\n")
        with connect(port) as conn:
            conn.execute("SELECT pg_reload_conf()")
        wait_for(streaming, 30, "the readiness probe to pass with local auth hardened")
        no_password = {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}
        assert run_agent(no_password, "probe", "readiness").returncode == 1, "the check is real"
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)


@pytest.mark.pg_binaries("pg_basebackup", "psql")
def test_the_primary_ordinals_standby_is_ready_only_once_it_caught_up(primary: Any, volume_root: Path) -> None:
    # Review L1: a switchover's successor (the primary ordinal, still a standby) far behind must not be
    # Ready, or the rollout restarts the former primary and its handoff waits, writes stopped, for all
    # of that WAL. Here replay is paused while 40 MB arrive, on the major under test.
    proc, port, env = _clone_and_start(volume_root, primary.port)
    designated = dict(env, PGSFS_PRIMARY_ORDINAL="1")

    def readiness() -> tuple[int, str]:
        done = run_agent(designated, "probe", "readiness")
        return done.returncode, done.stdout.strip()

    try:
        wait_for(lambda: readiness() == (0, "replica streaming"), 30, "the standby to stream")
        with connect(port) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
        with connect(primary.port) as conn:
            conn.execute("CREATE TABLE lagging (v text)")
            conn.execute("INSERT INTO lagging SELECT repeat('x', 1000) FROM generate_series(1, 40000)")
        behind = wait_for(lambda: readiness()[0] == 1 and readiness()[1], 30, "readiness to see the lag")
        assert "behind the WAL its upstream has written" in behind, behind
        plain = run_agent(env, "probe", "readiness")
        assert (plain.returncode, plain.stdout.strip()) == (0, "replica streaming"), "replicas are not held back"
        with connect(port) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        wait_for(lambda: readiness() == (0, "replica streaming"), 60, "readiness once it caught up")
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)


def _other_bin() -> Path | None:
    """A bin dir of another major: Debian's 15 when testing a wheel, else PGSFS_TEST_OTHER_PG_BIN."""
    if not is_default_bin():
        return DEFAULT_PG_BIN
    other = os.environ.get("PGSFS_TEST_OTHER_PG_BIN")
    return Path(other) if other else None


def _initdb_with(bin_dir: Path, pgdata: Path) -> None:
    pgdata.parent.chmod(0o777)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    done = _as_postgres([str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust"], env)
    assert done.returncode == 0, done.stderr


def _assert_refused(volume: Path, path_bin: Path, server: int, data: int) -> None:
    pgdata = volume / "pgdata"
    before = sorted(p.name for p in pgdata.iterdir())
    # No other major's programs at hand (the image of one major): nothing to run or upgrade the data with.
    env = pod_env(volume, 0, free_port(), PATH=f"{path_bin}:{os.environ['PATH']}",
                  PGSFS_MAJORS_DIR=str(volume / "none"))  # fmt: skip
    plan = json.loads(run_agent(env, "plan").stdout)
    assert (plan["action"], plan["server_major"], plan["data_major"]) == ("refuse", server, data)
    done = run_agent(env, "postgres")
    assert done.returncode == 6, done.stderr
    error = json_lines(done.stderr)[-1]
    assert error["event"] == "pgdata_conflict" and error["exit_code"] == 6
    assert f"PostgreSQL {data}" in error["error"] and f"PostgreSQL {server}" in error["error"], error["error"]
    assert "Upgrading" in error["hint"]  # README's chapter
    assert sorted(p.name for p in pgdata.iterdir()) == before, "nothing written into PGDATA"
    assert (pgdata / "PG_VERSION").read_text().strip() == str(data)


@pytest.mark.parametrize("direction", ["this_major_runs_other_data", "other_major_runs_this_data"])
def test_data_of_another_major_is_refused(volume_root: Path, direction: str) -> None:
    other = _other_bin()
    if other is None:
        # Only Debian's 15 is installed: PG_VERSION alone is what the agent compares (agent/plan.py), so
        # a 15 cluster whose PG_VERSION names an older (or newer) major stands in for real data of it;
        # `make test-majors` runs this test with clusters really made by another major.
        claimed = MAJOR - 1 if direction == "this_major_runs_other_data" else MAJOR + 1
        _initdb_with(PG_BIN, volume_root / "pgdata")
        (volume_root / "pgdata" / "PG_VERSION").write_text(f"{claimed}\n")
        _assert_refused(volume_root, PG_BIN, MAJOR, claimed)
        return
    other_major = bin_major(other)
    assert other_major != MAJOR, f"{other} is the same major as {PG_BIN}"
    if direction == "this_major_runs_other_data":
        _initdb_with(other, volume_root / "pgdata")
        _assert_refused(volume_root, PG_BIN, MAJOR, other_major)
    else:
        _initdb_with(PG_BIN, volume_root / "pgdata")
        _assert_refused(volume_root, other, other_major, MAJOR)


def _invalidate(port: int, slot: str) -> None:
    """Make `slot` lose its WAL: a tiny max_slot_wal_keep_size, a few segment switches, a checkpoint."""
    with connect(port) as conn:
        # wal_keep_size (the agent's 1GB default) would keep the slot's WAL on its own.
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("ALTER SYSTEM SET wal_keep_size = 0")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("CREATE TABLE IF NOT EXISTS wal_filler(v text)")
        try:
            for _ in range(4):
                conn.execute("INSERT INTO wal_filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
                if replication.slot_status(_endpoint(port), slot) == replication.LOST:
                    return
        finally:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("ALTER SYSTEM RESET wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    raise AssertionError(f"slot {slot} was not invalidated")


def test_a_lost_or_unreserved_slot_is_recreated_before_a_clone(primary: Any) -> None:
    endpoint = _endpoint(primary.port)
    assert replication.ensure_slot(endpoint, "versions_lost") is True
    _invalidate(primary.port, "versions_lost")
    # The clone path used to accept the lost slot as it was (pg_basebackup then cannot use it).
    assert replication.ensure_slot(endpoint, "versions_lost") is True
    assert replication.slot_status(endpoint, "versions_lost") == "reserved"
    replication.drop_slot(endpoint, "versions_lost")

    # A slot that never reserved WAL has wal_status NULL: reported as such, never as "None".
    with psycopg.connect(**endpoint.connect_kwargs(5.0)) as conn:
        conn.execute("CREATE_REPLICATION_SLOT versions_bare PHYSICAL")
    assert replication.slot_status(endpoint, "versions_bare") == replication.NOT_RESERVED
    assert replication.ensure_slot(endpoint, "versions_bare") is True
    assert replication.slot_status(endpoint, "versions_bare") == "reserved"
    replication.drop_slot(endpoint, "versions_bare")


@pytest.mark.pg_binaries("pg_receivewal")
def test_dropping_a_slot_ends_the_walsender_that_lingers_on_it(primary: Any, tmp_path: Path) -> None:
    """A replica's previous container left its walsender holding the slot: drop it anyway."""
    endpoint = _endpoint(primary.port)
    replication.ensure_slot(endpoint, "versions_held")
    # pg_receivewal streaming from the slot is what a replica's walsender looks like to the primary.
    wal_dir = tmp_path / "received"
    wal_dir.mkdir()
    holder = subprocess.Popen(
        ["pg_receivewal", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "replicator", "-S", "versions_held",
         "-D", str(wal_dir), "-n", "-w"],
        env=dict(os.environ, PGPASSWORD=REPLICATION_PASSWORD), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _slot_active(primary.port, "versions_held"), 10, "the slot to be active")
        replication.drop_slot(endpoint, "versions_held", timeout=5.0)
        assert holder.wait(timeout=10) != 0  # its walsender was ended under it
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert replication.slot_status(endpoint, "versions_held") is None


def _slot_active(port: int, slot: str) -> bool:
    with connect(port) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return bool(row and row[0])
