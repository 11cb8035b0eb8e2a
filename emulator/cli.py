"""`python -m emulator demo|up|status|down`: the emulated StatefulSet for people.

demo   bring up the StatefulSet from k8s/, prove replication end to end, tear it all down.
up     start a background emulator (state in .emulator/), wait until every pod is Ready.
status print the pods of the running emulator (kept fresh by the daemon in .emulator/status.json).
down   stop the background emulator and remove everything it created.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import netns as nsx
from . import volumes
from .controller import MANIFEST_SIZE, Cluster, PodStatus, format_table
from .manifests import REPO_ROOT, QuantityError, describe, load_spec, parse_quantity
from .network import Network
from .waiting import wait_until

STATE_DIR = REPO_ROOT / ".emulator"
DAEMON_FILE = STATE_DIR / "daemon.json"
STATUS_FILE = STATE_DIR / "status.json"
DAEMON_LOG = STATE_DIR / "daemon.log"
STATUS_INTERVAL = 2.0


class DemoFailed(RuntimeError):
    """A step of the demo did not turn out as expected."""


def _say(msg: str) -> None:
    print(msg, flush=True)


def _step(msg: str) -> None:
    _say(f"\n==> {msg}")


# ---------------------------------------------------------------------------- common options


def _volume_size(text: str) -> int | str | None:
    """--volume-size: a quantity in bytes, `none` (plain directories) or `manifest`."""
    if text in ("none", MANIFEST_SIZE):
        return None if text == "none" else text
    try:
        return parse_quantity(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=None, help="override spec.replicas")
    p.add_argument("--policy", choices=("OrderedReady", "Parallel"), default=None,
                   help="override podManagementPolicy")
    p.add_argument("--probe-scale", type=float, default=None,
                   help="multiply probe periods (e.g. 0.2 for a faster start); default: as in k8s/")
    p.add_argument("--grace", type=float, default=None, help="override terminationGracePeriodSeconds")
    p.add_argument("--backoff", type=float, default=10.0, help="CrashLoopBackOff base delay (s)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra or overridden container variable (repeatable)")
    p.add_argument("--agent-venv", type=Path, default=None,
                   help="venv whose bin/ holds pg-sfs-agent (default: this interpreter's)")
    p.add_argument("--negative-cache", action="store_true",
                   help="put a negative-caching resolver in front of BIND (like CoreDNS cache)")
    p.add_argument("--keep-volumes", action="store_true",
                   help="keep the run directory at the end (each volume as an ext4 image under"
                        " volume-images/: `mount -o loop` it to look inside)")
    p.add_argument("--volume-size", type=_volume_size, default=MANIFEST_SIZE, metavar="QUANTITY",
                   help="size of each pod's volume, e.g. 1Gi (default: the volumeClaimTemplate's request;"
                        " `none`: plain directories, for hosts without loop devices)")
    p.add_argument("--image", default=None, metavar="IMAGE",
                   help="run every pod as a podman container of IMAGE (make image) instead of the host's agent")
    p.add_argument("--overlay", default=None, metavar="NAME",
                   help="the StatefulSet from k8s-overlays/NAME (non-root, openshift) instead of k8s/")


def _cluster_from_args(args: argparse.Namespace) -> Cluster:
    env: dict[str, str | None] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env expects NAME=VALUE, got {item!r}")
        env[name] = value
    agent_bin = args.agent_venv / "bin" if args.agent_venv else None
    return Cluster(
        spec=load_spec(overlay=args.overlay),
        replicas=args.replicas, policy=args.policy, probe_scale=args.probe_scale,
        grace_period=args.grace, backoff_base=args.backoff, env=env or None,
        agent_bin_dir=agent_bin, negative_cache=args.negative_cache, keep_volumes=args.keep_volumes,
        image=args.image, volume_size=args.volume_size,
    )  # fmt: skip


# ---------------------------------------------------------------------------- demo


class _EventPrinter:
    """Prints the controller's events as they happen, with seconds since the start."""

    def __init__(self, cluster: Cluster, t0: float) -> None:
        self.cluster = cluster
        self.t0 = t0
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-printer", daemon=True)

    def __enter__(self) -> _EventPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()

    def flush(self) -> None:
        events = self.cluster.events()
        for when, who, what in events[self.seen:]:
            _say(f"  [{when - self.t0:6.1f}s] {who:<18} {what}")
        self.seen = len(events)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.flush()


