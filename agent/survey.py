"""The re-init guard: before a primary with an empty PGDATA initialises, ask every member what it holds.

Observing (DNS, one connection per member) is kept apart from judging: `judge` is pure, so the
decision to initialise, to refuse because another member holds the cluster, or to refuse because
the survey could not see everyone, is tested over every combination of answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from agent import announce, discovery, replication
from agent.waits import Clock, Sleep

HOLDS_DATA = "holds_data"
EMPTY = "empty"
SILENT = "silent"
ABSENT = "absent"
DEFINITIVE = frozenset({HOLDS_DATA, EMPTY, ABSENT})

INIT = "init"
REFUSE_HOLDERS = "refuse_holders"
INCOMPLETE = "incomplete"

# Without SRV records, ordinals are tried up to this one, and two past the highest that exists.
MIN_ORDINALS = 5
ORDINALS_PAST_HIGHEST = 2
# How long a "no such name" for an expected member is doubted when the answer gave no negative TTL.
DEFAULT_NEGATIVE_WAIT = 10.0


@dataclass(frozen=True)
class Member:
    """What one member answered: holds data (and of which cluster), empty, silent, or absent."""

    name: str
    state: str
    system_identifier: int | None = None
    detail: str = ""
    # True: it accepts writes (a primary); False: a standby; None: unknown (no postgres answered).
    writable: bool | None = None
    # The timeline its postgres is on, or its agent announced; None when not said.
    timeline: int | None = None


@dataclass(frozen=True)
class Verdict:
    """The guard's decision and everything it rests on."""

    decision: str
    members: tuple[Member, ...]
    unchecked: tuple[str, ...] = ()
    dns_problem: str | None = None
    overridden: int | None = None

    @property
    def holders(self) -> tuple[Member, ...]:
        """Members that still run (or announce) a cluster."""
        return tuple(m for m in self.members if m.state == HOLDS_DATA)

    @property
    def silent(self) -> tuple[Member, ...]:
        """Members that exist in DNS but answered nothing that says what they hold."""
        return tuple(m for m in self.members if m.state == SILENT)


def classify(name: str, attempt: replication.Attempt) -> Member:
    """One member's answer to IDENTIFY_SYSTEM, as what it tells about its data."""
    if attempt.info is not None:
        info = attempt.info
        return Member(name, HOLDS_DATA, info.system_identifier, writable=not info.in_hot_standby,
                      timeline=info.timeline)  # fmt: skip
    announced = announce.read_announcement(attempt.detail)
    if announced is not None:
        holds, system_identifier, timeline = announced
        return Member(name, HOLDS_DATA if holds else EMPTY, system_identifier, timeline=timeline)
    if attempt.outcome in replication.AUTH_FAILURES or attempt.outcome == replication.STARTING:
        # A postgres runs there (it checks passwords, or recovers): it has a cluster.
        return Member(name, HOLDS_DATA, None, attempt.outcome)
    return Member(name, SILENT, None, attempt.outcome)


def judge(members: list[Member], unchecked: list[str], dns_problem: str | None, allow_reinit: int | None) -> Verdict:
    """Initialise only when every member was seen and none holds data (or only the cluster given up)."""
    holders = [m for m in members if m.state == HOLDS_DATA]
    # Only holders that named the given-up cluster: one that could not say (a password refused, still
    # starting) may hold another, and a forgotten override must never give that up (review H4).
    given_up = allow_reinit is not None and all(m.system_identifier == allow_reinit for m in holders)
    incomplete = bool(dns_problem or unchecked or any(m.state == SILENT for m in members))
    if holders and not given_up:
        decision = REFUSE_HOLDERS
    elif incomplete:
        decision = INCOMPLETE
    else:
        decision = INIT
    overridden = allow_reinit if holders and given_up and decision == INIT else None
    return Verdict(decision, tuple(members), tuple(unchecked), dns_problem, overridden)


def ordinals_to_try(found: set[int]) -> int:
    """How many ordinals to try when SRV does not list the members: a few, and past the highest seen."""
    return max(MIN_ORDINALS, max(found, default=-1) + 1 + ORDINALS_PAST_HIGHEST)


def member_names(srv_names: list[str], pod_fqdn: Callable[[int], str], found: set[int], own: str) -> list[str]:
    """Every member name to ask: the SRV targets, then the ordinals (walking past the highest found)."""
    by_ordinal = [pod_fqdn(n).lower() for n in range(ordinals_to_try(found))]
    return [n for n in dict.fromkeys([*(s.lower() for s in srv_names), *by_ordinal]) if n != own]


