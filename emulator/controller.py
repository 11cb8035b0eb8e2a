"""The emulated StatefulSet controller and kubelet: pods, probes, restarts, endpoints, and helpers.

`Cluster` = Network + ClusterDNS + one StatefulSet from the project's manifests, each pod's claim
an ext4 filesystem of the claim template's size on the node (volumes.py). A single
controller thread owns every container (it starts them all, so their shims' parent-death signal
ties them to it) and runs the StatefulSet's reconcile loop, the kubelet's restart back-off and the
Endpoints -> DNS sync. Probes run in threads of their own per container, like the kubelet's
probe workers; terminations (grace periods) run in threads of their own too.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import volumes
from .dns import ClusterDNS
from .manifests import REPO_ROOT, ClientService, ClusterSpec, Probe, load_spec, parse_quantity, with_overrides
from .network import Host, Network
from .pod import Container, Pod, PodError, PodTemplate
from .waiting import wait_until

SOCKET_DIR = "/var/run/postgresql"
ROLE_TIMEOUT = 5.0
_TICK = 0.05
# Cluster(volume_size=...) default: the volumeClaimTemplate's storage request.
MANIFEST_SIZE = "manifest"


@dataclass
class PodStatus:
    """One pod as `kubectl get pods -o wide` plus the database role would show it."""

    name: str
    ip: str
    phase: str
    state: str
    ready: bool
    restarts: int
    role: str
    age: float
    last_exit: str = ""


@dataclass
class _Probes:
    """Per-container probe state, like the kubelet's prober results."""

    started: bool = False
    ready: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class _PodRecord:
    """Everything the controller knows about one pod object."""

    name: str
    ordinal: int
    host: Host
    pod: Pod
    created_at: float
    events: list[tuple[float, str]] = field(default_factory=list)
    probes: _Probes | None = None
    terminating: bool = False
    gone: bool = False
    first_ready_at: float | None = None
    next_start_at: float | None = None
    backoff: float | None = None
    backoff_updated: float | None = None
    seen_exit: int = -1
    revision: int = 0


