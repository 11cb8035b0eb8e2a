"""The primary's paths with real PostgreSQL 15: init, restart, password rotation, refusals."""

from __future__ import annotations

import contextlib
import gzip
import json
import lzma
import os
import pwd
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from agent import officiallog, render
from agent.replication import Endpoint, identify_system
from tests.integration.agentctl import (
    REPLICATION_PASSWORD,
    SUPERUSER_PASSWORD,
    agent_postgres,
    connect,
    json_lines,
    pod_env,
    run_agent,
    wait_for,
)
from tests.integration.conftest import PG_BIN, free_port, sized_volume
from tests.official import README_EXAMPLE_SCRIPT

pytestmark = pytest.mark.integration


def _initdb_scripts(volume: Path) -> Path:
    scripts = volume / "initdb.d"
    scripts.mkdir()
    (scripts / "01-table.sql").write_text("CREATE TABLE seeded (id int); INSERT INTO seeded VALUES (1);\n")
    (scripts / "02-more.sql.gz").write_bytes(gzip.compress(b"INSERT INTO seeded VALUES (2);\n"))
    # As in the official README: a plain psql goes to the user's database, so name POSTGRES_DB.
    (scripts / "03-shell.sh").write_text(
        'psql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" -c "INSERT INTO seeded VALUES (3)"\n'
    )
    os.chmod(scripts, 0o755)
    for script in scripts.iterdir():
        os.chmod(script, 0o644)
    return scripts


def test_primary_initialises_and_the_logged_plan_is_the_printed_plan(volume_root: Path) -> None:
    port = free_port()
    env = pod_env(volume_root, 0, port, PGSFS_INITDB_DIR=str(_initdb_scripts(volume_root)), POSTGRES_DB="app")
    printed = run_agent(env, "plan")
    assert printed.returncode == 0, printed.stderr
    plan = json.loads(printed.stdout)
    assert plan["action"] == "init" and plan["role"] == "primary"
    assert not (volume_root / "pgdata").exists(), "plan must touch nothing"

    with agent_postgres(env, volume_root / "agent.log") as server:
        lines = server.agent_log()
        logged = next(line for line in lines if line["event"] == "plan")
        assert {k: logged[k] for k in plan} == plan
        for line in lines:
            assert {"timestamp", "level", "event", "pod", "ordinal", "role"} <= line.keys()
            assert line["timestamp"].endswith("Z")
        events = [line["event"] for line in lines]
        assert events.index("initdb") < events.index("moved_into_place") < events.index("exec_postgres")

        with connect(port) as conn:
            assert conn.execute("SHOW data_checksums").fetchone() == ("on",)
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'app'").fetchone() == (1,)
            role = conn.execute(
                "SELECT rolreplication, rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'replicator'"
            ).fetchone()
            assert role == (True, True, False)
            stored = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname IN ('postgres', 'replicator')"
            ).fetchall()
            assert all(row[0].startswith("SCRAM-SHA-256$") for row in stored)
            assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
            assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        with connect(port, dbname="app") as conn:
            assert conn.execute("SELECT array_agg(id ORDER BY id) FROM seeded").fetchone() == ([1, 2, 3],)

        info = identify_system(Endpoint(host="127.0.0.1", port=port, user="replicator", password=REPLICATION_PASSWORD))
        assert info.system_identifier > 0 and not info.in_hot_standby

        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(port, password="wrong")
        # The replication rule admits only the replication role.
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects replication"):
            identify_system(Endpoint(host="127.0.0.1", port=port, user="postgres", password=SUPERUSER_PASSWORD))

    pgdata = volume_root / "pgdata"
    assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    assert not list(volume_root.glob("*.pgsfs-work")), "the build directory is gone once moved into place"
    secrets_file = volume_root / ".pg-sfs-agent" / "applied-secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    for path in [*pgdata.rglob("*.conf"), secrets_file, volume_root / "agent.log"]:
        text = path.read_text(errors="replace")
        assert SUPERUSER_PASSWORD not in text and REPLICATION_PASSWORD not in text, path


