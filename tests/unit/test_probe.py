"""Unit tests of agent.probe on a temporary PGDATA whose postmaster.pid names this test process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import probe
from agent.announce import error_response
from tests.unit.conftest import AUTH_REQUEST

NOW = 1_700_000_000.0


def write_pid(pgdata: Path, pid: int, status: str, sockdir: str = "/var/run/postgresql") -> None:
    """postmaster.pid as PostgreSQL writes it: pid, datadir, start, port, socket dir, addr, shmem, status."""
    pgdata.mkdir(parents=True, exist_ok=True)
    lines = [str(pid), str(pgdata), "1700000000", "5432", sockdir, "*", "  5432001  12345", f"{status:<8}"]
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")


def beat(state_dir: Path, ts: float) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "heartbeat.json").write_text(json.dumps({"ts": ts, "phase": "clone", "pid": 1}))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "PGDATA": str(tmp_path / "data"),
        "PGSFS_STATE_DIR": str(tmp_path / "state"),
        "POD_NAME": "postgresql-sfs-0",
    }


@pytest.fixture
def listening() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (the kernel completes the handshake)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield sock.getsockname()[1]


@pytest.fixture
def postmaster(tmp_path: Path) -> Iterator[int]:
    """A live process named postgres (comm comes from the name exec'd: a symlink to sleep)."""
    link = tmp_path / "bin" / "postgres"
    link.parent.mkdir()
    link.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(link), "60"])
    try:
        # Until the child has exec'd, its comm is still the test's own: wait for the name.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "postgres":
            assert time.monotonic() < deadline, "the stand-in postgres did not start"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- startup / liveness -------------------------------------------------------------------------


@pytest.mark.parametrize("check", [probe.check_startup, probe.check_liveness])
def test_startup_fresh_heartbeat_passes(env: dict[str, str], check) -> None:
    beat(Path(env["PGSFS_STATE_DIR"]), NOW - 5)
    assert "bootstrap in progress" in check(env, NOW)


@pytest.mark.parametrize("check", [probe.check_startup, probe.check_liveness])
def test_startup_stale_heartbeat_fails(env: dict[str, str], check) -> None:
    beat(Path(env["PGSFS_STATE_DIR"]), NOW - 61)
    with pytest.raises(probe.ProbeFailed, match="61 s ago"):
        check(env, NOW)


def test_startup_heartbeat_at_the_limit_passes(env: dict[str, str]) -> None:
    beat(Path(env["PGSFS_STATE_DIR"]), NOW - probe.FRESH_SECONDS)
    assert probe.check_startup(env, NOW)


@pytest.mark.parametrize("content", [None, "", "{}", "[1]", '{"ts": "soon"}', "not json"])
def test_startup_without_usable_heartbeat_fails(env: dict[str, str], content: str | None) -> None:
    state = Path(env["PGSFS_STATE_DIR"])
    if content is not None:
        state.mkdir()
        (state / "heartbeat.json").write_text(content)
    with pytest.raises(probe.ProbeFailed, match="no postgres running and no fresh bootstrap heartbeat"):
        probe.check_startup(env, NOW)


def test_default_state_dir_is_beside_pgdata(tmp_path: Path) -> None:
    beat(tmp_path / ".pg-sfs-agent", NOW)
    assert probe.check_startup({"PGDATA": str(tmp_path / "data")}, NOW)


def test_startup_passes_once_postgres_runs(env: dict[str, str], postmaster: int) -> None:
    write_pid(Path(env["PGDATA"]), postmaster, "starting")
    assert f"pid {postmaster}" in probe.check_startup(env, NOW)


def test_dead_postmaster_is_not_running(env: dict[str, str]) -> None:
    write_pid(Path(env["PGDATA"]), dead_pid(), "ready")
    assert probe.postmaster_status(Path(env["PGDATA"])) is None
    with pytest.raises(probe.ProbeFailed):
        probe.check_startup(env, NOW)


def test_postmaster_status_fields(env: dict[str, str], postmaster: int) -> None:
    write_pid(Path(env["PGDATA"]), postmaster, "standby", sockdir="/tmp/sock")
    assert probe.postmaster_status(Path(env["PGDATA"])) == (postmaster, "/tmp/sock", "standby")
    (Path(env["PGDATA"]) / "postmaster.pid").write_text("garbage\n")
    assert probe.postmaster_status(Path(env["PGDATA"])) is None


