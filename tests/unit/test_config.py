"""Unit tests of agent.config.load_config: defaults, pod context, and every kind of bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import render
from agent.config import governing_service, load_config, namespace_and_domain_from_search
from agent.errors import ConfigError
from agent.identity import PRIMARY, REPLICA

# Values the environment can carry: no NUL (execve cannot pass one).
env_text = st.text(st.characters(blacklist_characters="\x00"), max_size=40)


def config_error(env: dict[str, str], kube: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(env, **kube)
    return info.value


def named(error: ConfigError, variable: str) -> bool:
    """True when one problem is about this variable (problems start `NAME=`)."""
    return any(problem.startswith(f"{variable}=") for problem in error.problems)


# -- defaults and pod context ------------------------------------------------------------------


def test_defaults(make_config) -> None:
    cfg = make_config()
    assert cfg.identity.pod_name == "postgresql-sfs-0"
    assert cfg.identity.statefulset == "postgresql-sfs"
    assert cfg.identity.ordinal == 0
    assert cfg.identity.primary_ordinal == 0
    assert cfg.identity.role == PRIMARY
    assert cfg.namespace == "pg"
    assert cfg.service_name == "postgresql-svc"
    assert cfg.cluster_domain == "cluster.local"
    assert cfg.port_name == "postgresql-port"
    assert cfg.port == 5432
    assert cfg.pgdata == Path("/var/lib/postgresql/data")
    assert cfg.state_dir == Path("/var/lib/postgresql/.pg-sfs-agent")
    assert cfg.initdb_dir == Path("/docker-entrypoint-initdb.d")
    assert cfg.superuser == "postgres"
    assert cfg.database == "postgres"
    assert cfg.initdb_args == ()
    assert cfg.replication_user == "replicator"
    assert cfg.superuser_password.reveal() == "super-secret-pw"
    assert cfg.replication_password.reveal() == "repl-secret-pw"
    assert cfg.wait_timeout == 600.0
    assert cfg.restart_check_timeout == 10.0
    assert cfg.peer_check_timeout == 30.0
    assert cfg.auth_attempts == 3
    assert cfg.clone_max_rate is None
    assert cfg.allow_reinit is None
    assert cfg.max_wal_senders == 10
    assert cfg.max_replication_slots == 10
    assert cfg.wal_configured() == {"max_wal_size": "auto", "wal_keep_size": "auto", "max_slot_wal_keep_size": "auto"}
    assert cfg.log_format == "auto"
    assert cfg.log_level == "info"
    assert cfg.primary_fqdn == "postgresql-sfs-0.postgresql-svc.pg.svc.cluster.local."
    assert cfg.service_fqdn == "postgresql-svc.pg.svc.cluster.local."
    assert cfg.srv_fqdn == "_postgresql-port._tcp.postgresql-svc.pg.svc.cluster.local."
    assert "super-secret-pw" not in repr(cfg)
    assert "repl-secret-pw" not in repr(cfg)


def test_every_setting_is_read(make_config) -> None:
    cfg = make_config(
        POD_NAME="db-2",
        PGSFS_PRIMARY_ORDINAL="1",
        PGSFS_SERVICE_NAME="db-headless",
        PGSFS_CLUSTER_DOMAIN="K8s.Example.",
        PGSFS_PORT_NAME="pg",
        PGPORT=" 6543 ",
        PGDATA="/data/pgdata",
        PGSFS_STATE_DIR="/data/state",
        PGSFS_INITDB_DIR="/init",
        POSTGRES_USER="admin",
        POSTGRES_DB="app",
        POSTGRES_INITDB_ARGS="--data-checksums --locale 'C.UTF-8'",
        POSTGRES_HOST_AUTH_METHOD="scram-sha-256",
        PGSFS_REPLICATION_USER="streamer",
        PGSFS_WAIT_TIMEOUT="30.5",
        PGSFS_RESTART_CHECK_TIMEOUT="2",
        PGSFS_PEER_CHECK_TIMEOUT="1",
        PGSFS_AUTH_ATTEMPTS="7",
        PGSFS_CLONE_MAX_RATE="100M",
        PGSFS_ALLOW_REINIT="7711490745716584460",
        PGSFS_MAX_WAL_SENDERS="20",
        PGSFS_MAX_REPLICATION_SLOTS="30",
        PGSFS_WAL_KEEP_SIZE="512MB",
        PGSFS_MAX_SLOT_WAL_KEEP_SIZE="-1",
        PGSFS_LOG_FORMAT="JSON",
        PGSFS_LOG_LEVEL="debug",
    )
    assert (cfg.identity.statefulset, cfg.identity.ordinal, cfg.identity.primary_ordinal) == ("db", 2, 1)
    assert cfg.identity.role == REPLICA
    assert cfg.primary_fqdn == "db-1.db-headless.pg.svc.k8s.example."
    assert cfg.srv_fqdn == "_pg._tcp.db-headless.pg.svc.k8s.example."
    assert cfg.port == 6543
    assert cfg.pgdata == Path("/data/pgdata")
    assert cfg.state_dir == Path("/data/state")
    assert cfg.initdb_dir == Path("/init")
    assert (cfg.superuser, cfg.database, cfg.replication_user) == ("admin", "app", "streamer")
    assert cfg.initdb_args == ("--data-checksums", "--locale", "C.UTF-8")
    assert (cfg.wait_timeout, cfg.restart_check_timeout, cfg.peer_check_timeout) == (30.5, 2.0, 1.0)
    assert cfg.auth_attempts == 7
    assert cfg.clone_max_rate == "100M"
    assert cfg.allow_reinit == 7711490745716584460
    assert (cfg.max_wal_senders, cfg.max_replication_slots) == (20, 30)
    assert (cfg.wal_keep_size, cfg.max_slot_wal_keep_size) == ("512MB", "-1")
    assert (cfg.log_format, cfg.log_level) == ("json", "debug")


def test_state_dir_follows_pgdata(make_config) -> None:
    assert make_config(PGDATA="/vol/pgdata").state_dir == Path("/vol/.pg-sfs-agent")


def test_pod_name_falls_back_to_hostname(no_kube_files, base_env) -> None:
    env = {k: v for k, v in base_env.items() if k != "POD_NAME"}
    assert load_config({**env, "HOSTNAME": "web-3"}, **no_kube_files).identity.pod_name == "web-3"
    kube = {**no_kube_files, "hostname": lambda: "web-4"}
    assert load_config(env, **kube).identity.pod_name == "web-4"


def test_namespace_from_service_account_file(no_kube_files, tmp_path: Path, base_env) -> None:
    sa = tmp_path / "namespace"
    sa.write_text("team-a\n")
    env = {k: v for k, v in base_env.items() if k != "POD_NAMESPACE"}
    cfg = load_config(env, **{**no_kube_files, "sa_namespace_file": sa})
    assert cfg.namespace == "team-a"
    # POD_NAMESPACE wins over the file.
    assert load_config({**env, "POD_NAMESPACE": "team-b"}, **{**no_kube_files, "sa_namespace_file": sa}).namespace == (
        "team-b"
    )


def test_namespace_and_domain_from_kubelet_resolv_conf(no_kube_files, tmp_path: Path, base_env) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "search team-c.svc.corp.example svc.corp.example corp.example lan\nnameserver 198.18.0.10\noptions ndots:5\n"
    )
    env = {k: v for k, v in base_env.items() if k != "POD_NAMESPACE"}
    cfg = load_config(env, **{**no_kube_files, "resolv_conf": resolv})
    assert (cfg.namespace, cfg.cluster_domain) == ("team-c", "corp.example")
    assert cfg.primary_fqdn == "postgresql-sfs-0.postgresql-svc.team-c.svc.corp.example."
    # PGSFS_CLUSTER_DOMAIN wins over the search list.
    cfg = load_config({**env, "PGSFS_CLUSTER_DOMAIN": "cluster.local"}, **{**no_kube_files, "resolv_conf": resolv})
    assert cfg.cluster_domain == "cluster.local"


@pytest.mark.parametrize(
    ("domains", "expected"),
    [
        (["pg.svc.cluster.local", "svc.cluster.local", "cluster.local"], ("pg", "cluster.local")),
        (["svc.cluster.local", "cluster.local"], (None, "cluster.local")),
        (["example.com"], (None, None)),
        ([], (None, None)),
        # `<x>.svc.<d>` only counts with its `svc.<d>` sibling, as the kubelet writes them.
        (["a.svc.b"], (None, None)),
        (["ns.svc.a.b.c", "svc.a.b.c"], ("ns", "a.b.c")),
    ],
)
def test_search_list_parsing(domains: list[str], expected: tuple[str | None, str | None]) -> None:
    assert namespace_and_domain_from_search(domains) == expected


def test_last_search_line_wins(no_kube_files, tmp_path: Path, base_env) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search old.svc.x svc.x\nsearch new.svc.cluster.local svc.cluster.local\n")
    env = {k: v for k, v in base_env.items() if k != "POD_NAMESPACE"}
    assert load_config(env, **{**no_kube_files, "resolv_conf": resolv}).namespace == "new"


def test_secret_file_loses_trailing_newlines_only(make_config, tmp_path: Path) -> None:
    cases = {"a": " pass word \n\n", "c": "password\t\n", "e": "password"}
    expected = {"a": " pass word ", "c": "password\t", "e": "password"}
    for key, content in cases.items():
        path = tmp_path / key
        path.write_bytes(content.encode())
        cfg = make_config(POSTGRES_PASSWORD=None, POSTGRES_PASSWORD_FILE=str(path))
        assert cfg.superuser_password.reveal() == expected[key], key


@pytest.mark.parametrize("name", ["POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_INITDB_ARGS"])
def test_an_empty_variable_beside_its_file_counts_as_unset(make_config, tmp_path: Path, name: str) -> None:
    # The official file_env tests ${VAR:-}: `POSTGRES_PASSWORD= POSTGRES_PASSWORD_FILE=...` uses the file
    # (review F-L5); an empty _FILE beside a value uses the value.
    value = {"POSTGRES_INITDB_ARGS": "--locale=C"}.get(name, "from-the-file-1")
    (tmp_path / "v").write_text(value + "\n")
    cfg = make_config(**{name: "", f"{name}_FILE": str(tmp_path / "v")})
    read = {
        "POSTGRES_PASSWORD": cfg.superuser_password.reveal(),
        "POSTGRES_USER": cfg.superuser,
        "POSTGRES_DB": cfg.database,
        "POSTGRES_INITDB_ARGS": " ".join(cfg.initdb_args),
    }
    assert read[name] == value
    if name == "POSTGRES_PASSWORD":
        direct = make_config(POSTGRES_PASSWORD="direct-value-1", POSTGRES_PASSWORD_FILE="")
        assert direct.superuser_password.reveal() == "direct-value-1"


@pytest.mark.parametrize("content", ["\nzqzqzqzq", "zqzq\nzqzq", "zqzq\rzqzq", "zqzqzqzq\r\n"])
def test_a_replication_password_with_a_line_break_inside_is_refused(content: str, make_config, tmp_path: Path) -> None:
    # The replication passfile holds one entry per line.
    path = tmp_path / "pw"
    path.write_bytes(content.encode())
    with pytest.raises(ConfigError) as caught:
        make_config(PGSFS_REPLICATION_PASSWORD=None, PGSFS_REPLICATION_PASSWORD_FILE=str(path))
    assert "line breaks" in " ".join(caught.value.problems)
    assert "zq" not in " ".join(caught.value.problems)


@pytest.mark.parametrize("content", ["zqzq\nzqzq", "zqzq\rzqzq"])
def test_the_superuser_password_may_hold_a_line_break_as_in_the_official_image(
    content: str, make_config, tmp_path: Path
) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content.encode())
    assert make_config(POSTGRES_PASSWORD=None, POSTGRES_PASSWORD_FILE=str(path)).superuser_password.reveal() == content


def test_a_short_password_is_accepted_and_named_as_short(make_config) -> None:
    # The official README's own compose example uses POSTGRES_PASSWORD: example.
    cfg = make_config(POSTGRES_PASSWORD="example", PGSFS_REPLICATION_PASSWORD="x")
    assert cfg.superuser_password.reveal() == "example"
    assert cfg.short_secrets == ("POSTGRES_PASSWORD", "PGSFS_REPLICATION_PASSWORD")
    assert not cfg.superuser_password.guarded


@pytest.mark.parametrize(
    "name",
    ["app-user", "my cool postgres user", "Ünïcödé", "O'Brien", 'say "hi"', "x" * 63, "UPPER", "+grp", "@file", "all"],
)
def test_every_role_name_postgresql_takes_is_accepted_for_the_superuser_and_database(name: str, make_config) -> None:
    cfg = make_config(POSTGRES_USER=name, POSTGRES_DB=name)
    assert (cfg.superuser, cfg.database) == (name, name)


@pytest.mark.parametrize("name", ["x" * 64, "é" * 32, "nul\x00"])
def test_names_postgresql_would_cut_or_refuse_are_refused(name: str, make_config) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(POSTGRES_USER=name)
    assert "1 to 63 bytes" in caught.value.problems[0]


def test_a_replication_user_pg_hba_cannot_hold_is_refused(make_config) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(PGSFS_REPLICATION_USER='say "hi"')
    assert "pg_hba.conf cannot hold" in caught.value.problems[0]


def test_names_and_initdb_args_come_from_files_too(make_config, tmp_path: Path) -> None:
    for name, content in (("user", "app user\n"), ("db", "app db\n"), ("args", "--locale=C --data-checksums\n")):
        (tmp_path / name).write_text(content)
    cfg = make_config(
        POSTGRES_USER_FILE=str(tmp_path / "user"),
        POSTGRES_DB_FILE=str(tmp_path / "db"),
        POSTGRES_INITDB_ARGS_FILE=str(tmp_path / "args"),
    )
    assert (cfg.superuser, cfg.database, cfg.initdb_args) == ("app user", "app db", ("--locale=C", "--data-checksums"))


def test_password_that_is_not_utf8_is_a_config_error(make_config) -> None:
    with pytest.raises(ConfigError):
        make_config(PGSFS_REPLICATION_PASSWORD=b"caf\xe9".decode("utf-8", "surrogateescape"))


def test_direct_password_is_kept_verbatim(make_config) -> None:
    assert make_config(PGSFS_REPLICATION_PASSWORD=" x 'y' \\ z ").replication_password.reveal() == " x 'y' \\ z "


# -- bad input ---------------------------------------------------------------------------------

BAD_VALUES = [
    ("POD_NAME", "postgresql-sfs"),
    ("POD_NAME", "postgresql-sfs-01"),
    ("POD_NAME", "Postgresql-sfs-0"),
    ("PGPORT", "abc"),
    ("PGPORT", "-1"),
    ("PGPORT", "0"),
    ("PGPORT", "65536"),
    ("PGPORT", "5432.0"),
    ("PGSFS_PRIMARY_ORDINAL", "-1"),
    ("PGSFS_PRIMARY_ORDINAL", "one"),
    ("PGSFS_PRIMARY_ORDINAL", "1000000000"),
    ("PGSFS_WAIT_TIMEOUT", "abc"),
    ("PGSFS_WAIT_TIMEOUT", "-5"),
    ("PGSFS_WAIT_TIMEOUT", "0"),
    ("PGSFS_WAIT_TIMEOUT", "nan"),
    ("PGSFS_WAIT_TIMEOUT", "inf"),
    ("PGSFS_WAIT_TIMEOUT", "604801"),
    ("PGSFS_RESTART_CHECK_TIMEOUT", "ten"),
    ("PGSFS_PEER_CHECK_TIMEOUT", "-0.1"),
    ("PGSFS_AUTH_ATTEMPTS", "0"),
    ("PGSFS_AUTH_ATTEMPTS", "101"),
    ("PGSFS_AUTH_ATTEMPTS", "3.5"),
    ("PGSFS_CLONE_MAX_RATE", "31"),
    ("PGSFS_CLONE_MAX_RATE", "0"),
    ("PGSFS_CLONE_MAX_RATE", "1025M"),
    ("PGSFS_CLONE_MAX_RATE", "10G"),
    ("PGSFS_CLONE_MAX_RATE", "-100"),
    ("PGSFS_CLONE_MAX_RATE", "fast"),
    ("PGSFS_CLONE_MAX_RATE", "10 M"),
    ("PGSFS_CLONE_MAX_RATE", "100m"),
    ("PGSFS_ALLOW_REINIT", "maybe"),
    ("PGSFS_ALLOW_REINIT", "true"),  # a permanent override would re-initialise at every later loss
    ("PGSFS_ALLOW_REINIT", "123"),
    ("PGSFS_MAX_WAL_SENDERS", "1"),
    ("PGSFS_MAX_REPLICATION_SLOTS", "1001"),
    ("PGSFS_WAL_KEEP_SIZE", "1 GB"),
    ("PGSFS_WAL_KEEP_SIZE", "1gb"),
    ("PGSFS_MAX_SLOT_WAL_KEEP_SIZE", "lots"),
    ("PGSFS_WAL_KEEP_SIZE", "-1"),
    ("PGSFS_MAX_WAL_SIZE", "-1"),
    ("PGSFS_MAX_WAL_SIZE", "Auto"),
    ("PGSFS_VOLUME_SIZE", "10GB"),
    ("PGSFS_VOLUME_SIZE", "0"),
    ("PGSFS_VOLUME_SIZE", "big"),
    ("PGSFS_LOG_FORMAT", "xml"),
    ("PGSFS_LOG_LEVEL", "verbose"),
    ("POD_NAMESPACE", "Team_A"),
    ("PGSFS_SERVICE_NAME", "Bad_Name"),
    ("PGSFS_CLUSTER_DOMAIN", "bad_domain"),
    ("PGSFS_PORT_NAME", "a-port-name-too-long"),
    ("PGDATA", "relative/data"),
    ("PGDATA", "/"),
    ("PGDATA", "/var/lib/../data"),
    ("PGSFS_STATE_DIR", "/var/lib/postgresql/data/state"),
    ("PGSFS_STATE_DIR", "/var/lib/postgresql/data/pgsql_tmp.other"),
    ("PGSFS_STATE_DIR", "relative"),
    ("POSTGRES_USER", "two\nlines"),
    ("POSTGRES_USER", "x" * 64),
    ("POSTGRES_DB", "d" * 64),
    ("POSTGRES_INITDB_ARGS", "--locale 'C"),
    ("POSTGRES_INITDB_ARGS", "-D /elsewhere"),
    ("POSTGRES_INITDB_ARGS", "--pwfile=/tmp/pw"),
    ("POSTGRES_INITDB_ARGS", "--auth-host=trust"),
    ("POSTGRES_INITDB_ARGS", "-A md5"),
    ("POSTGRES_INITDB_ARGS", "-Atrust"),
    ("POSTGRES_INITDB_ARGS", "-W"),
    ("POSTGRES_INITDB_ARGS", "--pwprompt"),
    ("POSTGRES_HOST_AUTH_METHOD", "trust"),
    ("POSTGRES_HOST_AUTH_METHOD", "md5"),
    ("PGSFS_REPLICATION_USER", "postgres"),
    ("PGSFS_REPLICATION_USER", "a\"b"),
    ("POSTGRES_PASSWORD", ""),
    ("PGSFS_REPLICATION_PASSWORD", ""),
    ("POSTGRES_PASSWORD", "example-postgres-password-REPLACE-ME"),
    ("PGSFS_REPLICATION_PASSWORD", "example-replication-password-REPLACE-ME"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_bad_value_is_named(variable: str, value: str, no_kube_files, base_env) -> None:
    error = config_error({**base_env, variable: value}, no_kube_files)
    assert error.exit_code == 2
    assert error.event == "config_invalid"
    if variable != "PGDATA":  # a bad PGDATA also makes the default state dir beside it bad
        assert len(error.problems) == 1, error.problems
    assert named(error, variable), error.problems
    assert error.problems[0] in error.message


def test_the_state_dir_may_be_the_one_name_inside_pgdata(make_config) -> None:
    # The default for a mount-point PGDATA (review F-L11), which a base backup never copies.
    config = make_config(PGDATA="/var/lib/postgresql/data",
                         PGSFS_STATE_DIR="/var/lib/postgresql/data/pgsql_tmp.pg-sfs-agent")  # fmt: skip
    assert config.state_dir == Path("/var/lib/postgresql/data/pgsql_tmp.pg-sfs-agent")


@pytest.mark.parametrize("variable", ["POSTGRES_PASSWORD", "PGSFS_REPLICATION_PASSWORD"])
def test_missing_password(variable: str, no_kube_files, base_env) -> None:
    env = {k: v for k, v in base_env.items() if k != variable}
    error = config_error(env, no_kube_files)
    assert named(error, variable)
    assert f"{variable}_FILE" in error.problems[0]  # tells the other way to set it


def test_missing_namespace(no_kube_files, base_env) -> None:
    env = {k: v for k, v in base_env.items() if k != "POD_NAMESPACE"}
    error = config_error(env, no_kube_files)
    assert named(error, "POD_NAMESPACE")
    assert "downward API" in error.problems[0]


def test_pod_name_from_hostname_without_ordinal(no_kube_files, base_env) -> None:
    env = {k: v for k, v in base_env.items() if k != "POD_NAME"}
    error = config_error(env, no_kube_files)  # hostname() says "not-a-statefulset-pod"
    assert named(error, "POD_NAME")
    assert "not-a-statefulset-pod" in error.problems[0]


def test_password_and_file_both_set(no_kube_files, tmp_path: Path, base_env) -> None:
    path = tmp_path / "pw"
    path.write_text("from-file-pw\n")
    error = config_error({**base_env, "POSTGRES_PASSWORD_FILE": str(path)}, no_kube_files)
    assert any(p.startswith("POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE") for p in error.problems)
    assert "super-secret-pw" not in error.message
    assert "from-file-pw" not in error.message


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "newlines-only", "not-utf8"])
def test_unusable_password_file(kind: str, no_kube_files, tmp_path: Path, base_env) -> None:
    path = tmp_path / "pw"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_text("")
    elif kind == "newlines-only":
        path.write_text("\n\n")
    elif kind == "not-utf8":
        path.write_bytes(b"secret\xff\xfe")
    env = {k: v for k, v in base_env.items() if k != "PGSFS_REPLICATION_PASSWORD"}
    error = config_error({**env, "PGSFS_REPLICATION_PASSWORD_FILE": str(path)}, no_kube_files)
    assert len(error.problems) == 1
    assert named(error, "PGSFS_REPLICATION_PASSWORD_FILE")
    assert str(path) in error.problems[0]
    assert "secret" not in error.message


def test_all_problems_come_back_at_once(no_kube_files, tmp_path: Path) -> None:
    env = {
        "POD_NAME": "no-ordinal",
        "PGPORT": "-5",
        "PGSFS_PRIMARY_ORDINAL": "x",
        "PGSFS_WAIT_TIMEOUT": "soon",
        "PGSFS_CLONE_MAX_RATE": "1T",
        "POSTGRES_PASSWORD": "pw-one",
        "POSTGRES_PASSWORD_FILE": str(tmp_path / "also"),
        "PGSFS_REPLICATION_PASSWORD_FILE": str(tmp_path / "missing"),
        "PGSFS_LOG_FORMAT": "yaml",
        "PGSFS_ALLOW_REINIT": "perhaps",
    }
    error = config_error(env, no_kube_files)
    for variable in (
        "POD_NAME",
        "PGPORT",
        "PGSFS_PRIMARY_ORDINAL",
        "PGSFS_WAIT_TIMEOUT",
        "PGSFS_CLONE_MAX_RATE",
        "PGSFS_REPLICATION_PASSWORD_FILE",
        "PGSFS_LOG_FORMAT",
        "PGSFS_ALLOW_REINIT",
        "POD_NAMESPACE",
    ):
        assert named(error, variable), (variable, error.problems)
    assert any(p.startswith("POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE") for p in error.problems)
    assert len(error.problems) == 10
    assert error.message.startswith("10 configuration problem(s): ")
    assert "pw-one" not in error.message


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PGSFS_CLONE_MAX_RATE", "32"), ("PGSFS_CLONE_MAX_RATE", "1024k"), ("PGSFS_CLONE_MAX_RATE", "1024M")],
)
def test_rate_bounds_accepted(variable: str, value: str, make_config) -> None:
    assert make_config(**{variable: value}).clone_max_rate == value


@pytest.mark.parametrize(
    "variable",
    [
        "PGSFS_WAL_KEEP_SIZE",
        "PGSFS_MAX_SLOT_WAL_KEEP_SIZE",
        "POSTGRES_USER",
        "PGSFS_REPLICATION_USER",
        "PGSFS_SERVICE_NAME",
        "PGSFS_PORT_NAME",
        "PGSFS_CLUSTER_DOMAIN",
        "POD_NAME",
    ],
)
def test_trailing_newline_is_rejected(variable: str, make_config) -> None:
    good = {
        "PGSFS_WAL_KEEP_SIZE": "1GB",
        "PGSFS_MAX_SLOT_WAL_KEEP_SIZE": "1GB",
        "POSTGRES_USER": "admin",
        "PGSFS_REPLICATION_USER": "streamer",
        "PGSFS_SERVICE_NAME": "svc",
        "PGSFS_PORT_NAME": "pg",
        "PGSFS_CLUSTER_DOMAIN": "cluster.local",
        "POD_NAME": "postgresql-sfs-0",
    }[variable]
    # A YAML block scalar (`value: |`) adds exactly this newline. Accepted, PGSFS_WAL_KEEP_SIZE='1GB\n'
    # lands inside a postgresql.conf string, where a newline is a syntax error: postgres will not start.
    with pytest.raises(ConfigError):
        make_config(**{variable: good + "\n"})


# -- properties --------------------------------------------------------------------------------

KNOWN_VARIABLES = [
    "POD_NAME", "HOSTNAME", "POD_NAMESPACE", "PGSFS_PRIMARY_ORDINAL", "PGSFS_SERVICE_NAME", "PGSFS_CLUSTER_DOMAIN",
    "PGSFS_PORT_NAME", "PGPORT", "PGDATA", "PGSFS_STATE_DIR", "PGSFS_INITDB_DIR", "POSTGRES_USER", "POSTGRES_DB",
    "POSTGRES_INITDB_ARGS", "POSTGRES_HOST_AUTH_METHOD", "POSTGRES_PASSWORD", "PGSFS_REPLICATION_USER",
    "PGSFS_REPLICATION_PASSWORD", "PGSFS_WAIT_TIMEOUT", "PGSFS_RESTART_CHECK_TIMEOUT", "PGSFS_PEER_CHECK_TIMEOUT",
    "PGSFS_AUTH_ATTEMPTS", "PGSFS_CLONE_MAX_RATE", "PGSFS_ALLOW_REINIT", "PGSFS_MAX_WAL_SENDERS",
    "PGSFS_MAX_REPLICATION_SLOTS", "PGSFS_WAL_KEEP_SIZE", "PGSFS_MAX_SLOT_WAL_KEEP_SIZE", "PGSFS_MAX_WAL_SIZE",
    "PGSFS_LOG_FORMAT", "PGSFS_ON_DIVERGENCE", "PGSFS_CLONE_STALL_TIMEOUT",
    "PGSFS_LOG_LEVEL",
]  # fmt: skip


@pytest.fixture(scope="module")
def password_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Paths of every kind a *_FILE variable may name (never a device that could block)."""
    base = tmp_path_factory.mktemp("pwfiles")
    (base / "ok").write_text("file-pw\n")
    (base / "empty").write_text("")
    (base / "binary").write_bytes(b"\xff\xfe\x00")
    (base / "dir").mkdir()
    return [str(base / name) for name in ("ok", "empty", "binary", "dir", "missing")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_env_raises_only_config_error(
    data: st.DataObject, password_files: list[str], no_kube_files, base_env
) -> None:
    env = data.draw(st.dictionaries(st.sampled_from(KNOWN_VARIABLES), env_text, max_size=12))
    for name in ("POSTGRES_PASSWORD_FILE", "PGSFS_REPLICATION_PASSWORD_FILE"):
        if data.draw(st.booleans()):
            env[name] = data.draw(st.sampled_from(password_files))
    if data.draw(st.booleans()):
        env = {**base_env, **env}
    try:
        cfg = load_config(env, **no_kube_files)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must list at least one problem"
        assert exc.exit_code == 2
    else:
        assert cfg.identity.ordinal >= 0
        assert 1 <= cfg.port <= 65535
        assert math.isfinite(cfg.wait_timeout) and cfg.wait_timeout > 0


BAD_NEIGHBOURS = {
    "POD_NAME": "no-ordinal",
    "PGPORT": "port",
    "PGSFS_WAIT_TIMEOUT": "-1",
    "PGSFS_CLONE_MAX_RATE": "9",
    "PGSFS_LOG_FORMAT": "xml",
}
passwords = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), min_size=8, max_size=30
)


