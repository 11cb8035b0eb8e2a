"""WAL archiving and base backups with pgBackRest: the settings, the files they become, what its answers mean.

pgBackRest does the work (parallel, compressed, checksummed copies; retention; restore to a target);
the agent only configures it on every member and reads its answers. Everything here is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from agent.secret import Secret

# The file, in the agent's state directory, that every pgBackRest command reads (0600: credentials go there).
CONF_NAME = "pgbackrest.conf"
# The state directory's record of a restore in progress (`restore_record`).
RESTORE_RECORD = "restore.json"
# pgBackRest's "backup and archive info files exist but do not match the database".
STANZA_MISMATCH_CODE = 28
_STANZA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
BACKUP_TYPES = ("full", "diff", "incr")


# PGSFS_RESTORE_TARGET's kinds and the recovery setting each becomes.
_TARGET_SETTING = {"time": "recovery_target_time", "lsn": "recovery_target_lsn", "name": "recovery_target_name"}
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
                   r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)$")  # fmt: skip
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_RESTORE_POINT = re.compile(r"^[^'\\\x00-\x1f]{1,63}$")


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore's recovery stops: `latest` (the end of the archive), `immediate` (the end of
    the backup), or a time, an LSN or a restore point's name."""

    kind: str
    value: str = ""

    def __str__(self) -> str:
        return f"{self.kind}={self.value}" if self.value else self.kind


@dataclass(frozen=True)
class S3Repository:
    """An S3-compatible bucket as the repository (PGSFS_BACKUP_REPO=s3://BUCKET/PATH and PGSFS_BACKUP_S3_*)."""

    bucket: str
    endpoint: str
    port: int | None
    region: str
    uri_style: str
    ca_file: str | None
    key: Secret
    key_secret: Secret


@dataclass(frozen=True)
class ArchiveSettings:
    """Where the archive and the backups go, how long they are kept (PGSFS_BACKUP_*), and the stanza
    an empty primary is restored from instead of initialised (PGSFS_RESTORE_*)."""

    repo_path: str
    stanza: str
    retention_full: int
    archive_timeout: int
    process_max: int
    restore_from: str | None = None
    restore_target: RestoreTarget = RestoreTarget("latest")
    # With an S3 repository, repo_path is the path inside the bucket and `s3` says where the bucket is.
    s3: S3Repository | None = None

    @property
    def location(self) -> str:
        """The repository as PGSFS_BACKUP_REPO names it (never with credentials)."""
        return f"s3://{self.s3.bucket}{self.repo_path}" if self.s3 is not None else self.repo_path


def read(env: Mapping[str, str], *, statefulset: str, pgdata: PurePosixPath) -> tuple[
        ArchiveSettings | None, list[tuple[str, str | None, str]]]:  # fmt: skip
    """PGSFS_BACKUP_REPO and the settings beside it: (None, []) when archiving is off, else the
    settings; every problem as (variable, value, what is expected)."""
    problems: list[tuple[str, str | None, str]] = []
    raw_repo = env.get("PGSFS_BACKUP_REPO", "").strip()
    section = ("PGSFS_BACKUP_STANZA", "PGSFS_BACKUP_RETENTION_FULL", "PGSFS_ARCHIVE_TIMEOUT", "PGSFS_BACKUP_PROCESSES",
               *_RESTORE_VARIABLES)  # fmt: skip
    others = [name for name in section if env.get(name, "").strip()]
    if not raw_repo:
        if others:
            problems.append((others[0], env.get(others[0]), "unset unless PGSFS_BACKUP_REPO is set (archiving is off)"))
        return None, problems
    s3 = None
    if raw_repo.startswith("s3://"):
        bucket, _, inside = raw_repo[len("s3://"):].partition("/")
        s3 = _s3(env, bucket, problems)
        raw_repo = "/" + inside.strip("/")
    elif any(env.get(name, "").strip() for name in _S3_VARIABLES):
        name = next(name for name in _S3_VARIABLES if env.get(name, "").strip())
        problems.append((name, "(set)", "unset unless PGSFS_BACKUP_REPO is an s3:// repository"))
    repo = PurePosixPath(raw_repo)
    if s3 is not None:
        if ".." in repo.parts:
            problems.append(("PGSFS_BACKUP_REPO", env.get("PGSFS_BACKUP_REPO"), "s3://BUCKET/PATH without '..'"))
    elif not repo.is_absolute() or repo == PurePosixPath("/") or ".." in repo.parts:
        problems.append(("PGSFS_BACKUP_REPO", raw_repo,
                         "the absolute path of a pgBackRest repository on a volume of its own (not /)"))  # fmt: skip
    elif repo == pgdata or pgdata in repo.parents or repo in pgdata.parents:
        problems.append(("PGSFS_BACKUP_REPO", raw_repo, "a path outside PGDATA and not above it: a restore "
                         "empties PGDATA, and a backup must not copy itself"))  # fmt: skip
    stanza = env.get("PGSFS_BACKUP_STANZA", "").strip() or statefulset
    if not _STANZA.fullmatch(stanza):
        problems.append(("PGSFS_BACKUP_STANZA", stanza, "1 to 63 letters, digits, '_', '.' or '-'"))
    retention = _whole(env, "PGSFS_BACKUP_RETENTION_FULL", 2, 1, 9999, problems)
    timeout = _whole(env, "PGSFS_ARCHIVE_TIMEOUT", 60, 1, 86400, problems)
    processes = _whole(env, "PGSFS_BACKUP_PROCESSES", 2, 1, 64, problems)
    restore_from, target = _restore(env, stanza, problems)
    if problems:
        return None, problems
    return ArchiveSettings(str(repo), stanza, retention, timeout, processes, restore_from, target, s3), []