def test_without_initdb_scripts_roles_and_database_are_made_in_single_user_mode(volume_root: Path) -> None:
    # No initdb.d script needs a server: the set-up runs in postgres --single (never reachable), with
    # names that need quoting and a password with a quote; the build is synced once (initdb --no-sync).
    port = free_port()
    user, db, password = "app admin ü", "app; -- 'x'", "it's \\ a\nsecret"
    env = pod_env(volume_root, 0, port, POSTGRES_USER=user, POSTGRES_DB=db, POSTGRES_PASSWORD=password)
    with agent_postgres(env, volume_root / "agent.log") as server:
        lines = server.agent_log()
        setup = next(line for line in lines if line["event"] == "initdb_setup")
        assert setup["via"] == "single_user", setup
        with connect(port, user=user, password=password, dbname=db) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (user, db)
            assert conn.execute("SHOW data_checksums").fetchone() == ("on",)
            assert conn.execute(
                "SELECT rolreplication, rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'replicator'"
            ).fetchone() == (True, True, False)
            stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolcanlogin").fetchall()
            assert len(stored) == 2 and all(row[0].startswith("SCRAM-SHA-256$") for row in stored)
        info = identify_system(Endpoint(host="127.0.0.1", port=port, user="replicator", password=REPLICATION_PASSWORD))
        assert info.system_identifier > 0
    text = (volume_root / "agent.log").read_text()
    assert "SCRAM-SHA-256$" not in text and password not in text


def test_a_failing_single_user_setup_names_it_and_leaves_pgdata_empty(volume_root: Path) -> None:
    # A role name PostgreSQL refuses at CREATE ROLE (pg_ names are reserved): exit_on_error ends the
    # single-user backend, the agent reports it (no verifier in the message), PGDATA stays absent.
    port = free_port()
    env = pod_env(volume_root, 0, port, PGSFS_REPLICATION_USER="pg_streamer")
    done = run_agent(env, "postgres")
    assert done.returncode != 0
    failed = [line for line in json_lines(done.stderr) if line.get("level") == "error"]
    assert failed and "postgres --single" in failed[-1]["error"], failed
    assert "is reserved" in failed[-1]["error"]
    assert "SCRAM-SHA-256$" not in done.stderr and "Traceback" not in done.stderr
    assert not (volume_root / "pgdata").exists()


def test_a_start_without_a_record_keeps_an_altered_superuser_password(volume_root: Path) -> None:
    # Review F-M2: data made by the official image, or a state directory that was lost (a container
    # re-created with PGDATA at the mount point), has no record of what was applied. The same Secret
    # must not undo an ALTER ROLE then; the official image uses POSTGRES_PASSWORD only at init.
    port = free_port()
    env = pod_env(volume_root, 0, port)
    with agent_postgres(env, volume_root / "first.log"), connect(port) as conn:
        conn.execute("ALTER ROLE postgres PASSWORD 'changed-by-sql-1'")
    (volume_root / ".pg-sfs-agent" / "applied-secrets.json").unlink()
    assert "adopt_passwords" in json.loads(run_agent(env, "plan").stdout)["steps"]
    with agent_postgres(env, volume_root / "second.log", ready_password="changed-by-sql-1") as server:
        adopted = [line for line in server.agent_log() if line["event"] == "passwords_adopted"]
        assert adopted and adopted[0]["users"] == ["replicator"], adopted
        with pytest.raises(psycopg.OperationalError):
            connect(port)  # the Secret's password, which the SQL replaced
        identify_system(Endpoint(host="127.0.0.1", port=port, user="replicator", password=REPLICATION_PASSWORD))
    # Recorded now: the next start sets nothing, and a changed Secret sets only what changed.
    assert json.loads(run_agent(env, "plan").stdout)["steps"] == [
        "check_no_other_primary", "write_config", "fix_ownership", "exec_postgres"]  # fmt: skip
    rotated = dict(env, POSTGRES_PASSWORD="rotated-su-pw-1")
    with agent_postgres(rotated, volume_root / "third.log") as server:
        applied = [line for line in server.agent_log() if line["event"] == "passwords_applied"]
        assert applied and applied[0]["users"] == ["postgres"], applied


def test_a_superuser_of_another_name_is_a_clear_configuration_error(volume_root: Path) -> None:
    # Review F-M2: a cluster made with POSTGRES_USER=admin, started with the default name and no
    # record, used to end in unexpected_error ('role "postgres" does not exist') at every start.
    port = free_port()
    env = pod_env(volume_root, 0, port, POSTGRES_USER="admin")
    with agent_postgres(env, volume_root / "first.log"):
        pass
    (volume_root / ".pg-sfs-agent" / "applied-secrets.json").unlink()
    env.pop("POSTGRES_USER")
    done = run_agent(env, "postgres")
    assert done.returncode == 2, done.stdout + done.stderr
    [error] = [line for line in json_lines(done.stdout + done.stderr) if line["level"] == "error"]
    assert error["event"] == "config_invalid" and "POSTGRES_USER='postgres'" in error["problems"][0], error
    assert "superuser" in error["hint"]


