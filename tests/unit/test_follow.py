"""What a restarting replica does once it has seen the primary: every combination of observations."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import follow, history, replication
from agent.follow import decide_restart

OURS, THEIRS = 7711490745716584460, 7711490745716584999


def verdict(outcome: str) -> history.Verdict:
    return history.Verdict(outcome, 1, "0/5000000", 1, "0/6000000", None)


HISTORIES = [None, *(verdict(o) for o in (history.ON_HISTORY, history.AHEAD_OF_PRIMARY, history.FORKED,
                                           history.NEWER_TIMELINE, history.NOT_IN_HISTORY))]  # fmt: skip
SLOTS = [None, "reserved", "extended", "unreserved", "unknown", replication.LOST]


@pytest.mark.parametrize(
    ("local", "seen", "on_divergence"), list(itertools.product([None, OURS], HISTORIES, ["refuse", "reclone"]))
)
@pytest.mark.parametrize("slot", SLOTS)
def test_every_combination(
    local: int | None, seen: history.Verdict | None, on_divergence: str, slot: str | None
) -> None:
    decided = decide_restart(local, OURS, seen, slot, on_divergence)  # wal_kept not known
    if seen is not None and seen.outcome == history.NEWER_TIMELINE:
        assert decided == follow.REFUSE_DIVERGED
    elif seen is not None and not seen.may_follow:
        assert decided == (follow.RECLONE_DIVERGED if on_divergence == "reclone" else follow.REFUSE_DIVERGED)
    elif slot == replication.LOST:
        assert decided == follow.RECLONE_LOST_SLOT
    elif slot is None:
        assert decided == follow.CREATE_SLOT
    else:
        assert decided == follow.START


@pytest.mark.parametrize("slot", SLOTS)
@pytest.mark.parametrize("on_divergence", ["refuse", "reclone"])
def test_another_cluster_is_refused_whatever_else_was_seen(slot: str | None, on_divergence: str) -> None:
    # Never cloned over: another cluster's data is not "diverged", it is someone else's.
    for seen in HISTORIES:
        assert decide_restart(THEIRS, OURS, seen, slot, on_divergence) == follow.REFUSE_OTHER_CLUSTER


@pytest.mark.parametrize("slot", SLOTS)
@pytest.mark.parametrize("clean", [True, False])
@pytest.mark.parametrize("seen", HISTORIES[1:])
def test_a_former_primary_rejoins_is_rewound_or_clones_when_its_slot_was_lost(
    slot: str | None, clean: bool, seen: history.Verdict
) -> None:
    decided = decide_restart(OURS, OURS, seen, slot, "refuse", former_primary=True, clean=clean)
    if seen.outcome == history.NEWER_TIMELINE:
        assert decided == follow.REFUSE_DIVERGED
    elif not (seen.may_follow and clean):
        assert decided == follow.REWIND
    elif slot == replication.LOST:
        # The primary removed WAL it would need: rejoining would stream nothing, forever.
        assert decided == follow.RECLONE_LOST_SLOT
    else:
        assert decided == follow.REJOIN


@pytest.mark.parametrize("seen", HISTORIES[1:])
def test_a_former_primary_stopped_without_a_checkpoint_rejoins_when_its_wal_end_is_on_the_history(
    seen: history.Verdict,
) -> None:
    # Stopped at once after a preStop handoff (or killed): the position is the end of its WAL, read with
    # pg_waldump. On the history it rejoins as it is (its recovery replays that WAL); else it is rewound.
    decided = decide_restart(OURS, OURS, seen, "reserved", "refuse", former_primary=True, clean=False, end_known=True)
    if seen.outcome == history.NEWER_TIMELINE:
        assert decided == follow.REFUSE_DIVERGED
    else:
        assert decided == (follow.REJOIN if seen.may_follow else follow.REWIND)
    # Only pg_control's position: not proof of where its WAL ends, so rewound as before.
    assert decide_restart(OURS, OURS, seen, "reserved", "refuse", former_primary=True, clean=False) in (
        follow.REWIND, follow.REFUSE_DIVERGED)


@given(
    former=st.booleans(), clean=st.booleans(), slot=st.sampled_from(SLOTS),
    on_divergence=st.sampled_from(["refuse", "reclone"]), local_timeline=st.integers(1, 6),
    primary_timeline=st.integers(1, 6), local_lsn=st.integers(0, 2**40), primary_lsn=st.integers(0, 2**40),
    switches=st.dictionaries(st.integers(1, 5), st.integers(0, 2**40)), record_start=st.booleans(),
)  # fmt: skip
def test_the_newer_timeline_never_loses(
    former: bool, clean: bool, slot: str | None, on_divergence: str, local_timeline: int, primary_timeline: int,
    local_lsn: int, primary_lsn: int, switches: dict[int, int], record_start: bool,
) -> None:
    # Review H2: a member whose timeline is newer than the primary's holds the newest writes. No
    # decision rewinds it onto the older timeline or moves its data aside for a clone of the older one.
    local = history.LocalPosition(local_timeline, local_lsn, clean, record_start=record_start)
    seen = history.compare(local, primary_timeline, primary_lsn, switches)
    decided = decide_restart(OURS, OURS, seen, slot, on_divergence, former_primary=former, clean=clean)
    if local_timeline > primary_timeline:
        assert decided == follow.REFUSE_DIVERGED
    if decided in (follow.REWIND, follow.RECLONE_DIVERGED, follow.RECLONE_LOST_SLOT):
        assert local_timeline <= primary_timeline


def test_a_former_primary_with_a_newer_timeline_is_refused_not_rewound() -> None:
    # Review H2's one-line reproduction: this was `rewind`, which put the promoted member back onto
    # the old timeline and dropped every commit it had acknowledged since.
    newer = history.Verdict(history.NEWER_TIMELINE, 2, "0/6000000", 1, "0/5000000", None)
    assert decide_restart(OURS, OURS, newer, None, "reclone", former_primary=True) == follow.REFUSE_DIVERGED


@pytest.mark.parametrize("former", [False, True])
def test_no_slot_and_the_wal_gone_clones_again_instead_of_starting_to_stream_nothing(former: bool) -> None:
    # Review M6: a member away during a switchover finds no slot on the new primary. A new slot
    # reserves from the primary's current position: if the WAL it resumes from is gone, it would
    # start and never stream. Unknown (None) keeps today's way: create the slot.
    on = verdict(history.ON_HISTORY)
    assert decide_restart(OURS, OURS, on, None, "refuse", former_primary=former, wal_kept=False) == \
        follow.RECLONE_LOST_SLOT  # fmt: skip
    kept = decide_restart(OURS, OURS, on, None, "refuse", former_primary=former, wal_kept=True)
    unknown = decide_restart(OURS, OURS, on, None, "refuse", former_primary=former, wal_kept=None)
    assert kept == unknown == (follow.REJOIN if former else follow.CREATE_SLOT)


@pytest.mark.parametrize("former", [False, True])
def test_an_invalidated_slot_whose_wal_is_still_there_is_made_again_not_cloned(former: bool) -> None:
    # Review M1: a slot left to go stale (on a demoted primary, say) is `lost`, yet the member is
    # exactly at the switch point and the primary has that WAL: recreate the slot, copy nothing.
    on = verdict(history.ON_HISTORY)
    decided = decide_restart(OURS, OURS, on, replication.LOST, "refuse", former_primary=former, wal_kept=True)
    assert decided == (follow.REJOIN if former else follow.CREATE_SLOT)
    for unknown_or_gone in (None, False):
        assert decide_restart(OURS, OURS, on, replication.LOST, "refuse", former_primary=former,
                              wal_kept=unknown_or_gone) == follow.RECLONE_LOST_SLOT  # fmt: skip
