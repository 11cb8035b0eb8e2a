"""Unit tests of agent.discovery: real dnspython answers and errors, a fake clock, no real DNS.

resolve_once is fed by a small resolver object whose resolve() returns a real dns.resolver.Answer
or raises the real dnspython exceptions, built from real wire-format DNS messages.
"""

from __future__ import annotations

from typing import Any, Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from tenacity.wait import wait_fixed

from agent.discovery import (
    DNS_UNREACHABLE,
    FOUND,
    MAX_NEGATIVE_WAIT,
    NO_DATA,
    NO_RECORD,
    DnsAnswer,
    SrvRecord,
    make_lookup,
    resolve_once,
    service_srv,
    wait_for_record,
)
from agent.errors import DiscoveryTimeout

PRIMARY = "postgresql-sfs-0.postgresql-svc.pg.svc.cluster.local."
SERVICE = "postgresql-svc.pg.svc.cluster.local."
SRV = "_postgresql-port._tcp." + SERVICE


def response(
    qname: str,
    rdtype: str,
    *,
    rcode: int = dns.rcode.NOERROR,
    answers: tuple[str, ...] = (),
    soa_ttl: int | None = None,
    soa_minimum: int = 30,
    aa: bool = False,
) -> dns.message.Message:
    """A DNS response as a server would send it (round-tripped through wire format)."""
    query = dns.message.make_query(qname, rdtype)
    msg = dns.message.make_response(query)
    msg.set_rcode(rcode)
    if aa:
        msg.flags |= dns.flags.AA
    else:
        msg.flags &= ~dns.flags.AA
    if answers:
        msg.answer.append(dns.rrset.from_text(qname, 5, "IN", rdtype, *answers))
    if soa_ttl is not None:
        soa = f"ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 {soa_minimum}"
        msg.authority.append(dns.rrset.from_text("cluster.local.", soa_ttl, "IN", "SOA", soa))
    return dns.message.from_wire(msg.to_wire())


def found(qname: str, rdtype: str, *records: str, aa: bool = True) -> dns.resolver.Answer:
    msg = response(qname, rdtype, answers=records, aa=aa)
    return dns.resolver.Answer(
        dns.name.from_text(qname),
        dns.rdatatype.from_text(rdtype),
        dns.rdataclass.IN,
        msg,  # type: ignore[arg-type]
    )


def nxdomain(qname: str, *, soa_ttl: int | None = 30, soa_minimum: int = 30, aa: bool = False) -> dns.resolver.NXDOMAIN:
    msg = response(qname, "A", rcode=dns.rcode.NXDOMAIN, soa_ttl=soa_ttl, soa_minimum=soa_minimum, aa=aa)
    name = dns.name.from_text(qname)
    return dns.resolver.NXDOMAIN(qnames=[name], responses={name: msg})


def no_answer(qname: str, rdtype: str = "A", *, soa_ttl: int | None = 5, aa: bool = True) -> dns.resolver.NoAnswer:
    return dns.resolver.NoAnswer(response=response(qname, rdtype, soa_ttl=soa_ttl, soa_minimum=5, aa=aa))


