"""1. Primary first start: `pg-sfs-agent postgres` on an empty volume until it serves, against the floors."""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import (
    AGENT,
    FLOORS,
    OFFICIAL_ENTRYPOINT,
    Row,
    Section,
    Series,
    agent_events,
    event,
    event_time,
    pod_env,
    stop_postmaster,
)
from bench.context import AS_POSTGRES, Ctx
from bench.sandbox import Sandbox, replication_ready, superuser_ready

KINDS = ("agent", "official", "floor", "entrypoint", "single")
SCRIPTS = {"floor": "primary_init.sh", "entrypoint": "primary_entrypoint.sh", "single": "primary_single.sh"}
READY_TIMEOUT = 90.0


def _argv(kind: str, vol: Path) -> list[str]:
    """What runs in the pod: the agent (as root, as the image starts it), or a script as postgres.

    The official entrypoint (14.5's docker-entrypoint.sh) runs on the host's PostgreSQL with one
    change: its initdb.d directory is an empty one on the volume (the host has no
    /docker-entrypoint-initdb.d). The image's sample config says listen_addresses '*', Debian's
    does not, hence the -c.
    """
    if kind == "agent":
        return [str(AGENT), "postgres"]
    if kind == "official":
        scripts = vol / "initdb.d"
        scripts.mkdir()
        entrypoint = vol / "docker-entrypoint.sh"
        entrypoint.write_text(OFFICIAL_ENTRYPOINT.read_text().replace("/docker-entrypoint-initdb.d", str(scripts)))
        return [*AS_POSTGRES, "bash", str(entrypoint), "postgres", "-c", "listen_addresses=*"]
    return [*AS_POSTGRES, "bash", str(FLOORS / SCRIPTS[kind])]


def first_start(sb: Sandbox, ctx: Ctx, kind: str, tag: str) -> tuple[float, list[dict[str, object]], float]:
    """One start on a fresh volume in a fresh pod; (seconds to ready, agent events, t0)."""
    host = sb.pod(f"first-{tag}")
    vol = sb.volume(f"first-{tag}", postgres_owned=kind != "agent")
    env = pod_env("postgresql-sfs-0", host.ip, vol)
    argv = _argv(kind, vol)
    log = ctx.logdir / f"first-{tag}.log"
    try:
        t0 = time.time()
        proc = sb.spawn(host, argv, env, log)
        # The minimal floor's script exits once the role exists (pg_ctl detached the server).
        # The official entrypoint makes no replication role: it is ready when its superuser gets in
        # over TCP, a weaker condition than the others' (never later than it).
        poll = superuser_ready if kind == "official" else replication_ready
        ready = sb.call(
            poll,
            host.ip,
            t0 + READY_TIMEOUT,
            lambda: proc.poll() is None or proc.returncode == 0,
            timeout=READY_TIMEOUT + 10,
        )
        events = agent_events(log.read_text(errors="replace")) if kind == "agent" else []
        return ready - t0, events, t0
    except BaseException as exc:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise RuntimeError(f"{kind} first start failed: {exc}\n{tail}") from exc
    finally:
        stop_postmaster(vol / "pgdata")
        sb.remove(host)
        sb.drop_volume(vol)


def run(sb: Sandbox, ctx: Ctx) -> Section:
    """Runs rotate the order of agent and floors so drift and cache effects spread evenly."""
    sec = Section("primary_first_start", "1. Primary first start (empty PGDATA until it serves replication)")
    kinds = KINDS if OFFICIAL_ENTRYPOINT.is_file() else tuple(k for k in KINDS if k != "official")
    if "official" not in kinds:
        sec.notes.append(f"the official entrypoint was not measured: {OFFICIAL_ENTRYPOINT} is missing "
                         "(set PGSFS_OFFICIAL_ENTRYPOINT)")  # fmt: skip
    series = {kind: Series() for kind in KINDS}
    phases: dict[str, Series] = {
        name: Series() for name in ("python_start", "peer_check", "initdb", "initdb_setup", "to_exec", "after_exec")
    }
    ctx.say("primary first start: warm-up (not counted)")
    for kind in kinds[:3]:
        first_start(sb, ctx, kind, f"warm-{kind}")
    for i in range(ctx.runs):
        ctx.check_time(30)
        order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]
        for kind in order:
            seconds, events, t0 = first_start(sb, ctx, kind, f"{kind}-{i}")
            series[kind].add(seconds)
            if kind == "agent":
                _phases(phases, events, t0, seconds)
        ctx.say(
            "primary first start run {}: {}".format(
                i + 1, ", ".join(f"{k} {series[k].values[-1]:.2f}s" for k in kinds)
            )
        )
    # (key, label, compared with, its label, goal ratio or None for context)
    comparisons = [
        ("first_start_official", "primary first start vs the official entrypoint", "official",
         "docker-entrypoint.sh 14.5: initdb, temp server, psql, stop, exec", 0.95),
        ("first_start", "primary first start", "floor", "initdb + config + pg_ctl start + CREATE ROLE", 1.15),
        ("first_start_same_steps", "primary first start vs the agent's own steps", "entrypoint",
         "initdb + config + temp server + role + stop + exec", None),
        ("first_start_single_user", "primary first start vs single-user set-up", "single",
         "initdb + config + postgres --single (role) + exec", None),
    ]  # fmt: skip
    for key, label, kind, floor_label, goal in comparisons:
        against = "official" if kind == "official" else "floor"
        row = Row(key, label, "s", series["agent"], series[kind], floor_label,
                  goal=f"<= {goal}x {against}" if goal else "(context)")  # fmt: skip
        if goal:
            row.ok = row.ratio is not None and row.ratio <= goal
        sec.rows.append(row)
    sec.data["agent_phases_s"] = {k: v.to_dict() for k, v in phases.items()}
    sec.notes.append(
        "ready = the replication role's IDENTIFY_SYSTEM over TCP succeeds (polled every 20 ms from another "
        "namespace); both sides start through `ip netns exec` + floors/pod.sh, with cluster DNS (BIND) answering "
        "the agent's peer check"
    )
    return sec


def _phases(phases: dict[str, Series], events: list[dict[str, object]], t0: float, total: float) -> None:
    """The agent's own phase durations from its log, to show where its time goes."""
    start = event(events, "agent_start")
    exec_ev = event(events, "exec_postgres")
    if start is not None:
        phases["python_start"].add(event_time(start) - t0)
    for name in ("peer_check", "initdb", "initdb_setup"):
        ev = event(events, name)
        if ev is not None:
            phases[name].add(float(ev["duration_s"]))  # type: ignore[arg-type]
    if exec_ev is not None:
        phases["to_exec"].add(event_time(exec_ev) - t0)
        phases["after_exec"].add(t0 + total - event_time(exec_ev))


def keep_primary(sb: Sandbox, ctx: Ctx, name: str = "pg0") -> tuple[object, Path, object]:
    """Start a primary with the agent that stays up (for clones, probes, DNS trials)."""
    host = sb.pod(name)
    vol = sb.volume(name)
    env = pod_env("postgresql-sfs-0", host.ip, vol)
    log = ctx.logdir / f"{name}.log"
    t0 = time.time()
    proc = sb.spawn(host, [str(AGENT), "postgres"], env, log)
    sb.call(replication_ready, host.ip, t0 + READY_TIMEOUT, lambda: proc.poll() is None, timeout=READY_TIMEOUT + 10)
    return host, vol, proc