@settings(max_examples=200, deadline=None)
@given(passwords, passwords, st.sampled_from(["direct", "both", "file-missing"]))
def test_no_secret_in_config_error(password: str, other: str, how: str) -> None:
    """The error text must not depend on the passwords at all (so it cannot reveal them)."""
    assume(password != other)

    def message(pw: str) -> tuple[str, list[str]]:
        env = {**BAD_NEIGHBOURS, "POD_NAMESPACE": "pg", "PGSFS_REPLICATION_PASSWORD": pw, "POSTGRES_PASSWORD": pw}
        if how == "both":
            env["POSTGRES_PASSWORD_FILE"] = "/nonexistent/pgsfs-test/pw"
        elif how == "file-missing":
            env["PGSFS_REPLICATION_PASSWORD_FILE"] = "/nonexistent/pgsfs-test/pw"
            del env["PGSFS_REPLICATION_PASSWORD"]
        with pytest.raises(ConfigError) as info:
            load_config(env, hostname=lambda: "x", resolv_conf=Path("/nonexistent"), sa_namespace_file=Path("/x/y"))
        return info.value.message + info.value.hint, info.value.problems

    first, second = message(password), message(other)
    assert first == second
    marked = "S3CRET" + password
    text, problems = message(marked)
    assert marked not in text
    assert all(marked not in problem for problem in problems)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=st.text(st.characters(blacklist_characters="\x00\r\n", blacklist_categories=("Cs",)), max_size=30))