# -- readiness ----------------------------------------------------------------------------------


def test_primary_ready(env: dict[str, str], listening: int, postmaster: int) -> None:
    write_pid(Path(env["PGDATA"]), postmaster, "ready")
    env.update(POD_IP="127.0.0.1", PGPORT=str(listening))
    assert probe.check_readiness(env, NOW) == "primary ready"


@pytest.mark.parametrize("status", ["starting", "standby", "stopping", ""])
def test_primary_not_ready_unless_status_ready(
    env: dict[str, str], listening: int, status: str, postmaster: int
) -> None:
    write_pid(Path(env["PGDATA"]), postmaster, status)
    env.update(POD_IP="127.0.0.1", PGPORT=str(listening))
    with pytest.raises(probe.ProbeFailed, match="not ready as a primary"):
        probe.check_readiness(env, NOW)


def test_primary_not_ready_without_tcp(env: dict[str, str], postmaster: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        write_pid(Path(env["PGDATA"]), postmaster, "ready")
        env.update(POD_IP="127.0.0.1", PGPORT=str(port))
        with pytest.raises(probe.ProbeFailed, match="does not accept TCP"):
            probe.check_readiness(env, NOW)


def test_not_running_is_not_ready(env: dict[str, str]) -> None:
    with pytest.raises(probe.ProbeFailed, match="not running"):
        probe.check_readiness(env, NOW)


def test_moved_primary_ordinal(env: dict[str, str], listening: int, postmaster: int) -> None:
    env.update(POD_NAME="postgresql-sfs-1", PGSFS_PRIMARY_ORDINAL="1", POD_IP="127.0.0.1", PGPORT=str(listening))
    write_pid(Path(env["PGDATA"]), postmaster, "ready")
    assert probe.check_readiness(env, NOW) == "primary ready"


def test_replica_must_accept_connections(env: dict[str, str], postmaster: int) -> None:
    env["POD_NAME"] = "postgresql-sfs-2"
    write_pid(Path(env["PGDATA"]), postmaster, "starting")
    with pytest.raises(probe.ProbeFailed, match="not accepting connections yet"):
        probe.check_readiness(env, NOW)


def test_primary_ordinal_in_recovery_is_ready_only_when_streaming(env: dict[str, str], postmaster: int) -> None:
    # A hot standby's postmaster.pid also says "ready": standby.signal is what tells them apart. A
    # switchover's successor is judged as a replica (streaming), never as a primary.
    write_pid(Path(env["PGDATA"]), postmaster, "ready")
    (Path(env["PGDATA"]) / "standby.signal").write_text("")
    with pytest.raises(probe.ProbeFailed, match="replica not streaming"):
        probe.check_readiness(env, NOW)


def test_replica_without_psql_fails_cleanly(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], postmaster: int
) -> None:
    env.update(POD_NAME="postgresql-sfs-2", PATH="/nonexistent-pgsfs-bin")
    write_pid(Path(env["PGDATA"]), postmaster, "standby")
    assert probe.run(["readiness"], env) == 1
    assert capsys.readouterr().out.startswith("readiness probe failed:")


