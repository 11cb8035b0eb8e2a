"""The switchover's pure decisions: whom the successor follows, and when the former primary promotes it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent import switchover as sw
from agent.history import LocalPosition

CHECKPOINT = 0x3000028


def test_the_successor_follows_the_one_writable_member() -> None:
    assert sw.decide_designated(["postgresql-sfs-0"]) == sw.FOLLOW_WRITABLE
    assert sw.decide_designated([]) == sw.AWAIT_PROMOTION
    assert sw.decide_designated(["postgresql-sfs-0", "postgresql-sfs-2"]) == sw.REFUSE_MANY_WRITABLE


def test_promote_once_the_successor_received_past_the_shutdown_checkpoint() -> None:
    clean = LocalPosition(1, CHECKPOINT, clean=True)
    assert sw.decide_handoff(clean, 1, CHECKPOINT + 0x68, []) == sw.PROMOTE_SUCCESSOR
    assert sw.decide_handoff(clean, 1, CHECKPOINT, []) == sw.WAIT_FOR_SUCCESSOR
    assert sw.decide_handoff(clean, 1, CHECKPOINT - 0x1000, []) == sw.WAIT_FOR_SUCCESSOR


def test_never_promote_beside_a_writable_member_or_across_timelines() -> None:
    clean = LocalPosition(1, CHECKPOINT, clean=True)
    assert sw.decide_handoff(clean, 1, CHECKPOINT + 0x68, ["postgresql-sfs-2"]) == sw.REFUSE_WRITABLE
    assert sw.decide_handoff(clean, 2, CHECKPOINT + 0x68, []) == sw.REFUSE_OTHER_TIMELINE


def test_after_a_crash_the_own_wal_is_served_first_and_must_be_received_to_its_end() -> None:
    crashed = LocalPosition(1, CHECKPOINT, clean=False)
    # Past the last checkpoint there may be commits: never promote on the checkpoint alone.
    assert sw.decide_handoff(crashed, 1, CHECKPOINT + 0x68, []) == sw.SERVE_OWN_WAL
    assert sw.decide_handoff(crashed, 1, CHECKPOINT + 0x68, ["postgresql-sfs-2"]) == sw.REFUSE_WRITABLE
    end = CHECKPOINT + 0x5000
    assert sw.decide_handoff(crashed, 1, end - 1, [], served_up_to=end) == sw.WAIT_FOR_SUCCESSOR
    assert sw.decide_handoff(crashed, 1, end, [], served_up_to=end) == sw.PROMOTE_SUCCESSOR
    assert sw.decide_handoff(crashed, 2, end, [], served_up_to=end) == sw.REFUSE_OTHER_TIMELINE


@given(
    timeline=st.integers(1, 5),
    lsn=st.integers(0, 2**40),
    clean=st.booleans(),
    successor_timeline=st.integers(1, 5),
    received=st.integers(0, 2**40),
    writable=st.lists(st.sampled_from(["postgresql-sfs-1", "postgresql-sfs-2"]), max_size=2),
    served_up_to=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_a_promotion_never_loses_a_commit_nor_makes_two_primaries(
    timeline: int, lsn: int, clean: bool, successor_timeline: int, received: int, writable: list[str],
    served_up_to: int | None,
) -> None:
    decision = sw.decide_handoff(LocalPosition(timeline, lsn, clean), successor_timeline, received, writable,
                                 served_up_to)  # fmt: skip
    if decision == sw.PROMOTE_SUCCESSOR:
        # It alone writes, on the same timeline, with every commit: those before the clean shutdown's
        # checkpoint, or, after a crash, the whole WAL its read-only standby served.
        assert not writable and successor_timeline == timeline
        if served_up_to is None:
            assert clean and received > lsn
        else:
            assert received >= served_up_to


def test_the_primary_ordinal_starts_its_primary_only_while_no_other_member_writes() -> None:
    assert sw.decide_primary_restart([]) == sw.START_PRIMARY
    assert sw.decide_primary_restart(["postgresql-sfs-1"]) == sw.REFUSE_OTHER_PRIMARY


def test_a_former_primary_shut_down_in_recovery_serves_its_wal_again() -> None:
    # A handoff that served its WAL and then failed leaves "shut down in recovery": its restartpoint
    # may lie before the end of its WAL, so the checkpoint alone never justifies a promotion.
    after_failed_handoff = LocalPosition(1, CHECKPOINT, clean=True, state="shut down in recovery")
    assert sw.decide_handoff(after_failed_handoff, 1, CHECKPOINT + 0x68, []) == sw.SERVE_OWN_WAL
