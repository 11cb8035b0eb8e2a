"""6. Probes: wall time and peak memory of `pg-sfs-agent probe X` against a running primary and replica."""

from __future__ import annotations

from bench.common import AGENT, FLOORS, Row, Section, Series, Timing, parse_time_output, timed
from bench.context import AS_POSTGRES, Ctx
from bench.members import Member
from bench.sandbox import Sandbox

KINDS = ("startup", "readiness", "liveness")
GOAL_S = 0.15


def _timed(sb: Sandbox, member: Member, argv: list[str]) -> Timing:
    """Run argv beside the member's postmaster (its network and mount namespaces) under /usr/bin/time."""
    done = sb.run_beside(member.pid(), timed(argv), member.env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout} {done.stderr[-500:]}")
    return parse_time_output(done.stderr)


def run(sb: Sandbox, ctx: Ctx, primary: Member, replica: Member) -> Section:
    """Each probe kind on each role, interleaved with its floor (PostgreSQL's own check)."""
    sec = Section("probes", "6. Probes (exec'd as the kubelet does, beside the running postmaster)")
    count = max(ctx.runs * 3, 10)
    for role, member in (("primary", primary), ("replica", replica)):
        for kind in KINDS:
            ctx.check_time(10)
            wall, mem, cpu, floor_wall = Series(), Series(), Series(), Series()
            for _ in range(count):
                got = _timed(sb, member, [str(AGENT), "probe", kind])
                wall.add(got.wall)
                mem.add(got.peak_mb)
                cpu.add(got.cpu)
                floor_wall.add(_timed(sb, member, [*AS_POSTGRES, "bash", str(FLOORS / "probe.sh"), kind, role]).wall)
            row = Row(
                f"probe_{kind}_{role}",
                f"probe {kind} ({role})",
                "s",
                wall,
                floor_wall,
                {"startup": "pg_ctl status", "liveness": "pg_ctl status"}.get(
                    kind, "pg_isready" if role == "primary" else "psql pg_stat_wal_receiver"
                ),
                goal=f"<= {GOAL_S} s",
                extra={"peak_rss_mb": mem.to_dict(), "cpu_s": cpu.to_dict()},
            )
            row.ok = wall.median is not None and wall.median <= GOAL_S
            row.note = f"peak RSS {mem.median:.0f} MB, CPU {cpu.median:.3f} s"
            sec.rows.append(row)
        ctx.say(f"probes on the {role}: " + ", ".join(f"{r.label} {r.agent.median:.3f}s" for r in sec.rows[-3:]))
    sec.notes.append(f"{count} runs per probe, in the pod's namespaces; GNU time (10 ms resolution; CPU = user + sys)")
    return sec