def test_no_secret_in_error_from_file(password: str, no_kube_files, tmp_path: Path) -> None:
    """A password read from a file is not echoed when something else is wrong."""
    path = tmp_path / "pw"
    marked = "S3CRET-PW-" + password
    path.write_text(marked)
    env = {**BAD_NEIGHBOURS, "POD_NAMESPACE": "pg", "POSTGRES_PASSWORD_FILE": str(path)}
    env["PGSFS_REPLICATION_PASSWORD"] = ""
    error = config_error(env, no_kube_files)
    assert marked.rstrip("\n") not in error.message
    # Compare against the same error for another password: identical text means nothing leaked.
    path.write_text("completely-different")
    assert config_error(env, no_kube_files).message == error.message


def test_every_variable_the_agent_reads_is_in_readmes_reference() -> None:
    agent = Path(__file__).parents[2] / "agent"
    # config.py reads most; each section module it calls reads its own (agent/archive.py).
    source = "".join((agent / name).read_text() for name in ("config.py", "archive.py"))
    # Names built from parts are spelled out here, as README lists them.
    source += "".join(f'"PGSFS_BACKUP_S3_{name}"' for name in ("ENDPOINT", "REGION", "URI_STYLE", "CA_FILE", "KEY",
                                                                "KEY_SECRET"))  # fmt: skip
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    read = set(re.findall(r'"((?:PGSFS|POSTGRES)_[A-Z0-9_]+)"', source)) - {"PGSFS_"}
    missing = sorted(name for name in read if f"`{name}" not in reference)
    assert not missing, f"not in README's configuration reference: {missing}"


