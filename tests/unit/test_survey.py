"""The re-init guard: judged over every combination of answers, surveyed with fake DNS and members."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent import announce, discovery, replication, survey
from agent.survey import ABSENT, EMPTY, HOLDS_DATA, SILENT, Member

OLD = 7711490745716584460
OTHER = 7711490745716584999
STATES = st.sampled_from([HOLDS_DATA, EMPTY, SILENT, ABSENT])
IDS = st.sampled_from([None, OLD, OTHER])


def fqdn(n: int) -> str:
    return f"postgresql-sfs-{n}.postgresql-svc.pg.svc.cluster.local."


# -- judging -----------------------------------------------------------------------------------


def test_nobody_else_initialises() -> None:
    verdict = survey.judge([Member("b", ABSENT), Member("c", EMPTY)], [], None, None)
    assert verdict.decision == survey.INIT and verdict.overridden is None


def test_a_holder_refuses_even_when_the_survey_is_incomplete() -> None:
    verdict = survey.judge([Member("b", HOLDS_DATA, OLD)], ["c"], "timeout", None)
    assert verdict.decision == survey.REFUSE_HOLDERS


def test_dns_down_refuses_as_incomplete() -> None:
    assert survey.judge([], [], "timeout", None).decision == survey.INCOMPLETE


def test_a_silent_member_refuses_as_incomplete() -> None:
    assert survey.judge([Member("b", SILENT)], [], None, None).decision == survey.INCOMPLETE


def test_the_override_gives_up_only_the_cluster_it_names() -> None:
    assert survey.judge([Member("b", HOLDS_DATA, OLD)], [], None, OLD).decision == survey.INIT
    assert survey.judge([Member("b", HOLDS_DATA, OLD)], [], None, OLD).overridden == OLD
    assert survey.judge([Member("b", HOLDS_DATA, OTHER)], [], None, OLD).decision == survey.REFUSE_HOLDERS
    # Named but nobody holds it any more: nothing is overridden (the variable is spent).
    assert survey.judge([Member("b", EMPTY)], [], None, OLD).overridden is None


@given(st.lists(st.tuples(STATES, IDS), max_size=6), st.booleans(), st.booleans(), st.sampled_from([None, OLD]))
def test_initialises_only_with_a_complete_survey_and_no_holder_of_another_cluster(
    answers: list[tuple[str, int | None]], unchecked: bool, dns_down: bool, override: int | None
) -> None:
    members = [Member(f"m{i}", state, sid if state == HOLDS_DATA else None) for i, (state, sid) in enumerate(answers)]
    verdict = survey.judge(members, ["x"] if unchecked else [], "down" if dns_down else None, override)
    complete = not unchecked and not dns_down and all(m.state != SILENT for m in members)
    given_up = (override,) if override is not None else ()
    foreign = [m for m in members if m.state == HOLDS_DATA and m.system_identifier not in given_up]
    assert (verdict.decision == survey.INIT) == (complete and not foreign)
    if foreign:
        assert verdict.decision == survey.REFUSE_HOLDERS


# -- classifying answers -----------------------------------------------------------------------


def test_answers_tell_what_a_member_holds() -> None:
    info = replication.SystemInfo(OLD, 1, "0/3000000", True, 150000)
    assert survey.classify("b", replication.Attempt(replication.IN_RECOVERY, info=info)).system_identifier == OLD
    agent_says = announce.holds_message(OLD, "checking the primary")
    assert survey.classify("b", replication.Attempt(replication.STARTING, agent_says)).state == HOLDS_DATA
    empty_says = announce.empty_message("waiting to clone")
    assert survey.classify("b", replication.Attempt(replication.STARTING, empty_says)).state == EMPTY
    assert survey.classify("b", replication.Attempt(replication.BAD_PASSWORD)).state == HOLDS_DATA
    assert survey.classify("b", replication.Attempt(replication.STARTING, "starting up")).state == HOLDS_DATA
    assert survey.classify("b", replication.Attempt(replication.REFUSED)).state == SILENT
    assert survey.classify("b", replication.Attempt(replication.TIMEOUT)).state == SILENT


# -- surveying ---------------------------------------------------------------------------------


class FakeWorld:
    """DNS records and members' answers that change over (fake) time."""

    def __init__(self, records: dict[str, str], answers: dict[str, list[replication.Attempt]]) -> None:
        self.now = 0.0
        self.records = records
        self.answers = answers
        self.asked: list[tuple[str, str]] = []
        self.dns_down = False
        # name -> the fake time its record is published (a pod still Pending until then), and its address.
        self.appear: dict[str, float] = {}
        self.later: dict[str, str] = {}
        self.expected = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def lookup(self, name: str, rdtype: str) -> discovery.DnsAnswer:
        self.asked.append((name, rdtype))
        self.now += 0.01
        for appearing, at in list(self.appear.items()):
            if self.now >= at:
                del self.appear[appearing]
                self.records[appearing] = self.later[appearing]
        if self.dns_down:
            return discovery.DnsAnswer(name, rdtype, discovery.DNS_UNREACHABLE, detail="timeout")
        if rdtype == "AAAA" and name in self.records and ":" in self.records[name]:
            return discovery.DnsAnswer(name, rdtype, discovery.FOUND, (self.records[name],))
        if rdtype == "A" and name in self.records and ":" not in self.records[name]:
            return discovery.DnsAnswer(name, rdtype, discovery.FOUND, (self.records[name],))
        outcome = discovery.NO_DATA if name in self.records else discovery.NO_RECORD
        return discovery.DnsAnswer(name, rdtype, outcome, negative_ttl=5)

    def identify(self, name: str, address: str, budget: float) -> replication.Attempt:
        self.now += 0.1
        queue = self.answers[name]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def survey(self) -> survey.Survey:
        return survey.Survey(self.lookup, self.identify, self.clock, self.sleep, fqdn(0), fqdn, expected=self.expected)