class FakeResolver:
    """Answers from a script: each entry is an Answer to return or an exception to raise."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def resolve(self, name: str, rdtype: str, **kwargs: Any) -> dns.resolver.Answer:
        self.calls.append((name, rdtype, kwargs))
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]


# -- resolve_once ---------------------------------------------------------------------------------


def test_found() -> None:
    resolver = FakeResolver(found(PRIMARY, "A", "198.18.0.3"))
    got = resolve_once(resolver, PRIMARY, "A", 2.0)
    assert got == DnsAnswer(PRIMARY, "A", FOUND, records=("198.18.0.3",), authoritative=True)
    assert got.found
    assert resolver.calls == [(PRIMARY, "A", {"search": False, "lifetime": 2.0, "raise_on_no_answer": True})]


def test_found_records_are_sorted() -> None:
    got = resolve_once(FakeResolver(found(SERVICE, "A", "198.18.0.9", "198.18.0.2", aa=False)), SERVICE, "A", 1.0)
    assert got.records == ("198.18.0.2", "198.18.0.9")
    assert not got.authoritative


@pytest.mark.parametrize(("ttl", "minimum", "expected"), [(30, 30, 30.0), (30, 5, 5.0), (5, 3600, 5.0)])
def test_nxdomain_negative_ttl_is_min_of_soa_ttl_and_minimum(ttl: int, minimum: int, expected: float) -> None:
    got = resolve_once(FakeResolver(nxdomain(PRIMARY, soa_ttl=ttl, soa_minimum=minimum)), PRIMARY, "A", 2.0)
    assert (got.outcome, got.negative_ttl, got.authoritative) == (NO_RECORD, expected, False)
    assert not got.found


def test_nxdomain_authoritative_without_soa() -> None:
    got = resolve_once(FakeResolver(nxdomain(PRIMARY, soa_ttl=None, aa=True)), PRIMARY, "A", 2.0)
    assert (got.outcome, got.negative_ttl, got.authoritative) == (NO_RECORD, None, True)


def test_nxdomain_without_responses() -> None:
    got = resolve_once(FakeResolver(dns.resolver.NXDOMAIN()), PRIMARY, "A", 2.0)
    assert (got.outcome, got.negative_ttl) == (NO_RECORD, None)


def test_no_answer_is_no_data() -> None:
    got = resolve_once(FakeResolver(no_answer(PRIMARY)), PRIMARY, "A", 2.0)
    assert (got.outcome, got.negative_ttl, got.authoritative) == (NO_DATA, 5.0, True)


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (dns.resolver.NoNameservers(request=dns.message.make_query(PRIMARY, "A"), errors=[]), "no nameserver"),
        (dns.resolver.LifetimeTimeout(timeout=2.0, errors=[]), "timeout"),
        (dns.exception.Timeout(), "timeout"),
        (dns.resolver.NoResolverConfiguration(), "NoResolverConfiguration"),
        (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefusedError"),
        (OSError(101, "Network is unreachable"), "OSError"),
    ],
)
def test_unreachable(error: BaseException, detail: str) -> None:
    got = resolve_once(FakeResolver(error), PRIMARY, "A", 2.0)
    assert got.outcome == DNS_UNREACHABLE
    assert detail in got.detail
    assert got.negative_ttl is None


def test_make_lookup_uses_given_resolver() -> None:
    resolver = FakeResolver(found(PRIMARY, "A", "198.18.0.3"))
    lookup = make_lookup(resolver, lifetime=1.5)
    assert lookup(PRIMARY, "A").records == ("198.18.0.3",)
    assert resolver.calls[0][2]["lifetime"] == 1.5


# -- wait_for_record ------------------------------------------------------------------------------


def scripted(resolver: FakeResolver) -> Callable[[str, str], DnsAnswer]:
    return make_lookup(resolver, lifetime=2.0)


def at_times(clock, schedule: Callable[[float], Any]) -> Callable[[str, str], DnsAnswer]:
    """A lookup whose resolver answers by elapsed fake time (schedule(t) -> Answer or exception)."""
    start = clock()

    calls: list[float] = []

    class TimedResolver:
        def resolve(self, name: str, rdtype: str, **_: Any) -> dns.resolver.Answer:
            calls.append(clock() - start)
            item = schedule(clock() - start)
            if isinstance(item, BaseException):
                raise item
            return item  # type: ignore[no-any-return]

    lookup = make_lookup(TimedResolver(), lifetime=2.0)
    lookup.calls = calls  # type: ignore[attr-defined]
    return lookup


def test_returns_on_first_found_answer(clock, log) -> None:
    polls: list[int] = []
    result = wait_for_record(
        scripted(FakeResolver(found(PRIMARY, "A", "198.18.0.3"))),
        PRIMARY,
        timeout=60,
        log=log,
        clock=clock,
        sleep=clock.sleep,
        on_poll=lambda: polls.append(1),
    )
    assert result.answer is not None and result.answer.records == ("198.18.0.3",)
    assert result.stats.attempts == 1
    assert clock.sleeps == []
    assert polls == [1]
    assert log.events("dns_wait_state") == []
    [summary] = log.events("dns_wait", "info")
    assert summary["addresses"] == ["198.18.0.3"] and summary["attempts"] == 1 and summary["name"] == PRIMARY


def test_one_state_line_per_change_not_per_poll(clock, log) -> None:
    script = (
        [dns.resolver.LifetimeTimeout(timeout=2.0, errors=[])] * 3
        + [nxdomain(PRIMARY, aa=True)] * 5
        + [dns.resolver.NoNameservers(request=dns.message.make_query(PRIMARY, "A"), errors=[])] * 2
        + [found(PRIMARY, "A", "198.18.0.3")]
    )
    result = wait_for_record(
        scripted(FakeResolver(*script)),
        PRIMARY,
        timeout=600,
        log=log,
        clock=clock,
        sleep=clock.sleep,
        base_wait=wait_fixed(0.5),
    )
    assert result.stats.attempts == 11
    states = log.events("dns_wait_state", "info")
    assert [s["outcome"] for s in states] == [DNS_UNREACHABLE, NO_RECORD, DNS_UNREACHABLE]
    assert [s["attempts"] for s in states] == [1, 4, 9]
    assert len(log.events("dns_poll", "debug")) == 11
    assert result.seen == {DNS_UNREACHABLE: 5, NO_RECORD: 5, FOUND: 1}
    assert clock.sleeps == [0.5] * 10
    assert len(log.events("dns_wait", "info")) == 1


def test_timeout_when_no_record(clock, log) -> None:
    start = clock()
    with pytest.raises(DiscoveryTimeout) as info:
        wait_for_record(
            scripted(FakeResolver(nxdomain(PRIMARY, aa=True))),
            PRIMARY,
            timeout=30,
            log=log,
            clock=clock,
            sleep=clock.sleep,
            base_wait=wait_fixed(1.0),
        )
    error = info.value
    assert error.exit_code == 3 and error.event == "dns_wait_timeout"
    assert error.fields["attempts"] >= 29
    assert error.fields["name"] == PRIMARY
    assert error.fields["seen"] == {NO_RECORD: error.fields["attempts"]}
    assert 29 <= error.fields["elapsed_s"] <= 30
    assert clock() - start <= 30
    assert "no_record" in error.message and PRIMARY in error.message
    assert "primary pod exists" in error.hint and "PGSFS_WAIT_TIMEOUT" in error.hint
    assert "DNS was unreachable" not in error.hint
    assert len(log.events("dns_wait_state")) == 1


def test_timeout_when_dns_unreachable_says_so(clock, log) -> None:
    with pytest.raises(DiscoveryTimeout) as info:
        wait_for_record(
            scripted(FakeResolver(dns.resolver.LifetimeTimeout(timeout=2.0, errors=[]))),
            PRIMARY,
            timeout=10,
            log=log,
            clock=clock,
            sleep=clock.sleep,
        )
    assert "DNS was unreachable" in info.value.hint
    assert "dns_unreachable" in info.value.message


def test_waits_out_non_authoritative_negative_ttl(clock, log) -> None:
    """A cache's NXDOMAIN (no AA) with SOA TTL 30 is repeated for 30 s: ask again only after it."""
    lookup = at_times(
        clock, lambda t: nxdomain(PRIMARY, soa_ttl=30, aa=False) if t < 60 else found(PRIMARY, "A", "198.18.0.3")
    )
    result = wait_for_record(lookup, PRIMARY, timeout=600, log=log, clock=clock, sleep=clock.sleep,
                             base_wait=wait_fixed(0.5))  # fmt: skip
    assert clock.sleeps == [30.0, 30.0]
    assert lookup.calls == [0.0, 30.0, 60.0]  # type: ignore[attr-defined]
    assert result.stats.attempts == 3
    assert log.events("dns_wait_state")[0]["negative_ttl"] == 30.0


