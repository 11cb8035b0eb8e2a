"""WAL archiving and base backups with real pgBackRest and PostgreSQL: what is archived can be restored."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agentctl import agent_postgres, connect, json_lines, pod_env, run_agent, wait_for
from tests.integration.conftest import PG_BIN, bin_major, free_port

pytestmark = pytest.mark.integration

# The first pgBackRest release that knows each newer major (its release notes); older ones refuse it.
_FIRST_SUPPORTING = {16: (2, 47), 17: (2, 52), 18: (2, 56)}


def _pgbackrest_skip() -> str:
    """Why these tests cannot run here, or ''."""
    if shutil.which("pgbackrest") is None:
        return "pgbackrest is not installed (make deps installs it)"
    out = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    have = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    need = _FIRST_SUPPORTING.get(bin_major(PG_BIN))
    if need and have < need:
        return f"pgBackRest {have[0]}.{have[1]} does not support PostgreSQL {bin_major(PG_BIN)}"
    return ""


@pytest.fixture
def repo(volume_root: Path) -> Path:
    """A backup repository beside the data (a volume of its own in the manifest), owned by postgres."""
    return make_repo(volume_root)


def make_repo(root: Path) -> Path:
    """`root`/backups for pgBackRest, owned by postgres; the test is skipped where pgBackRest cannot run."""
    if reason := _pgbackrest_skip():
        pytest.skip(reason)
    path = root / "backups"
    path.mkdir()
    shutil.chown(path, "postgres", "postgres")
    return path


def _archived(conn: Any) -> str:
    """Switch to a new WAL segment and wait until the finished one is in the archive; its name."""
    segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]

    def done() -> bool:
        row = conn.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver").fetchone()
        return row[0] is not None and row[0] >= segment

    wait_for(done, 60, f"WAL segment {segment} to be archived")
    return str(segment)


def test_archived_wal_and_a_backup_restore_to_a_point_in_time(volume_root: Path, repo: Path) -> None:
    port = free_port()
    env = pod_env(volume_root, 0, port, PGSFS_BACKUP_REPO=str(repo), PGSFS_ARCHIVE_TIMEOUT="30")
    with agent_postgres(env, volume_root / "agent.log") as server:
        events = [line["event"] for line in server.agent_log()]
        assert events.index("archive_repository_checked") < events.index("initdb")
        assert events.index("archive_stanza_ready") < events.index("exec_postgres")
        with connect(port) as conn:
            assert conn.execute("SHOW archive_mode").fetchone() == ("on",)
            assert conn.execute("SHOW archive_timeout").fetchone() == ("30s",)
            conn.execute("CREATE TABLE t (id int, note text)")
            conn.execute("INSERT INTO t VALUES (1, 'before the backup')")

            done = run_agent(env, "backup")
            assert done.returncode == 0, done.stdout + done.stderr
            summary = json.loads(done.stdout)
            assert summary["type"] == "full" and summary["backups"] == 1 and summary["label"]
            assert any(line["event"] == "backup_done" for line in json_lines(done.stderr))

            # pgBackRest picks a backup that stopped before the target, to the second: the target comes later.
            stopped = summary["stopped"].replace("T", " ").replace("Z", "+00")
            later = "SELECT clock_timestamp() > %s::timestamptz + interval '1 second'"
            wait_for(lambda: conn.execute(later, (stopped,)).fetchone()[0], 5, "the second after the backup's end")
            conn.execute("INSERT INTO t VALUES (2, 'after the backup')")
            target = conn.execute("SELECT clock_timestamp()::text").fetchone()[0]
            conn.execute("INSERT INTO t VALUES (3, 'after the target')")
            _archived(conn)
            assert conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone() == (0,)

    # Every volume is lost but the repository's: the primary ordinal restores instead of initialising.
    shutil.rmtree(volume_root / "pgdata")
    shutil.rmtree(volume_root / ".pg-sfs-agent")
    restoring = {**env, "PGSFS_RESTORE_FROM": "postgresql-sfs", "PGSFS_RESTORE_TARGET": f"time={target}",
                 "PGSFS_RESTORE_CONTINUE_ARCHIVE": "true"}  # fmt: skip
    plan = json.loads(run_agent(restoring, "plan").stdout)
    assert plan["action"] == "init" and "restore_backup" in plan["steps"] and "initdb" not in plan["steps"]
    with agent_postgres(restoring, volume_root / "restored.log") as server, connect(server.port) as conn:
        wait_for(lambda: not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0], 60,
                 "the restored primary to reach its target and promote")  # fmt: skip
        rows = conn.execute("SELECT id, note FROM t ORDER BY id").fetchall()
        assert rows == [(1, "before the backup"), (2, "after the backup")]
        # It archives on into the same stanza (told to), on its new timeline.
        assert _archived(conn).startswith("00000002")
        events = [line["event"] for line in server.agent_log()]
        assert events.index("restore") < events.index("moved_into_place") < events.index("exec_postgres")
        assert "initdb" not in events
    # Its recovery settings were never in postgresql.auto.conf, which a clone would copy.
    auto = (volume_root / "pgdata" / "postgresql.auto.conf").read_text()
    assert "recovery_target" not in auto and "restore_command" not in auto


def _backed_up_primary(volume: Path, repo: Path, **extra: str) -> tuple[dict[str, str], Any]:
    """Start a primary that archives into `repo`, with one table and a full backup; (env, server)."""
    env = pod_env(volume, 0, free_port(), PGSFS_BACKUP_REPO=str(repo), **extra)
    context = agent_postgres(env, volume / "agent.log")
    server = context.__enter__()
    with connect(server.port) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS id")
    done = run_agent(env, "backup")
    assert done.returncode == 0, done.stderr
    return env, context


def test_a_copy_restored_beside_its_source_archives_into_a_stanza_of_its_own(volume_root: Path, repo: Path) -> None:
    env, source = _backed_up_primary(volume_root, repo)
    try:
        with connect(int(env["PGPORT"])) as conn:
            conn.execute("INSERT INTO t VALUES (2)")
            _archived(conn)
        copy_volume = volume_root / "copy"
        copy_volume.mkdir()
        copy = pod_env(copy_volume, 0, free_port(), PGSFS_BACKUP_REPO=str(repo), PGSFS_RESTORE_FROM="postgresql-sfs")
        # Restoring into the stanza it came from, beside the cluster still writing it, needs saying so.
        same = run_agent(copy, "postgres")
        assert same.returncode == 2 and "PGSFS_RESTORE_CONTINUE_ARCHIVE=true" in same.stderr
        missing = run_agent({**copy, "PGSFS_BACKUP_STANZA": "copy", "PGSFS_RESTORE_FROM": "nothing-here"}, "postgres")
        assert missing.returncode == 16 and "holds no stanza 'nothing-here'" in missing.stderr
        assert not (copy_volume / "pgdata").exists()
        with agent_postgres({**copy, "PGSFS_BACKUP_STANZA": "copy"}, copy_volume / "agent.log") as restored, \
                connect(restored.port) as conn:  # fmt: skip
            wait_for(lambda: not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0], 60, "the copy to promote")
            assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 2],)
            assert _archived(conn).startswith("00000002")
    finally:
        source.__exit__(None, None, None)
    archived = {path.name for path in (repo / "archive").rglob("*") if path.is_file()}
    source_files = {path.name for path in (repo / "archive" / "postgresql-sfs").rglob("*") if path.is_file()}
    copy_files = {path.name for path in (repo / "archive" / "copy").rglob("*") if path.is_file()}
    assert any(name.startswith("00000002") for name in copy_files), archived
    assert not any(name.startswith("00000002") for name in source_files), "the source archive got the copy's WAL"


def test_a_restore_stopped_short_of_its_target_goes_on_at_the_next_start(volume_root: Path, repo: Path) -> None:
    env, source = _backed_up_primary(volume_root, repo, PGSFS_BACKUP_STANZA="src")
    with connect(int(env["PGPORT"])) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        point = conn.execute("SELECT pg_create_restore_point('after_two')::text").fetchone()[0]
        conn.execute("INSERT INTO t VALUES (3)")
        _archived(conn)
    source.__exit__(None, None, None)
    shutil.rmtree(volume_root / "pgdata")
    restoring = {**env, "PGSFS_RESTORE_FROM": "src", "PGSFS_BACKUP_STANZA": "dst",
                 "PGSFS_RESTORE_TARGET": "name=never_created"}  # fmt: skip
    # No such restore point: postgres replays the whole archive and stops, refusing to promote.
    stopped = run_agent(restoring, "postgres", timeout=120)
    assert stopped.returncode != 0
    assert "recovery ended before configured recovery target was reached" in stopped.stderr
    assert (volume_root / "pgdata" / "recovery.signal").exists()
    # The operator names the right target: the next start goes on from where recovery stopped.
    corrected = {**restoring, "PGSFS_RESTORE_TARGET": "name=after_two"}
    plan = json.loads(run_agent(corrected, "plan").stdout)
    assert plan["action"] == "start" and "restore_backup" not in plan["steps"], plan
    with agent_postgres(corrected, volume_root / "again.log") as server, connect(server.port) as conn:
        wait_for(lambda: not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0], 60, "the promotion")
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 2],)
    assert point
    # Promoted, it restarts as any primary: the restore settings may stay or go, nothing is restored again.
    settled = {key: value for key, value in env.items() if not key.startswith("PGSFS_RESTORE")}
    with agent_postgres({**settled, "PGSFS_BACKUP_STANZA": "dst"}, volume_root / "later.log") as server, \
            connect(server.port) as conn:  # fmt: skip
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 2],)


def test_a_new_cluster_is_never_initialised_over_another_clusters_archive(volume_root: Path, repo: Path) -> None:
    port = free_port()
    env = pod_env(volume_root, 0, port, PGSFS_BACKUP_REPO=str(repo))
    with agent_postgres(env, volume_root / "agent.log"):
        pass
    # The volume is lost; the repository holds that cluster's stanza: a new init would fork its archive.
    shutil.rmtree(volume_root / "pgdata")
    refused = run_agent(env, "postgres")
    assert refused.returncode == 16, refused.stderr
    line = next(line for line in json_lines(refused.stderr) if line["event"] == "archive_repository_conflict")
    assert "already holds stanza 'postgresql-sfs'" in line["error"] and line["system_identifiers"]
    assert not (volume_root / "pgdata").exists(), "nothing is initialised"

    # Another stanza name is another archive: the new cluster starts and archives there.
    second = {**env, "PGSFS_BACKUP_STANZA": "second"}
    with agent_postgres(second, volume_root / "agent2.log") as server, connect(server.port) as conn:
        _archived(conn)


def test_a_restarted_primary_with_another_clusters_stanza_refuses_untouched(volume_root: Path, repo: Path) -> None:
    port = free_port()
    env = pod_env(volume_root, 0, port, PGSFS_BACKUP_REPO=str(repo))
    with agent_postgres(env, volume_root / "agent.log"):
        pass
    other = volume_root / "other"
    other.mkdir()
    with agent_postgres(pod_env(other, 0, free_port(), PGSFS_BACKUP_REPO=str(repo), PGSFS_BACKUP_STANZA="x"),
                        other / "agent.log"):  # fmt: skip
        pass
    # The first cluster restarts pointed at the second one's stanza: archiving there would fail forever.
    refused = run_agent({**env, "PGSFS_BACKUP_STANZA": "x"}, "postgres")
    assert refused.returncode == 16, refused.stderr
    line = next(line for line in json_lines(refused.stderr) if line["event"] == "archive_repository_conflict")
    assert "another cluster's archive" in line["error"]


def test_backup_refuses_without_archiving_and_checks_its_arguments(volume_root: Path) -> None:
    port = free_port()
    plain = pod_env(volume_root, 0, port)
    with agent_postgres(plain, volume_root / "agent.log"):
        off = run_agent(plain, "backup")
        assert off.returncode == 17
        assert "PGSFS_BACKUP_REPO is not set" in json_lines(off.stderr)[-1]["error"]
    help_text = run_agent(plain, "backup", "--help")
    assert help_text.returncode == 0 and "--type" in help_text.stdout
    bad = run_agent(plain, "backup", "--type=weekly")
    assert bad.returncode == 2


def test_a_failing_archive_is_named_at_the_primarys_next_start(volume_root: Path, repo: Path) -> None:
    env = pod_env(volume_root, 0, free_port(), PGSFS_BACKUP_REPO=str(repo))
    with agent_postgres(env, volume_root / "agent.log") as server, connect(server.port) as conn:
        conn.execute("ALTER SYSTEM SET archive_command = '/bin/false'")
        conn.execute("SELECT pg_reload_conf()")
        for _ in range(6):
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CREATE TABLE IF NOT EXISTS t (id int); INSERT INTO t VALUES (1)")
        wait_for(lambda: conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] > 0, 30,
                 "the archive to fail")  # fmt: skip
        conn.execute("ALTER SYSTEM RESET archive_command")
    # Restarted: the backlog is named, then archived by the server (the managed archive_command again).
    with agent_postgres(env, volume_root / "again.log") as server, connect(server.port) as conn:
        [line] = [line for line in server.agent_log() if line["event"] == "archive_backlog"]
        assert line["segments"] >= 5 and line["level"] == "warning", line
        _archived(conn)


@pytest.fixture
def s3(volume_root: Path) -> Iterator[dict[str, str]]:
    """An S3-compatible server with a bucket, and the agent's S3 settings for it: moto's server mode (from
    PyPI: S3's real HTTP API, signatures checked, in this test's private network namespace on its
    loopback) behind stunnel for TLS, with a certificate made here that pgBackRest verifies."""
    if reason := _pgbackrest_skip():
        pytest.skip(reason)
    pytest.importorskip("moto", reason="moto[server] is not installed (the s3test extra)")
    if shutil.which("stunnel") is None:
        pytest.skip("stunnel is not installed (make deps installs it)")
    import boto3

    tls = volume_root / "tls"
    tls.mkdir()
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(tls / "key.pem"),
                           "-out", str(tls / "cert.pem")], capture_output=True, text=True, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    os.chmod(tls, 0o755)
    os.chmod(tls / "cert.pem", 0o644)
    port, plain = free_port(), free_port()
    # moto serves plain HTTP; stunnel is the TLS side pgBackRest talks to. moto's own TLS (werkzeug's)
    # closes connections without TLS close_notify, which OpenSSL 3 clients refuse as a truncation.
    (tls / "stunnel.conf").write_text(f"foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{port}\n"
                                      f"connect = 127.0.0.1:{plain}\ncert = {tls / 'cert.pem'}\n"
                                      f"key = {tls / 'key.pem'}\n")  # fmt: skip
    log = open(volume_root / "s3.log", "w")  # noqa: SIM115 - the servers', closed below
    servers = [
        subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p",
                          str(plain)], stdout=log, stderr=log),
        subprocess.Popen(["stunnel", str(tls / "stunnel.conf")], stdout=log, stderr=log),
    ]  # fmt: skip
    try:
        client = boto3.client("s3", endpoint_url=f"https://localhost:{port}", region_name="us-east-1",
                              aws_access_key_id="test-key-id", aws_secret_access_key="test-secret-key",
                              verify=str(tls / "cert.pem"))  # fmt: skip
        wait_for(lambda: client.create_bucket(Bucket="pg-backups"), 30, "the S3 server to take a bucket")
        yield {"PGSFS_BACKUP_REPO": "s3://pg-backups/cluster", "PGSFS_BACKUP_S3_ENDPOINT": f"localhost:{port}",
               "PGSFS_BACKUP_S3_URI_STYLE": "path", "PGSFS_BACKUP_S3_CA_FILE": str(tls / "cert.pem"),
               "PGSFS_BACKUP_S3_KEY": "test-key-id", "PGSFS_BACKUP_S3_KEY_SECRET": "test-secret-key"}
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
        log.close()


def test_an_s3_repository_archives_backs_up_and_restores(volume_root: Path, s3: dict[str, str]) -> None:
    env = pod_env(volume_root, 0, free_port(), **s3)
    with agent_postgres(env, volume_root / "agent.log") as server, connect(server.port) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS id")
        done = run_agent(env, "backup")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["repo"] == "s3://pg-backups/cluster"
        conn.execute("INSERT INTO t VALUES (2)")
        _archived(conn)
    # The credentials are only in the 0600 pgBackRest file, never in the logs or postgres' settings.
    conf = volume_root / ".pg-sfs-agent" / "pgbackrest.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and "test-secret-key" in conf.read_text()
    for path in (volume_root / "agent.log", volume_root / "pgdata" / "pg-sfs-agent.conf"):
        assert "test-secret-key" not in path.read_text(), path
    shutil.rmtree(volume_root / "pgdata")
    restoring = {**env, "PGSFS_RESTORE_FROM": "postgresql-sfs", "PGSFS_RESTORE_CONTINUE_ARCHIVE": "true"}
    with agent_postgres(restoring, volume_root / "restored.log") as server, connect(server.port) as conn:
        wait_for(lambda: not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0], 60, "the promotion")
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 2],)


def test_a_repository_that_cannot_be_reached_never_keeps_the_primary_down(volume_root: Path, repo: Path) -> None:
    env = pod_env(volume_root, 0, free_port(), PGSFS_BACKUP_REPO=str(repo))
    with agent_postgres(env, volume_root / "agent.log"):
        pass
    # The repository's volume is there but unreadable by postgres (a remount gone wrong, an S3 outage
    # alike): the restart says so and starts; once it is back, the archive goes on.
    os.chmod(repo, 0)
    try:
        with agent_postgres(env, volume_root / "again.log") as server:
            [line] = [line for line in server.agent_log() if line["event"] == "archive_stanza_unchecked"]
            assert line["level"] == "warning" and "Permission denied" in line["error"], line
    finally:
        os.chmod(repo, 0o750)
    with agent_postgres(env, volume_root / "later.log") as server, connect(server.port) as conn:
        assert any(line["event"] == "archive_stanza_ready" for line in server.agent_log())
        _archived(conn)
