"""`pg-sfs-agent backup`: a base backup of the running primary into the repository, with pgBackRest.

Run it in the primary's pod (`kubectl exec postgresql-sfs-0 -- pg-sfs-agent backup`), by hand or
from a CronJob. pgBackRest copies PGDATA while the primary runs, checks that the WAL the backup
needs reached the archive, and expires backups past PGSFS_BACKUP_RETENTION_FULL. The summary is
JSON on stdout and one log line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from agent import archive, probe, repository
from agent.config import Config
from agent.errors import BackupFailed
from agent.postgres import child_env
from agent.runner import RunAs, Runner
from agent.usage import parser_for


def parse_args(argv: list[str]) -> argparse.Namespace:
    """backup's arguments; --help prints help and exits 0, anything unknown is a ConfigError."""
    parser = parser_for(
        "backup",
        "Take a base backup of this member, the running primary, into PGSFS_BACKUP_REPO with pgBackRest. "
        "Run it in the primary's pod: kubectl exec postgresql-sfs-0 -- pg-sfs-agent backup.",
    )
    parser.add_argument("--type", choices=archive.BACKUP_TYPES, default="full",
                        help="full (the default), diff (changes since the last full) or incr (since the last "
                        "backup); pgBackRest takes a full one when there is none to build on")  # fmt: skip
    return parser.parse_args(argv)


def _primary_socket(config: Config) -> str:
    """The socket directory of this pod's running primary; BackupFailed when it is not one."""
    import psycopg

    running = probe.postmaster_status(config.pgdata)
    if running is None:
        raise BackupFailed(f"postgres is not running on {config.pgdata} in this pod",
                           hint="run the backup in the pod of the running primary")  # fmt: skip
    socket_dir = os.path.dirname(probe.own_socket(config.pgdata, running[1], config.port))
    try:
        with psycopg.connect(host=socket_dir, hostaddr="", port=config.port, user=config.superuser,
                             password=config.superuser_password.reveal(), dbname="postgres",
                             connect_timeout=10, autocommit=True) as conn:  # fmt: skip
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as exc:
        raise BackupFailed(f"this pod's postgres did not answer: {' '.join(str(exc).split())}",
                           hint="wait until it is Ready, then run the backup again") from exc  # fmt: skip
    if row is None or row[0]:
        raise BackupFailed(
            f"{config.identity.pod_name} is a standby: backups are taken from the primary",
            hint=f"run it in the primary's pod: kubectl exec {config.identity.primary_pod} -- pg-sfs-agent backup",
        )
    return socket_dir


def run(options: argparse.Namespace, config: Config, account: RunAs | None, log: Any, clock: Any) -> int:
    """Take the backup and report it; pgBackRest runs as postgres (uid 999) so the repository stays its own."""
    if config.archive is None:
        raise BackupFailed("archiving is off in this pod: PGSFS_BACKUP_REPO is not set",
                           hint="set PGSFS_BACKUP_REPO (README: Backups) and roll the StatefulSet")  # fmt: skip
    socket_dir = _primary_socket(config)
    runner = Runner(run_as=account)
    started = clock()
    repository.ensure_stanza(config, runner, log, clock)
    done = runner.run(
        repository.command(config, "backup", f"--type={options.type}", f"--pg1-socket-path={socket_dir}"),
        env=child_env(),
    )
    if done.returncode != 0:
        message = " ".join(done.stderr.decode(errors="replace").split()) or "no message"
        raise BackupFailed(f"pgbackrest backup failed with exit code {done.returncode}: {message}",
                           hint="read pgBackRest's message; `pgbackrest info` (with --config and --stanza as in "
                           "archive_command) shows the repository; nothing in PGDATA was changed")  # fmt: skip
    found = repository.state(config, runner)
    summary = {"stanza": config.archive.stanza, "repo": config.archive.location, "backups": found.backups,
               **(found.latest or {})}  # fmt: skip
    log.info("backup_done", duration_s=round(clock() - started, 3), **summary)
    print(json.dumps(summary, indent=2, sort_keys=True))
    sys.stdout.flush()
    return 0