def test_docker_run_outside_a_statefulset_is_standalone(no_kube_files) -> None:
    # `docker run -e POSTGRES_PASSWORD=example image`, as the official image's tests start it.
    cfg = load_config({"HOSTNAME": "3f2a9c1d0b7e", "POSTGRES_PASSWORD": "example"}, **no_kube_files)
    assert cfg.standalone and cfg.identity.role == "primary"
    assert cfg.replication_password.reveal() == ""  # not required: there is nobody to replicate to
    assert (cfg.superuser, cfg.database) == ("postgres", "postgres")


def test_trust_is_accepted_standalone_with_no_password(no_kube_files) -> None:
    # CI services run the image with POSTGRES_HOST_AUTH_METHOD=trust and no password, as the official allows.
    cfg = load_config({"HOSTNAME": "3f2a9c1d0b7e", "POSTGRES_HOST_AUTH_METHOD": "trust"}, **no_kube_files)
    assert cfg.standalone and cfg.host_auth_method == "trust"
    assert cfg.superuser_password.reveal() == ""
    assert "trust" in render.hba_tail(cfg.host_auth_method)


def test_trust_stays_refused_for_a_member(no_kube_files) -> None:
    env = {"POD_NAME": "postgresql-sfs-0", "POD_NAMESPACE": "pg", "POSTGRES_HOST_AUTH_METHOD": "trust",
           "POSTGRES_PASSWORD": "pw-123456", "PGSFS_REPLICATION_PASSWORD": "pw-654321"}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_config(env, **no_kube_files)
    assert [p for p in caught.value.problems if p.startswith("POSTGRES_HOST_AUTH_METHOD='trust'")]


