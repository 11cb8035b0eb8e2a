"""Unit and property tests of agent.upgrade (which major a member runs, the upgrade's resumption) and
of the plan's upgrade branches; the upgrade itself runs for real in tests/integration/test_upgrade.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import upgrade
from agent.majors import available
from agent.plan import REFUSE, START, make_plan
from agent.upgrade import BUILDING, UPGRADED, MajorChoice, OldCluster, Resume, UpgradeRecord, decide_major
from tests.unit.test_plan import cluster

CARRIED = {14: "/usr/lib/postgresql/14/bin", 17: "/usr/lib/postgresql/17/bin"}
FLAGS = {"writable_primary": False, "external_wal": False}


def _decide(data: int, image: int = 17, carried: dict[int, str] = CARRIED, **flags: bool) -> upgrade.MajorDecision:
    return decide_major("/pgdata", data, image, carried, **{**FLAGS, **flags})


def test_the_same_major_just_starts() -> None:
    assert _decide(17).choice is MajorChoice.IMAGE
    assert _decide(17, writable_primary=True, external_wal=True).choice is MajorChoice.IMAGE


def test_newer_data_is_a_downgrade_and_refused() -> None:
    decision = _decide(18)
    assert decision.choice is MajorChoice.REFUSE
    assert "cannot go back" in decision.message and "PostgreSQL 18" in decision.hint


def test_older_data_whose_programs_the_image_lacks_is_refused_naming_what_it_carries() -> None:
    decision = _decide(13, writable_primary=True)
    assert decision.choice is MajorChoice.REFUSE
    assert "PostgreSQL 14 only" in decision.message and "PGSFS_MAJORS_DIR" in decision.hint
    alone = _decide(13, carried={17: "/x"})
    assert "no other major's programs" in alone.message


def test_the_writable_primary_upgrades_and_every_other_member_runs_its_old_major() -> None:
    assert _decide(14, writable_primary=True) == upgrade.MajorDecision(MajorChoice.UPGRADE, bindir=CARRIED[14])
    assert _decide(14) == upgrade.MajorDecision(MajorChoice.OLDER, bindir=CARRIED[14])


@pytest.mark.parametrize(("flag", "says"), [("external_wal", "POSTGRES_INITDB_WALDIR")])
def test_what_the_upgrade_cannot_handle_yet_is_refused_before_it_starts(flag: str, says: str) -> None:
    decision = _decide(14, writable_primary=True, **{flag: True})
    assert decision.choice is MajorChoice.REFUSE and says in decision.message and decision.hint
    assert _decide(14, **{flag: True}).choice is MajorChoice.OLDER, "a standby only runs its major"


@given(data=st.integers(12, 19), image=st.integers(12, 19), carried=st.sets(st.integers(12, 19)),
       writable=st.booleans(), blocked=st.booleans())  # fmt: skip
def test_major_decisions(data: int, image: int, carried: set[int], writable: bool, blocked: bool) -> None:
    decision = _decide(data, image, {m: f"/m/{m}" for m in carried}, writable_primary=writable, external_wal=blocked)
    if decision.choice in (MajorChoice.UPGRADE, MajorChoice.OLDER):
        # Only ever from an older major, with its own programs.
        assert data < image and data in carried and decision.bindir == f"/m/{data}"
    if decision.choice is MajorChoice.UPGRADE:
        assert writable and not blocked
    if decision.choice is MajorChoice.OLDER:
        assert not writable
    if data > image or (data < image and data not in carried):
        assert decision.choice is MajorChoice.REFUSE
    if decision.choice is MajorChoice.REFUSE:
        assert decision.message and decision.hint


def _record(phase: str) -> UpgradeRecord:
    return UpgradeRecord(pgdata="/v/pgdata", from_major=14, to_major=17, phase=phase, aside="/v/pgdata.pgsfs-major14",
                         old_system_identifier=7)  # fmt: skip


@pytest.mark.parametrize(
    ("phase", "pgdata", "built", "aside", "expected"),
    [
        (None, 14, None, False, Resume.NOTHING),
        (BUILDING, 14, None, False, Resume.ROLL_BACK),
        (BUILDING, 14, 17, False, Resume.ROLL_BACK),  # pg_upgrade ran, did not finish (or its exit was lost)
        (BUILDING, None, 17, True, Resume.UNKNOWN),  # never happens before "upgraded": touch nothing
        (UPGRADED, 14, 17, False, Resume.FINISH_SWAP),
        (UPGRADED, None, 17, True, Resume.FINISH_SWAP),  # between the two renames
        (UPGRADED, 17, None, True, Resume.CLEAN_UP),
        (UPGRADED, None, None, True, Resume.UNKNOWN),
        (UPGRADED, 14, None, False, Resume.UNKNOWN),  # the new cluster is gone: never roll back past pg_upgrade
    ],
)
def test_resuming_an_interrupted_upgrade(
    phase: str | None, pgdata: int | None, built: int | None, aside: bool, expected: Resume
) -> None:
    record = _record(phase) if phase else None
    assert upgrade.decide_resume(record, pgdata_major=pgdata, built_major=built, aside_exists=aside) is expected


majors = st.sampled_from([None, 14, 17])


@given(phase=st.sampled_from([BUILDING, UPGRADED]), pgdata=majors, built=majors, aside=st.booleans())
def test_resume_never_goes_back_after_pg_upgrade_finished(phase: str, pgdata: int | None, built: int | None,
                                                          aside: bool) -> None:  # fmt: skip
    decision = upgrade.decide_resume(_record(phase), pgdata_major=pgdata, built_major=built, aside_exists=aside)
    if phase == UPGRADED:
        assert decision is not Resume.ROLL_BACK, "once pg_upgrade finished the new cluster is the truth"
    else:
        assert decision in (Resume.ROLL_BACK, Resume.UNKNOWN), "before it finished the old cluster is"
    if decision is Resume.FINISH_SWAP:
        assert built == 17, "a swap only ever moves a new cluster in"
    if decision is Resume.ROLL_BACK:
        assert pgdata == 14, "a roll-back only ever keeps the old cluster in PGDATA"


def _inside(phase: str) -> UpgradeRecord:
    return UpgradeRecord(pgdata="/v", from_major=14, to_major=17, phase=phase, aside="/v/pgsql_tmp.pgsfs-major14",
                         old_system_identifier=7, inside=True, entries=("PG_VERSION", "base", "global"))  # fmt: skip


@pytest.mark.parametrize(
    ("phase", "pgdata", "built", "expected"),
    [
        (BUILDING, 14, None, Resume.ROLL_BACK),
        (BUILDING, 14, 17, Resume.ROLL_BACK),
        (BUILDING, None, 17, Resume.UNKNOWN),
        (UPGRADED, 14, 17, Resume.FINISH_SWAP),  # nothing moved yet
        (UPGRADED, None, 17, Resume.FINISH_SWAP),  # PG_VERSION (first) and maybe more moved aside
        (UPGRADED, 17, None, Resume.UNKNOWN),  # the new one is in before moving_in was written: not ours
        (upgrade.MOVING_IN, None, 17, Resume.FINISH_SWAP),  # new entries half moved up, PG_VERSION last
        (upgrade.MOVING_IN, 17, None, Resume.CLEAN_UP),
        (upgrade.MOVING_IN, 14, 17, Resume.UNKNOWN),  # the old PG_VERSION is back: someone moved it
    ],
)
def test_resuming_an_upgrade_inside_a_mount_point(phase: str, pgdata: int | None, built: int | None,
                                                   expected: Resume) -> None:  # fmt: skip
    decision = upgrade.decide_resume(_inside(phase), pgdata_major=pgdata, built_major=built, aside_exists=True)
    assert decision is expected


@given(phase=st.sampled_from([BUILDING, UPGRADED, upgrade.MOVING_IN]), pgdata=majors, built=majors)
def test_inside_a_mount_point_too_nothing_goes_back_after_pg_upgrade(phase: str, pgdata: int | None,
                                                                     built: int | None) -> None:  # fmt: skip
    decision = upgrade.decide_resume(_inside(phase), pgdata_major=pgdata, built_major=built, aside_exists=True)
    assert (decision is Resume.ROLL_BACK) == (phase == BUILDING and pgdata == 14)
    if decision is Resume.FINISH_SWAP:
        assert built == 17 and pgdata != 17


def test_the_record_round_trips_and_garbage_is_no_record() -> None:
    assert upgrade.parse_record(_inside(upgrade.MOVING_IN).to_json()) == _inside(upgrade.MOVING_IN)
    record = _record(UPGRADED)
    assert upgrade.parse_record(record.to_json()) == record
    for text in ("", "{", "[]", '{"phase": "upgraded"}', record.to_json().replace(UPGRADED, "halfway")):
        assert upgrade.parse_record(text) is None


def _old(**changes: object) -> OldCluster:
    fields: dict[str, object] = dict(
        install_user="postgres", encoding="UTF8", locale_provider="c", collate="C.UTF-8", ctype="C.UTF-8",
        icu_locale=None, checksums=True, wal_segment_mb=16, extensions=(("app", "pg_trgm"),), catalog_bytes=8 << 20,
        xact_bytes=1 << 20,
    )  # fmt: skip
    fields.update(changes)
    return OldCluster(**fields)  # type: ignore[arg-type]


def test_the_new_cluster_is_initialised_like_the_old_one() -> None:
    args = upgrade.initdb_args(_old(), 17)
    assert args[:4] == ["-U", "postgres", "-E", "UTF8"] and "--data-checksums" in args and "--wal-segsize=16" in args
    assert "--no-data-checksums" in upgrade.initdb_args(_old(checksums=False), 18), "18 checksums by default"
    assert not any("checksums" in a for a in upgrade.initdb_args(_old(checksums=False), 17))
    icu = upgrade.initdb_args(_old(locale_provider="i", icu_locale="en-US"), 17)
    assert "--locale-provider=icu" in icu and "--icu-locale=en-US" in icu


def test_missing_extensions_and_room_are_problems() -> None:
    old = _old(extensions=(("app", "pg_trgm"), ("app", "postgis")))
    problems = upgrade.upgrade_problems(old, frozenset({"pg_trgm"}), free_bytes=1 << 40)
    assert len(problems) == 1 and "'postgis'" in problems[0] and "'app'" in problems[0]
    needed = upgrade.room_needed(old)
    assert upgrade.upgrade_problems(old, frozenset({"pg_trgm", "postgis"}), free_bytes=needed) == []
    short = upgrade.upgrade_problems(old, frozenset({"pg_trgm", "postgis"}), free_bytes=needed - 1)
    assert len(short) == 1 and "MiB free" in short[0]


def test_the_old_cluster_is_put_aside_under_a_name_not_taken() -> None:
    pgdata = Path("/v/pgdata")
    assert upgrade.aside_for(pgdata, 14, []) == Path("/v/pgdata.pgsfs-major14")
    assert upgrade.aside_for(pgdata, 14, ["pgdata.pgsfs-major14", "pgdata.pgsfs-major14-2"]) == Path(
        "/v/pgdata.pgsfs-major14-3"
    )
    assert upgrade.build_dir_for(pgdata) == Path("/v/pgdata.pgsfs-upgrade")
    # Inside a mount-point PGDATA: under PostgreSQL's temporary-file prefix (no base backup copies it).
    assert upgrade.build_dir_for(pgdata, inside=True) == Path("/v/pgdata/pgsql_tmp.pgsfs-upgrade")
    assert upgrade.aside_for(pgdata, 14, ["pgsql_tmp.pgsfs-major14"], inside=True) == Path(
        "/v/pgdata/pgsql_tmp.pgsfs-major14-2"
    )


def test_available_majors_are_the_complete_bin_directories(tmp_path: Path) -> None:
    from agent.majors import NEEDED

    for major, programs in (("14", NEEDED), ("15", ("postgres",)), ("latest", NEEDED)):
        (tmp_path / major / "bin").mkdir(parents=True)
        for program in programs:
            (tmp_path / major / "bin" / program).write_text("")
            (tmp_path / major / "bin" / program).chmod(0o755)
    assert available(tmp_path) == {14: str(tmp_path / "14" / "bin")}
    assert available(tmp_path / "missing") == {}


# -- the plan ------------------------------------------------------------------------------------


def test_the_plan_upgrades_a_primary_after_its_guard(make_config) -> None:
    plan = make_plan(make_config(POD_NAME="postgresql-sfs-0"), cluster(pg_version="14"), server_major=17,
                     carried=CARRIED)  # fmt: skip
    assert plan.action == START and plan.binaries is None
    assert plan.steps[:3] == ("check_no_other_primary", "upgrade_major", "write_config"), plan.steps
    assert "pg_upgrade --link" in plan.reason


@pytest.mark.parametrize("who", ["postgresql-sfs-1", "postgresql-sfs-0"])
def test_the_plan_runs_a_standby_on_its_old_major(make_config, who: str) -> None:
    # The primary ordinal holding a standby (a switchover's successor) does not upgrade either.
    plan = make_plan(make_config(POD_NAME=who), cluster(pg_version="14", standby_signal=True), server_major=17,
                     carried=CARRIED)  # fmt: skip
    assert plan.action == START and plan.binaries == CARRIED[14]
    assert plan.steps[0] == "use_major_14" and "upgrade_major" not in plan.steps
    assert "PostgreSQL 14's programs" in plan.reason


def test_the_plan_refuses_a_downgrade_and_an_upgrade_it_cannot_do(make_config, tmp_path: Path) -> None:
    primary = make_config(POD_NAME="postgresql-sfs-0")
    assert make_plan(primary, cluster(pg_version="18"), server_major=17, carried=CARRIED).action == REFUSE
    mounted = make_plan(primary, cluster(pg_version="14", is_mountpoint=True), server_major=17, carried=CARRIED)
    assert "upgrade_major" in mounted.steps, "a mount-point PGDATA upgrades inside itself"
    linked = make_plan(primary, cluster(pg_version="14", wal_linked=True), server_major=17, carried=CARRIED)
    assert linked.action == REFUSE and linked.refusal is not None and "POSTGRES_INITDB_WALDIR" in linked.refusal.message
    # With archiving on, the stanza is upgraded at the start (agent/repository.py): no refusal.
    archiving = make_config(POD_NAME="postgresql-sfs-0", PGSFS_BACKUP_REPO=str(tmp_path / "repo"))
    assert "upgrade_major" in make_plan(archiving, cluster(pg_version="14"), server_major=17, carried=CARRIED).steps


# -- members of the old cluster, once the primary is upgraded ---------------------------------------


def test_the_origin_round_trips_through_the_setting_and_the_record() -> None:
    origin = upgrade.UpgradeOrigin(system_identifier=7301, timeline=3, wal_end=0x3000028)
    assert upgrade.parse_origin(origin.setting()) == origin and origin.setting() == "7301:3:3000028"
    for text in (None, "", "7301:3", "a:b:c", "1:2:3:4"):
        assert upgrade.parse_origin(text) is None
    record = upgrade.provenance_text(origin, 9999)
    assert upgrade.origin_for(record, 9999) == origin
    assert upgrade.origin_for(record, 1234) is None, "the record of an earlier cluster names nothing"
    assert upgrade.origin_for("not json", 9999) is None and upgrade.origin_for(record, None) is None


@given(local_sysid=st.sampled_from([7301, 7302]), timeline=st.integers(1, 4), end=st.integers(0, 1 << 40),
       origin_end=st.integers(0, 1 << 40))  # fmt: skip
def test_only_a_copy_holding_nothing_more_clones_the_upgraded_primary(
    local_sysid: int, timeline: int, end: int, origin_end: int
) -> None:
    origin = upgrade.UpgradeOrigin(system_identifier=7301, timeline=2, wal_end=origin_end)
    clones = upgrade.upgraded_from_here(local_sysid, timeline, end, origin)
    assert clones == (local_sysid == 7301 and timeline == 2 and end <= origin_end)
    assert not upgrade.upgraded_from_here(local_sysid, timeline, end, None)
    assert not upgrade.upgraded_from_here(None, timeline, end, origin)


@given(former=st.booleans(), from_here=st.booleans(), same=st.booleans())
def test_a_restarting_replica_clones_an_upgraded_primary_only_when_it_is_its_origin(
    former: bool, from_here: bool, same: bool
) -> None:
    from agent import follow

    action = follow.decide_restart(7301, 7301 if same else 9999, None, "reserved", "refuse", former_primary=former,
                                   upgraded_from_here=from_here)  # fmt: skip
    if same:
        assert action != follow.RECLONE_UPGRADED
    elif from_here and not former:
        assert action == follow.RECLONE_UPGRADED
    else:
        assert action == follow.REFUSE_OTHER_CLUSTER, "a former primary, or no proof: refused, untouched"
