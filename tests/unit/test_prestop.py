"""The preStop hook's decision: hand the role over before the pod goes, only in a switchover's rollout."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent import prestop
from agent.prestop import PeerView, decide

BORN = 1000.0


def standby(ordinal: int, names: int, born: float, timeline: int = 1, received: str | None = "0/5000000",
            reachable: bool = True) -> PeerView:  # fmt: skip
    return PeerView(f"postgresql-sfs-{ordinal}", ordinal, reachable, f"198.18.0.{ordinal + 10}", True, names, born,
                    timeline, received)  # fmt: skip


def test_a_rollout_that_moved_the_ordinal_hands_over_to_the_new_primary_ordinal() -> None:
    # 0 -> 1: pods 2 and 1 were rolled first (younger, their template names 1).
    peers = [standby(1, 1, BORN + 20), standby(2, 1, BORN + 10)]
    assert decide(0, 0, True, BORN, 1, peers) == (prestop.HAND_OFF, peers[0])
    # 1 -> 0: pod 2 rolled first; pod 0, the successor, is still on the old template, and younger than
    # pod 1 (the previous rollout made it last). The youngest pod's template counts.
    peers = [standby(0, 1, BORN + 5), standby(2, 0, BORN + 30)]
    assert decide(1, 1, True, BORN, 1, peers) == (prestop.HAND_OFF, peers[0])


def test_anything_else_hands_nothing_over() -> None:
    younger_same = [standby(1, 0, BORN + 20), standby(2, 0, BORN + 10)]
    assert decide(0, 0, True, BORN, 1, younger_same)[0] == prestop.NO_SWITCHOVER  # a plain rolling restart
    older_other = [standby(1, 1, BORN - 20), standby(2, 1, BORN - 10)]
    assert decide(0, 0, True, BORN, 1, older_other)[0] == prestop.NO_SWITCHOVER  # this pod is the younger one
    assert decide(0, 1, True, BORN, 1, younger_same)[0] == prestop.NOT_PRIMARY  # a replica's pod
    assert decide(0, 0, False, BORN, 1, younger_same)[0] == prestop.NOT_PRIMARY  # still a standby
    moved = [standby(1, 1, BORN + 20), standby(2, 1, BORN + 10)]
    assert decide(0, 0, True, None, 1, moved)[0] == prestop.POD_AGE_UNKNOWN  # no POD_UID
    other_timeline = [standby(1, 1, BORN + 20, timeline=2), standby(2, 1, BORN + 10)]
    assert decide(0, 0, True, BORN, 1, other_timeline)[0] == prestop.SUCCESSOR_NOT_READY
    silent = [standby(1, 1, BORN + 20, reachable=False), standby(2, 1, BORN + 30)]
    assert decide(0, 0, True, BORN, 1, silent)[0] == prestop.PEERS_SILENT
    # A silent third member may be a primary promoted by hand and cut off from here: not now.
    third_silent = [standby(1, 1, BORN + 20), standby(2, 1, BORN + 30, reachable=False)]
    assert decide(0, 0, True, BORN, 1, third_silent)[0] == prestop.PEERS_SILENT
    rival = [standby(1, 1, BORN + 20), PeerView("postgresql-sfs-2", 2, True, "198.18.0.12", False, 1, BORN + 10, 2)]
    assert decide(0, 0, True, BORN, 1, rival)[0] == prestop.RIVAL_WRITABLE


PEERS = st.lists(
    st.builds(PeerView, member=st.just("m"), ordinal=st.integers(0, 3), reachable=st.booleans(),
              address=st.sampled_from([None, "198.18.0.9"]), in_recovery=st.sampled_from([None, True, False]),
              names=st.sampled_from([None, 0, 1, 2, 3]), born=st.sampled_from([None, 900.0, 1000.0, 1100.0, 1200.0]),
              timeline=st.sampled_from([None, 1, 2]), received=st.sampled_from([None, "0/3000000"])),
    max_size=4,
)


@given(own=st.integers(0, 3), names=st.integers(0, 3), writable=st.booleans(),
       born=st.sampled_from([None, 1000.0]), timeline=st.integers(1, 2), peers=PEERS)  # fmt: skip
def test_a_handoff_goes_only_to_a_standby_on_this_timeline_and_never_beside_another_primary(
    own: int, names: int, writable: bool, born: float | None, timeline: int, peers: list[PeerView]
) -> None:
    decision, successor = decide(own, names, writable, born, timeline, peers)
    if decision != prestop.HAND_OFF:
        return
    assert successor is not None
    assert names == own and writable  # only a primary whose own template names it
    assert all(p.reachable and p.in_recovery is not False for p in peers)  # every member answered, none writable
    assert successor.in_recovery is True and successor.timeline == timeline and successor.ordinal != own
    youngest = max((p for p in peers if p.reachable and p.names is not None and p.born is not None),
                   key=lambda p: p.born or 0.0)  # fmt: skip
    assert born is not None and (youngest.born or 0.0) > born and youngest.names == successor.ordinal


def test_the_wal_end_to_hand_over_is_the_last_record_end_not_the_next_page_header() -> None:
    seg = 16 * 1024 * 1024
    assert prestop.record_end(0x5000028, seg) == 0x5000000  # a segment's first page: long header
    assert prestop.record_end(0x5002018, seg) == 0x5002000  # any other page: short header
    assert prestop.record_end(0x50021A0, seg) == 0x50021A0  # mid-page: the insert position itself