@pytest.mark.parametrize(
    "extra",
    [{"POD_NAME": "3f2a9c1d0b7e"}, {"POD_NAMESPACE": "pg"}],
)
def test_a_kubernetes_context_without_an_ordinal_is_still_an_error(extra: dict[str, str], no_kube_files) -> None:
    env = {"HOSTNAME": "3f2a9c1d0b7e", "POSTGRES_PASSWORD": "example", **extra}
    with pytest.raises(ConfigError) as caught:
        load_config(env, **no_kube_files)
    assert any(p.startswith("POD_NAME=") for p in caught.value.problems)


def test_in_a_statefulset_the_replication_password_stays_required(no_kube_files) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"POD_NAME": "postgresql-sfs-0", "POD_NAMESPACE": "pg", "POSTGRES_PASSWORD": "pw"},
                    **no_kube_files)  # fmt: skip
    assert any("PGSFS_REPLICATION_PASSWORD" in p for p in caught.value.problems)


def test_postgres_initdb_waldir_becomes_initdb_waldir(make_config) -> None:
    cfg = make_config(POSTGRES_INITDB_WALDIR="/var/lib/postgresql/wal/pg_wal", POSTGRES_INITDB_ARGS="--locale=C")
    assert cfg.initdb_args == ("--waldir=/var/lib/postgresql/wal/pg_wal", "--locale=C")
    assert cfg.waldir == Path("/var/lib/postgresql/wal/pg_wal")
    assert make_config(POSTGRES_INITDB_ARGS="-X /wal").waldir == Path("/wal")
    assert make_config().waldir is None


