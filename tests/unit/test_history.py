"""Whether a replica's data lies on the primary's history: pure decisions over observed positions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import history
from agent.history import LocalPosition

LSNS = st.integers(min_value=0, max_value=2**64 - 1)

STANDBY_CONTROLDATA = """\
pg_control version number:            1300
Database cluster state:               shut down in recovery
Latest checkpoint location:           0/5000060
Latest checkpoint's REDO location:    0/5000028
Latest checkpoint's TimeLineID:       1
Minimum recovery ending location:     0/7A3C1F0
Min recovery ending loc's timeline:   1
"""

PRIMARY_CONTROLDATA = """\
Database cluster state:               shut down
Latest checkpoint location:           0/9000028
Latest checkpoint's TimeLineID:       2
Minimum recovery ending location:     0/0
Min recovery ending loc's timeline:   0
"""


@given(LSNS)
def test_lsn_text_round_trips(lsn: int) -> None:
    assert history.parse_lsn(history.format_lsn(lsn)) == lsn


@pytest.mark.parametrize("text", ["", "0/", "/1", "G/0", "1/2/3", "123456789/0"])
def test_not_an_lsn(text: str) -> None:
    with pytest.raises(ValueError):
        history.parse_lsn(text)


def test_history_file() -> None:
    text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5A00000\tat restore point \"x\"\n"
    assert history.parse_history(text) == {1: 0x3000000, 2: 0x5A00000}
    assert history.parse_history("") == {}


def test_controldata_of_a_standby_uses_its_minimum_recovery_point() -> None:
    position = history.parse_controldata(STANDBY_CONTROLDATA)
    assert position == LocalPosition(1, 0x7A3C1F0, clean=True, state="shut down in recovery")
    # Clean for a standby; a former primary in that state still holds WAL past it (see switchover).
    assert position.state != history.SHUT_DOWN


def test_controldata_of_a_former_primary_uses_its_last_checkpoint() -> None:
    # A checkpoint's location is where its record starts: that record is part of this history.
    assert history.parse_controldata(PRIMARY_CONTROLDATA) == LocalPosition(2, 0x9000028, record_start=True)


def test_a_former_primary_whose_checkpoint_starts_at_the_switch_point_has_forked() -> None:
    # Review M2: the successor has every record but the shutdown checkpoint, so its new timeline
    # starts where that checkpoint starts. Rejoining would end in PostgreSQL's "requested timeline 2
    # is not a child of this server's history", forever; it must be rewound.
    former = history.parse_controldata(PRIMARY_CONTROLDATA.replace("TimeLineID:       2", "TimeLineID:       1"))
    assert history.compare(former, 2, 0xA000000, {1: 0x9000028}).outcome == history.FORKED
    assert history.compare(former, 2, 0xA000000, {1: 0x90000A0}).may_follow
    assert history.compare(former, 1, 0x9000028, {}).outcome == history.AHEAD_OF_PRIMARY


def test_same_timeline_behind_or_level_may_follow() -> None:
    assert history.compare(LocalPosition(1, 100), 1, 100, {}).may_follow
    assert history.compare(LocalPosition(1, 99), 1, 100, {}).may_follow


def test_same_timeline_ahead_of_the_primary_is_an_older_primary() -> None:
    verdict = history.compare(LocalPosition(1, 101), 1, 100, {})
    assert verdict.outcome == history.AHEAD_OF_PRIMARY and not verdict.may_follow


def test_older_timeline_up_to_the_switch_point_follows_the_promotion() -> None:
    verdict = history.compare(LocalPosition(1, 0x5000000), 2, 0x9000000, {1: 0x5000000})
    assert verdict.may_follow and verdict.switch_lsn == "0/5000000"


def test_older_timeline_past_the_switch_point_has_forked() -> None:
    verdict = history.compare(LocalPosition(1, 0x5000001), 2, 0x9000000, {1: 0x5000000})
    assert verdict.outcome == history.FORKED


def test_newer_timeline_than_the_primary() -> None:
    assert history.compare(LocalPosition(3, 1), 2, 0x9000000, {1: 5}).outcome == history.NEWER_TIMELINE


def test_timeline_absent_from_the_primarys_history() -> None:
    # The primary's timeline 3 came from 1 through 2'; this replica's timeline 2 is another branch.
    assert history.compare(LocalPosition(2, 1), 4, 9, {1: 1, 3: 5}).outcome == history.NOT_IN_HISTORY


@given(
    st.integers(min_value=1, max_value=20), LSNS, st.integers(min_value=1, max_value=20), LSNS,
    st.dictionaries(st.integers(min_value=1, max_value=20), LSNS), st.booleans(),
)  # fmt: skip
def test_a_replica_may_follow_only_a_primary_that_contains_its_whole_past(
    local_tli: int, local_lsn: int, primary_tli: int, primary_lsn: int, switches: dict[int, int], starts: bool
) -> None:
    local = LocalPosition(local_tli, local_lsn, record_start=starts)
    verdict = history.compare(local, primary_tli, primary_lsn, switches)

    def within(limit: int) -> bool:  # a record starting at the limit ends past it
        return local_lsn < limit or (local_lsn == limit and not starts)

    contained = (local_tli == primary_tli and within(primary_lsn)) or (
        local_tli < primary_tli and local_tli in switches and within(switches[local_tli])
    )
    assert verdict.may_follow == contained


def test_a_clone_from_a_server_whose_recovery_ended_during_the_copy_is_unusable() -> None:
    label = "START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\nBACKUP FROM: standby\n"
    # The end-of-recovery checkpoint of a restore reaching its target sets "shutting down" meanwhile.
    assert history.unusable_clone(label, "shutting down") is not None
    assert history.unusable_clone(label, "in production") is not None
    for fine in history.STANDBY_BACKUP_STATES:
        assert history.unusable_clone(label, fine) is None
    # From a primary, any state is what PostgreSQL expects.
    assert history.unusable_clone(label.replace("standby", "primary"), "in production") is None
