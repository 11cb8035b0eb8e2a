"""2. Cold start of 3 pods until both replicas stream: the emulated StatefulSet against the floor.

The emulator's own delays on the critical path are measured from its event log and a poller of
our own (every 20 ms), and subtracted from the agent's share:
- runtime: from "the pod may start" to its container's PID 1 running (network, sandbox, shim);
- probes (OrderedReady): from a pod actually being ready (serving / streaming) to the readiness
  probe noticing it, which is what lets the controller create the next pod.
So the agent's share is, per pod on the critical path, container start -> ready.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import FLOORS, Row, Section, Series, agent_events, event_time, wait_for
from bench.context import Ctx
from bench.sandbox import replication_ready, streaming_since
from emulator.controller import Cluster

PODS = ("postgresql-sfs-0", "postgresql-sfs-1", "postgresql-sfs-2")
PROBE_SCALE = 0.2
TIMEOUT = 150.0


def _watch(cluster: Cluster, t0: float, repl_password: str, su_password: str) -> dict[str, float]:
    """(In the client namespace) when the primary serves and each replica streams, time.time()."""
    deadline = t0 + TIMEOUT
    ip = None
    while ip is None:
        try:
            ip = cluster.pod_ip(PODS[0])
        except KeyError:
            if time.time() > deadline:
                raise TimeoutError("pod 0 was never created") from None
            time.sleep(0.01)
    out = {PODS[0]: replication_ready(ip, deadline, lambda: True, password=repl_password)}
    out.update(streaming_since(ip, su_password, set(PODS[1:]), deadline))
    return out


def _events(cluster: Cluster) -> dict[str, dict[str, float]]:
    """First time of each controller event kind per pod: created, started, startup, ready."""
    kinds = {"created": "created", "started": "started container", "startup": "startup probe succeeded",
             "ready": "ready"}  # fmt: skip
    out: dict[str, dict[str, float]] = {pod: {} for pod in PODS}
    for when, who, what in cluster.events():
        if who in out:
            for key, prefix in kinds.items():
                if what.startswith(prefix) and key not in out[who]:
                    out[who][key] = when
    return out


def _relative(events: dict[str, float], actual: float, t0: float) -> dict[str, float]:
    """A pod's timeline in seconds since the scale-up."""
    out = {k: round(v - t0, 3) for k, v in events.items()}
    out["actual"] = round(actual - t0, 3)
    return out


def _phases(events: list[dict[str, Any]], started: float) -> dict[str, float]:
    """The agent's phases in a pod: its own durations, and when it logged agent_start and exec."""
    out: dict[str, float] = {}
    for e in events:
        name = str(e.get("event"))
        if name in ("agent_start", "exec_postgres"):
            out[f"{name}_at"] = round(event_time(e) - started, 3)
        if "duration_s" in e and name != "exec_postgres":
            out[name] = float(e["duration_s"])
        elif "elapsed_s" in e and name in ("dns_wait", "primary_wait"):
            out[name] = float(e["elapsed_s"])
    return out


def cluster_run(ctx: Ctx, policy: str) -> dict[str, Any]:
    """One cold start of the StatefulSet from k8s/ with `policy`; the timeline and its split."""
    cluster = Cluster(policy=policy, probe_scale=PROBE_SCALE, start=False)
    env = cluster.sts.env_for("", "")
    with cluster:
        client = cluster.network.add_host("bench")
        t0 = time.time()
        cluster.scale(len(PODS))
        actual = cluster.network.call_in(
            client, _watch, cluster, t0, env["PGSFS_REPLICATION_PASSWORD"], env["POSTGRES_PASSWORD"],
            timeout=TIMEOUT + 20,
        )  # fmt: skip
        ev = _events(cluster)
        endpoints = [(w, what) for w, who, what in cluster.events() if who == "endpoints"]
        phases = {}
        for pod in PODS:
            text = cluster.logs(pod)
            (ctx.logdir / f"cold-{policy}-{int(t0)}-{pod}.log").write_text(text)
            phases[pod] = _phases(agent_events(text), ev[pod].get("started", t0))
    total = max(actual.values()) - t0
    runtime = ev[PODS[0]]["started"] - t0
    probe = 0.0
    if policy == "OrderedReady":
        for prev, pod in zip(PODS, PODS[1:]):
            runtime += ev[pod]["started"] - ev[prev]["ready"]
            probe += ev[prev]["ready"] - actual[prev]
    published = next((w for w, what in endpoints if PODS[0] in what.split()), None)
    return {
        "total": total,
        "runtime": runtime,
        "probe": probe,
        "agent": total - runtime - probe,
        "publish_delay": (published - ev[PODS[0]]["created"]) if published else None,
        "timeline": {pod: _relative(ev[pod], actual[pod], t0) for pod in PODS},
        "agent_phases": phases,
    }