def ordinal_of(name: str, pod_fqdn: Callable[[int], str], found: set[int]) -> int | None:
    """The ordinal whose pod name `name` is, among those `member_names` tries."""
    return next((n for n in range(ordinals_to_try(found)) if pod_fqdn(n).lower() == name), None)


def resolve(lookup: discovery.Lookup, name: str) -> tuple[str | None, str | None]:
    """A member's address (A, else AAAA) or None when it has none; and why DNS failed, if it did."""
    address, problem, _ = resolve_with_ttl(lookup, name)
    return address, problem


def resolve_with_ttl(lookup: discovery.Lookup, name: str) -> tuple[str | None, str | None, float | None]:
    """As `resolve`, with how long a "no such name" may be cached (the SOA's negative TTL), if said."""
    ttl: float | None = None
    for rdtype in ("A", "AAAA"):
        answer = lookup(name, rdtype)
        if answer.outcome == discovery.DNS_UNREACHABLE:
            return None, answer.detail or "no nameserver answered", None
        if answer.found:
            return answer.records[0], None, None
        if answer.negative_ttl is not None:
            ttl = max(ttl or 0.0, answer.negative_ttl)
    return None, None, ttl


@dataclass
class Survey:
    """Asks each member, again for those that do not answer yet, until all answered or the deadline."""

    lookup: discovery.Lookup
    identify: Callable[[str, str, float], replication.Attempt]
    clock: Clock
    sleep: Sleep
    own_name: str
    pod_fqdn: Callable[[int], str]
    # Ordinals below this exist in the manifest (PGSFS_MEMBERS): their "no such name" is believed only
    # once a negative cache could have expired since it was first seen (a pod still Pending, its
    # record not published yet, or a cached NXDOMAIN, must not pass for an absent member).
    expected: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    dns_problem: str | None = None
    first_absent: dict[str, float] = field(default_factory=dict)

    def run(self, srv_targets: list[str], timeout: float, stop_early: bool, on_poll: Callable[[], None]) -> list[str]:
        """Survey until every member answered definitively or `timeout`; returns names never checked."""
        deadline = self.clock() + timeout
        names = list(srv_targets)
        found_ordinals: set[int] = set()
        while True:
            on_poll()
            wanted = member_names(names, self.pod_fqdn, found_ordinals, self.own_name)
            pending = [n for n in wanted if n not in self.members or self.members[n].state == SILENT]
            for name in pending:
                if self.clock() >= deadline or self.dns_problem:
                    break
                self._ask(name, deadline, found_ordinals)
            wanted = member_names(names, self.pod_fqdn, found_ordinals, self.own_name)
            unchecked = [n for n in wanted if n not in self.members]
            open_ = [n for n in wanted if n not in self.members or self.members[n].state == SILENT]
            holders = any(m.state == HOLDS_DATA for m in self.members.values())
            if not open_ or self.dns_problem or self.clock() >= deadline or (holders and stop_early):
                return unchecked
            self.sleep(min(1.0, max(0.0, deadline - self.clock())))

    def _absent_long_enough(self, name: str, negative_ttl: float | None) -> bool:
        first = self.first_absent.setdefault(name, self.clock())
        wait = min(negative_ttl if negative_ttl is not None else DEFAULT_NEGATIVE_WAIT, discovery.MAX_NEGATIVE_WAIT)
        return self.clock() - first >= wait

    def _ask(self, name: str, deadline: float, found_ordinals: set[int]) -> None:
        address, problem, negative_ttl = resolve_with_ttl(self.lookup, name)
        if problem is not None:
            self.dns_problem = problem
            return
        ordinal = ordinal_of(name, self.pod_fqdn, found_ordinals)
        if address is None:
            if ordinal is not None and ordinal < self.expected and not self._absent_long_enough(name, negative_ttl):
                return  # not there yet: asked again, and unchecked if the deadline comes first
            self.members[name] = Member(name.rstrip("."), ABSENT)
            return
        if ordinal is not None:
            found_ordinals.add(ordinal)
        budget = max(1.0, min(3.0, deadline - self.clock()))
        self.members[name] = classify(name.rstrip("."), self.identify(name, address, budget))