def test_a_replica_that_starts_its_postgres_later_is_still_found() -> None:
    silent = replication.Attempt(replication.REFUSED)
    holder = replication.Attempt(replication.STARTING, announce.holds_message(OLD, "checking the primary"))
    world = FakeWorld({fqdn(1): "198.18.0.11"}, {fqdn(1): [silent, silent, silent, holder]})
    peers = world.survey()
    unchecked = peers.run([], 30, stop_early=True, on_poll=lambda: None)
    verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, None)
    assert verdict.decision == survey.REFUSE_HOLDERS and world.now < 10


def test_a_member_that_never_says_what_it_holds_makes_the_survey_incomplete_at_the_deadline() -> None:
    world = FakeWorld({fqdn(1): "198.18.0.11"}, {fqdn(1): [replication.Attempt(replication.REFUSED)]})
    peers = world.survey()
    unchecked = peers.run([], 30, stop_early=True, on_poll=lambda: None)
    verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, None)
    assert verdict.decision == survey.INCOMPLETE and 30 <= world.now < 35


def test_without_srv_ordinals_past_four_are_found_by_walking_on() -> None:
    records = {fqdn(n): f"198.18.0.{10 + n}" for n in range(1, 8)}
    empty = replication.Attempt(replication.STARTING, announce.empty_message("waiting to clone"))
    answers = {name: [empty] for name in records}
    answers[fqdn(7)] = [replication.Attempt(replication.STARTING, announce.holds_message(OLD, "x"))]
    world = FakeWorld(records, answers)
    peers = world.survey()
    unchecked = peers.run([], 30, stop_early=True, on_poll=lambda: None)
    verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, None)
    assert verdict.decision == survey.REFUSE_HOLDERS
    assert [m.name for m in verdict.holders] == [fqdn(7).rstrip(".")]


def test_ipv6_only_members_are_asked() -> None:
    holder = replication.Attempt(replication.STARTING, announce.holds_message(OLD, "x"))
    world = FakeWorld({fqdn(2): "fd00::12"}, {fqdn(2): [holder]})
    peers = world.survey()
    peers.run([fqdn(2)], 30, stop_early=True, on_poll=lambda: None)
    assert peers.members[fqdn(2)].state == HOLDS_DATA


def test_dns_down_stops_the_survey_at_once() -> None:
    world = FakeWorld({}, {})
    world.dns_down = True
    peers = world.survey()
    unchecked = peers.run([], 30, stop_early=True, on_poll=lambda: None)
    verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, None)
    assert verdict.decision == survey.INCOMPLETE and verdict.dns_problem == "timeout" and world.now < 1


def test_a_fresh_cluster_initialises_without_waiting() -> None:
    empty = replication.Attempt(replication.STARTING, announce.empty_message("waiting to clone"))
    world = FakeWorld({fqdn(1): "198.18.0.11", fqdn(2): "198.18.0.12"}, {fqdn(1): [empty], fqdn(2): [empty]})
    peers = world.survey()
    unchecked = peers.run([fqdn(1), fqdn(2)], 30, stop_early=True, on_poll=lambda: None)
    verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, None)
    assert verdict.decision == survey.INIT and world.now < 2


def test_a_member_the_manifest_has_is_not_absent_before_a_negative_cache_expires() -> None:
    # Review H4: pod 1 exists (Parallel) but has no address for 2 s (its volume attaching). Its
    # NXDOMAIN on the first pass once let pod 0 initialise a new, empty cluster beside it.
    holder = replication.Attempt(replication.STARTING, announce.holds_message(OLD, "checking the primary"))
    world = FakeWorld({}, {fqdn(1): [holder]})
    world.appear, world.later, world.expected = {fqdn(1): 2.0}, {fqdn(1): "198.18.0.11"}, 3
    peers = world.survey()
    unchecked = peers.run([], 30, stop_early=True, on_poll=lambda: None)
    verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, None)
    assert verdict.decision == survey.REFUSE_HOLDERS


def test_an_expected_member_that_never_appears_is_absent_after_the_negative_ttl() -> None:
    # OrderedReady: pods 1 and 2 are only created once pod 0 is Ready; the first start must not
    # wait forever for them, only for as long as a cached NXDOMAIN could lie (the SOA says 5 s).
    world = FakeWorld({}, {})
    world.expected = 3
    peers = world.survey()
    unchecked = peers.run([], 30, stop_early=True, on_poll=lambda: None)
    verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, None)
    assert verdict.decision == survey.INIT and 5 <= world.now < 8


def test_the_override_never_gives_up_a_holder_that_did_not_name_its_cluster() -> None:
    unknown = [Member("b", HOLDS_DATA, None, "bad_password"), Member("c", HOLDS_DATA, None, "starting")]
    assert survey.judge(unknown, [], None, OLD).decision == survey.REFUSE_HOLDERS
