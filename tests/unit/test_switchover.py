"""The switchover's pure decisions: whom the successor follows, and when the former primary promotes it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import discovery, ownwal, replication
from agent import switchover as sw
from agent.context import Context, World
from agent.errors import CommandFailed, SwitchoverBlocked
from agent.history import LocalPosition, format_lsn
from agent.runner import Runner
from tests.unit.conftest import FakeClock, ListLogger

CHECKPOINT = 0x3000028
END = 0x3005000


def test_the_successor_follows_the_one_writable_member() -> None:
    assert sw.decide_designated(["postgresql-sfs-0"]) == sw.FOLLOW_WRITABLE
    assert sw.decide_designated([]) == sw.AWAIT_PROMOTION
    assert sw.decide_designated(["postgresql-sfs-0", "postgresql-sfs-2"]) == sw.REFUSE_MANY_WRITABLE


def test_promote_once_the_successor_received_the_wal_to_its_end() -> None:
    assert sw.decide_handoff(1, END, 1, END, [], serving=False) == sw.PROMOTE_SUCCESSOR
    assert sw.decide_handoff(1, END, 1, END + 0x1000, [], serving=True) == sw.PROMOTE_SUCCESSOR
    assert sw.decide_handoff(1, END, 1, END - 1, [], serving=True) == sw.WAIT_FOR_SUCCESSOR


def test_never_promote_beside_a_writable_member_or_across_timelines() -> None:
    assert sw.decide_handoff(1, END, 1, END, ["postgresql-sfs-2"], serving=False) == sw.REFUSE_WRITABLE
    assert sw.decide_handoff(1, END, 2, END, [], serving=False) == sw.REFUSE_OTHER_TIMELINE
    # Found by tests/unit/test_role_model.py: a member promoted by hand meanwhile, on a newer timeline.
    assert sw.decide_handoff(1, END, 1, END, [], False, ["postgresql-sfs-2 (timeline 2)"]) == sw.REFUSE_NEWER_TIMELINE


def test_a_successor_that_lacks_wal_is_served_it_killed_or_shut_down_cleanly() -> None:
    # Review H1: a primary SIGKILLed after its shutdown checkpoint (its walsenders still draining to a
    # lagging successor) is "shut down" by pg_control, yet its successor lacks its tail. Whatever
    # the state, a successor short of the end is served that WAL, never promoted, never waited on
    # without a source.
    assert sw.decide_handoff(1, END, 1, CHECKPOINT - 0x100000, [], serving=False) == sw.SERVE_OWN_WAL
    assert sw.decide_handoff(1, END, 1, END - 1, [], serving=False) == sw.SERVE_OWN_WAL


@given(
    timeline=st.integers(1, 5),
    wal_end=st.integers(0, 2**40),
    successor_timeline=st.integers(1, 5),
    received=st.integers(0, 2**40),
    writable=st.lists(st.sampled_from(["postgresql-sfs-1", "postgresql-sfs-2"]), max_size=2),
    serving=st.booleans(),
    newer=st.lists(st.sampled_from(["postgresql-sfs-2 (timeline 3)"]), max_size=1),
)
def test_a_promotion_never_loses_a_commit_nor_makes_two_primaries(
    timeline: int, wal_end: int, successor_timeline: int, received: int, writable: list[str], serving: bool,
    newer: list[str],
) -> None:
    decision = sw.decide_handoff(timeline, wal_end, successor_timeline, received, writable, serving, newer)
    if decision == sw.PROMOTE_SUCCESSOR:
        # It alone writes, on the same timeline, with the former primary's whole WAL, and no member
        # holds a newer timeline (writes promoted by hand that neither has).
        assert not writable and not newer and successor_timeline == timeline and received >= wal_end
    if decision == sw.WAIT_FOR_SUCCESSOR:
        assert serving, "a successor short of the end waits only while the WAL is served to it"


# -- the handoff over a fake world: the successor's and the own server's positions as time goes on --


class FakeOwnWal:
    """Stands in for the own-WAL postgres (a real one runs in the e2e tests): records what was done."""

    def __init__(self, world: FakeWorld) -> None:
        self.world = world
        self.calls: list[str] = []
        self.opened = world.opens  # whether it ever accepted connections
        self.recovered_end: int | None = None

    @contextlib.contextmanager
    def serving(self) -> Iterator[Callable[[], None]]:
        self.calls.append("serve")
        if self.world.recovers_to is not None:  # recovered alone first: its checkpoints follow the end
            self.recovered_end = self.world.end = self.world.recovers_to
        self.world.serving = True
        try:
            yield lambda: None
        finally:
            self.world.serving = False
            self.calls.append("stop")

    def handed_over(self) -> None:
        self.calls.append("handed_over")

    def give_back(self) -> None:
        self.calls.append("give_back")


@dataclass
class FakeWorld:
    """The successor streams the former primary's WAL only while it is served, `rate` bytes a poll."""

    received: int
    end: int
    rate: int
    serving: bool = False
    promoted_at: list[int] = field(default_factory=list)
    pointed: list[str | None] = field(default_factory=list)
    imposter: bool = False  # the successor's address answers as another member (a stale record)
    opens: bool = True  # the own server opens hot standby (review M8: not with an overflowed snapshot)
    recovers_to: int | None = None  # it finished crash recovery alone, its WAL then ending here
    unreadable: bool = False  # the successor takes no connection until it has been served (review M8)

    def identify(self) -> replication.Attempt:
        if self.unreadable:
            if not self.serving:
                return replication.Attempt(replication.STARTING, "the database system is not yet accepting connections")
            self.unreadable = False  # the served WAL let its hot standby open; it answers from the next poll
            return replication.Attempt(replication.STARTING, "the database system is not yet accepting connections")
        if self.serving and self.opens:
            self.received = min(self.end, self.received + self.rate)
        info = replication.SystemInfo(1, 1, format_lsn(self.received), not self.promoted_at, 140005)
        return replication.Attempt(replication.IN_RECOVERY, info=info)

    def promote(self, *args: Any) -> bool | None:
        if self.imposter:
            return None
        self.promoted_at.append(self.received)
        return True

    def redirect(self, *args: Any) -> None:
        if self.unreadable:
            raise RuntimeError("connection failed: FATAL:  the database system is not yet accepting connections")
        self.pointed.append(args[-1])


