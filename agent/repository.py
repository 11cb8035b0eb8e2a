"""The backup repository as pgBackRest sees it: read before a new cluster is made, its stanza made
at a primary's start, so archive_command always has somewhere to archive."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Callable

from agent import archive, upgrade
from agent.config import Config
from agent.errors import ArchiveConflict, CommandFailed
from agent.files import fsync_dir
from agent.postgres import child_env
from agent.runner import Runner

# pgBackRest answers from the repository alone; a repository that takes longer is unusable anyway.
TIMEOUT_S = 120.0


def command(config: Config, *args: str, stanza: str | None = None) -> list[str]:
    """`pgbackrest` with this member's configuration file and stanza (or `stanza`), then `args`."""
    assert config.archive is not None
    return ["pgbackrest", f"--config={config.state_dir / archive.CONF_NAME}",
            f"--stanza={stanza or config.archive.stanza}", *args]  # fmt: skip


# What _output reports for a pgBackRest run that did not end within TIMEOUT_S (as timeout(1) does).
NO_ANSWER = 124


def _output(config: Config, runner: Runner, *args: str, stanza: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one pgBackRest run; a repository that does not answer (an S3
    endpoint that hangs) is NO_ANSWER after TIMEOUT_S, like any other failure, never an exception."""
    try:
        done = runner.run(command(config, *args, stanza=stanza), env=child_env(), timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return NO_ANSWER, "", f"pgbackrest gave no answer within {TIMEOUT_S:.0f} s"
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def state(config: Config, runner: Runner, stanza: str | None = None) -> archive.RepositoryState:
    """What `pgbackrest info` says of this member's stanza (or `stanza`); ArchiveConflict when it
    cannot be read."""
    assert config.archive is not None
    stanza = stanza or config.archive.stanza
    code, out, err = _output(config, runner, "info", "--output=json", stanza=stanza)
    try:
        if code != 0:
            raise ValueError(f"exit code {code}: {' '.join(err.split()) or 'no message'}")
        return archive.parse_info(out, stanza)
    except ValueError as exc:
        raise ArchiveConflict(
            f"the backup repository {config.archive.location} could not be read: {exc}",
            hint="check PGSFS_BACKUP_REPO (mounted, writable by uid 999) or unset it; nothing was touched",
        ) from exc


def check_before_init(config: Config, runner: Runner, log: Any, clock: Any) -> None:
    """Refuse to make a new cluster whose archive would go where another cluster's already is."""
    if config.archive is None:
        return
    started = clock()
    found = state(config, runner)
    problem = archive.init_problem(found, config.archive.stanza, config.archive.location)
    if problem is not None:
        raise ArchiveConflict(
            problem,
            hint="to bring that cluster back, restore it from the repository (README: Backups); to start a new "
            "cluster, set PGSFS_BACKUP_STANZA to a new name or PGSFS_BACKUP_REPO to another place; nothing was "
            "touched",
            system_identifiers=[str(i) for i in found.system_identifiers] or None,
        )
    log.info("archive_repository_checked", duration_s=round(clock() - started, 3),
             repo=config.archive.location, stanza=config.archive.stanza, stanza_exists=False)  # fmt: skip


def ensure_stanza(config: Config, runner: Runner, log: Any, clock: Any) -> None:
    """Create this cluster's stanza if it is not there yet (it is read from pg_control: no server
    needed); refuse when the repository holds another cluster under that name. A repository that
    cannot be reached is only logged: its outage must not keep the primary down (archiving then
    fails where postgres and `archive_backlog` say so, and the next start tries again)."""
    if config.archive is None:
        return
    started = clock()
    code, _, err = _output(config, runner, "stanza-create", "--no-online")
    problem = archive.stanza_create_problem(code, err)
    if code == archive.STANZA_MISMATCH_CODE and _upgrade_stanza(config, runner, log, clock, started):
        return
    if problem is not None and code != archive.STANZA_MISMATCH_CODE:
        log.warning("archive_stanza_unchecked", duration_s=round(clock() - started, 3), error=problem,
                    repo=config.archive.location, stanza=config.archive.stanza,
                    hint="archive_command fails until the repository answers: check its mount, permissions "
                    "(uid 999) or endpoint and credentials")  # fmt: skip
        return
    if problem is not None:
        raise ArchiveConflict(
            problem,
            hint="archive_command would fail at every segment and WAL would pile up: point PGSFS_BACKUP_REPO or "
            "PGSFS_BACKUP_STANZA at this cluster's own archive (a new name starts a new one), or unset "
            "PGSFS_BACKUP_REPO; the data is untouched",
        )
    log.info("archive_stanza_ready", duration_s=round(clock() - started, 3), repo=config.archive.location,
             stanza=config.archive.stanza)  # fmt: skip


def _upgrade_stanza(config: Config, runner: Runner, log: Any, clock: Any, started: float) -> bool:
    """The stanza holds the cluster this one was upgraded from (agent/upgrade.py): `stanza-upgrade`,
    so the archive goes on under the new major. True when that was the case (upgraded, or logged when
    pgBackRest failed: the start goes on, as for an unreachable repository); False for a stanza of
    any other cluster, which stays a refusal."""
    assert config.archive is not None
    origin = upgrade.recorded_origin(config.state_dir, config.pgdata)
    if origin is None:
        return False
    try:
        found = state(config, runner)
    except ArchiveConflict:
        return False
    if origin.system_identifier not in found.system_identifiers:
        return False
    code, _, err = _output(config, runner, "stanza-upgrade", "--no-online")
    fields = {"duration_s": round(clock() - started, 3), "repo": config.archive.location,
              "stanza": config.archive.stanza, "upgraded_from": str(origin.system_identifier)}  # fmt: skip
    if code != 0:
        log.warning("archive_stanza_unchecked", **fields, error=" ".join(err.split()) or f"exit code {code}",
                    hint="the stanza still names the cluster before the major upgrade: archive_command fails until "
                    "`pgbackrest stanza-upgrade` succeeds (the next start tries again)")  # fmt: skip
        return True
    log.info("archive_stanza_upgraded", **fields,
             note="the archive goes on under the new major; take a full backup (pg-sfs-agent backup --type full)")
    return True


def check_restorable(config: Config, runner: Runner) -> archive.RepositoryState:
    """The stanza PGSFS_RESTORE_FROM names, with a backup in it; ArchiveConflict otherwise."""
    assert config.archive is not None and config.archive.restore_from is not None
    source = config.archive.restore_from
    found = state(config, runner, source)
    problem = archive.restore_problem(found, source, config.archive.location)
    if problem is not None:
        raise ArchiveConflict(problem, hint="check PGSFS_RESTORE_FROM and PGSFS_BACKUP_REPO (`pgbackrest info` lists "
                              "the stanzas); nothing was touched")  # fmt: skip
    return found


def restore(config: Config, runner: Runner, datadir: Path, on_tick: Callable[[float], None]) -> None:
    """pgBackRest restores the newest backup of PGSFS_RESTORE_FROM into `datadir` (made if missing).

    `--type=none`: it writes recovery.signal but no recovery settings; the agent writes those itself
    (archive.recovery_settings), where a clone never copies them.
    """
    assert config.archive is not None and config.archive.restore_from is not None
    done = runner.run(
        command(config, "restore", "--type=none", f"--pg1-path={datadir}", stanza=config.archive.restore_from),
        env=child_env(),
        on_tick=on_tick,
    )
    if done.returncode != 0:
        message = " ".join(done.stderr.decode(errors="replace").split()) or "no message"
        raise CommandFailed(f"pgbackrest restore failed with exit code {done.returncode}: {message}",
                            hint="read pgBackRest's message; the partial restore beside PGDATA is removed at the next "
                            "start, and PGDATA was not touched")  # fmt: skip


def check_archive_destination(config: Config, runner: Runner, source: archive.RepositoryState) -> None:
    """A restore into another stanza than its source: that stanza must be new, or the same cluster's."""
    assert config.archive is not None
    dest = state(config, runner)
    foreign = set(dest.system_identifiers) - set(source.system_identifiers)
    if dest.exists and foreign:
        raise ArchiveConflict(
            f"PGSFS_BACKUP_STANZA={config.archive.stanza} already holds another cluster's archive (system identifier "
            f"{', '.join(str(i) for i in sorted(foreign))}): the restored cluster could not archive there",
            hint="name a new PGSFS_BACKUP_STANZA for the restored cluster; nothing was touched",
        )


def push_ready(config: Config, runner: Runner, pgdata: Path, log: Any, clock: Any, beat: Callable[[], None]) -> None:
    """Push the WAL this member marked ready but never archived, before it starts in recovery.

    A primary killed (or whose archive failed) and restarted as a standby holds segments nobody
    archived: the standby it streamed to marked its copies done, and in recovery postgres removes
    them at its next restartpoint. Pushed here, the archive stays continuous across the switch. A
    failure is logged and the start goes on: archiving must not keep a member down.
    """
    if config.archive is None:
        return
    status = pgdata / "pg_wal" / "archive_status"
    try:
        ready = archive.ready_segments(os.listdir(status))
    except OSError:
        return
    if not ready:
        return
    started = clock()
    pushed: list[str] = []
    for name in ready:
        beat()
        code, _, err = _output(config, runner, "archive-push", str(pgdata / "pg_wal" / name))
        if code != 0:
            log.warning("archive_push_failed", segment=name, pushed=len(pushed), left=len(ready) - len(pushed),
                        error=" ".join(err.split()) or f"exit code {code}",
                        hint="these segments are not in the archive, and recovery removes them: a restore past them "
                        "will stop there; fix the repository, then take a new backup")  # fmt: skip
            return
        # As postgres' archiver marks it: archived, so the segment may be recycled.
        os.replace(status / f"{name}.ready", status / f"{name}.done")
        pushed.append(name)
    fsync_dir(status)
    log.info("archive_backlog_pushed", duration_s=round(clock() - started, 3), segments=len(pushed),
             first=pushed[0], last=pushed[-1])  # fmt: skip


def report_backlog(config: Config, pgdata: Path, log: Any, now: float) -> None:
    """At a primary's start: warn when many segments wait for the archive (it is failing or behind)."""
    if config.archive is None:
        return
    status = pgdata / "pg_wal" / "archive_status"
    ready: list[tuple[str, float]] = []
    try:
        for entry in os.scandir(status):
            if entry.name.endswith(".ready"):
                ready.append((entry.name[: -len(".ready")], entry.stat().st_mtime))
    except OSError:
        return
    found = archive.backlog(ready, now)
    if found is not None:
        log.warning("archive_backlog", **found, repo=config.archive.location,
                    hint="archive_command has not archived these yet: read postgres' log (\"archive command "
                    "failed\") and pg_stat_archiver; they stay in pg_wal until archived, so the volume fills if this "
                    "goes on")  # fmt: skip