def format_agent_log(pod: str, text: str) -> str:
    """The agent's JSON lines of one container log, through agent.logview if it exists."""
    lines = [ln for ln in text.splitlines() if ln.lstrip().startswith("{")]
    try:
        from agent import logview
    except ImportError:
        return "\n".join(lines)
    prefixed = "".join(f"[pod/{pod}/postgresql] {ln}\n" for ln in lines)
    out = io.StringIO()
    logview.run(["--no-postgres"], io.StringIO(prefixed), out)
    return out.getvalue().rstrip("\n")


def _replication_table(rows: list[dict[str, str]]) -> str:
    keys = ("application_name", "state", "sync_state", "slot")
    widths = {k: max([len(k)] + [len(r[k]) for r in rows]) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys).rstrip()]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys).rstrip() for r in rows]
    return "\n".join(lines)


def _demo_steps(c: Cluster, timeout: float) -> None:
    sts = c.sts
    names = [sts.pod_name(i) for i in range(c.replicas)]
    primary, replicas = names[0], names[1:]
    _step(f"waiting for {', '.join(names)} to be Running and Ready ({sts.pod_management_policy})")
    c.wait_ready(names, timeout=timeout)
    if replicas:
        _step(f"waiting for the primary to show {len(replicas)} replica(s) streaming")
        c.wait_streaming(timeout=timeout)
    _step(f"writing a row on the primary {primary}")
    token = f"written at {time.strftime('%H:%M:%S')} by the demo"
    c.psql(primary, "create table if not exists emulator_demo"
                    " (id bigserial primary key, note text not null, at timestamptz default now())")
    row_id = c.psql(primary, f"insert into emulator_demo (note) values ('{token}') returning id")
    _say(f"  inserted id={row_id}: {token!r}")
    for pod in replicas:
        _step(f"reading it back on the replica {pod}")

        def visible(pod: str = pod) -> str:
            res = c.try_psql(pod, f"select id, note from emulator_demo where id = {int(row_id)}")
            return res.stdout.strip() if res.returncode == 0 else ""

        got = wait_until(visible, 30, 0.2, f"row {row_id} on {pod}")
        _say(f"  {pod}: {got}")
        if c.role(pod) != "replica":
            raise DemoFailed(f"{pod} is not in recovery: it should be a replica")
    if replicas:
        _step("pg_stat_replication on the primary")
        _say(_replication_table(c.replication()))


def _print_status(c: Cluster) -> None:
    _step("pods")
    _say(format_table(c.status()))


def _print_agent_logs(c: Cluster, previous_too: bool = False) -> None:
    for pod in c.pod_names():
        _step(f"agent log of {pod}")
        if previous_too and c.logs(pod, previous=True):
            _say("  (previous container)")
            _say(format_agent_log(pod, c.logs(pod, previous=True)))
        _say(format_agent_log(pod, c.logs(pod)) or "  (no agent lines)")


