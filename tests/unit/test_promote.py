"""`pg-sfs-agent promote`'s decision over what the members said: never two primaries, no silent loss."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.promote import MemberView, decide

LOCAL = MemberView("postgresql-sfs-1", True, True, 1, "0/5000100", "0/5000100")


def standby(name: str, replayed: str) -> MemberView:
    return MemberView(name, True, True, 1, replayed, replayed)


def test_the_primary_lost_and_this_member_the_most_advanced_promotes() -> None:
    gone = MemberView("postgresql-sfs-0", False, detail="connection refused")
    assert decide(LOCAL, [gone, standby("postgresql-sfs-2", "0/5000000")], even_if_behind=False) is None


def test_refused_while_another_member_accepts_writes_even_when_forced() -> None:
    primary = MemberView("postgresql-sfs-0", True, False, 1, written="0/6000000")
    for forced in (False, True):
        refusal = decide(LOCAL, [primary], even_if_behind=forced)
        assert refusal is not None and "postgresql-sfs-0 accept(s) writes" in refusal


def test_refused_when_another_standby_replayed_further_unless_told() -> None:
    ahead = standby("postgresql-sfs-2", "0/5000200")
    refusal = decide(LOCAL, [ahead], even_if_behind=False)
    assert refusal is not None and "postgresql-sfs-2 replayed further" in refusal
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