def test_negative_wait_is_bounded(clock, log) -> None:
    lookup = at_times(
        clock,
        lambda t: nxdomain(PRIMARY, soa_ttl=3600, soa_minimum=3600) if t < 100 else found(PRIMARY, "A", "1.2.3.4"),
    )
    wait_for_record(lookup, PRIMARY, timeout=600, log=log, clock=clock, sleep=clock.sleep, base_wait=wait_fixed(0.5))
    assert clock.sleeps == [MAX_NEGATIVE_WAIT, MAX_NEGATIVE_WAIT]


def test_does_not_wait_after_authoritative_nxdomain(clock, log) -> None:
    lookup = at_times(
        clock, lambda t: nxdomain(PRIMARY, soa_ttl=30, aa=True) if t < 2 else found(PRIMARY, "A", "1.2.3.4")
    )
    wait_for_record(lookup, PRIMARY, timeout=600, log=log, clock=clock, sleep=clock.sleep, base_wait=wait_fixed(0.5))
    assert clock.sleeps == [0.5] * 4


@pytest.mark.parametrize("timeout", [0.7, 5, 45, 100])
@pytest.mark.parametrize("aa", [True, False])
def test_never_sleeps_past_the_deadline(clock, log, timeout: float, aa: bool) -> None:
    start = clock()
    lookup = at_times(clock, lambda t: nxdomain(PRIMARY, soa_ttl=30, aa=aa))
    with pytest.raises(DiscoveryTimeout):
        wait_for_record(lookup, PRIMARY, timeout=timeout, log=log, clock=clock, sleep=clock.sleep)
    assert clock() - start <= timeout + 1e-9
    assert all(s >= 0 for s in clock.sleeps)