def floor_run(ctx: Ctx) -> float:
    """cold_start.sh as the only container of a one-pod emulated StatefulSet, started as the agent's
    pods are (same shim, namespaces, volume, machine): from its start to its exit."""
    volume = "/var/lib/postgresql/data"
    script = (
        f"chown postgres:postgres {volume} && exec setpriv --reuid=postgres --regid=postgres --init-groups -- "
        f"bash {FLOORS / 'cold_start.sh'}"
    )
    cluster = Cluster(replicas=1, no_probes=True, command=["bash", "-c", script], backoff_base=600.0,
                      env={"VOLROOT": volume, "PGPORT": "5432"})  # fmt: skip
    with cluster:
        container = wait_for(lambda: _first_container(cluster), 30, "the floor's container")
        wait_for(lambda: not container.running(), TIMEOUT, "cold_start.sh to finish", 0.01)
        status = container.status
        if status.exit_code != 0 or status.finished_at is None:
            raise RuntimeError(f"cold_start.sh failed ({status.exit_code}): {cluster.logs(PODS[0])[-1500:]}")
        started = _events(cluster)[PODS[0]]["started"]
        return status.finished_at - started


def _first_container(cluster: Cluster) -> Any:
    try:
        containers = cluster.pod(PODS[0]).containers
    except KeyError:
        return None
    return containers[0] if containers and containers[0].pid1 else None


def run(ctx: Ctx) -> Section:
    """OrderedReady, Parallel and the floor in rotating order."""
    sec = Section("cold_start", f"2. Cold start of 3 pods until both replicas stream (probe periods x{PROBE_SCALE})")
    kinds = ("OrderedReady", "Parallel", "floor")
    raw = {k: Series() for k in kinds}
    share = {k: Series() for k in kinds[:2]}
    emu = {k: {"runtime": Series(), "probe": Series(), "publish_delay": Series()} for k in kinds[:2]}
    timelines: dict[str, list[Any]] = {k: [] for k in kinds[:2]}
    for i in range(ctx.runs):
        ctx.check_time(60)
        for kind in kinds[i % 3 :] + kinds[: i % 3]:
            if kind == "floor":
                raw[kind].add(floor_run(ctx))
                continue
            result = cluster_run(ctx, kind)
            raw[kind].add(result["total"])
            share[kind].add(result["agent"])
            for key in ("runtime", "probe", "publish_delay"):
                if result[key] is not None:
                    emu[kind][key].add(result[key])
            timelines[kind].append(result["timeline"])
        ctx.say(
            f"cold start run {i + 1}: OrderedReady {raw['OrderedReady'].values[-1]:.2f}s "
            f"(agent {share['OrderedReady'].values[-1]:.2f}s), Parallel {raw['Parallel'].values[-1]:.2f}s "
            f"(agent {share['Parallel'].values[-1]:.2f}s), floor {raw['floor'].values[-1]:.2f}s"
        )
    for kind in kinds[:2]:
        e = emu[kind]
        row = Row(
            f"cold_{kind.lower()}",
            f"cold start {kind}, agent's share",
            "s",
            share[kind],
            raw["floor"],
            "cold_start.sh in an emulated pod: init, start, 2x (clone, start, wait streaming)",
            goal="<= 1.2x floor",
            extra={"raw": raw[kind].to_dict(), **{f"emulator_{k}_s": v.to_dict() for k, v in e.items()}},
        )
        row.ok = row.ratio is not None and row.ratio <= 1.2
        row.note = (
            f"raw {raw[kind].median:.2f} s minus emulator runtime {e['runtime'].median:.2f} s"
            + (f" and probe delays {e['probe'].median:.2f} s" if kind == "OrderedReady" else "")
        )
        sec.rows.append(row)
    par = Row(
        "cold_parallel_vs_ordered", "cold start Parallel vs OrderedReady (raw)", "s", raw["Parallel"],
        raw["OrderedReady"], "OrderedReady, raw", goal="< 1 (Parallel faster)",
    )  # fmt: skip
    par.ok = par.ratio is not None and par.ratio < 1.0
    sec.rows.append(par)
    sec.data["timelines"] = timelines
    sec.notes.append(
        f"k8s/ as is (publishNotReadyAddresses: true) with probe periods x{PROBE_SCALE} (5 s -> 1 s); "
        "the DNS record of pod 0 is published "
        f"{(emu['Parallel']['publish_delay'].median or 0):.2f} s after its creation (not on the critical path)"
    )
    return sec