def _handoff(make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path,
             world: FakeWorld) -> tuple[bool, FakeOwnWal]:  # fmt: skip
    config = make_config(POD_NAME="postgresql-sfs-0", PGSFS_PRIMARY_ORDINAL="1", PGDATA=str(tmp_path / "pgdata"))
    nothing = lambda name, rdtype: discovery.DnsAnswer(name, rdtype, discovery.NO_RECORD, negative_ttl=5)  # noqa: E731
    ctx = Context(config, cast(Any, None), World(Runner(), nothing, clock=clock, sleep=clock.sleep), log)
    own = FakeOwnWal(world)
    served = sw.Handoff(ctx, promote=world.promote, redirect=world.redirect).run(
        "198.18.0.11", world.identify, LocalPosition(1, CHECKPOINT, clean=False), world.end, cast(Any, own)
    )
    return served, own


def test_a_killed_primary_hands_over_its_whole_wal_however_long_replay_takes(
    make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path
) -> None:
    # Review C1: the own server opens hot standby at the checkpoint's redo and replays for seconds;
    # its moving replay pointer once stood in for the end of WAL, so the first poll promoted the
    # successor without the tail. The end is fixed before serving: promoted only with all of it.
    world = FakeWorld(received=0x8000000, end=0x9000000, rate=0x100000)
    served, own = _handoff(make_config, log, clock, tmp_path, world)
    assert served and world.promoted_at == [0x9000000]
    assert own.calls == ["serve", "stop", "handed_over"]
    # Review H6: the successor may have started connected to nobody; it is pointed here, then back.
    [here, back] = world.pointed
    assert here is not None and "host='postgresql-sfs-0." in here and "-handoff" in here and back is None
    [promoted] = log.events("switchover_promoted")
    assert promoted["wal_end"] == "0/9000000" and promoted["served_own_wal"] is True


def test_a_successor_with_every_record_is_promoted_without_serving(
    make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path
) -> None:
    world = FakeWorld(received=0x9000000, end=0x9000000, rate=0)
    served, own = _handoff(make_config, log, clock, tmp_path, world)
    assert not served and own.calls == [] and world.promoted_at == [0x9000000]


# Review M8 (opens=False): WAL ending with a transaction of > 64 open subtransactions keeps hot
# standby closed, so the own server never serves; the refusal says so and gives the way out.
@pytest.mark.parametrize(("opens", "said", "hint"), [
    (True, "0/9000000", "pg-sfs-agent promote"),
    (False, "never accepted connections within PGSFS_SWITCHOVER_TIMEOUT (hot standby could not open",
     "set the primary ordinal back"),
])  # fmt: skip
def test_a_successor_that_never_gets_the_tail_is_not_promoted_and_the_data_is_given_back(
    make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path, opens: bool, said: str,
    hint: str,
) -> None:
    world = FakeWorld(received=0x8000000, end=0x9000000, rate=0, opens=opens)
    with pytest.raises(SwitchoverBlocked) as raised:
        _handoff(make_config, log, clock, tmp_path, world)
    assert world.promoted_at == [] and said in raised.value.message and hint in raised.value.hint
    assert world.serving is False and raised.value.fields["decision"] == sw.WAIT_FOR_SUCCESSOR


