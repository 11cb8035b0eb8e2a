"""Configuration: every setting read from the environment and validated at once, before any effect."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from agent import archive, majors, serverargs, walbudget
from agent.archive import ArchiveSettings
from agent.errors import ConfigError
from agent.identity import Identity, parse_pod_name
from agent.pgdata import STATE_DIR_INSIDE, default_state_dir
from agent.quantity import QuantityError, parse_quantity
from agent.secret import Secret

DEFAULT_CONF_DIR = "/etc/postgresql/conf.d"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RESOLV_CONF = Path("/etc/resolv.conf")
HOSTS_FILE = Path("/etc/hosts")

_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,13}[a-z0-9])?$")
# PostgreSQL's NAMEDATALEN - 1: longer role and database names are cut, so they are refused.
MAX_NAME_BYTES = 63
_SYNC = re.compile(r"^(?:ANY|FIRST) [1-9][0-9]{0,2}$")
_WAL_SIZE = re.compile(r"^(?:auto|-1|[0-9]+(?:kB|MB|GB|TB)?)$")
# pg_basebackup --max-rate: kB/s, or with a k or M suffix; 32 kB/s .. 1 GB/s.
_RATE = re.compile(r"^(?P<n>[0-9]+)(?P<unit>[kM]?)$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


SECRET_VARIABLES = (
    "POSTGRES_PASSWORD",
    "PGSFS_REPLICATION_PASSWORD",
    "PGPASSWORD",
)


@dataclass(frozen=True)
class Config:
    """Everything the agent needs to know, validated; secrets wrapped so they never print."""

    identity: Identity
    namespace: str
    service_name: str
    cluster_domain: str
    port_name: str
    port: int
    pgdata: Path
    state_dir: Path
    initdb_dir: Path
    superuser: str
    superuser_password: Secret
    database: str
    initdb_args: tuple[str, ...]
    replication_user: str
    replication_password: Secret
    wait_timeout: float
    restart_check_timeout: float
    switchover_timeout: float
    peer_check_timeout: float
    auth_attempts: int
    clone_max_rate: str | None
    clone_stall_timeout: float
    allow_reinit: int | None
    # The StatefulSet's replicas (PGSFS_MEMBERS, from the manifest); 0 when not given.
    members: int
    on_divergence: str
    max_wal_senders: int
    max_replication_slots: int
    wal_keep_size: str
    max_slot_wal_keep_size: str
    max_wal_size: str
    log_format: str
    log_level: str
    # Variables whose secret is too short for the argv and log safeguards (a warning at start).
    short_secrets: tuple[str, ...] = ()
    # Started outside a StatefulSet (`docker run`): one primary, no members, no replication role
    # unless PGSFS_REPLICATION_PASSWORD is set.
    standalone: bool = False
    # The catch-all pg_hba rule's method: scram-sha-256, or trust for a standalone server that asked for it.
    host_auth_method: str = "scram-sha-256"
    # `ANY n` / `FIRST n`, or "" (asynchronous): synchronous_standby_names over the members.
    synchronous_standbys: str = ""
    # The pod's UID (downward API metadata.uid): a new one means a new pod (agent/podbirth.py).
    pod_uid: str = ""
    # postgres' own arguments (`pg-sfs-agent postgres ARGS`): the init-time servers get them too.
    server_args: tuple[str, ...] = ()
    # PGSFS_VOLUME_SIZE in bytes: the PVC's storage request (the manifest copies it); None when not given.
    volume_size: int | None = None
    # WAL archiving and backups with pgBackRest (PGSFS_BACKUP_REPO and the settings beside it); None: off.
    archive: ArchiveSettings | None = None
    # Where the programs of each major the image carries live, one <major>/bin each.
    majors_dir: Path = majors.DEFAULT_DIR
    # The user's postgresql.conf tuning (*.conf files, a mounted ConfigMap), included when it exists.
    conf_dir: Path = Path(DEFAULT_CONF_DIR)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def waldir(self) -> Path | None:
        """Where pg_wal lives when not inside PGDATA (POSTGRES_INITDB_WALDIR or initdb's --waldir)."""
        named = walbudget.waldir_arg(self.initdb_args)
        return Path(named) if named else None

    def wal_configured(self) -> dict[str, str]:
        """The WAL settings as configured (`auto` or a size), by PostgreSQL's names."""
        return {
            "max_wal_size": self.max_wal_size,
            "wal_keep_size": self.wal_keep_size,
            "max_slot_wal_keep_size": self.max_slot_wal_keep_size,
        }

    def pod_fqdn(self, pod: str) -> str:
        """Absolute per-pod DNS name, as the headless Service publishes it."""
        return f"{pod}.{self.service_name}.{self.namespace}.svc.{self.cluster_domain}."

    @property
    def primary_fqdn(self) -> str:
        """Absolute DNS name of the primary's pod."""
        return self.pod_fqdn(self.identity.primary_pod)

    @property
    def service_fqdn(self) -> str:
        """Absolute DNS name of the headless Service."""
        return f"{self.service_name}.{self.namespace}.svc.{self.cluster_domain}."

    @property
    def srv_fqdn(self) -> str:
        """Absolute SRV name of the Service's named port."""
        return f"_{self.port_name}._tcp.{self.service_fqdn}"


class _Problems:
    """Collects every configuration problem so they are reported together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, name: str, value: str | None, expected: str, *, secret: bool = False) -> None:
        shown = "(hidden)" if secret else repr(value)
        self.items.append(f"{name}={shown}: expected {expected}")


def _search_domains(resolv_conf: Path) -> list[str]:
    try:
        text = resolv_conf.read_text()
    except OSError:
        return []
    domains: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("search", "domain"):
            domains = [d.rstrip(".").lower() for d in parts[1:]]
    return domains


def governing_service(hosts_text: str, pod_name: str) -> str | None:
    """The StatefulSet's Service from the pod's own FQDN, which the kubelet writes into /etc/hosts
    (`<ip> <pod>.<service>.<namespace>.svc.<domain> <pod>`); None without one (`docker run`)."""
    prefix = f"{pod_name}.".lower()
    for line in hosts_text.splitlines():
        for name in line.split("#", 1)[0].split()[1:]:
            labels = name.lower().rstrip(".").split(".")
            if name.lower().startswith(prefix) and len(labels) >= 4 and labels[3] == "svc":
                return labels[1]
    return None


def namespace_and_domain_from_search(domains: list[str]) -> tuple[str | None, str | None]:
    """Namespace and cluster domain from a kubelet search list (`<ns>.svc.<domain> svc.<domain> ...`)."""
    for entry in domains:
        labels = entry.split(".")
        if len(labels) >= 3 and labels[1] == "svc" and f"svc.{'.'.join(labels[2:])}" in domains:
            return labels[0], ".".join(labels[2:])
    for entry in domains:
        if entry.startswith("svc.") and len(entry) > 4:
            return None, entry[4:]
    return None, None


def _int(env: Mapping[str, str], name: str, default: int, problems: _Problems, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    # int() would also take "5_432" and non-ASCII digits: only plain ASCII digits are a number here.
    if not re.fullmatch(r"-?[0-9]+", text):
        problems.add(name, raw, f"a whole number from {lo} to {hi}")
        return default
    value = int(text)
    if not lo <= value <= hi:
        problems.add(name, raw, f"a whole number from {lo} to {hi}")
        return default
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, problems: _Problems) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = -1.0
    if not 0 < value <= 7 * 86400 or math.isnan(value):
        problems.add(name, raw, "a number of seconds greater than 0 (at most 604800)")
        return default
    return value


def _bool(env: Mapping[str, str], name: str, problems: _Problems) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw not in _FALSE:
        problems.add(name, env.get(name), "true or false")
    return False


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], problems: _Problems) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        problems.add(name, env.get(name), "one of " + ", ".join(choices))
        return default
    return raw


def _matching(
    env: Mapping[str, str],
    name: str,
    default: str,
    pattern: re.Pattern[str],
    expected: str,
    problems: _Problems,
) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not pattern.fullmatch(raw):
        problems.add(name, raw, expected)
        return default
    return raw


def _secret(env: Mapping[str, str], name: str, problems: _Problems, *, required: bool) -> Secret:
    """Read X or X_FILE (never both); a file's trailing newlines go, as in the official image."""
    file_name = f"{name}_FILE"
    value = _plain_or_file(env, name, problems, holding=" holding the password")
    source = file_name if file_name in env else name
    if value is None and source == file_name:  # both set, or unreadable: already a problem
        return Secret("")
    if not value and source == name:
        if required:
            problems.add(name, env.get(name), f"a non-empty password (or {file_name}: a file holding one)")
        return Secret("")
    assert value is not None
    for problem in _password_problems(value, one_line=name != "POSTGRES_PASSWORD"):
        problems.add(source, env.get(file_name) if source == file_name else None, problem, secret=source == name)
    return Secret(value)


def _plain_or_file(env: Mapping[str, str], name: str, problems: _Problems, *, holding: str = "") -> str | None:
    """NAME, or the content of the file NAME_FILE names (trailing newlines dropped, as the official
    image's file_env does); None when neither is set, or when that is a problem (reported). An empty
    variable counts as unset, as there (`${VAR:-}`): POSTGRES_PASSWORD= with POSTGRES_PASSWORD_FILE
    uses the file."""
    path = env.get(f"{name}_FILE")
    if not path:
        return env.get(name)
    if env.get(name):
        problems.add(f"{name} and {name}_FILE", "(both set)", "only one of them")
        return None
    try:
        # Bytes, not text mode: universal newlines would turn a "\r" inside a password into "\n".
        return Path(path).read_bytes().decode("utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(
            f"{name}_FILE", path, f"a readable UTF-8 file{holding} ({getattr(exc, 'strerror', None) or exc})"
        )
        return None


def _name(
    env: Mapping[str, str], name: str, default: str, what: str, problems: _Problems, *, in_hba: bool = False
) -> str:
    """A role or database name as PostgreSQL takes it: any text of 1 to 63 bytes without NUL.

    `in_hba`: the name also goes into pg_hba.conf, which cannot express a double quote.
    """
    value = _plain_or_file(env, name, problems)
    value = value if value else default
    expected = f"{what} of 1 to {MAX_NAME_BYTES} bytes without NUL or line break"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        problems.add(name, value.encode("utf-8", "replace").decode(), f"{expected}, in UTF-8")
        return default
    # A line break is refused everywhere: it is a YAML block scalar's stray newline far more often than a name.
    bad = any(ch in value for ch in "\x00\r\n") or (in_hba and '"' in value)
    if size > MAX_NAME_BYTES or bad:
        if in_hba:
            expected += " or double quote (pg_hba.conf cannot hold one)"
        problems.add(name, value, expected)
        return default
    return value


def _password_problems(value: str, *, one_line: bool) -> list[str]:
    """Why a password cannot be used, if it cannot (never echoing it).

    `one_line`: it goes into a passfile, which holds one entry per line. Any length is accepted, as
    by the official image; a short one only weakens a safeguard (see `Config.short_secrets`).
    """
    if not value:
        return ["a non-empty password"]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return ["a password that is valid UTF-8"]
    if "\x00" in value:
        return ["a password without NUL characters"]
    if one_line and ("\n" in value or "\r" in value):
        return ["a password without line breaks (the replication passfile holds one entry per line)"]
    return []


def _reinit_override(env: Mapping[str, str], problems: _Problems) -> int | None:
    """PGSFS_ALLOW_REINIT: the system identifier of the cluster a new init may give up, or None."""
    raw = env.get("PGSFS_ALLOW_REINIT", "").strip()
    if raw.lower() in _FALSE:
        return None
    if raw.isdigit() and len(raw) >= 10 and int(raw) < 2**64:
        return int(raw)
    problems.add(
        "PGSFS_ALLOW_REINIT",
        raw,
        "unset, or the system identifier of the cluster to give up (the primary_volume_lost error lists it "
        "per member); a bare true is not accepted: it would re-initialise again at every later loss",
    )
    return None


def _max_rate(env: Mapping[str, str], problems: _Problems) -> str | None:
    raw = env.get("PGSFS_CLONE_MAX_RATE", "").strip()
    if not raw:
        return None
    match = _RATE.fullmatch(raw)
    if match is not None:
        kb = int(match.group("n")) * (1024 if match.group("unit") == "M" else 1)
        if 32 <= kb <= 1024 * 1024:
            return raw
    problems.add(
        "PGSFS_CLONE_MAX_RATE",
        raw,
        "a rate for pg_basebackup --max-rate: 32 to 1048576 (kB/s), or with a k or M suffix",
    )
    return None


def _volume_size(env: Mapping[str, str], problems: _Problems) -> int | None:
    raw = env.get("PGSFS_VOLUME_SIZE", "").strip()
    if not raw:
        return None
    try:
        return parse_quantity(raw)
    except QuantityError:
        problems.add("PGSFS_VOLUME_SIZE", raw, "unset, or the volume's size as a Kubernetes quantity (like 10Gi or "
                     "600Mi): the manifest copies the volumeClaimTemplate's storage request")  # fmt: skip
        return None


def _archiving(env: Mapping[str, str], statefulset: str, pgdata: Path, which: Callable[[str], str | None],
               problems: _Problems) -> ArchiveSettings | None:  # fmt: skip
    """The archiving section (agent/archive.py), and whether this image can do it at all."""
    settings, found = archive.read(env, statefulset=statefulset, pgdata=PurePosixPath(pgdata))
    for name, value, expected in found:
        problems.add(name, value, expected)
    if settings is not None and which("pgbackrest") is None:
        problems.add("PGSFS_BACKUP_REPO", settings.location, "unset: pgbackrest is not installed in this image "
                     "(the image built from docker/Dockerfile has it)")  # fmt: skip
    return settings


# The official image's PGDATA.
DEFAULT_PGDATA = "/var/lib/postgresql/data"
# The values k8s/secret.example.yaml publishes: anyone can read them, so no cluster may use them.
PUBLISHED_EXAMPLE_PASSWORDS = frozenset(
    {"example-postgres-password-REPLACE-ME", "example-replication-password-REPLACE-ME"}
)


def load_config(
    env: Mapping[str, str],
    *,
    hostname: Callable[[], str] = socket.gethostname,
    resolv_conf: Path = RESOLV_CONF,
    sa_namespace_file: Path = SA_NAMESPACE_FILE,
    hosts_file: Path = HOSTS_FILE,
    server_args: Sequence[str] = (),
    which: Callable[[str], str | None] = shutil.which,
) -> Config:
    """Validate the environment (and postgres' own arguments) into a Config, or raise ConfigError
    listing every problem."""
    problems = _Problems()
    for setting, value, expected in serverargs.problems(server_args):
        problems.add(f"postgres argument {setting}", value, expected)

    pod_name = env.get("POD_NAME") or env.get("HOSTNAME") or hostname()
    parsed = parse_pod_name(pod_name)
    primary_ordinal = _int(env, "PGSFS_PRIMARY_ORDINAL", 0, problems, 0, 999_999_999)

    domains = _search_domains(resolv_conf)
    search_ns, search_domain = namespace_and_domain_from_search(domains)
    namespace = env.get("POD_NAMESPACE", "").strip()
    if not namespace:
        try:
            namespace = sa_namespace_file.read_text().strip()
        except OSError:
            namespace = search_ns or ""
    # `docker run` of the image, as with the official one: no StatefulSet name, no POD_NAME, no
    # namespace anywhere. Then it is one server on its own, the primary, as the official image is.
    standalone = parsed is None and not env.get("POD_NAME") and not namespace
    if standalone:
        parsed = (pod_name, primary_ordinal)
    elif parsed is None:
        problems.add("POD_NAME", pod_name, "a StatefulSet pod name <statefulset>-<ordinal>, like postgresql-sfs-0")
        parsed = ("invalid", 0)
    if not namespace and not standalone:
        problems.add(
            "POD_NAMESPACE", None, "the pod's namespace (set it from the downward API: fieldRef metadata.namespace)"
        )
    elif namespace and not _DNS_LABEL.fullmatch(namespace):
        problems.add("POD_NAMESPACE", namespace, "a DNS label (lower case letters, digits, '-')")

    try:
        # A namePrefix or another StatefulSet renames the Service: the pod's own FQDN names it.
        governing = governing_service(hosts_file.read_text(), pod_name)
    except OSError:
        governing = None
    service = _matching(env, "PGSFS_SERVICE_NAME", governing or "postgresql-svc", _DNS_LABEL,
                        "a DNS label, the headless Service's name", problems)  # fmt: skip
    domain = (env.get("PGSFS_CLUSTER_DOMAIN") or search_domain or "cluster.local").rstrip(".").lower()
    if not _DOMAIN.fullmatch(domain):
        problems.add("PGSFS_CLUSTER_DOMAIN", env.get("PGSFS_CLUSTER_DOMAIN"), "a DNS domain like cluster.local")
    port_name = _matching(
        env,
        "PGSFS_PORT_NAME",
        "postgresql-port",
        _PORT_NAME,
        "a port name (at most 15 lower case letters, digits, '-')",
        problems,
    )
    port = _int(env, "PGPORT", 5432, problems, 1, 65535)

    pgdata_raw = env.get("PGDATA", DEFAULT_PGDATA)
    pgdata = Path(pgdata_raw)
    if not pgdata.is_absolute() or pgdata == Path("/") or ".." in pgdata.parts:
        problems.add("PGDATA", pgdata_raw, "an absolute path to the data directory, a subdirectory of the volume")
    state_raw = env.get("PGSFS_STATE_DIR") or str(default_state_dir(pgdata))
    state_dir = Path(state_raw)
    inside = state_dir == pgdata or pgdata in state_dir.parents
    if not state_dir.is_absolute() or (inside and state_dir != pgdata / STATE_DIR_INSIDE):
        problems.add("PGSFS_STATE_DIR", state_raw, f"an absolute path outside PGDATA (or $PGDATA/{STATE_DIR_INSIDE})")
    initdb_dir = Path(env.get("PGSFS_INITDB_DIR", "/docker-entrypoint-initdb.d"))
    conf_dir_raw = env.get("PGSFS_CONF_DIR") or DEFAULT_CONF_DIR
    if not Path(conf_dir_raw).is_absolute() or "'" in conf_dir_raw or "\n" in conf_dir_raw:
        problems.add("PGSFS_CONF_DIR", conf_dir_raw, "an absolute path (a directory of *.conf files, e.g. a ConfigMap)")
    majors_raw = env.get("PGSFS_MAJORS_DIR") or str(majors.DEFAULT_DIR)
    if not Path(majors_raw).is_absolute():
        problems.add("PGSFS_MAJORS_DIR", majors_raw, "an absolute path holding one <major>/bin directory per major")

    superuser = _name(env, "POSTGRES_USER", "postgres", "a role name", problems)
    database = _name(env, "POSTGRES_DB", superuser, "a database name", problems)
    try:
        initdb_args = tuple(shlex.split(_plain_or_file(env, "POSTGRES_INITDB_ARGS", problems) or ""))
    except ValueError as exc:
        problems.add("POSTGRES_INITDB_ARGS", env.get("POSTGRES_INITDB_ARGS"), f"arguments in shell syntax ({exc})")
        initdb_args = ()
    waldir = _plain_or_file(env, "POSTGRES_INITDB_WALDIR", problems)
    if waldir:
        # As the official entrypoint does: the variable becomes initdb's --waldir.
        if walbudget.waldir_arg(initdb_args) is not None:
            problems.add("POSTGRES_INITDB_WALDIR", waldir, "unset when POSTGRES_INITDB_ARGS has --waldir (one of them)")
        wal_path = Path(waldir)
        if not wal_path.is_absolute() or wal_path == pgdata or pgdata in wal_path.parents or ".." in wal_path.parts:
            problems.add("POSTGRES_INITDB_WALDIR", waldir, "an absolute path outside PGDATA")
        initdb_args = (f"--waldir={waldir}", *initdb_args)
    for arg in initdb_args:
        # -A is --auth's short form; -W/--pwprompt would make initdb wait for a password on a terminal.
        if arg.startswith(("--pwfile", "-D", "--pgdata", "-U", "--username", "--auth", "-A", "-W", "--pwprompt")):
            name = arg.split("=")[0] if arg.startswith("--") else arg[:2]
            problems.add("POSTGRES_INITDB_ARGS", env.get("POSTGRES_INITDB_ARGS"), f"no {name} (the agent sets it)")
    host_auth = env.get("POSTGRES_HOST_AUTH_METHOD", "") or "scram-sha-256"
    # trust only for one server on its own (`docker run`, a CI service), as the official image allows it.
    if host_auth != "scram-sha-256" and not (host_auth == "trust" and standalone):
        problems.add(
            "POSTGRES_HOST_AUTH_METHOD",
            host_auth,
            "unset or scram-sha-256 (trust only when the container runs on its own, outside a StatefulSet): "
            "trust would let anyone who reaches a pod's address in as any role, "
            "the replication role included, and every pod's address is reachable across the cluster network; "
            "md5 keeps a hash that logs in by itself where SCRAM's does not (PostgreSQL 14's default is SCRAM)",
        )

    # With trust the official image needs no password either; one that is set is still applied.
    superuser_password = _secret(env, "POSTGRES_PASSWORD", problems, required=host_auth != "trust")
    replication_user = _name(env, "PGSFS_REPLICATION_USER", "replicator", "a role name", problems, in_hba=True)
    if replication_user == superuser:
        problems.add("PGSFS_REPLICATION_USER", replication_user, "a role other than POSTGRES_USER")
    # Standalone there is nobody to replicate to: the replication role is made only if asked for.
    replication_password = _secret(env, "PGSFS_REPLICATION_PASSWORD", problems, required=not standalone)
    given = (("POSTGRES_PASSWORD", superuser_password), ("PGSFS_REPLICATION_PASSWORD", replication_password))
    for name, secret in given:
        if secret.reveal() in PUBLISHED_EXAMPLE_PASSWORDS:
            problems.add(name, None, "a password of your own, not the published example of k8s/secret.example.yaml "
                         "(README's quick start creates the Secret with random ones)", secret=True)  # fmt: skip

    wait_timeout = _seconds(env, "PGSFS_WAIT_TIMEOUT", 600.0, problems)
    restart_check_timeout = _seconds(env, "PGSFS_RESTART_CHECK_TIMEOUT", 10.0, problems)
    switchover_timeout = _seconds(env, "PGSFS_SWITCHOVER_TIMEOUT", 60.0, problems)
    peer_check_timeout = _seconds(env, "PGSFS_PEER_CHECK_TIMEOUT", 30.0, problems)
    members = _int(env, "PGSFS_MEMBERS", 0, problems, 0, 1000)
    auth_attempts = _int(env, "PGSFS_AUTH_ATTEMPTS", 3, problems, 1, 100)
    max_rate = _max_rate(env, problems)
    clone_stall_timeout = _seconds(env, "PGSFS_CLONE_STALL_TIMEOUT", 300.0, problems)
    allow_reinit = _reinit_override(env, problems)
    on_divergence = _choice(env, "PGSFS_ON_DIVERGENCE", "refuse", ("refuse", "reclone"), problems)
    max_wal_senders = _int(env, "PGSFS_MAX_WAL_SENDERS", 10, problems, 2, 1000)
    max_slots = _int(env, "PGSFS_MAX_REPLICATION_SLOTS", 10, problems, 2, 1000)
    size_expected = "auto (follow the volume's size), or a size like 512MB or 1GB (units kB, MB, GB, TB)"
    wal_keep = _matching(env, "PGSFS_WAL_KEEP_SIZE", "auto", _WAL_SIZE, size_expected, problems)
    slot_keep = _matching(
        env, "PGSFS_MAX_SLOT_WAL_KEEP_SIZE", "auto", _WAL_SIZE, size_expected + ", or -1 (no limit)", problems
    )
    max_wal = _matching(env, "PGSFS_MAX_WAL_SIZE", "auto", _WAL_SIZE, size_expected, problems)
    volume_size = _volume_size(env, problems)
    for name, value in (("PGSFS_WAL_KEEP_SIZE", wal_keep), ("PGSFS_MAX_WAL_SIZE", max_wal)):
        if value == "-1":
            problems.add(name, value, size_expected)
    sync = " ".join(env.get("PGSFS_SYNCHRONOUS_STANDBYS", "").split()).upper()
    if sync in ("", "OFF"):
        sync = ""
    elif sync.isdigit():
        sync = f"FIRST {sync}"
    if sync and not _SYNC.fullmatch(sync):
        problems.add(
            "PGSFS_SYNCHRONOUS_STANDBYS",
            env.get("PGSFS_SYNCHRONOUS_STANDBYS"),
            "off, ANY <n> or FIRST <n> (n from 1): how many standbys confirm each commit",
        )
        sync = ""
    log_format = _choice(env, "PGSFS_LOG_FORMAT", "auto", ("auto", "json", "console"), problems)
    log_level = _choice(env, "PGSFS_LOG_LEVEL", "info", ("debug", "info", "warning", "error"), problems)
    # Standalone, the hostname is the container's random id: the stanza needs a name that stays.
    archiving = _archiving(env, "main" if standalone else parsed[0], pgdata, which, problems)

    if problems.items:
        raise ConfigError(problems.items)

    sts, ordinal = parsed
    return Config(
        server_args=tuple(server_args),
        identity=Identity(pod_name, sts, ordinal, primary_ordinal),
        namespace=namespace,
        service_name=service,
        cluster_domain=domain,
        port_name=port_name,
        port=port,
        pgdata=pgdata,
        state_dir=state_dir,
        initdb_dir=initdb_dir,
        superuser=superuser,
        superuser_password=superuser_password,
        database=database,
        initdb_args=initdb_args,
        replication_user=replication_user,
        replication_password=replication_password,
        wait_timeout=wait_timeout,
        restart_check_timeout=restart_check_timeout,
        switchover_timeout=switchover_timeout,
        peer_check_timeout=peer_check_timeout,
        auth_attempts=auth_attempts,
        clone_max_rate=max_rate,
        clone_stall_timeout=clone_stall_timeout,
        allow_reinit=allow_reinit,
        members=members,
        on_divergence=on_divergence,
        max_wal_senders=max_wal_senders,
        max_replication_slots=max_slots,
        wal_keep_size=wal_keep,
        max_slot_wal_keep_size=slot_keep,
        max_wal_size=max_wal,
        log_format=log_format,
        standalone=standalone,
        host_auth_method=host_auth,
        synchronous_standbys=sync,
        pod_uid=env.get("POD_UID", "").strip()[:64],
        volume_size=volume_size,
        archive=archiving,
        majors_dir=Path(majors_raw),
        conf_dir=Path(conf_dir_raw),
        short_secrets=tuple(
            name
            for name, secret in (
                ("POSTGRES_PASSWORD", superuser_password),
                ("PGSFS_REPLICATION_PASSWORD", replication_password),
            )
            if secret.reveal() and not secret.guarded
        ),
        log_level=log_level,
    )


def environ() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
