"""5. Restart path: agent start to the exec of postgres on an existing PGDATA (stub postgres ends it there)."""

from __future__ import annotations

from bench.common import (
    AGENT,
    FLOORS,
    Row,
    Section,
    Series,
    agent_events,
    event,
    fqdn,
    parse_time_output,
    timed,
)
from bench.context import Ctx
from bench.members import Member
from bench.sandbox import Sandbox

GOAL_S = 0.6
GOAL_MB = 64.0


def _timed(sb: Sandbox, member: Member, argv: list[str], **env: str) -> tuple[float, float, float, str]:
    """Run argv in the member's pod under /usr/bin/time, stub postgres first on PATH."""
    done = sb.run(member.host, timed(argv), member.env(stub=True, extra=env))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-1500:]}")
    got = parse_time_output(done.stderr)
    return got.wall, got.peak_mb, got.cpu, done.stderr


def measure(sb: Sandbox, ctx: Ctx, member: Member, role: str, label: str, key: str) -> Row:
    """Agent and floor alternately on the member's (stopped) data directory."""
    wall, mem, cpu, floor_wall, floor_mem, to_exec = Series(), Series(), Series(), Series(), Series(), Series()
    floor_env = {"ROLE": role, "PRIMARY_HOST": fqdn("postgresql-sfs-0"), "SLOT": member.pod.replace("-", "_")}
    count = max(ctx.runs, 5)
    for _ in range(count):
        ctx.check_time(10)
        seconds, mb, cpu_s, stderr = _timed(sb, member, [str(AGENT), "postgres"])
        (ctx.logdir / f"{key}-{len(wall.values)}.log").write_text(stderr)
        exec_ev = event(agent_events(stderr), "exec_postgres")
        if exec_ev is None or exec_ev.get("action") != "start":
            raise RuntimeError(f"the agent did not reach exec_postgres with action start: {stderr[-1500:]}")
        wall.add(seconds)
        mem.add(mb)
        cpu.add(cpu_s)
        to_exec.add(float(exec_ev["duration_s"]))
        seconds, mb, _, _ = _timed(sb, member, ["bash", str(FLOORS / "restart.sh")], **floor_env)
        floor_wall.add(seconds)
        floor_mem.add(mb)
    row = Row(
        key,
        label,
        "s",
        wall,
        floor_wall,
        "restart.sh: version, config, chown check" + (", DNS + IDENTIFY_SYSTEM + slot" if role == "replica" else ""),
        goal=f"<= {GOAL_S} s, <= {GOAL_MB:.0f} MB",
        extra={
            "peak_rss_mb": mem.to_dict(),
            "floor_peak_rss_mb": floor_mem.to_dict(),
            "agent_bootstrap_s": to_exec.to_dict(),
            "cpu_s": cpu.to_dict(),
        },
    )
    row.ok = (wall.median or 0) <= GOAL_S and (mem.median or 0) <= GOAL_MB
    row.note = (
        f"peak RSS {mem.median:.0f} MB (floor {floor_mem.median:.0f}); CPU {cpu.median:.2f} s; "
        f"bootstrap after imports {to_exec.median:.3f} s"
    )
    ctx.say(f"{label}: agent {wall.median:.2f}s {mem.median:.0f}MB, floor {floor_wall.median:.2f}s")
    return row


def section() -> Section:
    """The (initially empty) section the restart rows are added to, member by member."""
    sec = Section("restart", "5. Restart path (existing PGDATA: agent start to exec of postgres)")
    sec.notes.append(
        "bench/stub/postgres is first on PATH: it runs the real binary for -V and exits 0 at the agent's exec; "
        "GNU time (10 ms resolution; peak RSS of the agent and its children; CPU = user + sys)"
    )
    return sec


def run_member(sb: Sandbox, ctx: Ctx, sec: Section, member: Member, role: str, size: str) -> None:
    """Measure one stopped member's restart and add its row."""
    key = f"restart_{role}_{size.split(maxsplit=1)[0]}"
    sec.rows.append(measure(sb, ctx, member, role, f"restart {role} ({size})", key))
