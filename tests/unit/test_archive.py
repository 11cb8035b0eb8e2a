"""Archiving settings, the files they become, and what pgBackRest's answers mean (agent/archive.py)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import archive
from agent.archive import ArchiveSettings
from agent.config import load_config
from agent.errors import ConfigError
from agent.render import settings_file
from tests.unit.conftest import BASE_ENV

PGDATA = PurePosixPath("/var/lib/postgresql/data/pgdata")


def read(**env: str) -> tuple[archive.ArchiveSettings | None, list[tuple[str, str | None, str]]]:
    return archive.read(env, statefulset="postgresql-sfs", pgdata=PGDATA)


def test_archiving_is_off_unless_a_repository_is_named() -> None:
    assert read() == (None, [])
    settings, problems = read(PGSFS_BACKUP_REPO="/backups")
    assert problems == []
    assert settings == archive.ArchiveSettings("/backups", "postgresql-sfs", 2, 60, 2)


def test_settings_without_a_repository_are_a_problem_not_silently_ignored() -> None:
    settings, problems = read(PGSFS_BACKUP_RETENTION_FULL="7")
    assert settings is None and [p[0] for p in problems] == ["PGSFS_BACKUP_RETENTION_FULL"]
    assert "PGSFS_BACKUP_REPO" in problems[0][2]


@pytest.mark.parametrize("repo", ["backups", "/", "/var/lib/postgresql/data/pgdata",
                                  "/var/lib/postgresql/data/pgdata/x", "/var/lib/postgresql", "/backups/../etc"])
def test_a_repository_in_pgdata_above_it_or_relative_is_refused(repo: str) -> None:
    settings, problems = read(PGSFS_BACKUP_REPO=repo)
    assert settings is None and problems and problems[0][0] == "PGSFS_BACKUP_REPO"


def test_every_problem_is_reported_at_once() -> None:
    _, problems = read(PGSFS_BACKUP_REPO="/b", PGSFS_BACKUP_STANZA="no spaces", PGSFS_BACKUP_RETENTION_FULL="0",
                       PGSFS_ARCHIVE_TIMEOUT="1m", PGSFS_BACKUP_PROCESSES="65")  # fmt: skip
    assert [p[0] for p in problems] == ["PGSFS_BACKUP_STANZA", "PGSFS_BACKUP_RETENTION_FULL", "PGSFS_ARCHIVE_TIMEOUT",
                                        "PGSFS_BACKUP_PROCESSES"]  # fmt: skip


def test_config_needs_pgbackrest_in_the_image(no_kube_files: dict[str, Any]) -> None:
    env = {**BASE_ENV, "PGSFS_BACKUP_REPO": "/backups"}
    with pytest.raises(ConfigError) as info:
        load_config(env, which=lambda _name: None, **no_kube_files)
    assert any("pgbackrest is not installed" in p for p in info.value.problems)
    config = load_config(env, which=lambda name: f"/usr/bin/{name}", **no_kube_files)
    assert config.archive is not None and config.archive.stanza == "postgresql-sfs"
    assert load_config(dict(BASE_ENV), which=lambda _name: None, **no_kube_files).archive is None


def test_the_config_file_and_the_server_settings() -> None:
    settings = archive.ArchiveSettings("/backups/pg", "postgresql-sfs", 3, 45, 4)
    text = archive.config_text(settings, pgdata="/data/pgdata", port=5433, superuser="admin", work_dir="/data/.s/lk")
    assert "repo1-path=/backups/pg\n" in text and "repo1-retention-full=3\n" in text
    assert "\n[postgresql-sfs]\npg1-path=/data/pgdata\npg1-port=5433\npg1-user=admin\n" in text
    both = archive.config_text(ArchiveSettings("/b", "copy", 1, 1, 1, "postgresql-sfs"), pgdata="/d", port=1,
                               superuser="p", work_dir="/w")  # fmt: skip
    assert "\n[copy]\npg1-path=/d\n" in both and "\n[postgresql-sfs]\npg1-path=/d\n" in both
    assert "lock-path=/data/.s/lk\n" in text and "log-level-file=off\n" in text
    values = archive.server_settings(settings, "/data/.pg-sfs-agent/pgbackrest.conf")
    assert values == {
        "archive_mode": "on",
        "archive_command": "pgbackrest --config=/data/.pg-sfs-agent/pgbackrest.conf --stanza=postgresql-sfs "
        "archive-push %p",
        "archive_timeout": "45s",
    }
    rendered = settings_file(port=5432, max_wal_senders=10, max_replication_slots=10, wal={}, archive=values)
    assert "archive_mode = 'on'\n" in rendered and "archive_timeout = '45s'\n" in rendered
    assert "archive_mode" not in settings_file(port=5432, max_wal_senders=10, max_replication_slots=10, wal={})


def test_a_line_break_never_reaches_the_config_file() -> None:
    with pytest.raises(ValueError):
        archive.config_text(archive.ArchiveSettings("/b", "s", 1, 1, 1), pgdata="/d\n[x]", port=1, superuser="p",
                            work_dir="/w")  # fmt: skip


@given(st.text(st.characters(blacklist_characters="\x00\n\r"), min_size=1, max_size=30))
def test_the_config_path_is_one_shell_word_whatever_it_holds(name: str) -> None:
    import shlex

    command = archive.server_settings(archive.ArchiveSettings("/b", "s", 1, 1, 1), f"/x/{name}/c")["archive_command"]
    assert shlex.split(command)[1] == f"--config=/x/{name}/c"


def _info(status: int, *, ids: tuple[int, ...] = (), backups: int = 0) -> str:
    entry = {
        "name": "postgresql-sfs",
        "status": {"code": status, "message": {0: "ok", 1: "missing stanza path", 2: "no valid backups"}[status]},
        "db": [{"id": n + 1, "system-id": sid, "version": "15"} for n, sid in enumerate(ids)],
        "backup": [{"label": f"2026120{n}-000000F", "type": "full", "info": {"size": 32 * 1024 * 1024,
                    "repository": {"delta": 4 * 1024 * 1024}}, "timestamp": {"start": 1796600000 + n,
                    "stop": 1796600005 + n}, "archive": {"start": "000000010000000000000004",
                    "stop": "000000010000000000000004"}} for n in range(backups)],
    }  # fmt: skip
    return json.dumps([entry])


def test_pgbackrest_info_is_read_and_the_newest_backup_summarised() -> None:
    missing = archive.parse_info(_info(1), "postgresql-sfs")
    assert not missing.exists and missing.latest is None
    assert archive.init_problem(missing, "postgresql-sfs", "/b") is None
    found = archive.parse_info(_info(0, ids=(7716611593839240040,), backups=2), "postgresql-sfs")
    assert found.exists and found.backups == 2 and found.system_identifiers == (7716611593839240040,)
    assert found.latest == {"label": "20261201-000000F", "type": "full", "database_mb": 32.0, "repository_mb": 4.0,
                            "started": "2026-12-06T23:33:21Z", "stopped": "2026-12-06T23:33:26Z",
                            "wal_start": "000000010000000000000004",
                            "wal_stop": "000000010000000000000004"}  # fmt: skip
    problem = archive.init_problem(found, "postgresql-sfs", "/b")
    assert problem is not None and "7716611593839240040" in problem and "2 backup(s)" in problem
    # A stanza that exists without a backup is still another cluster's archive.
    assert archive.init_problem(archive.parse_info(_info(2, ids=(1,)), "postgresql-sfs"), "s", "/b") is not None


@pytest.mark.parametrize("text", ["", "not json", "[]", '[{"name": "other"}]'])
def test_unreadable_info_is_an_error_not_an_empty_repository(text: str) -> None:
    with pytest.raises(ValueError):
        archive.parse_info(text, "postgresql-sfs")


def test_what_stanza_create_answers_means() -> None:
    assert archive.stanza_create_problem(0, "") is None
    mismatch = archive.stanza_create_problem(28, "ERROR: [028]: backup and archive info files exist but do not match\n")
    assert mismatch is not None and "another cluster's archive" in mismatch
    other = archive.stanza_create_problem(41, "ERROR: [041]: unable to open\n  file")
    assert other == "pgbackrest stanza-create failed with exit code 41: ERROR: [041]: unable to open file"



# -- restore ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("latest", archive.RestoreTarget("latest")),
    ("immediate", archive.RestoreTarget("immediate")),
    ("time=2026-12-07 17:00:00+00", archive.RestoreTarget("time", "2026-12-07 17:00:00+00")),
    ("time=2026-12-07T17:00:00.123456Z", archive.RestoreTarget("time", "2026-12-07T17:00:00.123456Z")),
    ("time = 2026-12-07 17:00+01:00", archive.RestoreTarget("time", "2026-12-07 17:00+01:00")),
    ("lsn=0/3000060", archive.RestoreTarget("lsn", "0/3000060")),
    ("name=before the migration", archive.RestoreTarget("name", "before the migration")),
    # A time without its zone would be read in the server's: refused rather than guessed.
    ("time=2026-12-07 17:00:00", None), ("time=yesterday", None), ("lsn=3000060", None), ("name=it's", None),
    ("name=", None), ("xid=12", None), ("Latest", None),
])  # fmt: skip
def test_restore_targets(text: str, expected: archive.RestoreTarget | None) -> None:
    assert archive.parse_target(text) == expected


def test_restore_settings_are_read_with_the_archive() -> None:
    settings, problems = read(PGSFS_BACKUP_REPO="/b", PGSFS_BACKUP_STANZA="copy", PGSFS_RESTORE_FROM="postgresql-sfs",
                              PGSFS_RESTORE_TARGET="name=before")  # fmt: skip
    assert problems == [] and settings is not None
    assert settings.restore_from == "postgresql-sfs" and str(settings.restore_target) == "name=before"


def test_restoring_into_the_stanza_it_came_from_needs_saying_so() -> None:
    _, problems = read(PGSFS_BACKUP_REPO="/b", PGSFS_RESTORE_FROM="postgresql-sfs")
    assert [p[0] for p in problems] == ["PGSFS_RESTORE_FROM"] and "CONTINUE_ARCHIVE=true" in problems[0][2]
    settings, problems = read(PGSFS_BACKUP_REPO="/b", PGSFS_RESTORE_FROM="postgresql-sfs",
                              PGSFS_RESTORE_CONTINUE_ARCHIVE="true")  # fmt: skip
    assert problems == [] and settings is not None and settings.restore_from == "postgresql-sfs"


def test_restore_settings_alone_are_problems() -> None:
    _, problems = read(PGSFS_BACKUP_REPO="/b", PGSFS_RESTORE_TARGET="latest", PGSFS_RESTORE_CONTINUE_ARCHIVE="true")
    assert [p[0] for p in problems] == ["PGSFS_RESTORE_TARGET", "PGSFS_RESTORE_CONTINUE_ARCHIVE"]
    _, problems = read(PGSFS_RESTORE_FROM="x")
    assert [p[0] for p in problems] == ["PGSFS_RESTORE_FROM"] and "PGSFS_BACKUP_REPO" in problems[0][2]
    _, problems = read(PGSFS_BACKUP_REPO="/b", PGSFS_RESTORE_FROM="a b", PGSFS_RESTORE_TARGET="soon")
    assert [p[0] for p in problems] == ["PGSFS_RESTORE_FROM", "PGSFS_RESTORE_TARGET"]


def test_recovery_settings_per_target() -> None:
    settings = ArchiveSettings("/b", "copy", 1, 1, 1, "src")
    conf = "/s/pgbackrest.conf"
    base = {"restore_command": 'pgbackrest --config=/s/pgbackrest.conf --stanza=src archive-get %f "%p"'}
    assert archive.recovery_settings(settings, "src", archive.RestoreTarget("latest"), conf) == base
    assert archive.recovery_settings(settings, "src", archive.RestoreTarget("immediate"), conf) == {
        **base, "recovery_target": "immediate", "recovery_target_action": "promote"}
    assert archive.recovery_settings(settings, "src", archive.RestoreTarget("time", "2026-12-07 17:00+00"), conf) == {
        **base, "recovery_target_time": "2026-12-07 17:00+00", "recovery_target_action": "promote"}
    assert archive.recovery_settings(settings, "src", archive.RestoreTarget("lsn", "0/1"), conf)[
        "recovery_target_lsn"] == "0/1"
    assert archive.recovery_settings(settings, "src", archive.RestoreTarget("name", "x"), conf)[
        "recovery_target_name"] == "x"


@given(st.sampled_from(["latest", "immediate", "time=2026-12-07 17:00:00+00", "lsn=0/3", "name=a b"]),
       st.sampled_from(["src", "postgresql-sfs", "a.b_c-d"]), st.none() | st.text(max_size=20))
def test_a_restore_record_reads_back_what_was_written(target_text: str, stanza: str, backup: str | None) -> None:
    target = archive.parse_target(target_text)
    assert target is not None
    assert archive.read_restore_record(archive.restore_record(stanza, target, backup)) == (stanza, target)


@pytest.mark.parametrize("text", ["", "{}", "[]", '{"stanza": "s"}', '{"stanza": "a b", "target": "latest"}',
                                  '{"stanza": "s", "target": "soon"}'])  # fmt: skip
def test_a_damaged_restore_record_is_no_record(text: str) -> None:
    assert archive.read_restore_record(text) is None


def test_nothing_to_restore_is_said_plainly() -> None:
    missing = archive.parse_info(_info(1), "postgresql-sfs")
    assert "holds no stanza 'src'" in (archive.restore_problem(missing, "src", "/b") or "")
    empty = archive.parse_info(_info(2, ids=(1,)), "postgresql-sfs")
    assert "holds no backup" in (archive.restore_problem(empty, "src", "/b") or "")
    assert archive.restore_problem(archive.parse_info(_info(0, ids=(1,), backups=1), "postgresql-sfs"), "s", "/b") \
        is None


def test_ready_segments_are_what_the_archiver_had_left_oldest_first() -> None:
    entries = ["000000010000000000000005.ready", "000000010000000000000003.done", "00000002.history.ready",
               "000000010000000000000004.ready", ".ready", "000000010000000000000006.partial.ready", "x.tmp"]
    assert archive.ready_segments(entries) == ["000000010000000000000004", "000000010000000000000005",
                                               "000000010000000000000006.partial", "00000002.history"]


def test_a_backlog_is_reported_only_past_a_normal_moment() -> None:
    few = [(f"00000001000000000000000{n}", 100.0 + n) for n in range(archive.BACKLOG_WARNING_SEGMENTS)]
    assert archive.backlog(few, 200.0) is None
    many = [*few, ("000000010000000000000009", 50.0)]
    assert archive.backlog(many, 200.0) == {"segments": 5, "oldest": "000000010000000000000009",
                                            "oldest_age_s": 150.0}


# -- S3 repositories -------------------------------------------------------------------------------

S3_ENV = {"PGSFS_BACKUP_REPO": "s3://pg-backups/prod/cluster-a", "PGSFS_BACKUP_S3_ENDPOINT": "minio.backup:9000",
          "PGSFS_BACKUP_S3_KEY": "AKIAEXAMPLEKEY", "PGSFS_BACKUP_S3_KEY_SECRET": "secret/with+chars="}  # fmt: skip


def test_an_s3_repository_and_its_config_file() -> None:
    settings, problems = read(**S3_ENV, PGSFS_BACKUP_S3_URI_STYLE="path", PGSFS_BACKUP_S3_CA_FILE="/etc/ca.pem")
    assert problems == [] and settings is not None and settings.s3 is not None
    assert settings.repo_path == "/prod/cluster-a" and settings.location == "s3://pg-backups/prod/cluster-a"
    assert repr(settings.s3.key) == "Secret('***')" and "secret/with" not in repr(settings)
    text = archive.config_text(settings, pgdata="/d", port=5432, superuser="postgres", work_dir="/w")
    for line in ("repo1-type=s3", "repo1-s3-bucket=pg-backups", "repo1-s3-endpoint=minio.backup",
                 "repo1-storage-port=9000", "repo1-s3-region=us-east-1", "repo1-s3-uri-style=path",
                 "repo1-storage-ca-file=/etc/ca.pem", "repo1-s3-key=AKIAEXAMPLEKEY",
                 "repo1-s3-key-secret=secret/with+chars=", "repo1-path=/prod/cluster-a"):  # fmt: skip
        assert f"\n{line}\n" in text, line


def test_s3_credentials_come_from_files_and_are_never_echoed(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("AKIAFROMFILE\n")
    (tmp_path / "secret").write_text("from-file-secret\n")
    env = {**S3_ENV, "PGSFS_BACKUP_S3_KEY": "", "PGSFS_BACKUP_S3_KEY_SECRET": "",
           "PGSFS_BACKUP_S3_KEY_FILE": str(tmp_path / "key"),
           "PGSFS_BACKUP_S3_KEY_SECRET_FILE": str(tmp_path / "secret")}
    settings, problems = read(**env)
    assert problems == [] and settings is not None and settings.s3 is not None
    assert settings.s3.key.reveal() == "AKIAFROMFILE" and settings.s3.key_secret.reveal() == "from-file-secret"
    _, problems = read(**{**S3_ENV, "PGSFS_BACKUP_S3_KEY_SECRET": "two\nlines"})
    assert problems == [("PGSFS_BACKUP_S3_KEY_SECRET", "(hidden)",
                         "a non-empty credential on one line (from the repository's Secret)")]  # fmt: skip


def test_s3_problems_are_all_reported() -> None:
    _, problems = read(PGSFS_BACKUP_REPO="s3://Bad_Bucket/x", PGSFS_BACKUP_S3_ENDPOINT="http://minio",
                       PGSFS_BACKUP_S3_REGION="EU WEST", PGSFS_BACKUP_S3_URI_STYLE="virtual",
                       PGSFS_BACKUP_S3_CA_FILE="ca.pem")  # fmt: skip
    assert [p[0] for p in problems] == ["PGSFS_BACKUP_REPO", "PGSFS_BACKUP_S3_ENDPOINT", "PGSFS_BACKUP_S3_REGION",
                                        "PGSFS_BACKUP_S3_URI_STYLE", "PGSFS_BACKUP_S3_CA_FILE", "PGSFS_BACKUP_S3_KEY",
                                        "PGSFS_BACKUP_S3_KEY_SECRET"]  # fmt: skip
    _, problems = read(PGSFS_BACKUP_REPO="/backups", PGSFS_BACKUP_S3_ENDPOINT="minio")
    assert [p[0] for p in problems] == ["PGSFS_BACKUP_S3_ENDPOINT"] and "s3://" in problems[0][2]