def test_restart_is_boring_and_rotation_applies_new_passwords(volume_root: Path) -> None:
    port = free_port()
    env = pod_env(volume_root, 0, port)
    with agent_postgres(env, volume_root / "first.log") as server, connect(server.port) as conn:
        conn.execute("CREATE TABLE marker (v text)")
        conn.execute("INSERT INTO marker VALUES ('kept')")

    replan = json.loads(run_agent(env, "plan").stdout)
    assert replan["action"] == "start"
    assert replan["steps"] == ["check_no_other_primary", "write_config", "fix_ownership", "exec_postgres"]
    with agent_postgres(env, volume_root / "second.log") as server:
        events = [line["event"] for line in server.agent_log()]
        assert "initdb" not in events
        with connect(server.port) as conn:
            assert conn.execute("SELECT v FROM marker").fetchone() == ("kept",)

    rotated = dict(env, POSTGRES_PASSWORD="new su pw", PGSFS_REPLICATION_PASSWORD="new:repl\\pw")
    assert "apply_passwords" in json.loads(run_agent(rotated, "plan").stdout)["steps"]
    with agent_postgres(rotated, volume_root / "third.log") as server:
        assert "passwords_applied" in [line["event"] for line in server.agent_log()]
        with connect(server.port, password="new su pw"):
            pass
        with pytest.raises(psycopg.OperationalError):
            connect(server.port, password=SUPERUSER_PASSWORD)
        identify_system(Endpoint(host="127.0.0.1", port=server.port, user="replicator", password="new:repl\\pw"))
        with pytest.raises(psycopg.OperationalError):
            identify_system(
                Endpoint(host="127.0.0.1", port=server.port, user="replicator", password=REPLICATION_PASSWORD)
            )
    steps = json.loads(run_agent(rotated, "plan").stdout)["steps"]
    assert steps == ["check_no_other_primary", "write_config", "fix_ownership", "exec_postgres"]


def test_primary_ordinal_holding_a_standby_never_promotes_itself(volume_root: Path) -> None:
    # A switchover's successor with no writable member to follow: a standby, unconnected, until
    # someone promotes it (the former primary's agent, or `pg-sfs-agent promote`). It was exit 6.
    port = free_port()
    env = pod_env(volume_root, 0, port)
    with agent_postgres(env, volume_root / "first.log"):
        pass
    (volume_root / "pgdata" / "standby.signal").write_text("")
    with agent_postgres(env, volume_root / "second.log") as server:
        said = {line["event"]: line for line in server.agent_log()}
        assert said["designated_standby"]["decision"] == "await_promotion"
        assert "awaiting_promotion" in said
        with connect(server.port) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    assert (volume_root / "pgdata" / "standby.signal").exists()


def test_unknown_content_in_pgdata_is_never_initialised_over(volume_root: Path) -> None:
    pgdata = volume_root / "pgdata"
    pgdata.mkdir()
    (pgdata / "precious.txt").write_text("user data")
    done = run_agent(pod_env(volume_root, 0, free_port()), "postgres")
    assert done.returncode == 6
    assert "precious.txt" in json_lines(done.stderr)[-1]["error"]
    assert (pgdata / "precious.txt").read_text() == "user data"


def test_config_errors_are_all_reported_before_anything_is_touched(volume_root: Path) -> None:
    env = pod_env(volume_root, 0, free_port(), POD_NAME="postgresql", PGPORT="eighty", PGSFS_WAIT_TIMEOUT="-1")
    env["PGSFS_REPLICATION_PASSWORD_FILE"] = str(volume_root / "missing")
    done = run_agent(env, "postgres")
    assert done.returncode == 2
    error = json_lines(done.stderr)[-1]
    problems = " ".join(error["problems"])
    for name in ("POD_NAME", "PGPORT", "PGSFS_WAIT_TIMEOUT", "PGSFS_REPLICATION_PASSWORD"):
        assert name in problems
    assert REPLICATION_PASSWORD not in done.stderr
    assert list(volume_root.iterdir()) == []


def test_rotation_works_when_the_user_hardened_local_auth(volume_root: Path) -> None:
    """The temporary server brings its own hba file: `local all all scram-sha-256` in the cluster's
    pg_hba.conf (below the managed block) used to end every primary start with exit 1."""
    port = free_port()
    env = pod_env(volume_root, 0, port)
    with agent_postgres(env, volume_root / "first.log"):
        pass
    hba = volume_root / "pgdata" / "pg_hba.conf"
    text = hba.read_text()
    hardened = "\n".join(
        line.replace("trust", "scram-sha-256") if line.startswith("local") else line for line in text.splitlines()
    )
    local_lines = [line for line in hardened.splitlines() if line.startswith("local")]
    assert hardened != text and local_lines and not any("trust" in line for line in local_lines)
    hba.write_text(hardened + "\n")
    rotated = dict(env, POSTGRES_PASSWORD="hardened su pw")
    with agent_postgres(rotated, volume_root / "second.log") as server:
        events = [line["event"] for line in server.agent_log()]
        assert "passwords_applied" in events, events
        with connect(server.port, password="hardened su pw") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    # The cluster's own pg_hba.conf is as the user left it (below the managed block).
    assert [line for line in hba.read_text().splitlines() if line.startswith("local")] == local_lines


