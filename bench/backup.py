"""10. Backups and restores: `pg-sfs-agent backup` and the agent's restore against bare pgBackRest, and
how far an idle primary's archive lags behind its last commit (the recovery point)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench import clone
from bench.common import AGENT, Row, Section, Series, agent_events, event, parse_time_output, pod_env, timed
from bench.context import AS_POSTGRES, Ctx
from bench.members import Member
from bench.members import start as start_member
from bench.sandbox import Sandbox

POD = "postgresql-sfs-0"
STANZA = "postgresql-sfs"
TIMEOUT = 900.0
# The agent's default PGSFS_ARCHIVE_TIMEOUT: the recovery point of an idle primary.
ARCHIVE_TIMEOUT_S = 60


class ArchivingMember(Member):
    """The primary, archiving into the bench's repository."""

    repo: Path

    def env(self, **kw: Any) -> dict[str, str]:
        """The pod's environment with PGSFS_BACKUP_REPO."""
        return pod_env(self.pod, self.host.ip, self.volume, extra={"PGSFS_BACKUP_REPO": str(self.repo)}, **kw)


def _wall(done: Any, what: str) -> float:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-1500:]}")
    return parse_time_output(done.stderr).wall


def _backups(sb: Sandbox, pg: ArchivingMember, conf: Path, series: dict[str, Series], i: int) -> None:
    agent = [str(AGENT), "backup"]
    bare = [*AS_POSTGRES, "pgbackrest", f"--config={conf}", f"--stanza={STANZA}", "backup", "--type=full",
            "--pg1-socket-path=/run/postgresql"]  # fmt: skip
    for kind in (("agent", "bare") if i % 2 == 0 else ("bare", "agent")):
        argv = agent if kind == "agent" else bare
        os.sync()  # each starts with nothing left to flush from the one before
        series[f"backup_{kind}"].add(_wall(sb.run_beside(pg.pid(), timed(argv), pg.env(), timeout=TIMEOUT), kind))


def _restores(sb: Sandbox, ctx: Ctx, pg: ArchivingMember, conf: Path, series: dict[str, Series], i: int) -> None:
    for kind in (("agent", "bare") if i % 2 == 0 else ("bare", "agent")):
        host = sb.pod(f"bk-r{kind}{i}")
        vol = sb.volume(f"bk-r{kind}{i}", postgres_owned=kind == "bare")
        os.sync()  # the backup just written, or the restore before, is not flushed on this one's time
        try:
            if kind == "agent":
                env = pod_env(POD, host.ip, vol, stub=True, extra={
                    "PGSFS_BACKUP_REPO": str(pg.repo), "PGSFS_RESTORE_FROM": STANZA,
                    "PGSFS_RESTORE_CONTINUE_ARCHIVE": "true"})  # fmt: skip
                done = sb.run(host, timed([str(AGENT), "postgres"]), env, timeout=TIMEOUT)
                (ctx.logdir / f"restore-{i}.log").write_text(done.stderr)
                series["restore_agent"].add(_wall(done, "the agent's restore"))
                phase = event(agent_events(done.stderr), "restore")
                if phase is not None:
                    series["restore_phase"].add(float(phase["duration_s"]))
            else:
                argv = [*AS_POSTGRES, "pgbackrest", f"--config={conf}", f"--stanza={STANZA}",
                        f"--lock-path={vol}", "restore", "--type=none", f"--pg1-path={vol / 'pgdata'}"]  # fmt: skip
                series["restore_bare"].add(_wall(sb.run(host, timed(argv), pod_env(POD, host.ip, vol),
                                                        timeout=TIMEOUT), "pgbackrest restore"))  # fmt: skip
        finally:
            sb.remove(host)
            sb.drop_volume(vol)


