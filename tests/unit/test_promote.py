"""`pg-sfs-agent promote`'s decision over what the members said: never two primaries, no silent loss."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.promote import MemberView, decide, parse_args

LOCAL = MemberView("postgresql-sfs-1", True, True, 1, "0/5000100", "0/5000100")


def standby(name: str, replayed: str) -> MemberView:
    return MemberView(name, True, True, 1, replayed, replayed)


def test_the_primary_lost_and_this_member_the_most_advanced_promotes() -> None:
    gone = MemberView("postgresql-sfs-0", False, detail="connection refused")
    others = [gone, standby("postgresql-sfs-2", "0/5000000")]
    assert decide(LOCAL, others, even_if_behind=False, assume_down=frozenset({"postgresql-sfs-0"})) is None


def test_a_member_that_resolves_but_does_not_answer_blocks_unless_named_down() -> None:
    # Review H3: a primary cut off from this member, not from its clients, still takes writes.
    # Silence is not absence: promote refuses until the operator names it as down.
    partitioned = MemberView("postgresql-sfs-0", False, detail="timeout")
    refusal = decide(LOCAL, [partitioned], even_if_behind=True)
    assert refusal is not None and "postgresql-sfs-0" in refusal and "--assume-down" in refusal
    assert decide(LOCAL, [partitioned], even_if_behind=False, assume_down=frozenset({"postgresql-sfs-0"})) is None


def test_assume_down_must_name_a_silent_member() -> None:
    answering = standby("postgresql-sfs-2", "0/5000000")
    refusal = decide(LOCAL, [answering], False, assume_down=frozenset({"postgresql-sfs-2"}))
    assert refusal is not None and "answered" in refusal
    refusal = decide(LOCAL, [answering], False, assume_down=frozenset({"postgresql-sfs-9"}))
    assert refusal is not None and "did not resolve" in refusal


def test_candidates_are_ranked_by_the_wal_they_hold_not_what_they_replayed() -> None:
    # Review H3: with ANY 1 a commit is acknowledged on a standby's flush. Pod 1 received more than
    # it replayed, pod 2 replayed less than pod 1 received: pod 1 holds the acknowledged commits.
    pod1 = MemberView("postgresql-sfs-1", True, True, 1, "0/6000000", "0/5000000")
    pod2 = MemberView("postgresql-sfs-2", True, True, 1, "0/5800000", "0/5800000")
    assert decide(pod1, [pod2], even_if_behind=False) is None
    refusal = decide(pod2, [pod1], even_if_behind=False)
    assert refusal is not None and "postgresql-sfs-1 hold(s) more WAL" in refusal


def test_a_newer_timeline_outranks_a_longer_older_one() -> None:
    newer = MemberView("postgresql-sfs-2", True, True, 2, "0/4000000", "0/4000000")
    refusal = decide(LOCAL, [newer], even_if_behind=False)
    assert refusal is not None and "postgresql-sfs-2" in refusal


def test_refused_while_another_member_accepts_writes_even_when_forced() -> None:
    primary = MemberView("postgresql-sfs-0", True, False, 1, written="0/6000000")
    for forced in (False, True):
        refusal = decide(LOCAL, [primary], even_if_behind=forced)
        assert refusal is not None and "postgresql-sfs-0 accept(s) writes" in refusal


def test_refused_when_another_standby_replayed_further_unless_told() -> None:
    ahead = standby("postgresql-sfs-2", "0/5000200")
    refusal = decide(LOCAL, [ahead], even_if_behind=False)
    assert refusal is not None and "postgresql-sfs-2 hold(s) more WAL" in refusal
    assert decide(LOCAL, [ahead], even_if_behind=True) is None


def test_a_member_that_is_not_a_running_standby_is_not_promoted() -> None:
    assert decide(MemberView("postgresql-sfs-1", False, detail="postgres is not running"), [], False) is not None
    assert decide(MemberView("postgresql-sfs-1", True, False, 2), [], False) is not None


@given(st.lists(st.tuples(st.booleans(), st.sampled_from([None, True, False]), st.integers(0, 2**32 - 1)), max_size=5),
       st.booleans())  # fmt: skip
def test_never_promotes_beside_a_reachable_primary(members: list[tuple[bool, bool | None, int]], forced: bool) -> None:
    others = [MemberView(f"m{i}", reach, rec, 1, None, f"0/{lsn:X}") for i, (reach, rec, lsn) in enumerate(members)]
    if decide(LOCAL, others, even_if_behind=forced) is None:
        assert not any(o.reachable and o.in_recovery is False for o in others)


MEMBER = st.tuples(
    st.booleans(), st.sampled_from([None, True, False]), st.integers(1, 3), st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1), st.booleans(),
)


@given(st.lists(MEMBER, max_size=4), st.integers(1, 3), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_a_promotion_loses_no_wal_another_member_holds_and_never_happens_beside_a_silent_one(
    members: list[tuple[bool, bool | None, int, int, int, bool]], tli: int, received: int, replayed: int
) -> None:
    local = MemberView("me", True, True, tli, f"0/{received:X}", f"0/{replayed:X}")
    # A member that answered always said whether it is in recovery.
    others = [MemberView(f"m{i}", reach, rec if rec is not None or not reach else True, t, f"0/{r:X}", f"0/{p:X}")
              for i, (reach, rec, t, r, p, _) in enumerate(members)]  # fmt: skip
    down = frozenset(f"m{i}" for i, (reach, *_, named) in enumerate(members) if named and not reach)
    if decide(local, others, even_if_behind=False, assume_down=down) is None:
        for o in others:
            # Every member either answered (a standby holding no more WAL than this one) or was named down.
            assert (o.reachable and o.in_recovery is True) or o.member in down
            if o.reachable:
                assert (o.timeline, max(int(o.received[2:], 16), int(o.replayed[2:], 16))) <= (
                    tli, max(received, replayed))


def test_promote_help_and_bad_flags_promote_nothing() -> None:
    with pytest.raises(SystemExit) as helped:
        parse_args(["--help"])
    assert helped.value.code == 0
    with pytest.raises(ConfigError) as bad:
        parse_args(["--force"])
    assert "unrecognized arguments: --force" in bad.value.message
    assert parse_args(["--assume-down", "postgresql-sfs-0", "--dry-run"]).assume_down == ["postgresql-sfs-0"]