@pytest.mark.parametrize(
    ("waldir", "args"),
    [("relative/wal", ""), ("/var/lib/postgresql/data/pgdata/wal", ""), ("/wal", "--waldir=/other")],
)
def test_a_waldir_that_cannot_work_is_refused(waldir: str, args: str, make_config) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(POSTGRES_INITDB_WALDIR=waldir, POSTGRES_INITDB_ARGS=args)
    assert any(p.startswith("POSTGRES_INITDB_WALDIR=") for p in caught.value.problems)


@pytest.mark.parametrize(
    ("raw", "policy"),
    [("", ""), ("off", ""), ("ANY 1", "ANY 1"), ("any  2", "ANY 2"), ("first 1", "FIRST 1"), ("2", "FIRST 2")],
)
def test_synchronous_standbys(raw: str, policy: str, make_config) -> None:
    assert make_config(PGSFS_SYNCHRONOUS_STANDBYS=raw).synchronous_standbys == policy


@pytest.mark.parametrize("raw", ["ANY", "ANY 0", "SOME 1", "ANY 1 (a)", "*", "-1"])
def test_a_synchronous_policy_that_means_nothing_is_refused(raw: str, make_config) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(PGSFS_SYNCHRONOUS_STANDBYS=raw)
    assert caught.value.problems[0].startswith("PGSFS_SYNCHRONOUS_STANDBYS=")