def cmd_demo(args: argparse.Namespace) -> int:
    """Bring the StatefulSet up, prove replication, show status and logs, tear down."""
    t0 = time.time()
    source = f"k8s-overlays/{args.overlay}" if args.overlay else "k8s/"
    _step(f"reading {source} (kubectl kustomize) and docker/Dockerfile")
    _say("  " + describe(load_spec(overlay=args.overlay)))
    cluster = _cluster_from_args(args)
    failed: BaseException | None = None
    try:
        _step(f"starting network {cluster.network.prefix}, cluster DNS (BIND) and the controller")
        with cluster, _EventPrinter(cluster, t0) as printer:
            _say(f"  DNS at {cluster.dns.nameserver_ip}, run directory {cluster.run_dir}")
            try:
                _demo_steps(cluster, args.timeout)
            except BaseException as exc:
                failed = exc
            printer.flush()
            _print_status(cluster)
            _print_agent_logs(cluster, previous_too=failed is not None)
            if failed is not None and not isinstance(failed, KeyboardInterrupt):
                _step("controller events")
                for when, who, what in cluster.events():
                    _say(f"  [{when - t0:6.1f}s] {who:<18} {what}")
                for pod in cluster.pod_names():
                    _step(f"last lines of {pod}'s container output")
                    _say("\n".join(cluster.logs(pod).splitlines()[-15:]))
            _step("tearing down (pods get their STOPSIGNAL, then DNS and namespaces go)")
    except BaseException as exc:
        failed = failed or exc
    if isinstance(failed, KeyboardInterrupt):
        _say("\ninterrupted; everything was torn down")
        return 130
    if failed is not None:
        first = (str(failed).splitlines() or [""])[0]
        _say(f"\nDEMO FAILED: {type(failed).__name__}: {first}")
        if not isinstance(failed, (DemoFailed, TimeoutError)):
            traceback.print_exception(type(failed), failed, failed.__traceback__)
        return 1
    _say(f"\nDEMO OK in {time.time() - t0:.0f}s: a row written on the primary was read on every"
         " replica; everything is torn down")
    return 0


# ---------------------------------------------------------------------------- daemon


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _daemon_alive(info: dict[str, Any] | None) -> bool:
    return bool(info) and nsx.pid_alive(int(info["pid"]), int(info["start_time"]))  # type: ignore[index]


def cmd_serve(args: argparse.Namespace) -> int:
    """The background emulator behind `up` (internal): runs until SIGTERM."""
    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    cluster = _cluster_from_args(args)
    info = {"pid": os.getpid(), "start_time": nsx.proc_start_time(os.getpid()),
            "prefix": cluster.network.prefix, "run_dir": str(cluster.run_dir),
            "keep_volumes": args.keep_volumes, "started_at": time.time()}
    _write_json(DAEMON_FILE, info)
    try:
        with cluster:
            info["dns"] = cluster.dns.nameserver_ip
            _write_json(DAEMON_FILE, info)
            print(f"emulator {cluster.network.prefix} up, run dir {cluster.run_dir}", flush=True)
            seen = 0
            while True:
                cluster.check()
                rows = cluster.status()
                _write_json(STATUS_FILE, {"updated_at": time.time(), "prefix": cluster.network.prefix,
                                          "pods": [asdict(r) for r in rows],
                                          "endpoints": cluster.endpoints()})
                events = cluster.events()
                for when, who, what in events[seen:]:
                    print(f"{time.strftime('%H:%M:%S', time.localtime(when))} {who} {what}", flush=True)
                seen = len(events)
                time.sleep(STATUS_INTERVAL)
    finally:
        STATUS_FILE.unlink(missing_ok=True)
        print("emulator stopped", flush=True)


def _pods_from_status(data: dict[str, Any]) -> list[PodStatus]:
    return [PodStatus(**p) for p in data.get("pods", [])]


def cmd_up(args: argparse.Namespace) -> int:
    """Start the emulator in the background and wait until all pods are Ready."""
    STATE_DIR.mkdir(exist_ok=True)
    info = _read_json(DAEMON_FILE)
    if _daemon_alive(info):
        _say(f"an emulator is already running (pid {info['pid']}); `down` first")  # type: ignore[index]
        return 1
    STATUS_FILE.unlink(missing_ok=True)
    DAEMON_FILE.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "emulator", "_serve", *args.passthrough]
    with DAEMON_LOG.open("ab") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _say(f"emulator daemon pid {proc.pid}, log {DAEMON_LOG}")
    want = args.replicas if args.replicas is not None else load_spec().statefulset.replicas
    deadline = time.monotonic() + args.timeout
    rows: list[PodStatus] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _say(f"the daemon exited ({proc.returncode}); last lines of {DAEMON_LOG}:")
            _say("\n".join(DAEMON_LOG.read_text(errors="replace").splitlines()[-30:]))
            return 1
        data = _read_json(STATUS_FILE)
        if data:
            rows = _pods_from_status(data)
            if len(rows) == want and all(r.ready for r in rows):
                _say(format_table(rows))
                _say("all pods Ready; `python -m emulator status` / `down`")
                return 0
        time.sleep(0.5)
    _say(format_table(rows))
    _say(f"not all pods Ready after {args.timeout:.0f}s (the emulator keeps running; see {DAEMON_LOG})")
    return 1