def _recovery_point(sb: Sandbox, pg: ArchivingMember) -> float:
    """Seconds from an idle primary's last commit until the segment holding it is archived."""
    committed = float(clone._psql(sb, pg, "CREATE TABLE IF NOT EXISTS rpo (t timestamptz); "
                                  "INSERT INTO rpo VALUES (clock_timestamp()); "
                                  "SELECT extract(epoch FROM max(t)) FROM rpo"))  # fmt: skip
    deadline = time.monotonic() + ARCHIVE_TIMEOUT_S * 3
    while time.monotonic() < deadline:  # bounded: three archive timeouts
        archived = clone._psql(sb, pg, "SELECT coalesce(extract(epoch FROM last_archived_time), 0) "
                               "FROM pg_stat_archiver")  # fmt: skip
        if float(archived) >= committed:
            return float(archived) - committed
        time.sleep(0.5)
    raise RuntimeError(f"the last commit was not archived within {ARCHIVE_TIMEOUT_S * 3} s")


def run(sb: Sandbox, ctx: Ctx) -> Section:
    """A primary archiving into a repository on pgbench data; backups and restores in turn, then the RPO."""
    sec = Section("backup", f"10. Backups and restores with pgBackRest (pgbench -i -s {ctx.pgbench_scale})")
    pg = ArchivingMember(pod=POD, host=sb.pod("bk0"), volume=sb.volume("bk0"))
    pg.repo = sb.volume("bk-repo", postgres_owned=True) / "pgbackrest"
    conf = pg.volume / ".pg-sfs-agent" / "pgbackrest.conf"
    start_member(sb, ctx, pg)
    try:
        info = clone.prepare(sb, ctx, pg)
        sec.data.update(info, pgbench_scale=ctx.pgbench_scale)
        ctx.say(f"backup: {info['pgdata_mb']:.0f} MB PGDATA")
        series = {k: Series() for k in ("backup_agent", "backup_bare", "restore_agent", "restore_bare",
                                        "restore_phase")}  # fmt: skip
        for i in range(ctx.runs):
            ctx.check_time(120)
            _backups(sb, pg, conf, series, i)
            _restores(sb, ctx, pg, conf, series, i)
            ctx.say("backup run {}: {}".format(i + 1, ", ".join(f"{k} {s.values[-1]:.2f}s" for k, s in series.items()
                                                                  if s.values)))  # fmt: skip
        mb = info["pgdata_mb"]
        backup = Row("backup_vs_pgbackrest", "pg-sfs-agent backup (full)", "s", series["backup_agent"],
                     series["backup_bare"], "pgbackrest backup --type=full, same config", goal="<= 1.05x floor",
                     note=f"{mb / (series['backup_agent'].median or 1):.0f} MB/s")  # fmt: skip
        backup.ok = backup.ratio is not None and backup.ratio <= 1.05
        restore = Row("restore_vs_pgbackrest", "restore (agent start to exec)", "s", series["restore_agent"],
                      series["restore_bare"], "pgbackrest restore --type=none, same config", goal="<= 1.05x floor",
                      note=f"pgBackRest phase inside the agent {series['restore_phase'].median or 0:.2f} s",
                      )  # fmt: skip
        restore.ok = restore.ratio is not None and restore.ratio <= 1.05
        sec.rows += [backup, restore]
        ctx.check_time(ARCHIVE_TIMEOUT_S * 3 + 10)
        lag = Series()
        lag.add(_recovery_point(sb, pg))
        goal = f"<= {ARCHIVE_TIMEOUT_S + 5} s (PGSFS_ARCHIVE_TIMEOUT {ARCHIVE_TIMEOUT_S} + the push)"
        rpo = Row("archive_recovery_point", "idle primary: last commit to archived", "s", lag, goal=goal)
        rpo.ok = (lag.median or 0) <= ARCHIVE_TIMEOUT_S + 5
        sec.rows.append(rpo)
        sec.notes.append("backups alternate with the bare command on the same running primary and repository "
                         "(retention 2 full: each expires the oldest); restores go to fresh volumes; the agent's "
                         "restore runs with the stub postgres, so it ends at the exec, before recovery")  # fmt: skip
    finally:
        pg.stop()
    return sec
