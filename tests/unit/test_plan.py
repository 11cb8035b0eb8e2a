"""Unit tests of agent.plan.make_plan (every branch) and agent.pgdata.inspect (on real temp dirs)."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DataDirConflict
from agent.pgdata import WORK_MARKER, DataDirState, Leftover, inspect, work_dir_for
from agent.plan import CLONE, INIT, REFUSE, START, make_plan
from agent.render import scram_verifier
from agent.secretsrecord import PasswordChange, password_change, read_record

PGDATA = "/var/lib/postgresql/data"
STATE = "/var/lib/postgresql/.pg-sfs-agent"
NO_CHANGE = PasswordChange(roles=(), adopt=False)
ROTATED = PasswordChange(roles=("superuser",), adopt=False)
ADOPT = PasswordChange(roles=("replication",), adopt=True)
CONF_FILES = [f"{PGDATA}/pg-sfs-agent.conf", f"{PGDATA}/postgresql.conf", f"{PGDATA}/pg_hba.conf"]
INIT_STEPS = [
    "check_peers_for_data",
    "initdb",
    "write_config",
    "create_roles_single_user",
    "sync_volume",
    "move_into_place",
    "fix_ownership",
    "exec_postgres",
]
INIT_STEPS_WITH_SCRIPTS = [
    "check_peers_for_data",
    "initdb",
    "write_config",
    "start_temporary_server",
    "create_replication_role",
    "create_database",
    "run_initdb_scripts",
    "stop_temporary_server",
    "sync_volume",
    "move_into_place",
    "fix_ownership",
    "exec_postgres",
]
CLONE_STEPS = [
    "wait_for_primary_record",
    "wait_for_primary",
    "ensure_slot",
    "clone",
    "write_config",
    "move_into_place",
    "fix_ownership",
    "exec_postgres",
]
OUR_LEFTOVER = Leftover(path=f"{PGDATA}.pgsfs-work", kind="clone", ours=True)
FOREIGN_LEFTOVER = Leftover(path=f"{PGDATA}.pgsfs-work", kind="unknown", ours=False)


def state(**changes: object) -> DataDirState:
    """An empty, existing PGDATA (not a mount point), with changes."""
    base = DataDirState(
        path=PGDATA,
        exists=True,
        empty=True,
        is_mountpoint=False,
        pg_version=None,
        standby_signal=False,
        recovery_signal=False,
        system_identifier=None,
        sample_entries=(),
        owner_uid=999,
        mode=0o700,
        leftover=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def cluster(**changes: object) -> DataDirState:
    """A PGDATA holding a PostgreSQL 15 cluster."""
    fields: dict[str, object] = {
        "empty": False,
        "pg_version": "15",
        "system_identifier": 7301234567890123456,
        "sample_entries": ("PG_VERSION", "base", "global", "pg_wal"),
    }
    return state(**{**fields, **changes})


@pytest.fixture
def primary(make_config):
    return make_config(POD_NAME="postgresql-sfs-0")


@pytest.fixture
def replica(make_config):
    return make_config(POD_NAME="postgresql-sfs-1")


# -- the four actions -----------------------------------------------------------------------------


@pytest.mark.parametrize("exists", [True, False])
def test_empty_primary_initialises(primary, exists: bool) -> None:
    plan = make_plan(primary, state(exists=exists), server_major=15)
    assert plan.action == INIT
    assert list(plan.steps) == INIT_STEPS
    # initdb.d scripts need a server: only then a temporary one.
    with_scripts = make_plan(primary, state(exists=exists), server_major=15, initdb_scripts=True)
    assert list(with_scripts.steps) == INIT_STEPS_WITH_SCRIPTS
    assert list(plan.files) == [*CONF_FILES, f"{STATE}/applied-secrets.json"]
    assert (plan.role, plan.primary, plan.slot, plan.refusal, plan.remove_leftover) == (
        "primary",
        None,
        None,
        None,
        None,
    )
    assert (plan.pod, plan.ordinal, plan.pgdata, plan.server_major, plan.data_major) == (
        "postgresql-sfs-0",
        0,
        PGDATA,
        15,
        None,
    )


def test_empty_replica_clones(replica) -> None:
    plan = make_plan(replica, state(), server_major=15)
    assert plan.action == CLONE
    assert list(plan.steps) == CLONE_STEPS
    assert plan.role == "replica"
    assert plan.primary == "postgresql-sfs-0.postgresql-svc.pg.svc.cluster.local."
    assert plan.slot == "postgresql_sfs_1"
    assert list(plan.files) == [*CONF_FILES, f"{PGDATA}/standby.signal", f"{STATE}/replication.pgpass"]


@pytest.mark.parametrize(("applied", "step"), [(NO_CHANGE, None), (ROTATED, "apply_passwords"),
                                             (ADOPT, "adopt_passwords"), (None, "adopt_passwords")])  # fmt: skip
def test_existing_primary_starts(primary, applied: PasswordChange | None, step: str | None) -> None:
    plan = make_plan(primary, cluster(), server_major=15, passwords=applied)
    assert plan.action == START
    assert plan.refusal is None
    expected = ["check_no_other_primary", "write_config", step, "fix_ownership", "exec_postgres"]
    assert list(plan.steps) == [s for s in expected if s]
    assert (f"{STATE}/applied-secrets.json" in plan.files) is (step is not None)
    assert plan.data_major == 15


def test_existing_replica_starts_after_checking_primary(replica) -> None:
    plan = make_plan(replica, cluster(standby_signal=True), server_major=15)
    assert plan.action == START
    assert list(plan.steps) == ["check_primary", "write_config", "fix_ownership", "exec_postgres"]
    assert plan.primary == "postgresql-sfs-0.postgresql-svc.pg.svc.cluster.local."
    assert plan.slot == "postgresql_sfs_1"


def test_mountpoint_holding_a_cluster_is_fine(primary) -> None:
    assert make_plan(primary, cluster(is_mountpoint=True), server_major=15).action == START
    # An empty mount point (docker's VOLUME, a PVC mounted at PGDATA) is built inside, then moved up.
    assert make_plan(primary, state(is_mountpoint=True), server_major=15).action == INIT


def test_unknown_server_major_does_not_refuse(primary) -> None:
    assert make_plan(primary, cluster(pg_version="14"), server_major=None).action == START


def test_moved_primary_ordinal(make_config) -> None:
    cfg = make_config(POD_NAME="postgresql-sfs-0", PGSFS_PRIMARY_ORDINAL="2")
    plan = make_plan(cfg, state(), server_major=15)
    assert plan.action == CLONE
    assert plan.primary == "postgresql-sfs-2.postgresql-svc.pg.svc.cluster.local."


def test_primary_ordinal_holding_a_standby_follows_until_promoted(primary) -> None:
    # A switchover's successor: it never promotes itself (that was a refusal before switchovers).
    plan = make_plan(primary, cluster(standby_signal=True), server_major=15, passwords=ROTATED)
    assert plan.action == START
    assert plan.steps[:2] == ("survey_writable", "follow_writable")
    assert "apply_passwords" not in plan.steps
    assert any("decide_designated" in d for d in plan.remote_decisions)


# -- refusals -------------------------------------------------------------------------------------

REFUSALS = [
    ("primary", state(empty=False, sample_entries=("lost+found", "notes.txt")), "no PG_VERSION"),
    ("replica", state(empty=False, sample_entries=("lost+found",)), "lost+found"),
    ("primary", cluster(pg_version="14"), "PostgreSQL 14"),
    ("replica", cluster(pg_version="16", standby_signal=True), "PostgreSQL 16"),
    ("primary", cluster(pg_version="(unreadable)"), "(unreadable)"),
    ("primary", state(leftover=FOREIGN_LEFTOVER), "not provably"),
    ("replica", state(exists=False, leftover=FOREIGN_LEFTOVER), "not provably"),
    ("primary", state(empty=False, sample_entries=("(not a directory)",)), "not a directory"),
]


@pytest.mark.parametrize(("who", "data", "says"), REFUSALS)
def test_refusals(who: str, data: DataDirState, says: str, request: pytest.FixtureRequest) -> None:
    cfg = request.getfixturevalue(who)
    plan = make_plan(cfg, data, server_major=15, passwords=ROTATED)
    assert plan.action == REFUSE
    assert plan.steps == () and plan.files == () and plan.remove_leftover is None
    assert plan.refusal is not None
    assert says in plan.refusal.message
    assert plan.reason == plan.refusal.message
    assert plan.refusal.hint
    assert (plan.refusal.exit_code, plan.refusal.event) == (6, "pgdata_conflict")
    error = plan.refusal.to_error()
    assert isinstance(error, DataDirConflict)
    assert (error.exit_code, error.message, error.hint) == (6, plan.refusal.message, plan.refusal.hint)


def test_major_mismatch_is_checked_before_role(replica) -> None:
    plan = make_plan(replica, cluster(pg_version="14"), server_major=15)
    assert plan.refusal is not None and "PostgreSQL 14" in plan.refusal.message


# -- leftovers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "first_step"), [("primary", "check_peers_for_data"), ("replica", "wait_for_primary_record")]
)
def test_our_leftover_is_removed_first(who: str, first_step: str, request: pytest.FixtureRequest) -> None:
    plan = make_plan(request.getfixturevalue(who), state(leftover=OUR_LEFTOVER), server_major=15)
    assert plan.steps[:2] == ("remove_leftover", first_step)
    assert plan.remove_leftover == OUR_LEFTOVER.path


def test_our_leftover_beside_a_cluster_is_removed_too(primary) -> None:
    plan = make_plan(primary, cluster(leftover=OUR_LEFTOVER), server_major=15, passwords=NO_CHANGE)
    assert plan.steps[0] == "remove_leftover"
    assert plan.action == START


def test_no_leftover_removal_when_refusing(primary) -> None:
    plan = make_plan(primary, cluster(pg_version="14", leftover=OUR_LEFTOVER), server_major=15)
    assert plan.action == REFUSE
    assert plan.remove_leftover is None


# -- properties -------------------------------------------------------------------------------

leftovers = st.one_of(st.none(), st.sampled_from([OUR_LEFTOVER, FOREIGN_LEFTOVER]))
states = st.builds(
    DataDirState,
    path=st.just(PGDATA),
    exists=st.booleans(),
    empty=st.booleans(),
    is_mountpoint=st.booleans(),
    pg_version=st.sampled_from([None, "14", "15", "16", "9.6", "(unreadable)", "garbage"]),
    standby_signal=st.booleans(),
    recovery_signal=st.booleans(),
    system_identifier=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    sample_entries=st.lists(st.sampled_from(["PG_VERSION", "base", "lost+found", "x"]), max_size=4).map(tuple),
    owner_uid=st.one_of(st.none(), st.integers(0, 65535)),
    mode=st.one_of(st.none(), st.integers(0, 0o7777)),
    leftover=leftovers,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # make_config is stateless
@given(data=states, who=st.sampled_from(["primary", "replica"]), major=st.sampled_from([None, 15]),
       applied=st.sampled_from([None, NO_CHANGE, ROTATED, ADOPT]))  # fmt: skip
def test_plan_invariants(
    make_config, data: DataDirState, who: str, major: int | None, applied: PasswordChange | None
) -> None:
    cfg = make_config(POD_NAME="postgresql-sfs-0" if who == "primary" else "postgresql-sfs-2")
    plan = make_plan(cfg, data, server_major=major, passwords=applied)
    assert plan == make_plan(cfg, data, server_major=major, passwords=applied)  # pure
    assert plan.action in (INIT, CLONE, START, REFUSE)
    assert (plan.action == REFUSE) == (plan.refusal is not None)
    if plan.action != REFUSE:
        assert plan.steps[-1] == "exec_postgres"
        assert ("remove_leftover" in plan.steps) == (data.leftover is not None and data.leftover.ours)
    if plan.action in (INIT, CLONE):
        assert not data.initialised
    if data.initialised and plan.action == START:
        # The primary ordinal holding a standby never promotes itself: it follows until promoted.
        assert not data.standby_signal or who == "replica" or "follow_writable" in plan.steps
        if who == "replica" and not data.standby_signal:  # a former primary: checked, never started as is
            assert "rejoin_or_rewind" in plan.steps
    text = json.dumps(plan.to_dict())
    assert "super-secret-pw" not in text and "repl-secret-pw" not in text


def test_to_dict_is_json_and_secret_free(make_config) -> None:
    cfg = make_config(POSTGRES_PASSWORD="p4ss-W0RD-one", PGSFS_REPLICATION_PASSWORD="p4ss-W0RD-two")
    for data in (state(), cluster(), cluster(standby_signal=True), state(leftover=OUR_LEFTOVER)):
        plan = make_plan(cfg, data, server_major=15)
        loaded = json.loads(json.dumps(plan.to_dict()))
        assert isinstance(loaded["steps"], list) and isinstance(loaded["files"], list)
        assert loaded["action"] == plan.action
        text = json.dumps(loaded)
        assert "p4ss-W0RD" not in text
    refused = make_plan(cfg, cluster(pg_version="14"), server_major=15).to_dict()
    assert json.loads(json.dumps(refused))["refusal"]["exit_code"] == 6


# -- pgdata.inspect on real directories -----------------------------------------------------------


def _make_cluster(pgdata: Path, sysid: int) -> None:
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    # pg_control starts with the system identifier (uint64, host order: little-endian here).
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", sysid) + b"\x00" * 8184)


def test_inspect_missing(tmp_path: Path) -> None:
    got = inspect(tmp_path / "data")
    assert (got.exists, got.empty, got.initialised, got.is_mountpoint) == (False, True, False, False)
    assert (got.owner_uid, got.mode, got.leftover, got.system_identifier) == (None, None, None, None)
    assert got.path == str(tmp_path / "data")


def test_inspect_empty(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    pgdata.mkdir(mode=0o700)
    os.chmod(pgdata, 0o700)  # independent of the umask
    got = inspect(pgdata)
    assert (got.exists, got.empty, got.initialised, got.is_mountpoint) == (True, True, False, False)
    assert got.owner_uid == os.getuid()
    assert got.mode == 0o700
    assert got.sample_entries == ()


@pytest.mark.parametrize("sysid", [1, 7301234567890123456, 2**64 - 1])
def test_inspect_cluster_reads_version_and_system_identifier(tmp_path: Path, sysid: int) -> None:
    pgdata = tmp_path / "data"
    _make_cluster(pgdata, sysid)
    got = inspect(pgdata)
    assert got.pg_version == "15"
    assert got.initialised and not got.empty
    assert got.system_identifier == sysid
    assert (got.standby_signal, got.recovery_signal) == (False, False)


def test_inspect_signals_and_sample(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    _make_cluster(pgdata, 42)
    (pgdata / "standby.signal").touch()
    (pgdata / "recovery.signal").touch()
    for n in range(10):
        (pgdata / f"z{n}").touch()
    got = inspect(pgdata)
    assert (got.standby_signal, got.recovery_signal) == (True, True)
    assert len(got.sample_entries) == 8
    assert list(got.sample_entries) == sorted(got.sample_entries)
    assert got.sample_entries[0] == "PG_VERSION"


def test_inspect_short_pg_control(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    _make_cluster(pgdata, 42)
    (pgdata / "global" / "pg_control").write_bytes(b"\x01\x02")
    assert inspect(pgdata).system_identifier is None


def test_inspect_foreign_data_is_refused(tmp_path: Path, make_config) -> None:
    pgdata = tmp_path / "data"
    pgdata.mkdir()
    (pgdata / "lost+found").mkdir()
    got = inspect(pgdata)
    assert not got.empty and not got.initialised
    plan = make_plan(make_config(PGDATA=str(pgdata)), got, server_major=15)
    assert plan.action == REFUSE and "lost+found" in plan.reason


def test_inspect_file_instead_of_directory(tmp_path: Path, make_config) -> None:
    pgdata = tmp_path / "data"
    pgdata.write_text("oops")
    got = inspect(pgdata)
    assert got.exists and not got.empty
    assert got.sample_entries == ("(not a directory)",)
    plan = make_plan(make_config(PGDATA=str(pgdata)), got, server_major=15)
    assert plan.action == REFUSE and "not a directory" in plan.reason


def test_inspect_mountpoint() -> None:
    mount = Path("/proc")
    if not os.path.ismount(mount):
        pytest.skip("/proc is not a mount point here")
    assert inspect(mount).is_mountpoint


@pytest.mark.parametrize(
    ("marker", "ours", "kind"),
    [
        (None, False, "unknown"),
        ("{not json", False, "unknown"),
        ("[1, 2]", False, "unknown"),
        ("SAME", True, "clone"),
        ('{"pgdata": "/elsewhere/data", "kind": "init"}', False, "init"),
    ],
)
def test_inspect_leftover(tmp_path: Path, marker: str | None, ours: bool, kind: str) -> None:
    pgdata = tmp_path / "data"
    pgdata.mkdir()
    work = work_dir_for(pgdata)
    assert work == tmp_path / "data.pgsfs-work"
    work.mkdir()
    if marker == "SAME":
        marker = json.dumps({"pgdata": str(pgdata), "kind": "clone"})
    if marker is not None:
        (work / WORK_MARKER).write_text(marker)
    got = inspect(pgdata)
    assert got.leftover == Leftover(path=str(work), kind=kind, ours=ours)
    assert got.empty  # the work dir is beside PGDATA, not in it


def test_inspect_then_plan_on_real_dirs(tmp_path: Path, make_config) -> None:
    pgdata = tmp_path / "data"
    pgdata.mkdir()
    work = work_dir_for(pgdata)
    work.mkdir()
    (work / WORK_MARKER).write_text(json.dumps({"pgdata": str(pgdata), "kind": "init"}))
    cfg = make_config(PGDATA=str(pgdata))
    plan = make_plan(cfg, inspect(pgdata), server_major=15)
    assert plan.action == INIT
    assert plan.steps[0] == "remove_leftover" and plan.remove_leftover == str(work)
    _make_cluster(pgdata, 99)
    (pgdata / "standby.signal").touch()
    plan = make_plan(make_config(PGDATA=str(pgdata), POD_NAME="postgresql-sfs-1"), inspect(pgdata), server_major=15)
    assert plan.action == START and "check_primary" in plan.steps


def test_a_foreign_owner_is_refused_when_not_root(tmp_path: Path) -> None:
    """Not root, the agent cannot fix a PGDATA owned by someone else: refuse before touching it."""
    from agent.config import load_config
    from agent.pgdata import inspect as inspect_pgdata
    from agent.plan import REFUSE, make_plan

    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")
    env = {"POD_NAME": "postgresql-sfs-0", "POD_NAMESPACE": "pg", "PGDATA": str(pgdata),
           "POSTGRES_PASSWORD": "superuser-pw", "PGSFS_REPLICATION_PASSWORD": "replication-pw"}
    config = load_config(env, hostname=lambda: "x", resolv_conf=tmp_path / "none", sa_namespace_file=tmp_path / "none")
    state = inspect_pgdata(pgdata)
    foreign = (state.owner_uid or 0) + 4242
    plan = make_plan(config, state, server_major=15, passwords=NO_CHANGE, euid=foreign)
    assert plan.action == REFUSE and plan.refusal is not None
    assert f"owned by uid {state.owner_uid}" in plan.refusal.message and str(foreign) in plan.refusal.message
    assert make_plan(config, state, server_major=15, passwords=NO_CHANGE, euid=0).action == "start"


def test_the_plan_names_the_decisions_it_leaves_to_what_the_members_answer(make_config, tmp_path) -> None:
    from agent.pgdata import inspect

    empty = inspect(tmp_path / "pgdata")
    primary = make_plan(make_config(POD_NAME="postgresql-sfs-0"), empty, server_major=15)
    assert primary.action == "init" and "survey.judge" in primary.remote_decisions[0]
    replica = make_plan(make_config(POD_NAME="postgresql-sfs-1"), empty, server_major=15)
    assert replica.action == "clone" and any("slot_step" in d for d in replica.remote_decisions)
    standby = tmp_path / "standby"
    standby.mkdir()
    (standby / "PG_VERSION").write_text("15\n")
    (standby / "standby.signal").write_text("")
    restarting = make_plan(make_config(POD_NAME="postgresql-sfs-1", PGDATA=str(standby)), inspect(standby),
                           server_major=15, euid=0)  # fmt: skip
    assert restarting.action == "start" and "decide_restart" in restarting.remote_decisions[0]
    assert "refuse_diverged (exit 12)" in restarting.to_dict()["remote_decisions"][0]


def test_standalone_init_asks_no_members(tmp_path) -> None:
    from agent.config import load_config
    from agent.pgdata import inspect

    cfg = load_config(
        {"HOSTNAME": "3f2a9c1d0b7e", "POSTGRES_PASSWORD": "example", "PGDATA": str(tmp_path / "pgdata")},
        hostname=lambda: "unused", resolv_conf=tmp_path / "none", sa_namespace_file=tmp_path / "none",
    )  # fmt: skip
    plan = make_plan(cfg, inspect(tmp_path / "pgdata"), server_major=15)
    assert plan.action == "init" and "check_peers_for_data" not in plan.steps and plan.remote_decisions == ()


def test_a_former_primary_on_a_replica_ordinal_is_checked_then_rejoined_or_rewound(make_config) -> None:
    plan = make_plan(make_config(POD_NAME="postgresql-sfs-1"), cluster(), server_major=15)
    assert plan.action == START and plan.steps[:2] == ("check_primary", "rejoin_or_rewind")
    assert "rewind" in plan.remote_decisions[0]


# -- which passwords a start sets (agent/secretsrecord.py) ---------------------------------------


def _record(superuser: str, replication: str) -> dict[str, str]:
    return {"superuser": scram_verifier(superuser), "replication": scram_verifier(replication)}


def test_no_record_adopts_and_never_touches_the_superuser() -> None:
    # Data from the official image, or a state dir that was lost: an ALTER ROLE since init stays.
    change = password_change(None, "su-password", "repl-password")
    assert change == PasswordChange(roles=("replication",), adopt=True)
    assert password_change(None, "su-password", "") == PasswordChange(roles=(), adopt=True)


@pytest.mark.parametrize(("superuser", "replication", "roles"), [
    ("su-password", "repl-password", ()),
    ("su-rotated", "repl-password", ("superuser",)),
    ("su-password", "repl-rotated", ("replication",)),
    ("su-rotated", "repl-rotated", ("superuser", "replication")),
])  # fmt: skip
def test_a_record_sets_only_what_changed(superuser: str, replication: str, roles: tuple[str, ...]) -> None:
    change = password_change(_record("su-password", "repl-password"), superuser, replication)
    assert change == PasswordChange(roles=roles, adopt=False)
    assert change.needed is bool(roles)


def test_the_record_is_read_with_limits_and_a_broken_one_counts_as_none(tmp_path: Path) -> None:
    (tmp_path / "applied-secrets.json").write_text("[1, 2]")
    assert read_record(tmp_path) is None
    (tmp_path / "applied-secrets.json").write_text(json.dumps(_record("a", "b")))
    record = read_record(tmp_path)
    assert record is not None and password_change(record, "a", "b").roles == ()


# -- restore from the backup repository ------------------------------------------------------------


def test_an_empty_primary_with_a_restore_setting_restores_instead_of_initialising(primary, replica) -> None:
    from agent.archive import ArchiveSettings, RestoreTarget

    target = RestoreTarget("time", "2026-12-07 17:00+00")
    settings = ArchiveSettings("/backups", "copy", 2, 60, 2, "postgresql-sfs", target)
    restoring = dataclasses.replace(primary, archive=settings)
    plan = make_plan(restoring, state(), server_major=15)
    assert plan.action == INIT and "initdb" not in plan.steps
    assert list(plan.steps) == ["check_peers_for_data", "check_backup_exists", "restore_backup", "record_restore",
                                "sync_volume", "move_into_place", "ensure_stanza", "write_config", "fix_ownership",
                                "exec_postgres"]  # fmt: skip
    assert "time=2026-12-07 17:00+00" in plan.reason and f"{STATE}/restore.json" in plan.files
    assert any("archive.restore_problem" in d for d in plan.remote_decisions)
    # Still recovering at a later start: started with the recovery settings, never restored again.
    later = make_plan(restoring, cluster(recovery_signal=True), server_major=15)
    assert later.action == START and "restore_backup" not in later.steps and "archive recovery" in later.reason
    # Once promoted it is a primary like any other; a replica ordinal clones as always.
    assert make_plan(restoring, cluster(), server_major=15).reason.startswith("PGDATA holds a primary's cluster")
    assert make_plan(dataclasses.replace(replica, archive=settings), state(), server_major=15).action == CLONE
    # Archiving without a restore setting initialises.
    plain = dataclasses.replace(primary, archive=dataclasses.replace(settings, restore_from=None))
    assert list(make_plan(plain, state(), server_major=15).steps) == INIT_STEPS