HOSTS = ("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"
         "198.18.0.5\ta-postgresql-sfs-0.a-postgresql-svc.pg.svc.cluster.local\ta-postgresql-sfs-0\n")


def test_the_governing_service_comes_from_the_pods_own_fqdn() -> None:
    # A kustomize namePrefix renames the Service; the kubelet's /etc/hosts line names it.
    assert governing_service(HOSTS, "a-postgresql-sfs-0") == "a-postgresql-svc"
    assert governing_service(HOSTS, "a-postgresql-sfs-1") is None  # another pod's line only
    assert governing_service("127.0.0.1 localhost\n172.17.0.2 3f2a1b\n", "3f2a1b") is None  # docker run
    assert governing_service("198.18.0.9 db-0.db.ns.cluster.local db-0\n", "db-0") is None  # not .svc.


def test_the_service_name_is_the_fqdns_unless_set(base_env: dict[str, str], no_kube_files: dict[str, Any],
                                                  tmp_path: Path) -> None:  # fmt: skip
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    env = {**base_env, "POD_NAME": "a-postgresql-sfs-0"}
    cfg = load_config(env, **{**no_kube_files, "hosts_file": hosts})
    assert cfg.service_name == "a-postgresql-svc"
    assert cfg.pod_fqdn("a-postgresql-sfs-1") == "a-postgresql-sfs-1.a-postgresql-svc.pg.svc.cluster.local."
    assert load_config({**env, "PGSFS_SERVICE_NAME": "other"}, **{**no_kube_files, "hosts_file": hosts}
                       ).service_name == "other"  # fmt: skip
    assert load_config(env, **no_kube_files).service_name == "postgresql-svc"  # no hosts file: the default