def cmd_status(_args: argparse.Namespace) -> int:
    """Print the running emulator's pods."""
    info = _read_json(DAEMON_FILE)
    if not _daemon_alive(info):
        _say("no emulator running" + (" (stale state: run `down`)" if info else ""))
        return 1
    assert info is not None
    data = _read_json(STATUS_FILE)
    if not data:
        _say(f"emulator {info['prefix']} (pid {info['pid']}) is starting")
        return 0
    age = time.time() - float(data["updated_at"])
    _say(f"emulator {data['prefix']} (pid {info['pid']}), DNS {info.get('dns', '?')},"
         f" run dir {info['run_dir']}, status {age:.0f}s old")
    rows = _pods_from_status(data)
    for row in rows:
        row.age += age  # as of now, not as of the daemon's last write
    _say(format_table(rows))
    _say("endpoints: " + (" ".join(f"{n}={ip}" for n, ip in data.get("endpoints", [])) or "none"))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the background emulator (graceful pod stops) and remove whatever is left."""
    info = _read_json(DAEMON_FILE)
    rc = 0
    if _daemon_alive(info):
        assert info is not None
        pid = int(info["pid"])
        _say(f"stopping emulator {info['prefix']} (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not _daemon_alive(info), args.timeout, 0.2, "the daemon to exit")
        except TimeoutError:
            _say("the daemon did not exit in time: SIGKILL, then cleaning up its leftovers")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            rc = 1
    else:
        _say("no emulator running")
    stale = Network.cleanup_stale()
    if stale:
        _say(f"removed leftovers of {', '.join(stale)}")
    if info and not info.get("keep_volumes"):
        run_dir = Path(info["run_dir"])
        # Never through a mount: cleanup_stale released the run's volumes, or something holds one.
        if run_dir.is_dir() and run_dir.parent == STATE_DIR / "runs" and not volumes.mounted_under(run_dir):
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    for path in (DAEMON_FILE, STATUS_FILE):
        path.unlink(missing_ok=True)
    _say("down")
    return rc


# ---------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,up,status,down}")
    demo = sub.add_parser("demo", help="bring up k8s/, prove replication, tear down")
    _add_cluster_options(demo)
    demo.add_argument("--timeout", type=float, default=300.0, help="per wait (s)")
    up = sub.add_parser("up", help="start a background emulator")
    _add_cluster_options(up)
    up.add_argument("--timeout", type=float, default=300.0, help="wait for Ready (s)")
    serve = sub.add_parser("_serve")  # no help: the daemon behind `up`, not for people
    _add_cluster_options(serve)
    sub.add_parser("status", help="show the background emulator's pods")
    down = sub.add_parser("down", help="stop the background emulator, remove everything")
    down.add_argument("--timeout", type=float, default=120.0, help="wait for the daemon (s)")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    if args.command == "up":
        # The daemon gets the same cluster options (everything but --timeout).
        args.passthrough = _strip_option(raw[1:], "--timeout")
    if os.geteuid() != 0 and args.command in ("demo", "up", "_serve", "down"):
        parser.error("needs root (network, mount and PID namespaces)")
    handlers = {"demo": cmd_demo, "up": cmd_up, "_serve": cmd_serve, "status": cmd_status,
                "down": cmd_down}
    return int(handlers[args.command](args) or 0)


def _strip_option(argv: list[str], option: str) -> list[str]:
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == option:
            skip = True
            continue
        if item.startswith(option + "="):
            continue
        out.append(item)
    return out