def test_after_a_recovery_alone_the_successor_gets_the_new_end_too(
    make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path
) -> None:
    # Review M8: the own server recovered alone (single-user), appending its checkpoints: promoted
    # only once the successor has those too, so this member rejoins it on its history, unrewound.
    world = FakeWorld(received=0x8000000, end=0x9000000, rate=0x100000, recovers_to=0x9000200)
    served, _ = _handoff(make_config, log, clock, tmp_path, world)
    assert served and world.promoted_at == [0x9000200]
    [promoted] = log.events("switchover_promoted")
    assert promoted["wal_end"] == "0/9000200"


def test_a_successor_that_takes_no_connection_is_served_and_promoted_once_it_answers(
    make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path
) -> None:
    # Review M8 with the successor restarted after the kill: its own hot standby waits for WAL only
    # the former primary has, so it answers nothing. Served first (it follows this member already),
    # pointed here once it answers, promoted only once it has every record.
    world = FakeWorld(received=0x8000000, end=0x9000000, rate=0x400000, unreadable=True)
    served, own = _handoff(make_config, log, clock, tmp_path, world)
    assert served and world.promoted_at == [0x9000000] and own.calls == ["serve", "stop", "handed_over"]
    assert len(log.events("successor_not_pointed")) == 1
    [here, back] = world.pointed
    assert here is not None and back is None


def test_an_unreadable_successor_is_never_promoted_and_never_beside_a_writable_member() -> None:
    assert sw.decide_handoff(1, END, None, None, [], serving=False) == sw.SERVE_OWN_WAL
    assert sw.decide_handoff(1, END, None, None, [], serving=True) == sw.WAIT_FOR_SUCCESSOR
    assert sw.decide_handoff(1, END, None, None, ["postgresql-sfs-2"], serving=False) == sw.REFUSE_WRITABLE
    assert sw.decide_handoff(1, END, None, None, [], False, ["postgresql-sfs-2 (timeline 2)"]) == \
        sw.REFUSE_NEWER_TIMELINE


@pytest.mark.parametrize(("answered", "log_text", "consistent_for", "expected"), [
    (True, "", None, "opened"),
    (False, "", None, "not_opened"),
    (False, "LOG:  consistent recovery state reached at 0/1528B88", 4.9, "not_opened"),
    (False, "LOG:  consistent recovery state reached at 0/1528B88", 5.0, "snapshot_pending"),
    (False, "consistent recovery state reached\nready to accept read-only connections", 30.0, "not_opened"),
])  # fmt: skip
def test_a_standby_that_replayed_everything_but_never_opens_is_told_apart(
    answered: bool, log_text: str, consistent_for: float | None, expected: str
) -> None:
    assert ownwal.decide_opening(answered, log_text.replace("\\n", "\n"), consistent_for) == expected


def test_the_primary_ordinal_starts_its_primary_only_while_no_other_member_writes() -> None:
    assert sw.decide_primary_restart([]) == sw.START_PRIMARY
    assert sw.decide_primary_restart(["postgresql-sfs-1"]) == sw.REFUSE_OTHER_PRIMARY


def test_the_primary_ordinal_never_starts_beside_a_newer_timeline() -> None:
    # Review H2: pod 1 was promoted while pod 0 was away, then restarted: it accepts no writes now
    # (its agent announces what it holds), yet its timeline is newer. Starting pod 0 would fork.
    assert sw.decide_primary_restart([], ["postgresql-sfs-1 (timeline 2)"]) == sw.REFUSE_NEWER_TIMELINE


NAMES = st.lists(st.sampled_from(["a", "b"]), max_size=2)


@given(writable=NAMES, newer=NAMES)
def test_the_primary_starts_only_when_no_member_is_writable_or_newer(writable: list[str], newer: list[str]) -> None:
    started = sw.decide_primary_restart(writable, newer) == sw.START_PRIMARY
    assert started == (not writable and not newer)


def test_the_server_at_the_successors_address_must_be_the_successor(
    make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path
) -> None:
    # Review L5: a stale record and a reused address must not promote another member.
    world = FakeWorld(received=0x9000000, end=0x9000000, rate=0, imposter=True)
    with pytest.raises(CommandFailed) as raised:
        _handoff(make_config, log, clock, tmp_path, world)
    assert "is not postgresql-sfs-1" in raised.value.message and world.promoted_at == []