def test_last_attempt_happens_at_the_deadline(clock, log) -> None:
    lookup = at_times(clock, lambda t: nxdomain(PRIMARY, soa_ttl=30) if t < 40 else found(PRIMARY, "A", "198.18.0.3"))
    result = wait_for_record(lookup, PRIMARY, timeout=45, log=log, clock=clock, sleep=clock.sleep)
    assert result.answer is not None and result.answer.found


def test_query_rate_without_negative_cache(clock, log) -> None:
    """Over a 60 s wait the default pace asks at least once and at most 5 times a second."""
    start = clock()
    lookup = at_times(clock, lambda t: nxdomain(PRIMARY, soa_ttl=None, aa=True))
    with pytest.raises(DiscoveryTimeout) as info:
        wait_for_record(lookup, PRIMARY, timeout=60, log=log, clock=clock, sleep=clock.sleep)
    attempts = info.value.fields["attempts"]
    assert 1.0 <= attempts / 60 <= 5.0, attempts
    assert clock() - start <= 60
    # The last gap may be shorter: the final attempt is placed exactly at the deadline.
    gaps = [b - a for a, b in zip(lookup.calls, lookup.calls[1:-1])]  # type: ignore[attr-defined]
    assert min(gaps) >= 0.2 - 1e-9  # never a burst
    assert len(log.events("dns_wait_state")) == 1


# -- service_srv ---------------------------------------------------------------------------------

SRV_RECORDS = (
    f"0 50 5432 postgresql-sfs-0.{SERVICE}",
    f"0 50 5432 POSTGRESQL-SFS-1.{SERVICE}",
)


def test_srv_found_on_named_port() -> None:
    resolver = FakeResolver(found(SRV, "SRV", *SRV_RECORDS))
    records, name, outcome = service_srv(scripted(resolver), SRV, SERVICE)
    assert (name, outcome) == (SRV, FOUND)
    assert sorted(records, key=lambda r: r.target) == [
        SrvRecord(f"postgresql-sfs-0.{SERVICE}", 5432, 0, 50),
        SrvRecord(f"postgresql-sfs-1.{SERVICE}", 5432, 0, 50),
    ]
    assert [c[:2] for c in resolver.calls] == [(SRV, "SRV")]


def test_srv_falls_back_to_bare_service_name() -> None:
    resolver = FakeResolver(nxdomain(SRV, aa=True), found(SERVICE, "SRV", *SRV_RECORDS[:1]))
    records, name, outcome = service_srv(scripted(resolver), SRV, SERVICE)
    assert (name, outcome, len(records)) == (SERVICE, FOUND, 1)
    assert [c[:2] for c in resolver.calls] == [(SRV, "SRV"), (SERVICE, "SRV")]


def test_srv_nothing_anywhere() -> None:
    resolver = FakeResolver(nxdomain(SRV, aa=True), no_answer(SERVICE, "SRV"))
    assert service_srv(scripted(resolver), SRV, SERVICE) == ([], "", NO_DATA)
    assert len(resolver.calls) == 2


def test_srv_stops_when_dns_is_unreachable() -> None:
    resolver = FakeResolver(dns.resolver.LifetimeTimeout(timeout=2.0, errors=[]), found(SERVICE, "SRV", *SRV_RECORDS))
    assert service_srv(scripted(resolver), SRV, SERVICE) == ([], "", DNS_UNREACHABLE)
    assert len(resolver.calls) == 1
