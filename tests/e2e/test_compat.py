"""What users of the official image bring, on the emulated StatefulSet with a replica.

Names with spaces, capitals and hyphens for POSTGRES_USER, POSTGRES_DB and the replication role,
the official compose example's 7-character password, and a replication password of one character:
the primary initialises, the replica clones and streams with them, and the probes pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from emulator.waiting import wait_until
from tests.e2e.cluster_support import require_pods
from tests.e2e.fault_support import PRIMARY, VOL, current, healthy, make_cluster
from tests.official import README_EXAMPLE_SCRIPT

require_pods()

REPLICA = "postgresql-sfs-1"
NAMES = {
    "POSTGRES_USER": "my cool postgres user",
    "POSTGRES_DB": "My Cool Database",
    "PGSFS_REPLICATION_USER": "repl user-1",
    "POSTGRES_PASSWORD": "example",
    "PGSFS_REPLICATION_PASSWORD": "'",
}


# The official README's example script, an executable one, and a sourced one using the helpers.
SCRIPTS = {
    "00-readme-example.sh": (README_EXAMPLE_SCRIPT, 0o755),
    "01-sourced.sh": ("""docker_process_sql <<'EOSQL'
CREATE TABLE seeded (v text);
INSERT INTO seeded VALUES ('by a sourced script');
EOSQL
""", 0o644),
}  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    c = make_cluster(replicas=2, env={**NAMES, "PGSFS_INITDB_DIR": f"{VOL}/initdb.d"}, start=False)
    with c:
        scripts = c.volume_dir(PRIMARY) / "initdb.d"
        scripts.mkdir(mode=0o755)
        for name, (text, mode) in SCRIPTS.items():
            (scripts / name).write_text(text)
            (scripts / name).chmod(mode)
        c.scale(2)
        healthy(c)
        yield c


def test_initdb_d_ran_as_in_the_official_image_and_the_replica_has_it(cluster: Any) -> None:
    names = [e["script"] for e in current(cluster, PRIMARY) if e["event"] == "initdb_script"]
    assert names == sorted(SCRIPTS)
    assert cluster.psql(REPLICA, "select rolname from pg_roles where rolname = 'docker'") == "docker"
    assert cluster.psql(REPLICA, "select v from seeded", database=NAMES["POSTGRES_DB"]) == "by a sourced script"


def test_the_replica_streams_as_the_replication_role_named_with_spaces(cluster: Any) -> None:
    rows = cluster.psql(PRIMARY, "select usename, state from pg_stat_replication")
    assert rows.splitlines() == ["repl user-1|streaming"]


def test_rows_written_into_the_named_database_reach_the_replica(cluster: Any) -> None:
    token = uuid.uuid4().hex
    db = NAMES["POSTGRES_DB"]
    cluster.psql(PRIMARY, "create table if not exists compat (token text)", database=db)
    cluster.psql(PRIMARY, f"insert into compat values ('{token}')", database=db)
    wait_visible_in(cluster, db, token)
    owner = cluster.psql(PRIMARY, f"select pg_get_userbyid(datdba) from pg_database where datname = '{db}'")
    assert owner == NAMES["POSTGRES_USER"]


def wait_visible_in(cluster: Any, database: str, token: str) -> None:
    """The row, read on the replica in `database`."""

    def seen() -> bool:
        res = cluster.try_psql(REPLICA, "select token from compat", database=database, timeout=5)
        return res.returncode == 0 and token in res.stdout

    wait_until(seen, 15, 0.1, "the row on the replica")


def test_short_passwords_are_accepted_and_named(cluster: Any) -> None:
    for name, expected in ((PRIMARY, ["POSTGRES_PASSWORD", "PGSFS_REPLICATION_PASSWORD"]),
                           (REPLICA, ["POSTGRES_PASSWORD", "PGSFS_REPLICATION_PASSWORD"])):  # fmt: skip
        warned = [e for e in current(cluster, name) if e["event"] == "short_password"]
        assert len(warned) == 1 and warned[0]["variables"] == expected, warned


def test_probes_pass_with_these_names(cluster: Any) -> None:
    for name in (PRIMARY, REPLICA):
        for probe in ("startup", "readiness", "liveness"):
            res = cluster.exec_in_pod(name, ["pg-sfs-agent", "probe", probe], timeout=30)
            assert res.returncode == 0, (name, probe, res.stdout, res.stderr)