class Cluster:
    """An emulated StatefulSet with its headless Service and cluster DNS (a context manager)."""

    def __init__(
        self,
        spec: ClusterSpec | None = None,
        *,
        replicas: int | None = None,
        policy: str | None = None,
        env: Mapping[str, str | None] | None = None,
        command: list[str] | None = None,
        grace_period: float | None = None,
        probe_scale: float | None = None,
        startup_probe: Probe | None = None,
        readiness_probe: Probe | None = None,
        liveness_probe: Probe | None = None,
        no_probes: bool = False,
        publish_not_ready_addresses: bool | None = None,
        domain: str = "cluster.local",
        negative_ttl: int = 5,
        negative_cache: bool = False,
        propagation_delay: float = 0.0,
        run_dir: Path | None = None,
        keep_volumes: bool = False,
        backoff_base: float = 10.0,
        backoff_cap: float = 300.0,
        agent_bin_dir: Path | None = None,
        image: str | None = None,
        start: bool = True,
        volume_size: int | str | None = MANIFEST_SIZE,
    ) -> None:
        """Describe the cluster from k8s/ (or `spec`) with test overrides; nothing runs yet.

        `start=False` creates no pod until `scale()` (replicas still describes the target).
        `image` runs every pod as a podman container of that image instead of the host's agent.
        `volume_size`: each pod's volume is an ext4 filesystem of the manifest's storage request
        (default), of this size (bytes or a quantity like "64Mi"), or with None a plain directory.
        At close() the volumes are unmounted; `keep_volumes` keeps the run directory, their images
        included (<run_dir>/volume-images/<claim>.img: `mount -o loop` one to look inside).
        """
        base = spec if spec is not None else load_spec()
        self.spec = with_overrides(
            base, replicas=replicas, policy=policy, env=env, command=command,
            grace_period=grace_period, probe_scale=probe_scale, startup_probe=startup_probe,
            readiness_probe=readiness_probe, liveness_probe=liveness_probe, no_probes=no_probes,
            publish_not_ready_addresses=publish_not_ready_addresses,
        )  # fmt: skip
        self.sts = self.spec.statefulset
        self.svc = self.spec.service
        self.domain = domain
        self.network = Network()
        self.dns = ClusterDNS(self.network, domain=domain, negative_ttl=negative_ttl,
                              negative_cache=negative_cache, propagation_delay=propagation_delay)
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else REPO_ROOT / ".emulator" / "runs" / self.network.prefix
        self.keep_volumes = keep_volumes
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.agent_bin_dir = Path(agent_bin_dir) if agent_bin_dir else Path(sys.executable).parent
        self.image = image
        self.volume_size_bytes = _size_bytes(volume_size, self.sts.volume_size_bytes)
        self.replicas = self.sts.replicas if start else 0
        self._lock = threading.RLock()
        self._pods: dict[str, _PodRecord] = {}
        self._history: list[tuple[float, str, str]] = []
        self._endpoints: tuple[tuple[str, str], ...] | None = None
        self._published_clients: dict[str, tuple[tuple[str, str], ...]] = {}
        self._stopping = threading.Event()
        # The pod template's revision: update_template() bumps it; pods of an older one are
        # replaced by the rolling update (see _roll).
        self.revision = 0
        # spec.updateStrategy.rollingUpdate.partition: pods with a lower ordinal are not rolled.
        self.partition = 0
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._terminators: list[threading.Thread] = []
        # Volumes this cluster mounted (exact paths), and whether it may mount more.
        self._volume_lock = threading.Lock()
        self._mounted: set[Path] = set()
        self._volumes_open = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Cluster:
        """Start the network, DNS and the controller thread."""
        if not (self.agent_bin_dir / "pg-sfs-agent").exists() and "pg-sfs-agent" in self.sts.command:
            raise FileNotFoundError(f"pg-sfs-agent not found in {self.agent_bin_dir}")
        self.network.start()
        try:
            self.dns.start()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for sub in ("volumes", "pods", "logs"):
                (self.run_dir / sub).mkdir(exist_ok=True)
            self._volumes_open = True
            self._publish_endpoints()
            self._thread = threading.Thread(target=self._run, name="sts-controller", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every pod (STOPSIGNAL, grace, SIGKILL), unmount the volumes, stop DNS and the
        network; drop the run dir (kept with keep_volumes, images included)."""
        self._stopping.set()
        try:
            if self._thread is not None:
                # The controller thread terminates its pods before it exits (see _run).
                self._thread.join(self.sts.termination_grace_period + 30)
        finally:
            try:
                self._release_volumes()
            finally:
                try:
                    self.dns.close()
                finally:
                    self.network.close()
                    # Never through a mount: rmtree would empty a volume it cannot remove.
                    if (self._own_run_dir and not self.keep_volumes
                            and not volumes.mounted_under(self.run_dir)):
                        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _release_volumes(self) -> None:
        """Unmount every volume this cluster mounted (all are tried; the first failure is raised)."""
        with self._volume_lock:
            self._volumes_open = False
            paths = sorted(self._mounted)
        failure: BaseException | None = None
        for path in paths:
            try:
                volumes.release_volume(path)
            except volumes.VolumeError as exc:
                failure = failure or exc
            else:
                with self._volume_lock:
                    self._mounted.discard(path)
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ controller thread

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._tick()
                self._stopping.wait(_TICK)
        except BaseException as exc:
            self._thread_error = exc
            raise
        finally:
            self._terminate_all()

    def _tick(self) -> None:
        with self._lock:
            for rec in list(self._pods.values()):
                if rec.gone:
                    del self._pods[rec.name]
                    self._event(rec, "deleted")
                elif not rec.terminating:
                    self._kubelet_sync(rec)
            self._reconcile()
        self._publish_endpoints()

    def _terminate_all(self) -> None:
        with self._lock:
            recs = [r for r in self._pods.values() if not r.gone]
            for rec in recs:
                if not rec.terminating:
                    # A teardown: no preStop hooks (nothing is observed after it, and each would ask
                    # peers that are going too).
                    self._begin_delete(rec, None, hook=False)
            threads = list(self._terminators)
        for t in threads:
            t.join(self.sts.termination_grace_period + 20)

    # ------------------------------------------------------------------ StatefulSet controller

    def _healthy(self, rec: _PodRecord) -> bool:
        return not rec.terminating and rec.pod.running() and self._is_ready(rec)

    def _reconcile(self) -> None:
        ordered = self.sts.pod_management_policy == "OrderedReady"
        # Scale up / replace deleted pods, lowest ordinal first.
        for ordinal in range(self.replicas):
            name = self.sts.pod_name(ordinal)
            rec = self._pods.get(name)
            if rec is None:
                self._create_pod(ordinal)
                if ordered:
                    return
                continue
            if ordered and not self._healthy(rec):
                return  # OrderedReady: wait for this one to be Running and Ready
        # Scale down: highest ordinal first; OrderedReady one at a time.
        condemned = sorted((r for r in self._pods.values() if r.ordinal >= self.replicas),
                           key=lambda r: -r.ordinal)
        for rec in condemned:
            if rec.terminating:
                if ordered:
                    return
                continue
            self._begin_delete(rec, None)
            if ordered:
                return
        self._roll()

    def _roll(self) -> None:
        """RollingUpdate as the StatefulSet controller does it (updateStatefulSet): from the highest
        ordinal down, delete the first pod of an older template (even an unhealthy one), but stop at
        an updated pod that is not yet Running and Ready. OrderedReady also waits for every pod."""
        recs = [self._pods.get(self.sts.pod_name(n)) for n in range(self.replicas)]
        if any(r is None or r.terminating for r in recs):
            return
        if self.sts.pod_management_policy == "OrderedReady" and not all(self._healthy(r) for r in recs if r):
            return
        for rec in reversed([r for r in recs if r is not None]):
            if rec.ordinal < self.partition:
                return  # rollingUpdate.partition: ordinals below it keep their template
            if rec.revision != self.revision:
                self._event(rec, f"rolling update to revision {self.revision}")
                self._begin_delete(rec, None)
                return
            if not self._healthy(rec):
                return

    def _create_pod(self, ordinal: int) -> None:
        name = self.sts.pod_name(ordinal)
        # The claim first, as the StatefulSet controller creates the PVC before its pod.
        volume_dir = self._provision(name, self.volume_size_bytes, reuse=True)
        host = self.network.add_host(name)
        template = PodTemplate(
            name=name, namespace=self.sts.namespace, service_name=self.sts.service_name,
            domain=self.domain, dns_ip=self.dns.nameserver_ip, netns=host.netns, ip=host.ip,
            command=self.sts.command, env=self.sts.env_for(name, host.ip, str(uuid.uuid4())),
            mount_path=self.sts.volume_mount_path,
            volume_dir=volume_dir,
            pod_dir=self.run_dir / "pods" / name, log_path=self.run_dir / "logs" / f"{name}.log",
            stop_signal=self.sts.stop_signal, grace_period=self.sts.termination_grace_period,
            agent_bin_dir=self.agent_bin_dir, security=self.sts.security,
            empty_dirs=self.sts.empty_dirs, image=self.image, service_account=self.sts.service_account,
            pre_stop=self.sts.pre_stop,
            shared_mounts=tuple((self.shared_claim_dir(c.claim_name), c.mount_path) for c in self.sts.shared_claims),
        )  # fmt: skip
        pod = Pod(template, register_pid=lambda pid: self.network.register_pid(pid, host))
        rec = _PodRecord(name=name, ordinal=ordinal, host=host, pod=pod, created_at=time.time(),
                         revision=self.revision)
        self._pods[name] = rec
        self._event(rec, f"created ip={host.ip}")
        self._start_container(rec)

    # ------------------------------------------------------------------ kubelet

    def _start_container(self, rec: _PodRecord) -> None:
        try:
            container = rec.pod.start_container(self.network.exec_argv(rec.host, []))
        except PodError as exc:
            self._event(rec, f"start failed: {exc}")
            rec.next_start_at = time.time() + self.backoff_base
            return
        rec.next_start_at = None
        probes = _Probes(started=self.sts.startup_probe is None)
        rec.probes = probes
        self._event(rec, f"started container #{container.status.restart} pid1={container.pid1}")
        for kind, probe in (("startup", self.sts.startup_probe),
                            ("readiness", self.sts.readiness_probe),
                            ("liveness", self.sts.liveness_probe)):
            if probe is not None:
                threading.Thread(target=self._probe_worker, args=(rec, container, probes, kind, probe),
                                 name=f"probe-{kind}-{rec.name}", daemon=True).start()

    def _kubelet_sync(self, rec: _PodRecord) -> None:
        """Restart an exited container (restartPolicy Always) with CrashLoopBackOff timing."""
        container = rec.pod.container
        if container is not None and container.running():
            return
        now = time.time()
        if container is not None and rec.seen_exit != container.status.restart:
            rec.seen_exit = container.status.restart
            if rec.probes is not None:
                rec.probes.stop.set()
                rec.probes.ready = False
            st = container.status
            finished = st.finished_at or now
            self._event(rec, f"container #{st.restart} exited code={st.exit_code}")
            # The kubelet's back-off (flowcontrol.Backoff): the first restart is immediate, the
            # next waits base, then doubles to the cap; it resets after 2x cap without exits.
            expired = rec.backoff_updated is None or finished - rec.backoff_updated > 2 * self.backoff_cap
            if rec.backoff is None or expired:
                rec.next_start_at = finished
                rec.backoff = self.backoff_base
            else:
                rec.next_start_at = finished + rec.backoff
                rec.backoff = min(rec.backoff * 2, self.backoff_cap)
            rec.backoff_updated = finished
        if rec.next_start_at is not None and now >= rec.next_start_at:
            self._start_container(rec)

    def _probe_worker(self, rec: _PodRecord, container: Container, probes: _Probes, kind: str,
                      probe: Probe) -> None:
        """One probe of one container, on its own schedule (like a kubelet probe worker)."""
        if probes.stop.wait(probe.initial_delay):
            return
        successes = failures = 0
        last_output = None
        while not probes.stop.is_set() and not self._stopping.is_set():
            if kind != "startup" and not probes.started:
                probes.stop.wait(min(probe.period, 0.1))
                continue
            started = time.monotonic()
            ok, output = rec.pod.probe(probe.argv, probe.timeout)
            if probes.stop.is_set() or rec.pod.container is not container:
                return
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            with self._lock:
                if not ok and output != last_output:
                    # Like the kubelet's "Unhealthy" events, once per distinct message.
                    self._event(rec, f"Unhealthy ({kind}): {output[-300:]}")
                last_output = None if ok else output
                if kind == "startup":
                    if ok:
                        probes.started = True
                        self._event(rec, "startup probe succeeded")
                        return
                    if failures >= probe.failure_threshold:
                        self._event(rec, f"startup probe failed {failures}x, killing: {output}")
                elif kind == "readiness":
                    if ok and successes >= probe.success_threshold and not probes.ready:
                        probes.ready = True
                        rec.first_ready_at = rec.first_ready_at or time.time()
                        self._event(rec, "ready")
                    elif not ok and failures >= probe.failure_threshold and probes.ready:
                        probes.ready = False
                        self._event(rec, f"not ready: {output}")
                elif not ok and failures >= probe.failure_threshold:
                    self._event(rec, f"liveness probe failed {failures}x, killing: {output}")
            if kind != "readiness" and not ok and failures >= probe.failure_threshold:
                probes.ready = False
                container.stop(self.sts.stop_signal, self.sts.termination_grace_period)
                return
            probes.stop.wait(max(0.0, probe.period - (time.monotonic() - started)))

    def _is_ready(self, rec: _PodRecord) -> bool:
        p = rec.probes
        if p is None or rec.terminating or not rec.pod.running():
            return False
        if self.sts.readiness_probe is None:
            ready = p.started
            if ready and rec.first_ready_at is None:
                rec.first_ready_at = time.time()
            return ready
        return p.ready

    # ------------------------------------------------------------------ deletion

    def _begin_delete(self, rec: _PodRecord, grace: float | None, hook: bool = True) -> threading.Thread:
        rec.terminating = True
        self._event(rec, "terminating")

        def terminate() -> None:
            try:
                if rec.probes is not None:
                    rec.probes.stop.set()
                graceful = rec.pod.stop(grace, pre_stop=hook)
                self._event(rec, "stopped" if graceful else "killed after grace period")
            finally:
                with contextlib.suppress(KeyError, RuntimeError):
                    self.network.remove_host(rec.name)
                with self._lock:
                    rec.gone = True

        t = threading.Thread(target=terminate, name=f"terminate-{rec.name}", daemon=True)
        self._terminators = [x for x in self._terminators if x.is_alive()] + [t]
        t.start()
        return t

    # ------------------------------------------------------------------ endpoints

    def _publish_endpoints(self) -> None:
        with self._lock:
            eps = []
            for rec in sorted(self._pods.values(), key=lambda r: r.ordinal):
                if rec.gone:
                    continue
                # EndpointSlice controller: with publishNotReadyAddresses every pod with an IP
                # (terminating ones too), otherwise Ready and not terminating.
                if self.svc.publish_not_ready_addresses or self._is_ready(rec):
                    eps.append((rec.name, rec.host.ip))
            endpoints = tuple(eps)
            headless = endpoints if endpoints != self._endpoints else None
            clients = self._client_endpoints()
            changed = [(spec, ips) for spec, ips in clients if self._published_clients.get(spec.name) != ips]
            for spec, ips in changed:
                self._published_clients[spec.name] = ips
                self._history.append((time.time(), "endpoints", f"{spec.name}: "
                                      + (" ".join(n for n, _ in ips) or "(none)")))  # fmt: skip
            if headless is not None:
                self._endpoints = headless
                self._history.append((time.time(), "endpoints",
                                      " ".join(n for n, _ in headless) or "(none)"))
        if headless is not None:
            self.dns.set_endpoints(self.sts.namespace, self.svc.name, self.svc.port_name,
                                   self.svc.port, list(headless))
        for spec, ips in changed:
            # A ClusterIP Service as clients meet it: kube-proxy sends a new connection to a Ready
            # endpoint; here the name holds their addresses, with TTL 0 so no resolver keeps old ones.
            self.dns.set_endpoints(spec.namespace, spec.name, spec.port_name, spec.port, list(ips),
                                   pod_records=False, ttl=0)

    def _client_endpoints(self) -> list[tuple[ClientService, tuple[tuple[str, str], ...]]]:
        """Each client Service's Ready, non-terminating pods that its selector matches (the rw one:
        the pod the current template's PGSFS_PRIMARY_ORDINAL names)."""
        primary = self.sts.pod_name(int(self.sts.env_for("", "").get("PGSFS_PRIMARY_ORDINAL") or 0))
        out = []
        for spec in self.spec.clients:
            ips = tuple((rec.name, rec.host.ip) for rec in sorted(self._pods.values(), key=lambda r: r.ordinal)
                        if not rec.gone and self._is_ready(rec) and (not spec.primary_only or rec.name == primary))
            out.append((spec, ips))
        return out

    # ------------------------------------------------------------------ events

    def _event(self, rec: _PodRecord, what: str) -> None:
        now = time.time()
        rec.events.append((now, what))
        self._history.append((now, rec.name, what))

    def events(self, pod: str | None = None) -> list[tuple[float, str, str]]:
        """(time, pod or 'endpoints', what) of everything the controller did, oldest first."""
        with self._lock:
            return [e for e in self._history if pod is None or e[1] == pod]

    def check(self) -> None:
        """Raise if the controller thread died."""
        if self._thread_error is not None:
            raise RuntimeError(f"controller thread failed: {self._thread_error!r}")

    # ------------------------------------------------------------------ public operations

    def _rec(self, name: str) -> _PodRecord:
        with self._lock:
            rec = self._pods.get(name)
            if rec is None or rec.gone:
                raise KeyError(f"no pod {name}")
            return rec

    def pod(self, name: str) -> Pod:
        """The current Pod object called `name`."""
        return self._rec(name).pod

    def pod_names(self) -> list[str]:
        """Names of the pods that exist (terminating ones included), by ordinal."""
        with self._lock:
            return [r.name for r in sorted(self._pods.values(), key=lambda r: r.ordinal)
                    if not r.gone]

    def pod_ip(self, name: str) -> str:
        """The pod's IP."""
        return self._rec(name).host.ip

    def host(self, name: str) -> Host:
        """The pod's host on the emulated network."""
        return self._rec(name).host

    def is_ready(self, name: str) -> bool:
        """True when the pod exists, runs and is Ready."""
        with self._lock:
            rec = self._pods.get(name)
            return rec is not None and not rec.gone and self._is_ready(rec)

    def restarts(self, name: str) -> int:
        """Container restarts of the current pod called `name`."""
        return self._rec(name).pod.restarts

    def endpoints(self) -> list[tuple[str, str]]:
        """The Service's endpoints as last pushed to DNS."""
        with self._lock:
            return list(self._endpoints or ())

    def kill_pod(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to the pod's PID 1 (the container restarts if it dies, like a crash)."""
        rec = self._rec(name)
        with self._lock:
            self._event(rec, f"signal {signal.Signals(sig).name}")
        return rec.pod.kill(sig)

    def delete_pod(self, name: str, grace: float | None = None, wait: bool = True,
                   timeout: float | None = None) -> None:
        """`kubectl delete pod`: STOPSIGNAL, grace, SIGKILL; the StatefulSet recreates it.

        With `wait` returns once the old pod is gone (not when the new one is ready).
        """
        with self._lock:
            rec = self._rec(name)
            if rec.terminating:
                raise RuntimeError(f"pod {name} is already terminating")
            thread = self._begin_delete(rec, grace)
        if wait:
            limit = timeout if timeout is not None else (
                (grace if grace is not None else self.sts.termination_grace_period) + 30)
            thread.join(limit)
            if thread.is_alive():
                raise TimeoutError(f"pod {name} not gone after {limit}s")

    def scale(self, replicas: int) -> None:
        """`kubectl scale sts --replicas`: up in order, down from the highest ordinal."""
        with self._lock:
            self.replicas = replicas
            self._history.append((time.time(), "statefulset", f"scale {replicas}"))

    def update_template(self, env: Mapping[str, str | None]) -> int:
        """`kubectl apply` of a changed pod template (env on top of the current one, None removes):
        the rolling update replaces the pods one at a time, highest ordinal first. Returns the revision."""
        with self._lock:
            self.spec = with_overrides(self.spec, env=env)
            self.sts = self.spec.statefulset
            self.revision += 1
            self._history.append((time.time(), "statefulset", f"template revision {self.revision}"))
            return self.revision

    def set_partition(self, partition: int) -> None:
        """`kubectl patch sts` of spec.updateStrategy.rollingUpdate.partition: the rollout stops above
        this ordinal, so pods below it keep their template while their containers restart. (Unlike
        Kubernetes, a pod below it that is deleted comes back with the newest template here.)"""
        with self._lock:
            self.partition = partition
            self._history.append((time.time(), "statefulset", f"partition {partition}"))

    def update_template_as_pod_dies(self, env: Mapping[str, str | None], name: str) -> int:
        """`kubectl apply` of a changed template at the moment pod `name`'s node fails: its container is
        killed (SIGKILL, no shutdown) and the pod deleted under the controller's lock, so the rollout
        first waits for its replacement, which is of the new template. Returns the revision."""
        with self._lock:
            revision = self.update_template(env)
            rec = self._rec(name)
            self._event(rec, "node failure: signal SIGKILL")
            rec.pod.kill(signal.SIGKILL)
            thread = self._begin_delete(rec, 0)
        thread.join(30)
        return revision

    def updated(self, name: str) -> bool:
        """True when pod `name` is of the current template (kubectl's UP-TO-DATE)."""
        with self._lock:
            rec = self._pods.get(name)
            return rec is not None and not rec.terminating and rec.revision == self.revision

    def rolled_out(self) -> bool:
        """True when every pod is of the current template, running and Ready (rollout complete)."""
        with self._lock:
            recs = [self._pods.get(self.sts.pod_name(n)) for n in range(self.replicas)]
            return all(r is not None and r.revision == self.revision and self._healthy(r) for r in recs)

    def exec_in_pod(self, pod: str, argv: list[str], env: dict[str, str] | None = None,
                    user: str | None = None, timeout: float = 60.0,
                    input_text: str | None = None,
                    privileged: bool = False) -> subprocess.CompletedProcess[str]:
        """`kubectl exec`: run argv in the pod's namespaces with the container's environment
        (`privileged`: without its securityContext, the node's view; see Pod.exec_argv)."""
        return self.pod(pod).exec(argv, env=env, user=user, timeout=timeout, input_text=input_text,
                                  privileged=privileged)

    def _psql_argv(self, sql: str, database: str = "postgres") -> list[str]:
        user = self.sts.env_for("", "").get("POSTGRES_USER", "postgres")
        return ["psql", "-h", SOCKET_DIR, "-p", str(self.svc.port), "-U", user, "-d", database,
                "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]

    def psql(self, pod: str, sql: str, database: str = "postgres", timeout: float = 30.0) -> str:
        """Run SQL in the pod over the Unix socket as the postgres user; stripped output."""
        res = self.try_psql(pod, sql, database, timeout)
        if res.returncode != 0:
            raise RuntimeError(f"psql in {pod} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout.strip()

    def try_psql(self, pod: str, sql: str, database: str = "postgres",
                 timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Like psql() but returns the completed process instead of raising."""
        env = {"PGCONNECT_TIMEOUT": "3"}
        password = self.sts.env_for("", "").get("POSTGRES_PASSWORD")
        if password:
            env["PGPASSWORD"] = password
        try:
            return self.exec_in_pod(pod, self._psql_argv(sql, database), env=env, user="postgres",
                                    timeout=timeout)
        except (PodError, KeyError) as exc:
            return subprocess.CompletedProcess([], 1, "", str(exc))

    def role(self, pod: str) -> str:
        """primary / replica from pg_is_in_recovery(), or unknown if postgres does not answer."""
        res = self.try_psql(pod, "select pg_is_in_recovery()", timeout=ROLE_TIMEOUT)
        if res.returncode != 0:
            return "unknown"
        return {"f": "primary", "t": "replica"}.get(res.stdout.strip(), "unknown")

    def logs(self, pod: str, previous: bool = False) -> str:
        """`kubectl logs [--previous]`: the current (or previous) container's output."""
        from .pod import read_logs

        return read_logs(self.run_dir / "logs" / f"{pod}.log", previous)

    def _claim(self, pod: str) -> str:
        return f"{self.sts.volume_name}-{pod}"

    def _provision(self, pod: str, size: int | None, reuse: bool) -> Path:
        """The pod's volume, created and mounted if need be; with `reuse` False it must be new."""
        return self._provision_claim(self._claim(pod), size, reuse)

    def shared_claim_dir(self, claim: str) -> Path:
        """Host directory of a claim every pod mounts (k8s/components/backup's repository)."""
        spec = next(c for c in self.sts.shared_claims if c.claim_name == claim)
        return self._provision_claim(claim, spec.size_bytes, reuse=True)

    def _provision_claim(self, claim: str, size: int | None, reuse: bool) -> Path:
        path = self.run_dir / "volumes" / claim
        image = self.run_dir / "volume-images" / f"{claim}.img"
        with self._volume_lock:
            if not self._volumes_open:
                raise RuntimeError(f"cannot provision {path}: the cluster is not running")
            if not reuse and (image.exists() or volumes.mount_at(path) is not None
                              or (path.is_dir() and any(path.iterdir()))):
                raise FileExistsError(f"the volume of claim {claim} already exists: {path}")
            # Images live outside volumes/: whoever walks the volumes (a test scanning them for
            # secrets) must see the files, not read the raw blocks of every volume again.
            volumes.ensure_volume(path, size, image)
            if size is not None:
                self._mounted.add(path)
        return path

    def volume_dir(self, pod: str) -> Path:
        """Host directory of the pod's persistent volume (survives deletion, like a PVC).

        While the cluster runs, the volume is provisioned on first use, like a PVC made before its
        pod: files put there before the pod exists are on the volume the pod mounts.
        """
        with self._volume_lock:
            running = self._volumes_open
        if not running:
            return self.run_dir / "volumes" / self._claim(pod)
        return self._provision(pod, self.volume_size_bytes, reuse=True)

    def create_volume(self, pod: str, size: int | str | None = MANIFEST_SIZE) -> Path:
        """Create the pod's claim now with its own size (like applying PVC data-<pod> before the
        StatefulSet would make it); FileExistsError if it exists. Returns its directory."""
        return self._provision(pod, _size_bytes(size, self.volume_size_bytes), reuse=False)

    def wipe_volume(self, pod: str) -> None:
        """Empty the pod's volume as if its PVC were deleted and a new one made (the filesystem's
        lost+found stays, as a freshly formatted PV has it). The pod must not exist."""
        if pod in self.pod_names():
            # As the kubernetes.io/pvc-protection finalizer: no claim goes while a pod uses it.
            raise RuntimeError(f"pod {pod} still exists: delete it (scale down) first")
        volumes.wipe(self.run_dir / "volumes" / self._claim(pod))

    def status(self, roles: bool = True) -> list[PodStatus]:
        """Per-pod IP, phase, state, ready, restarts, role (asks postgres), age."""
        with self._lock:
            recs = sorted((r for r in self._pods.values() if not r.gone), key=lambda r: r.ordinal)
            rows = []
            for rec in recs:
                c = rec.pod.container
                running = c is not None and c.running()
                if rec.terminating:
                    phase, state = "Running", "Terminating"
                elif c is None:
                    phase, state = "Pending", "ContainerCreating"
                elif running:
                    phase, state = "Running", "Running"
                else:
                    phase, state = "Running", "CrashLoopBackOff"
                last = ""
                if len(rec.pod.containers) > 1 or (c is not None and not running):
                    prev = c if (c is not None and not running) else rec.pod.containers[-2]
                    last = f"exit {prev.status.exit_code}"
                rows.append(PodStatus(rec.name, rec.host.ip, phase, state, self._is_ready(rec),
                                      rec.pod.restarts, "", time.time() - rec.created_at, last))
        for row in rows:
            row.role = self.role(row.name) if roles and row.state in ("Running", "Terminating") \
                else "unknown"
        return rows

    def wait_ready(self, pods: Iterable[str] | None = None, timeout: float = 120.0) -> None:
        """Wait until the given pods (default: all replicas) exist, run and are Ready."""
        names = list(pods) if pods is not None else [self.sts.pod_name(i)
                                                     for i in range(self.replicas)]

        def ready() -> bool:
            self.check()
            return all(self.is_ready(n) for n in names)

        try:
            wait_until(ready, timeout, 0.1, f"pods {names} Ready")
        except TimeoutError as exc:
            tails = self._log_tails(n for n in names if not self.is_ready(n))
            raise TimeoutError(f"{exc}\n{self.describe()}\n{tails}") from None

    def _log_tails(self, pods: Iterable[str], lines: int = 12) -> str:
        """The last lines of each pod's previous and current container output (postgres' FATAL, the
        agent's error): what a crash loop says."""
        out = []
        for name in pods:
            for previous in (True, False):
                try:
                    tail = self.logs(name, previous=previous).splitlines()[-lines:]
                except (KeyError, OSError):
                    continue
                which = "previous" if previous else "current"
                out += [f"{name}, {which} container, last {len(tail)} lines:", *(f"  {line[:300]}" for line in tail)]
        return "\n".join(out)

    def describe(self, events: int = 25) -> str:
        """Status table and the latest controller events, for failure messages."""
        t0 = self._history[0][0] if self._history else time.time()
        lines = [format_table(self.status(roles=False)), "events:"]
        lines += [f"  {when - t0:7.2f}s {who} {what}" for when, who, what in self.events()[-events:]]
        return "\n".join(lines)

    def replication(self) -> list[dict[str, str]]:
        """The primary's pg_stat_replication rows (application_name, state, sync_state, slot)."""
        primary = self.sts.pod_name(0)
        out = self.psql(primary, "select r.application_name, r.state, r.sync_state,"
                        " coalesce(s.slot_name, '') from pg_stat_replication r"
                        " left join pg_replication_slots s on s.active_pid = r.pid"
                        " order by r.application_name")
        rows = []
        for line in out.splitlines():
            name, state, sync, slot = line.split("|")
            rows.append({"application_name": name, "state": state, "sync_state": sync,
                         "slot": slot})
        return rows

    def wait_streaming(self, timeout: float = 180.0,
                       replicas: int | None = None) -> list[dict[str, str]]:
        """Wait until the primary shows every replica (ordinals 1..n-1) `streaming`.

        A replica counts by its own application_name (its pod name, or the pod name made a slot
        name): pg_basebackup's WAL stream during a clone also says `streaming`.
        """
        count = self.replicas if replicas is None else replicas
        want = {self.sts.pod_name(i) for i in range(1, count)}

        def streaming() -> list[dict[str, str]] | None:
            self.check()
            try:
                rows = self.replication()
            except RuntimeError:
                return None
            seen = {pod for pod in want for r in rows if r["state"] == "streaming"
                    and r["application_name"] in (pod, slot_name(pod))}
            return rows if seen == want else None

        result: list[dict[str, str]] = wait_until(streaming, timeout, 0.5,
                                                  f"{sorted(want)} streaming")
        return result


def _size_bytes(requested: int | str | None, default: int | None) -> int | None:
    """A volume size argument in bytes: MANIFEST_SIZE means `default`, None a plain directory."""
    if requested == MANIFEST_SIZE:
        return default
    return None if requested is None else parse_quantity(requested)


def slot_name(pod: str) -> str:
    """The pod name as a replication slot name (lower case, digits, underscores)."""
    return re.sub(r"[^a-z0-9_]", "_", pod.lower())[:63]


def format_table(rows: list[PodStatus]) -> str:
    """A `kubectl get pods -o wide`-like table."""
    head = ("NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "ROLE", "LAST")
    lines: list[tuple[Any, ...]] = [head]
    for r in rows:
        lines.append((r.name, "1/1" if r.ready else "0/1", r.state, r.restarts,
                      f"{int(r.age)}s", r.ip, r.role, r.last_exit))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()
                     for line in lines)