def test_a_users_reject_rule_in_pg_hba_takes_effect(volume_root: Path) -> None:
    # Review F-M1: the managed catch-all came first, so no TCP rule of the user's could ever match.
    # The rule goes right below the replication block, above initdb's own loopback lines (first match
    # wins, and the test's clients come from 127.0.0.1).
    port = free_port()
    env = pod_env(volume_root, 0, port)
    with agent_postgres(env, volume_root / "first.log"), connect(port) as conn:
        conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-password-1'")
    hba = volume_root / "pgdata" / "pg_hba.conf"
    head, end, rest = hba.read_text().partition(render.HBA_END + "\n")
    hba.write_text(head + end + 'host all "postgres" 127.0.0.1/32 reject\n' + rest)
    with agent_postgres(env, volume_root / "second.log", ready_user="app", ready_password="app-password-1"):
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
            connect(port)
        with connect(port, user="app", password="app-password-1") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
    text = hba.read_text()
    assert text.index('host all "postgres" 127.0.0.1/32 reject') < text.index(render.HBA_TAIL_BEGIN)


def test_the_heartbeat_follows_a_long_initdb_script(volume_root: Path) -> None:
    # A restore in initdb.d may take hours: the startup and liveness probes read the heartbeat, which
    # must keep beating while the script runs (a stale one gets the pod killed and initdb run again).
    scripts = volume_root / "initdb.d"
    scripts.mkdir(mode=0o755)
    running = volume_root / "script-running"
    script = scripts / "01-slow-restore.sh"
    script.write_text(f'#!/bin/sh\ntouch "{running}"\nsleep 4\nrm -f "{running}"\n')
    script.chmod(0o755)
    # Executable without a `#!` line: bash runs it as a script in the official image, so here too.
    plain = scripts / "02-no-shebang.sh"
    plain.write_text(f'touch "{volume_root}/no-shebang-ran"\n')
    plain.chmod(0o755)
    volume_root.chmod(0o777)
    heartbeat = volume_root / ".pg-sfs-agent" / "heartbeat.json"
    ages: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if running.exists():
                with contextlib.suppress(OSError, ValueError, KeyError):
                    ages.append(time.time() - json.loads(heartbeat.read_text())["ts"])
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        env = pod_env(volume_root, 0, free_port(), PGSFS_INITDB_DIR=str(scripts))
        with agent_postgres(env, volume_root / "agent.log") as server:
            assert "initdb_scripts" in [line["event"] for line in server.agent_log()]
    finally:
        stop.set()
        sampler.join(5)
    assert (volume_root / "no-shebang-ran").exists()
    assert len(ages) > 20, "the script's run was not observed"
    assert max(ages) < 2.5, f"the heartbeat went {max(ages):.1f} s without a beat while the script ran"