# -- run() --------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["bogus"], ["startup", "extra"], ["Startup"]])
def test_usage_error(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.run(argv, env) == 2
    out = capsys.readouterr().out
    assert out.startswith("pg-sfs-agent probe: expected one of startup, readiness, liveness")
    assert "usage: pg-sfs-agent probe" in out


def test_run_exit_codes(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.run(["startup"], env) == 1
    assert capsys.readouterr().out.startswith("startup probe failed: no postgres running")
    beat(Path(env["PGSFS_STATE_DIR"]), time.time())
    assert probe.run(["startup"], env) == 0
    assert probe.run(["liveness"], env) == 0
    assert "bootstrap in progress" in capsys.readouterr().out


def test_a_stale_pid_reused_by_another_process_is_not_postgres(env: dict[str, str]) -> None:
    """After a crash, postmaster.pid names PID 1, which the next container's agent now is: alive,
    but not postgres. The startup and liveness probes must not take it for a running server."""
    write_pid(Path(env["PGDATA"]), os.getpid(), "ready")  # alive, and a python, not a postgres
    assert probe.postmaster_status(Path(env["PGDATA"])) is None
    for check in (probe.check_startup, probe.check_liveness):
        with pytest.raises(probe.ProbeFailed):
            check(env, NOW)


# -- liveness once postgres runs ----------------------------------------------------------------


@pytest.fixture
def socket_server(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A Unix socket where postgres' would be; `answer` holds what each connection gets (none = hang)."""
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    answer: list[bytes] = [b"N"]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sockdir / ".s.PGSQL.5432"))
    server.listen(4)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.recv(8)
            if answer[0]:
                conn.sendall(answer[0])
                conn.close()
            else:
                held.append(conn)  # a hung backend: accepted, never answers

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield str(sockdir), answer
    finally:
        stop.set()
        thread.join(2)
        server.close()
        for conn in held:
            conn.close()


def test_liveness_passes_when_postgres_answers(env: dict[str, str], postmaster: int, socket_server) -> None:
    sockdir, _ = socket_server
    write_pid(Path(env["PGDATA"]), postmaster, "ready", sockdir=sockdir)
    assert "postgres answers" in probe.check_liveness(env, NOW)


def test_liveness_fails_when_postgres_hangs(env: dict[str, str], postmaster: int, socket_server) -> None:
    sockdir, answer = socket_server
    answer[0] = b""
    write_pid(Path(env["PGDATA"]), postmaster, "ready", sockdir=sockdir)
    with pytest.raises(probe.ProbeFailed, match=r"did not answer .* within"):
        probe.check_liveness(env, NOW)


def test_liveness_fails_when_the_socket_is_gone(env: dict[str, str], postmaster: int, tmp_path: Path) -> None:
    write_pid(Path(env["PGDATA"]), postmaster, "standby", sockdir=str(tmp_path / "nowhere"))
    with pytest.raises(probe.ProbeFailed, match="did not answer"):
        probe.check_liveness(env, NOW)


def test_liveness_leaves_a_long_crash_recovery_alone(env: dict[str, str], postmaster: int, tmp_path: Path) -> None:
    write_pid(Path(env["PGDATA"]), postmaster, "starting", sockdir=str(tmp_path / "nowhere"))
    assert "starting" in probe.check_liveness(env, NOW)


def _designated(pgdata: Path, conninfo: str, started: float, auto: str = "") -> dict[str, str]:
    pgdata.mkdir(parents=True, exist_ok=True)
    (pgdata / "standby.signal").write_text("")
    (pgdata / "pg-sfs-agent.conf").write_text(f"port = 5432\nprimary_conninfo = '{conninfo}'\n")
    (pgdata / "postgresql.auto.conf").write_text(auto)
    (pgdata / "postmaster.pid").write_text(f"4242\n{pgdata}\n{started:.0f}\n5432\n/tmp\n*\n0 0\nstandby\n")
    return {"PGDATA": str(pgdata), "POD_NAME": "postgresql-sfs-1", "PGSFS_PRIMARY_ORDINAL": "1"}


def test_the_primary_ordinal_waiting_unconnected_is_timed_from_its_postmasters_start(tmp_path: Path) -> None:
    # Review H6: a designated standby that found no writable member at its start waits connected to
    # nobody; liveness restarts it after AWAIT_PROMOTION_LIMIT_S so that it asks the members again.
    env = _designated(tmp_path / "pgdata", "", started=1000.0)
    assert probe.connected_to_nobody_for(tmp_path / "pgdata", env, 1090.0) == 90.0
    # Pointed somewhere (its own files, or a handoff's ALTER SYSTEM): not waiting.
    env = _designated(tmp_path / "pgdata", "host=postgresql-sfs-0", started=1000.0)
    assert probe.connected_to_nobody_for(tmp_path / "pgdata", env, 1090.0) is None
    env = _designated(tmp_path / "pgdata", "", 1000.0, auto="primary_conninfo = 'host=''postgresql-sfs-0'''\n")
    assert probe.connected_to_nobody_for(tmp_path / "pgdata", env, 1090.0) is None
    # A replica ordinal is never in that state on purpose.
    env = {**_designated(tmp_path / "pgdata", "", started=1000.0), "PGSFS_PRIMARY_ORDINAL": "0"}
    assert probe.connected_to_nobody_for(tmp_path / "pgdata", env, 1090.0) is None


def test_liveness_restarts_a_standby_stuck_while_its_upstream_answers(
    env: dict[str, str], postmaster: int, socket_server, upstream, tmp_path: Path
) -> None:
    # Review M6 (running): the receiver retries forever against an upstream that lost its slot or
    # WAL. A stand-in psql (no server here) says no receiver runs; the upstream is a fake server
    # that asks for authentication, as a running PostgreSQL does.
    sockdir, _ = socket_server
    pgdata = Path(env["PGDATA"])
    write_pid(pgdata, postmaster, "standby", sockdir=sockdir)
    (pgdata / "standby.signal").write_text("")
    conninfo = f"host=''127.0.0.1'' port=''{upstream.port}'' user=''repl''"
    (pgdata / "pg-sfs-agent.conf").write_text(f"primary_conninfo = '{conninfo}'\n")
    Path(env["PGSFS_STATE_DIR"]).mkdir()
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "psql").write_text("#!/bin/sh\necho 'stopping|'\n")
    (fake / "psql").chmod(0o755)
    env.update(POD_NAME="postgresql-sfs-2", PATH=f"{fake}:/usr/bin:/bin")
    assert "answers" in probe.check_liveness(env, NOW)
    assert "answers" in probe.check_liveness(env, NOW + probe.NOT_STREAMING_LIMIT_S)
    with pytest.raises(probe.ProbeFailed, match="has not streamed for 61 s although its upstream runs"):
        probe.check_liveness(env, NOW + probe.NOT_STREAMING_LIMIT_S + 1)
    # The upstream in crash recovery: the count starts again, nothing restarts.
    upstream.reply = error_response("the database system is starting up", code="57P03")
    assert "answers" in probe.check_liveness(env, NOW + 100)
    upstream.reply = AUTH_REQUEST
    assert "answers" in probe.check_liveness(env, NOW + 150)
    # Streaming again: the count is gone.
    (fake / "psql").write_text("#!/bin/sh\necho 'streaming|1'\n")
    assert "answers" in probe.check_liveness(env, NOW + 200)
    assert "answers" in probe.check_liveness(env, NOW + 400)


