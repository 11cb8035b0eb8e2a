"""The primary ordinal holding a standby: may it stream from the writable member? (review L8)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent import designated, history
from agent.designated import decide_follow
from agent.identity import Identity

OURS, THEIRS = 7711490745716584460, 7711490745716584999


@st.composite
def positions(draw: st.DrawFn) -> tuple[history.LocalPosition, int, int, dict[int, int]]:
    """A local end of WAL, and an upstream's timeline, end and history (switch points rising)."""
    upstream_timeline = draw(st.integers(1, 5))
    points = sorted(draw(st.lists(st.integers(1, 10**9), min_size=upstream_timeline - 1,
                                  max_size=upstream_timeline - 1)))  # fmt: skip
    switches = {tl: lsn for tl, lsn in zip(range(1, upstream_timeline), points)}
    upstream_lsn = draw(st.integers(points[-1] if points else 1, 2 * 10**9))
    local = history.LocalPosition(draw(st.integers(1, 6)), draw(st.integers(1, 2 * 10**9)),
                                  record_start=draw(st.booleans()))  # fmt: skip
    return local, upstream_timeline, upstream_lsn, switches


@given(positions(), st.sampled_from([None, OURS]))
def test_it_follows_only_onto_its_own_history(seen: tuple, local_id: int | None) -> None:
    # Whatever the positions: streaming starts only when the writable member's history contains
    # every record this standby holds; a newer timeline here, a fork, or WAL past the upstream's end
    # is refused with the data untouched (never streamed over, never rewound onto the older one).
    local, timeline, lsn, switches = seen
    verdict = history.compare(local, timeline, lsn, switches)
    decision = decide_follow(local_id, OURS, verdict)
    if decision == designated.FOLLOW_WRITABLE:
        assert local.timeline <= timeline
        limit = lsn if local.timeline == timeline else switches[local.timeline]
        assert local.lsn <= limit and not (local.record_start and local.lsn == limit)
    else:
        assert decision == designated.REFUSE_DIVERGED
        assert local.timeline > timeline or local.lsn >= min(lsn, switches.get(local.timeline, lsn))


def test_another_cluster_is_refused_before_any_history() -> None:
    on_history = history.Verdict(history.ON_HISTORY, 1, "0/1", 1, "0/2", None)
    assert decide_follow(OURS, THEIRS, on_history) == designated.REFUSE_OTHER_CLUSTER
    assert decide_follow(OURS, THEIRS, None) == designated.REFUSE_OTHER_CLUSTER


def test_an_upstream_that_did_not_answer_is_never_streamed_from() -> None:
    on_history = history.Verdict(history.ON_HISTORY, 1, "0/1", 1, "0/2", None)
    assert decide_follow(OURS, None, on_history) == designated.WAIT_UNCONNECTED
    assert decide_follow(OURS, OURS, None) == designated.REFUSE_DIVERGED


def test_awaiting_promotion_it_keeps_streaming_from_the_member_it_followed() -> None:
    # Review M8/H6: with no writable member (the former primary killed mid-handoff), it streams from
    # the member it followed before, so that member's agent, serving its WAL, needs nothing from it.
    me = Identity("postgresql-sfs-1", "postgresql-sfs", 1, 1)
    before = "user=replicator passfile=/x host=postgresql-sfs-0.postgresql-svc.pg.svc.cluster.local port=5432"
    assert designated.former_upstream(before, me) == "postgresql-sfs-0"
    assert designated.former_upstream("host='postgresql-sfs-2.postgresql-svc' port=5432", me) == "postgresql-sfs-2"
    for unusable in (None, "", "host=postgresql-sfs-1.postgresql-svc", "host=elsewhere.example", "port=5432",
                     "host=postgresql-sfs-x.postgresql-svc", "host=other-sts-0.svc"):  # fmt: skip
        assert designated.former_upstream(unusable, me) is None