def test_initdb_d_with_the_official_semantics_and_names(volume_root: Path) -> None:
    # As a user switching from postgres:14.5 would bring them: names with spaces and capitals, a
    # 7-character password (the official compose example's), and every kind of initdb.d file.
    user, database = "my cool postgres user", "My Cool Database"
    scripts = volume_root / "initdb.d"
    scripts.mkdir(mode=0o755)
    files = {
        "00-readme-example.sh": (README_EXAMPLE_SCRIPT, 0o755),
        "01-table.sql": ("CREATE TABLE seeded (id int, source text);\n", 0o644),
        # Sourced (not executable): the helpers and the shell's variables are there.
        "02-sourced.sh": ('SOURCED_MARK=from-02\ndocker_process_sql -c "INSERT INTO seeded VALUES (2, \'sourced\')"\n',
                          0o644),
        "03-sourced-again.sh": ('echo "INSERT INTO seeded VALUES (3, \'$SOURCED_MARK\')" | "${psql[@]}"\n', 0o644),
        "04-gz.sql.gz": (gzip.compress(b"INSERT INTO seeded VALUES (4, 'gz');\n"), 0o644),
        "05-xz.sql.xz": (lzma.compress(b"INSERT INTO seeded VALUES (5, 'xz');\n"), 0o644),
        "06-zst.sql.zst": (subprocess.run(["zstd", "-q", "-c"], input=b"INSERT INTO seeded VALUES (6, 'zst');\n",
                                          capture_output=True, check=True).stdout, 0o644),
        "07-env.sh": ('#!/bin/sh\npsql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" '
                      '-c "INSERT INTO seeded VALUES (7, \'$PGDATA\')"\n', 0o755),
        "README.txt": ("not a script: ignored\n", 0o644),
    }  # fmt: skip
    for name, (content, mode) in files.items():
        path = scripts / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        path.chmod(mode)
    port = free_port()
    env = pod_env(volume_root, 0, port, PGSFS_INITDB_DIR=str(scripts), POSTGRES_USER=user, POSTGRES_DB=database,
                  POSTGRES_PASSWORD="example")  # fmt: skip
    with agent_postgres(env, volume_root / "agent.log") as server:
        lines = server.agent_log()
        ran = next(line for line in lines if line["event"] == "initdb_scripts")
        assert ran["files"] == sorted(files)
        short = next(line for line in lines if line["event"] == "short_password")
        assert short["variables"] == ["POSTGRES_PASSWORD"]
        with connect(port, user=user, password="example", dbname=database) as conn:
            rows = conn.execute("SELECT id, source FROM seeded ORDER BY id").fetchall()
            assert [r[0] for r in rows] == [2, 3, 4, 5, 6, 7]
            assert rows[1][1] == "from-02"  # one shell: a later sourced script sees an earlier one's variable
            assert rows[-1][1].endswith(".pgsfs-work/data")  # PGDATA was the cluster being built
            assert conn.execute("SELECT rolname FROM pg_roles WHERE rolname = 'docker'").fetchone() == ("docker",)
            assert conn.execute("SELECT current_user").fetchone() == (user,)
        log_text = (volume_root / "agent.log").read_text()
        assert "pg-sfs-agent: sourcing" in log_text and "ignoring" in log_text  # the scripts' output is logged


def test_postgres_initdb_waldir_and_a_discarded_init_that_used_it(volume_root: Path) -> None:
    # The WAL directory on a volume of its own, as POSTGRES_INITDB_WALDIR is used. First a crashed
    # init is left behind (a marked work directory whose pg_wal links into the WAL volume, full).
    with sized_volume("pgsfs-wal-") as wal_volume:
        wal_volume.chmod(0o777)
        waldir = wal_volume / "pg_wal"
        work = volume_root / "pgdata.pgsfs-work"
        (work / "data").mkdir(parents=True)
        marker = {"kind": "init", "pgdata": str(volume_root / "pgdata")}
        (work / "pg-sfs-agent-work.json").write_text(json.dumps(marker))
        volume_root.chmod(0o777)
        for path in (work, work / "data"):
            shutil.chown(path, "postgres", "postgres")
        crashed = subprocess.run(
            ["initdb", "-D", str(work / "data"), f"--waldir={waldir}", "-U", "postgres", "--auth=trust"],
            user="postgres", capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert crashed.returncode == 0, crashed.stderr
        assert any(waldir.iterdir())

        port = free_port()
        env = pod_env(volume_root, 0, port, POSTGRES_INITDB_WALDIR=str(waldir))
        with agent_postgres(env, volume_root / "agent.log") as server:
            events = [line["event"] for line in server.agent_log()]
            assert events.index("leftover_removed") < events.index("initdb")
            with connect(port) as conn:
                conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
                segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        pg_wal = volume_root / "pgdata" / "pg_wal"
        assert pg_wal.is_symlink() and Path(os.readlink(pg_wal)) == waldir
        assert (waldir / segment).exists()


def test_a_waldir_on_a_root_owned_volume_is_made_and_handed_to_postgres(volume_root: Path) -> None:
    # Review F-M4: a WAL volume's root is root:root 0755, where initdb as postgres cannot create the
    # directory. The official entrypoint makes it as root, chowns it to postgres and sets 0700.
    with sized_volume("pgsfs-walvol-") as wal_volume:
        waldir = wal_volume / "pg_wal"
        env = pod_env(volume_root, 0, free_port(), POSTGRES_INITDB_WALDIR=str(waldir))
        with agent_postgres(env, volume_root / "agent.log"):
            pass
        st = os.stat(waldir)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam("postgres").pw_uid, 0o700)
        assert (volume_root / "pgdata" / "pg_wal").resolve() == waldir


def test_postgres_db_may_name_a_database_initdb_made(volume_root: Path) -> None:
    # Review F-L6: POSTGRES_DB=template1 failed init with "already exists".
    env = pod_env(volume_root, 0, free_port(), POSTGRES_DB="template1")
    with agent_postgres(env, volume_root / "agent.log") as server, connect(server.port, dbname="template1") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("template1",)