_S3_VARIABLES = tuple(
    f"PGSFS_BACKUP_S3_{name}"
    for name in ("ENDPOINT", "REGION", "URI_STYLE", "CA_FILE", "KEY", "KEY_FILE", "KEY_SECRET", "KEY_SECRET_FILE")
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENDPOINT = re.compile(r"^(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?$")
_REGION = re.compile(r"^[a-z0-9-]{1,40}$")


def _s3(env: Mapping[str, str], bucket: str, problems: list[tuple[str, str | None, str]]) -> S3Repository | None:
    """The PGSFS_BACKUP_S3_* settings of an s3:// repository; the credentials from X or X_FILE."""
    found = len(problems)
    if not _BUCKET.fullmatch(bucket):
        problems.append(("PGSFS_BACKUP_REPO", f"s3://{bucket}/...", "s3://BUCKET/PATH with an S3 bucket name "
                         "(3 to 63 lower case letters, digits, '.' or '-')"))  # fmt: skip
    raw_endpoint = env.get("PGSFS_BACKUP_S3_ENDPOINT", "").strip()
    endpoint = _ENDPOINT.fullmatch(raw_endpoint)
    if endpoint is None or (endpoint.group("port") and not 0 < int(endpoint.group("port")) < 65536):
        problems.append(("PGSFS_BACKUP_S3_ENDPOINT", raw_endpoint or None,
                         "the S3 endpoint's host[:port], like s3.eu-west-1.amazonaws.com or minio:9000"))
    region = env.get("PGSFS_BACKUP_S3_REGION", "").strip() or "us-east-1"
    if not _REGION.fullmatch(region):
        problems.append(("PGSFS_BACKUP_S3_REGION", region, "a region name like eu-west-1"))
    style = env.get("PGSFS_BACKUP_S3_URI_STYLE", "").strip().lower() or "host"
    if style not in ("host", "path"):
        problems.append(("PGSFS_BACKUP_S3_URI_STYLE", style, "host (bucket.endpoint) or path (endpoint/bucket)"))
    ca_file = env.get("PGSFS_BACKUP_S3_CA_FILE", "").strip() or None
    if ca_file is not None and not ca_file.startswith("/"):
        problems.append(("PGSFS_BACKUP_S3_CA_FILE", ca_file, "the absolute path of a PEM file of CA certificates"))
    key = _credential(env, "PGSFS_BACKUP_S3_KEY", problems)
    key_secret = _credential(env, "PGSFS_BACKUP_S3_KEY_SECRET", problems)
    if len(problems) > found or endpoint is None:
        return None
    port = int(endpoint.group("port")) if endpoint.group("port") else None
    return S3Repository(bucket, endpoint.group("host"), port, region, style, ca_file, key, key_secret)


def _credential(env: Mapping[str, str], name: str, problems: list[tuple[str, str | None, str]]) -> Secret:
    """NAME or the content of the file NAME_FILE (trailing newlines dropped), never echoed."""
    path = env.get(f"{name}_FILE", "").strip()
    value = env.get(name, "")
    if path and value:
        problems.append((f"{name} and {name}_FILE", "(both set)", "only one of them"))
        return Secret("")
    if path:
        try:
            value = Path(path).read_bytes().decode("utf-8").rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((f"{name}_FILE", path, f"a readable UTF-8 file ({getattr(exc, 'strerror', None) or exc})"))
            return Secret("")
    if not value or any(ch in value for ch in "\x00\r\n"):
        problems.append((f"{name}_FILE" if path else name, "(hidden)" if value else None,
                         "a non-empty credential on one line (from the repository's Secret)"))  # fmt: skip
        return Secret("")
    return Secret(value)


_RESTORE_VARIABLES = ("PGSFS_RESTORE_FROM", "PGSFS_RESTORE_TARGET", "PGSFS_RESTORE_CONTINUE_ARCHIVE")


def _restore(env: Mapping[str, str], stanza: str, problems: list[tuple[str, str | None, str]]
             ) -> tuple[str | None, RestoreTarget]:  # fmt: skip
    """PGSFS_RESTORE_FROM, _TARGET and _CONTINUE_ARCHIVE: which stanza, to where, and whether the
    restored cluster may archive on into the stanza it came from."""
    source = env.get("PGSFS_RESTORE_FROM", "").strip() or None
    raw_target = env.get("PGSFS_RESTORE_TARGET", "").strip()
    raw_continue = env.get("PGSFS_RESTORE_CONTINUE_ARCHIVE", "").strip().lower()
    target = RestoreTarget("latest")
    if source is None:
        for name, value in (("PGSFS_RESTORE_TARGET", raw_target), ("PGSFS_RESTORE_CONTINUE_ARCHIVE", raw_continue)):
            if value:
                problems.append((name, value, "unset unless PGSFS_RESTORE_FROM names the stanza to restore from"))
        return None, target
    if not _STANZA.fullmatch(source):
        problems.append(("PGSFS_RESTORE_FROM", source, "a stanza name: 1 to 63 letters, digits, '_', '.' or '-'"))
    if raw_target:
        parsed = parse_target(raw_target)
        if parsed is None:
            problems.append(("PGSFS_RESTORE_TARGET", raw_target, "latest, immediate, time=<YYYY-MM-DD HH:MM:SS+00>, "
                             "lsn=<X/X> or name=<restore point>"))  # fmt: skip
        else:
            target = parsed
    if raw_continue not in ("", "true", "false", "yes", "no", "on", "off", "1", "0"):
        problems.append(("PGSFS_RESTORE_CONTINUE_ARCHIVE", raw_continue, "true or false"))
    elif source == stanza and raw_continue not in ("true", "yes", "on", "1"):
        problems.append(("PGSFS_RESTORE_FROM", source,
                         "another stanza than PGSFS_BACKUP_STANZA, or PGSFS_RESTORE_CONTINUE_ARCHIVE=true: the "
                         "restored cluster archives into PGSFS_BACKUP_STANZA, and two clusters must never write one "
                         "archive; continue it only when the cluster that wrote it is gone for good"))  # fmt: skip
    return source, target


def parse_target(text: str) -> RestoreTarget | None:
    """PGSFS_RESTORE_TARGET as a RestoreTarget, or None when it is not one."""
    if text in ("latest", "immediate"):
        return RestoreTarget(text)
    kind, sep, value = text.partition("=")
    value = value.strip()
    checks = {"time": _TIME, "lsn": _LSN, "name": _RESTORE_POINT}
    if not sep or kind.strip() not in checks or not checks[kind.strip()].fullmatch(value):
        return None
    return RestoreTarget(kind.strip(), value)


def _whole(env: Mapping[str, str], name: str, default: int, lo: int, hi: int,
           problems: list[tuple[str, str | None, str]]) -> int:  # fmt: skip
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if re.fullmatch(r"[0-9]+", raw) and lo <= int(raw) <= hi:
        return int(raw)
    problems.append((name, raw, f"a whole number from {lo} to {hi}"))
    return default


def config_text(settings: ArchiveSettings, *, pgdata: str, port: int, superuser: str, work_dir: str) -> str:
    """pgbackrest.conf: the repository, retention, and this member's PGDATA and port under its stanza
    (and under the stanza a restore reads from).

    Its log goes to the caller (postgres' log for archive-push, the agent's for the rest), never to
    a file; its locks live in `work_dir`, on the volume, since the image's root is read-only.
    """
    lines = [
        "# Managed by pg-sfs-agent and rewritten at every start: do not edit (PGSFS_BACKUP_* set it).",
        "[global]",
        *_s3_lines(settings.s3),
        f"repo1-path={settings.repo_path}",
        f"repo1-retention-full={settings.retention_full}",
        f"process-max={settings.process_max}",
        "compress-type=lz4",
        "log-level-file=off",
        "log-level-console=off",
        "log-level-stderr=warn",
        f"lock-path={work_dir}",
        # A start-backup waits for a checkpoint; fast does it at once instead of at the next one.
        "start-fast=y",
    ]
    # The cluster's own stanza, and the one a restore reads from: the same PGDATA under each.
    for stanza in dict.fromkeys((settings.stanza, settings.restore_from or settings.stanza)):
        lines += ["", f"[{stanza}]", f"pg1-path={pgdata}", f"pg1-port={port}", f"pg1-user={superuser}"]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError("a pgbackrest.conf value holds a line break")
    return "\n".join(lines) + "\n"


def _s3_lines(s3: S3Repository | None) -> list[str]:
    """The repository's S3 options; its credentials go only here, in the 0600 file."""
    if s3 is None:
        return []
    return [
        "repo1-type=s3",
        f"repo1-s3-bucket={s3.bucket}",
        f"repo1-s3-endpoint={s3.endpoint}",
        *([f"repo1-storage-port={s3.port}"] if s3.port else []),
        f"repo1-s3-region={s3.region}",
        f"repo1-s3-uri-style={s3.uri_style}",
        *([f"repo1-storage-ca-file={s3.ca_file}"] if s3.ca_file else []),
        f"repo1-s3-key={s3.key.reveal()}",
        f"repo1-s3-key-secret={s3.key_secret.reveal()}",
    ]


def server_settings(settings: ArchiveSettings, conf_path: str) -> dict[str, str]:
    """The postgresql.conf settings that archive every WAL segment through pgBackRest.

    archive_mode=on on every member: a standby archives nothing, and the one promoted archives from
    its switch point on (pgBackRest keeps each timeline's history).
    """
    return {
        "archive_mode": "on",
        "archive_command": f"pgbackrest --config={_shell_word(conf_path)} --stanza={settings.stanza} archive-push %p",
        "archive_timeout": f"{settings.archive_timeout}s",
    }


def recovery_settings(settings: ArchiveSettings, source: str, target: RestoreTarget, conf_path: str
                      ) -> dict[str, str]:  # fmt: skip
    """The settings of a restored cluster's archive recovery: WAL from the stanza it came from, up to
    `target`, then promotion. Written only while recovery.signal is there, in the agent's own file
    (never postgresql.auto.conf, which a clone copies: a standby with a recovery target would stop
    there and promote itself)."""
    out = {"restore_command": f"pgbackrest --config={_shell_word(conf_path)} --stanza={source} "
                              'archive-get %f "%p"'}  # fmt: skip
    if target.kind == "immediate":
        out["recovery_target"] = "immediate"
    elif target.kind in _TARGET_SETTING:
        out[_TARGET_SETTING[target.kind]] = target.value
    if target.kind != "latest":
        out["recovery_target_action"] = "promote"
    return out


def restore_record(source: str, target: RestoreTarget, backup: str | None) -> str:
    """The state directory's record of a restore, written before the restored data becomes PGDATA:
    later starts read the recovery settings from it until the recovery ended."""
    return json.dumps({"stanza": source, "target": str(target), "backup": backup}, sort_keys=True) + "\n"


def read_restore_record(text: str) -> tuple[str, RestoreTarget] | None:
    """(stanza, target) from a restore record, or None when it is not one."""
    try:
        data = json.loads(text)
        stanza, target = str(data["stanza"]), parse_target(str(data["target"]))
    except (ValueError, KeyError, TypeError):
        return None
    return (stanza, target) if target is not None and _STANZA.fullmatch(stanza) else None


def restore_problem(state: RepositoryState, source: str, repo: str) -> str | None:
    """Why nothing can be restored from this stanza, if nothing can."""
    if not state.exists:
        return f"the backup repository {repo} holds no stanza {source!r} to restore from ({state.message})"
    if state.backups == 0:
        return f"stanza {source!r} in {repo} holds no backup to restore from ({state.message})"
    return None


def ready_segments(status_entries: list[str]) -> list[str]:
    """The WAL files pg_wal/archive_status marks ready but not yet archived, oldest first (segments,
    history and .partial files alike: what postgres' archiver would have pushed)."""
    return sorted(name[: -len(".ready")] for name in status_entries if name.endswith(".ready") and len(name) > 6)


# More ready segments than this at a primary's start: its archive is failing or far behind.
BACKLOG_WARNING_SEGMENTS = 4


def backlog(ready: list[tuple[str, float]], now: float) -> dict[str, object] | None:
    """What a primary's start says of WAL waiting to be archived (name and mtime of each ready file),
    when there is more than a normal moment's worth; None otherwise."""
    if len(ready) <= BACKLOG_WARNING_SEGMENTS:
        return None
    oldest_name, oldest_time = min(ready, key=lambda item: (item[1], item[0]))
    return {"segments": len(ready), "oldest": oldest_name, "oldest_age_s": round(max(0.0, now - oldest_time), 1)}


def _shell_word(text: str) -> str:
    """`text` as one word for /bin/sh (archive_command runs through it)."""
    if re.fullmatch(r"[A-Za-z0-9_./=:@%+-]+", text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class RepositoryState:
    """What `pgbackrest info` says of this stanza: is it there, for which clusters, with how many backups."""

    exists: bool
    system_identifiers: tuple[int, ...]
    backups: int
    message: str
    # The newest backup: label, type, sizes, when it ran and the WAL it needs (see `_backup_summary`).
    latest: dict[str, object] | None = None


def parse_info(text: str, stanza: str) -> RepositoryState:
    """`pgbackrest info --output=json` for one stanza; ValueError when it is not that."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"pgbackrest info printed no JSON: {exc}") from exc
    entry = next((item for item in data if isinstance(item, dict) and item.get("name") == stanza), None)
    if entry is None:
        raise ValueError(f"pgbackrest info did not mention stanza {stanza!r}")
    status = entry.get("status") or {}
    code = status.get("code")
    ids = tuple(int(db["system-id"]) for db in entry.get("db") or [] if "system-id" in db)
    backups = [item for item in entry.get("backup") or [] if isinstance(item, dict)]
    # Code 1 is "missing stanza path": nothing was ever archived there under this name.
    return RepositoryState(
        exists=code != 1,
        system_identifiers=ids,
        backups=len(backups),
        message=str(status.get("message", "")),
        latest=_backup_summary(backups[-1]) if backups else None,
    )


def _backup_summary(item: dict[str, Any]) -> dict[str, object]:
    """One backup of `pgbackrest info`, as the backup command reports it."""
    info = item.get("info") or {}
    stamps = item.get("timestamp") or {}
    wal = item.get("archive") or {}
    mib = 1024 * 1024

    def when(key: str) -> str | None:
        value = stamps.get(key)
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None

    return {
        "label": item.get("label"),
        "type": item.get("type"),
        "database_mb": round(info.get("size", 0) / mib, 1),
        "repository_mb": round((info.get("repository") or {}).get("delta", 0) / mib, 1),
        "started": when("start"),
        "stopped": when("stop"),
        "wal_start": wal.get("start"),
        "wal_stop": wal.get("stop"),
    }


def init_problem(state: RepositoryState, stanza: str, repo: str) -> str | None:
    """Why a new cluster must not be initialised over this repository's stanza, if it must not.

    Any stanza there belongs to a cluster that existed before this init: archiving a new cluster
    into it would fail forever, and overwriting it would destroy the only way back to that one.
    """
    if not state.exists:
        return None
    ids = ", ".join(str(i) for i in state.system_identifiers) or "unknown"
    return (f"the backup repository {repo} already holds stanza {stanza!r} of another cluster (system identifier "
            f"{ids}, {state.backups} backup(s)); a new cluster would never be archived there")  # fmt: skip


def stanza_create_problem(returncode: int, stderr: str) -> str | None:
    """What a failed `pgbackrest stanza-create` means, or None when it succeeded."""
    if returncode == 0:
        return None
    text = " ".join(stderr.split())
    if returncode == STANZA_MISMATCH_CODE:
        return f"the backup repository holds another cluster's archive under this stanza ({text})"
    return f"pgbackrest stanza-create failed with exit code {returncode}: {text or 'no message'}"