@pytest.mark.parametrize(
    ("lag", "ready"),
    [("", True), ("0", True), ("-8192", True), (str(16 * 1048576), True), (str(16 * 1048576 + 1), False),
     ("123456789012", False), ("garbage", True)],
)
def test_the_designated_standby_is_ready_only_close_to_its_upstream(lag: str, ready: bool) -> None:
    # Review L1: Ready lets the rollout restart the former primary, whose handoff then waits for the
    # successor to replay everything: far behind, that is minutes of no writes. Unknown is not "behind".
    problem = probe.designated_lag_problem(lag)
    assert (problem is None) == ready
    if not ready:
        assert "behind the WAL its upstream has written" in str(problem)


def test_readiness_of_the_primary_ordinals_standby_weighs_its_lag(
    env: dict[str, str], postmaster: int, socket_server, tmp_path: Path
) -> None:
    # A stand-in psql prints what pg_stat_wal_receiver would; a plain replica is never held back by lag.
    sockdir, _ = socket_server
    pgdata = Path(env["PGDATA"])
    write_pid(pgdata, postmaster, "standby", sockdir=sockdir)
    (pgdata / "standby.signal").write_text("")
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "psql").write_text(f"#!/bin/sh\necho 'streaming|1|{200 * 1048576}'\n")
    (fake / "psql").chmod(0o755)
    env.update(PATH=f"{fake}:/usr/bin:/bin", PGPORT="5432")
    with pytest.raises(probe.ProbeFailed, match="200 MB behind"):
        probe.check_readiness(env, NOW)
    env.update(POD_NAME="postgresql-sfs-2")
    assert probe.check_readiness(env, NOW) == "replica streaming"