@pytest.mark.parametrize("shrink", ["declared_size", "moved_aside_copy"])
def test_the_wal_budget_is_what_the_volume_can_give_wal(volume_root: Path, shrink: str) -> None:
    # Review L3: on this 2 GiB volume the settings follow 2 GiB (204MB/102MB/512MB, see
    # test_versions). A hostPath volume reports its node's disk, so the manifest's storage request
    # (PGSFS_VOLUME_SIZE) caps it; data moved aside (never deleted) is no room for WAL either.
    extra = {}
    if shrink == "declared_size":
        extra["PGSFS_VOLUME_SIZE"] = "1Gi"
    else:
        aside = volume_root / "pgdata.diverged-20261207T000000"
        aside.mkdir()
        with open(aside / "base.img", "wb") as held:
            held.truncate(1024 * 1024 * 1024)  # sized, not written: what counts is what it names
    env = pod_env(volume_root, 0, free_port(), **extra)
    with agent_postgres(env, volume_root / "agent.log") as server, connect(server.port) as conn:
        shown = [conn.execute(f"SHOW {name}").fetchone()[0]
                 for name in ("max_wal_size", "wal_keep_size", "max_slot_wal_keep_size")]  # fmt: skip
    assert shown == ["102MB", "51MB", "256MB"]
    written = next(e for e in json_lines(server.log_path.read_text()) if e["event"] == "config_written")
    assert written["wal_volume_mb"] == 1024
    assert written.get("wal_held_aside_mb") == (1024 if shrink == "moved_aside_copy" else None)


def test_postgres_arguments_reach_the_init_time_server(volume_root: Path) -> None:
    # Review F-M3: the official entrypoint starts its temporary server with the container's postgres
    # arguments, so an initdb.d script can use what `-c shared_preload_libraries=` loads.
    # A preloaded library where the major has contrib (Debian's does; the test wheels do not), and a
    # setting of the user's on every major.
    contrib = (PG_BIN.parent / "lib" / "pg_stat_statements.so").exists()
    scripts = volume_root / "initdb.d"
    scripts.mkdir()
    (scripts / "seen.sql").write_text("CREATE TABLE seen AS SELECT current_setting('pgsfs.marker') AS marker;\n")
    if contrib:
        (scripts / "stats.sql").write_text(
            "CREATE EXTENSION pg_stat_statements;\n"
            "CREATE TABLE stats AS SELECT count(*) >= 0 AS loaded FROM pg_stat_statements;\n"
        )
    os.chmod(scripts, 0o755)
    env = pod_env(volume_root, 0, free_port(), PGSFS_INITDB_DIR=str(scripts))
    args = ("-c", "pgsfs.marker=from-the-arguments")
    if contrib:
        args += ("-c", "shared_preload_libraries=pg_stat_statements")
    with agent_postgres(env, volume_root / "agent.log", *args) as server, connect(server.port) as conn:
        assert conn.execute("SELECT marker FROM seen").fetchone() == ("from-the-arguments",)
        if contrib:
            assert conn.execute("SELECT loaded FROM stats").fetchone() == (True,)


@pytest.mark.parametrize("args", [("-c", "config_file=/etc/postgresql/postgresql.conf"), ("-p", "5433"),
                                  ("--hba_file=/etc/pg_hba.conf",)])  # fmt: skip
