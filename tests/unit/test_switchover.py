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


def test_never_promote_beside_a_writable_member_after_a_crash_or_across_timelines() -> None:
    clean = LocalPosition(1, CHECKPOINT, clean=True)
    assert sw.decide_handoff(clean, 1, CHECKPOINT + 0x68, ["postgresql-sfs-2"]) == sw.REFUSE_WRITABLE
    assert sw.decide_handoff(LocalPosition(1, CHECKPOINT, clean=False), 1, CHECKPOINT + 0x68, []) == sw.REFUSE_UNCLEAN
    assert sw.decide_handoff(clean, 2, CHECKPOINT + 0x68, []) == sw.REFUSE_OTHER_TIMELINE


@given(
    timeline=st.integers(1, 5),
    lsn=st.integers(0, 2**40),
    clean=st.booleans(),
    successor_timeline=st.integers(1, 5),
    received=st.integers(0, 2**40),
    writable=st.lists(st.sampled_from(["postgresql-sfs-1", "postgresql-sfs-2"]), max_size=2),
)
def test_a_promotion_never_loses_a_commit_nor_makes_two_primaries(
    timeline: int, lsn: int, clean: bool, successor_timeline: int, received: int, writable: list[str]
) -> None:
    decision = sw.decide_handoff(LocalPosition(timeline, lsn, clean), successor_timeline, received, writable)
    if decision == sw.PROMOTE_SUCCESSOR:
        # Every commit precedes the shutdown checkpoint: the successor has them all, and it alone writes.
        assert not writable and clean and successor_timeline == timeline and received > lsn


def test_the_primary_ordinal_starts_its_primary_only_while_no_other_member_writes() -> None:
    assert sw.decide_primary_restart([]) == sw.START_PRIMARY
    assert sw.decide_primary_restart(["postgresql-sfs-1"]) == sw.REFUSE_OTHER_PRIMARY
