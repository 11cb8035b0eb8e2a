"""4. Clone throughput: the agent's clone of a pgbench database against a bare pg_basebackup and cp -a."""

from __future__ import annotations

import os
import subprocess
import time

from bench.common import (
    AGENT,
    FLOORS,
    PG_BIN,
    REPLICATION_PASSWORD,
    Row,
    Section,
    Series,
    agent_events,
    event,
    fqdn,
    parse_time_output,
    pod_env,
    timed,
)
from bench.context import AS_POSTGRES, Ctx
from bench.members import Member
from bench.sandbox import Sandbox
from emulator.network import Host

AGENT_POD = "postgresql-sfs-2"
AGENT_SLOT = "postgresql_sfs_2"
FLOOR_SLOT = "bench_floor"
KINDS = ("agent", "basebackup", "basebackup_no_p", "copy")
CLONE_TIMEOUT = 300.0


def _psql(sb: Sandbox, primary: Member, sql: str, timeout: float = 600.0) -> str:
    argv = [*AS_POSTGRES, str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", "/run/postgresql",
            "-U", "postgres", "-d", "postgres", "-c", sql]  # fmt: skip
    done = sb.run_beside(primary.pid(), argv, primary.env(), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"psql on the primary failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _drop_slot(sb: Sandbox, primary: Member, slot: str) -> None:
    sql = f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    _psql(sb, primary, sql)


def prepare(sb: Sandbox, ctx: Ctx, primary: Member) -> dict[str, float]:
    """pgbench -i -s N on the running primary, then a checkpoint so every clone starts alike."""
    started = time.monotonic()
    argv = [*AS_POSTGRES, str(PG_BIN / "pgbench"), "-i", "-I", "dtGvp", "-s", str(ctx.pgbench_scale), "-q",
            "-h", "/run/postgresql", "-U", "postgres", "postgres"]  # fmt: skip
    done = sb.run_beside(primary.pid(), argv, primary.env(), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {done.stderr[-1000:]}")
    _psql(sb, primary, "CHECKPOINT")
    size = int(_psql(sb, primary, "SELECT sum(pg_database_size(oid)) FROM pg_database"))
    du = subprocess.run(["du", "-sm", "--exclude=pg_wal", str(primary.pgdata)], capture_output=True, text=True,
                        check=True)  # fmt: skip
    return {"init_s": round(time.monotonic() - started, 1), "databases_mb": round(size / 1048576, 1),
            "pgdata_mb": float(du.stdout.split()[0])}  # fmt: skip


def _timed(sb: Sandbox, host: Host, argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    done = sb.run(host, timed(argv), env, timeout=CLONE_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}): {done.stderr[-1500:]}")
    return parse_time_output(done.stderr).wall, done.stderr


def one(sb: Sandbox, ctx: Ctx, primary: Member, kind: str, tag: str) -> tuple[float, float | None]:
    """One clone of `kind` into a fresh volume: (wall seconds, the agent's own clone phase or None)."""
    host = sb.pod(f"clone-{tag}")
    vol = sb.volume(f"clone-{tag}", postgres_owned=kind != "agent")
    try:
        if kind == "agent":
            _drop_slot(sb, primary, AGENT_SLOT)
            env = pod_env(AGENT_POD, host.ip, vol, stub=True)
            seconds, stderr = _timed(sb, host, [str(AGENT), "postgres"], env)
            (ctx.logdir / f"clone-{tag}.log").write_text(stderr)
            ev = event(agent_events(stderr), "clone")
            if ev is None:
                raise RuntimeError(f"no clone event in the agent's log: {stderr[-1500:]}")
            return seconds, float(ev["duration_s"])
        env = pod_env(AGENT_POD, host.ip, vol)
        if kind == "copy":
            env.update(SRC=str(primary.pgdata), DST=str(vol / "pgdata"))
            return _timed(sb, host, [*AS_POSTGRES, "bash", str(FLOORS / "copy.sh")], env)[0], None
        passfile = vol / "replication.pgpass"
        passfile.write_text(f"*:*:*:replicator:{REPLICATION_PASSWORD}\n")
        os.chmod(passfile, 0o600)
        os.chown(passfile, *sb.postgres_ids)
        env.update(
            PRIMARY_HOST=fqdn("postgresql-sfs-0"), PRIMARY_ADDR=primary.host.ip, PGPASSFILE=str(passfile),
            SLOT=FLOOR_SLOT, APP=f"{AGENT_POD}-clone",
        )  # fmt: skip
        if kind == "basebackup_no_p":
            env["NO_PROGRESS"] = "1"
        try:
            return _timed(sb, host, [*AS_POSTGRES, "bash", str(FLOORS / "basebackup.sh")], env)[0], None
        finally:
            _drop_slot(sb, primary, FLOOR_SLOT)
    finally:
        sb.remove(host)
        sb.drop_volume(vol)


def run(sb: Sandbox, ctx: Ctx, primary: Member) -> Section:
    """Clones of every kind in rotating order; the primary keeps running throughout."""
    sec = Section("clone", f"4. Clone throughput (pgbench -i -s {ctx.pgbench_scale})")
    ctx.say(f"clone: pgbench -i -s {ctx.pgbench_scale} on the primary")
    info = prepare(sb, ctx, primary)
    sec.data.update(info, pgbench_scale=ctx.pgbench_scale)
    ctx.say(f"clone: data ready ({info['pgdata_mb']:.0f} MB PGDATA, built in {info['init_s']:.0f} s)")
    series = {k: Series() for k in KINDS}
    phase = Series()
    for i in range(ctx.runs):
        ctx.check_time(60)
        order = KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]
        for kind in order:
            seconds, clone_phase = one(sb, ctx, primary, kind, f"{kind.replace('_', '-')}-{i}")
            series[kind].add(seconds)
            if clone_phase is not None:
                phase.add(clone_phase)
        ctx.say("clone run {}: {}".format(i + 1, ", ".join(f"{k} {series[k].values[-1]:.2f}s" for k in KINDS)))
    mb = info["pgdata_mb"]
    main = Row(
        "clone_vs_basebackup", "clone (agent start to exec)", "s", series["agent"], series["basebackup"],
        "pg_basebackup -X stream -c fast -C -S -P -v", goal="<= 1.05x floor",
    )  # fmt: skip
    main.ok = main.ratio is not None and main.ratio <= 1.05
    main.note = f"{mb / (series['agent'].median or 1):.0f} MB/s; pg_basebackup phase alone {phase.median:.2f} s"
    main.extra["agent_clone_phase_s"] = phase.to_dict()
    phase_row = Row(
        "clone_phase_vs_basebackup", "pg_basebackup phase inside the agent", "s", phase, series["basebackup"],
        "pg_basebackup, same flags", goal="(context)", note="the agent's own clone event: its pg_basebackup run",
    )  # fmt: skip
    sec.rows += [
        main,
        phase_row,
        Row("clone_vs_basebackup_no_p", "clone vs pg_basebackup without -P", "s", series["agent"],
            series["basebackup_no_p"], "pg_basebackup, same flags but -P", goal="(context)"),
        Row("clone_vs_copy", "clone vs copying the files", "s", series["agent"], series["copy"],
            "cp -a + sync -f", goal="(context)",
            note=f"cp: {mb / (series['copy'].median or 1):.0f} MB/s"),
    ]  # fmt: skip
    sec.notes.append(
        "all clones read from the same running primary (its data in the page cache) over the emulated network; "
        "the agent runs with the stub postgres, so its figure ends at the exec"
    )
    return sec