def test_postgres_arguments_that_bypass_the_managed_files_are_refused_untouched(
    volume_root: Path, args: tuple[str, ...]
) -> None:
    # Review F-L10: with config_file elsewhere a replica never got primary_conninfo; -p broke the probes.
    done = run_agent(pod_env(volume_root, 0, free_port()), "postgres", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    [error] = [line for line in json_lines(done.stdout + done.stderr) if line["level"] == "error"]
    assert error["event"] == "config_invalid" and error["problems"][0].startswith("postgres argument"), error
    assert list(volume_root.iterdir()) == []


@pytest.mark.parametrize("scripts", [False, True])
def test_the_first_start_says_ready_twice_as_the_official_image_does(volume_root: Path, scripts: bool) -> None:
    # Review F-M6: Testcontainers waits for "database system is ready to accept connections" twice
    # (the official temporary server's, then the real server's); CI scripts grep the init line.
    extra = {}
    if scripts:
        folder = volume_root / "initdb.d"
        folder.mkdir(mode=0o755)
        (folder / "t.sql").write_text("CREATE TABLE t (n int);\n")
        extra["PGSFS_INITDB_DIR"] = str(folder)
    env = pod_env(volume_root, 0, free_port(), **extra)
    log = volume_root / "agent.log"
    with agent_postgres(env, log):
        wait_for(lambda: log.read_text().count(officiallog.READY) >= 2, 10, "the second ready line")
        text = log.read_text()
    first, last = text.index(officiallog.READY), text.rindex(officiallog.READY)
    assert first < text.index(officiallog.INIT_COMPLETE) < last
    if scripts:  # the init-time server's own line, as the official image shows it
        assert "LOG:  " + officiallog.READY in text[:first + len(officiallog.READY)]
    with agent_postgres(env, volume_root / "again.log"):
        again = (volume_root / "again.log").read_text()
    assert officiallog.SKIPPING in again and officiallog.INIT_COMPLETE not in again


def test_trust_without_a_password_works_for_a_container_on_its_own(volume_root: Path) -> None:
    # CI services start the image with POSTGRES_HOST_AUTH_METHOD=trust and no password (issue 20).
    env = pod_env(volume_root, 0, free_port(), HOSTNAME="ci-service", POSTGRES_HOST_AUTH_METHOD="trust")
    for name in ("POD_NAME", "POD_NAMESPACE", "POSTGRES_PASSWORD", "PGSFS_REPLICATION_PASSWORD"):
        env.pop(name)
    log = volume_root / "agent.log"
    with agent_postgres(env, log, ready_password="anything-at-all", standalone=True), connect(
        int(env["PGPORT"]), password=""
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    text = log.read_text()
    assert 'WARNING: POSTGRES_HOST_AUTH_METHOD has been set to "trust"' in text
    assert "trust_authentication" in text


def test_initdb_scripts_see_the_official_shell_and_may_restart_the_server(volume_root: Path) -> None:
    # Review F-L3: sourced scripts run inside a function (`local`), see the official helpers, and a
    # plain psql lands in the user's database (no PGDATABASE), over the socket despite PGHOSTADDR.
    # Review F-L1: `pg_ctl restart` in a script (the pg_cron recipe) left an orphan postmaster on
    # the build, and the real server then met its lock file.
    scripts = volume_root / "initdb.d"
    scripts.mkdir(mode=0o755)
    (scripts / "01-shell.sh").write_text(
        'local answer=42\n'
        'file_env POSTGRES_EXTRA "default-extra"\n'
        '[ "$POSTGRES_EXTRA" = default-extra ] && [ -z "$DATABASE_ALREADY_EXISTS" ]\n'
        'docker_setup_db\n'
        'psql -c "CREATE TABLE plain_psql AS SELECT current_database() AS db, $answer AS answer"\n'
    )
    (scripts / "02-restart.sh").write_text(
        'pg_ctl -D "$PGDATA" -m fast -w restart\n'
        'docker_process_sql -c "CREATE TABLE after_restart ()"\n'
        "docker_temp_server_stop\n"
        "docker_temp_server_start\n"
        'docker_process_sql -c "CREATE TABLE after_start ()"\n'
    )
    env = pod_env(volume_root, 0, free_port(), PGSFS_INITDB_DIR=str(scripts), POSTGRES_DB="app",
                  PGHOSTADDR="198.18.255.254")  # fmt: skip
    with agent_postgres(env, volume_root / "agent.log", ready_timeout=90) as server:
        with connect(server.port) as conn:  # the plain psql went to the user's database
            assert conn.execute("SELECT db, answer FROM plain_psql").fetchone() == ("postgres", 42)
        with connect(server.port, dbname="app") as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'after_%'").fetchone() == (2,)


def test_dash_c_initialises_an_empty_pgdata_first_as_the_official_does(volume_root: Path) -> None:
    # Review F-L9: `postgres -C name` bootstraps in the official entrypoint; on an empty PGDATA the
    # agent exec'd postgres at once, which failed on the missing configuration file.
    env = pod_env(volume_root, 0, free_port())
    first = run_agent(env, "postgres", "-C", "wal_level")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "replica"
    assert (volume_root / "pgdata" / "PG_VERSION").exists()
    again = run_agent(env, "postgres", "-C", "wal_level")  # a cluster exists: it only reads
    assert (again.returncode, again.stdout.strip()) == (0, "replica"), again.stderr
    assert "agent_start" not in again.stderr


def test_the_agents_connections_refuse_a_real_server_asking_for_a_clear_text_password(
    volume_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review F-L7 against a real server: pg_hba's `password` method asks for the password in clear
    # text. The agent's requirement (postgres.require_scram) makes libpq refuse before sending it.
    from agent import postgres

    port = free_port()
    env = pod_env(volume_root, 0, port)
    with agent_postgres(env, volume_root / "agent.log"):
        hba = volume_root / "pgdata" / "pg_hba.conf"
        head, end, rest = hba.read_text().partition(render.HBA_END + "\n")
        hba.write_text(head + end + "host all all 127.0.0.1/32 password\n" + rest)
        with connect(port) as conn:
            conn.execute("SELECT pg_reload_conf()")
        with connect(port) as conn:  # libpq's defaults: the clear-text request is answered
            assert conn.execute("SELECT 1").fetchone() == (1,)
        monkeypatch.delenv("PGREQUIREAUTH", raising=False)
        monkeypatch.setattr(postgres, "_REQUIRE_AUTH_SET", [])
        try:
            postgres.require_scram()
            with pytest.raises(psycopg.OperationalError, match=r"require_auth|authentication method requirement"):
                connect(port)
        finally:
            os.environ.pop("PGREQUIREAUTH", None)


def test_pgdata_as_the_volumes_mount_point(volume_root: Path) -> None:
    # The official image's VOLUME /var/lib/postgresql/data makes PGDATA a mount point, and a real PV
    # has lost+found at its root. Here an earlier start also stopped halfway through moving its
    # finished build up into PGDATA: the journaled entries are taken back, the build discarded.
    pgdata = volume_root  # a tmpfs of its own: os.path.ismount is true
    (pgdata / "lost+found").mkdir()
    work = pgdata / ".pgsfs-work"
    (work / "data").mkdir(parents=True)
    moved = ["base", "global", "pg_wal"]
    (work / "pg-sfs-agent-work.json").write_text(
        json.dumps({"kind": "init", "pgdata": str(pgdata), "moving": [*moved, "pg_xact", "PG_VERSION"]})
    )
    for name in moved:  # already moved up when it stopped; PG_VERSION (last) never was
        (pgdata / name).mkdir()
        (pgdata / name / "leftover").write_text("from the interrupted start")
    port = free_port()
    state = volume_root.parent / f"{volume_root.name}-state"
    env = pod_env(volume_root, 0, port, PGDATA=str(pgdata), PGSFS_STATE_DIR=str(state))
    state_dir = Path(env["PGSFS_STATE_DIR"])
    try:
        plan = json.loads(run_agent(env, "plan").stdout)
        assert plan["action"] == "init" and plan["remove_leftover"] == str(work), plan
        with agent_postgres(env, volume_root / "lost+found" / "agent.log") as server:
            events = [line["event"] for line in server.agent_log()]
            assert events.index("leftover_removed") < events.index("initdb") < events.index("moved_into_place")
            with connect(port) as conn:
                assert conn.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'").fetchone() == (
                    str(pgdata),
                )
        assert sorted(p.name for p in pgdata.iterdir() if p.name.startswith((".pgsfs", "lost"))) == ["lost+found"]
        assert not (pgdata / "base" / "leftover").exists()
        # A restart is boring: the cluster is there, nothing is rebuilt.
        plan = json.loads(run_agent(env, "plan").stdout)
        assert plan["action"] == "start" and plan["remove_leftover"] is None
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def test_a_mount_point_pgdata_keeps_the_agents_state_on_its_volume(volume_root: Path) -> None:
    # Review F-L11: with PGDATA at the volume's mount point, the default state directory was beside
    # it, on the container's own filesystem: lost with the container (the next start adopted the
    # passwords again) and unwritable under readOnlyRootFilesystem. It is now inside PGDATA, under
    # PostgreSQL's temporary-file prefix, so a base backup never takes it to a replica.
    pgdata = volume_root  # a tmpfs of its own: os.path.ismount is true
    port = free_port()
    env = pod_env(volume_root, 0, port, PGDATA=str(pgdata))
    state = pgdata / "pgsql_tmp.pg-sfs-agent"
    (pgdata / "lost+found").mkdir()  # as on a real volume; it holds the agent's log here (ignored there)
    log = pgdata / "lost+found" / "agent.log"
    with agent_postgres(env, log) as server:
        assert (state / "applied-secrets.json").is_file() and (state / "heartbeat.json").is_file()
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        ready = run_agent(env, "probe", "readiness")
        assert (ready.returncode, ready.stdout.strip()) == (0, "primary ready")
        with sized_volume("pgsfs-copy-") as other:
            copy = other / "copy"
            done = subprocess.run(
                [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(port), "-U", "replicator",
                 "-D", str(copy), "-X", "stream"],
                env={**os.environ, "PGPASSWORD": REPLICATION_PASSWORD}, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert (copy / "PG_VERSION").exists() and not (copy / "pgsql_tmp.pg-sfs-agent").exists()
    # A restart is boring: the record of what was applied is still there, nothing adopted.
    with agent_postgres(env, log) as server:
        events = [line["event"] for line in server.agent_log()]
        assert "passwords_adopted" not in events and "passwords_applied" not in events
