"""Finding the primary (and, for a primary, its peers) in cluster DNS, with dnspython and tenacity."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from tenacity import RetryCallState
from tenacity.wait import wait_base, wait_random

from agent.errors import DiscoveryTimeout
from agent.waits import Clock, Sleep, WaitStats, poll_until

if TYPE_CHECKING:
    import dns.message

# dnspython is imported where it is used: a primary's first start surveys its members while initdb
# runs, so its import (about 30 ms) is then off the critical path.

FOUND = "found"
NO_RECORD = "no_record"
NO_DATA = "no_data"
DNS_UNREACHABLE = "dns_unreachable"

# A negative answer may not be cached for longer than this, whatever its SOA says.
MAX_NEGATIVE_WAIT = 60.0


@dataclass(frozen=True)
class DnsAnswer:
    """One lookup's outcome, reduced to what the wait and its logs need."""

    name: str
    rdtype: str
    outcome: str
    records: tuple[str, ...] = ()
    negative_ttl: float | None = None
    authoritative: bool = False
    detail: str = ""

    @property
    def found(self) -> bool:
        """True when the name had records of the asked type."""
        return self.outcome == FOUND


@dataclass(frozen=True)
class SrvRecord:
    """One SRV record of the Service: where a member listens."""

    target: str
    port: int
    priority: int
    weight: int

    @property
    def fqdn(self) -> str:
        """The target as an absolute name (trailing dot), as the agent's own names are written."""
        return self.target if self.target.endswith(".") else self.target + "."


Lookup = Callable[[str, str], DnsAnswer]


def _negative_ttl(response: dns.message.Message | None) -> tuple[float | None, bool]:
    """How long a negative answer may be cached (RFC 2308: min of SOA TTL and minimum), and AA."""
    import dns.flags
    import dns.rdatatype

    if response is None:
        return None, False
    authoritative = bool(response.flags & dns.flags.AA)
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum)), authoritative
    return None, authoritative


def make_lookup(resolver: Any | None = None, lifetime: float = 2.0) -> Lookup:
    """A lookup function over a dnspython resolver (by default one reading /etc/resolv.conf)."""
    state: dict[str, Any] = {"resolver": resolver}

    def lookup(name: str, rdtype: str) -> DnsAnswer:
        import dns.resolver

        res = state["resolver"]
        if res is None:
            try:
                res = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                return DnsAnswer(name, rdtype, DNS_UNREACHABLE, detail=f"no nameserver configured: {exc}")
            state["resolver"] = res
        return resolve_once(res, name, rdtype, lifetime)

    return lookup


def resolve_once(resolver: Any, name: str, rdtype: str, lifetime: float) -> DnsAnswer:
    """Ask once for an absolute name (no search list) and classify the outcome."""
    import dns.exception
    import dns.flags
    import dns.resolver

    try:
        answer = resolver.resolve(name, rdtype, search=False, lifetime=lifetime, raise_on_no_answer=True)
    except dns.resolver.NXDOMAIN as exc:
        try:
            qnames = exc.qnames()  # type: ignore[no-untyped-call]
            response = exc.response(qnames[0]) if qnames else None  # type: ignore[no-untyped-call]
        except (KeyError, IndexError):
            response = None
        ttl, aa = _negative_ttl(response)
        return DnsAnswer(name, rdtype, NO_RECORD, negative_ttl=ttl, authoritative=aa, detail="NXDOMAIN")
    except dns.resolver.NoAnswer as exc:
        ttl, aa = _negative_ttl(exc.response())  # type: ignore[no-untyped-call]
        return DnsAnswer(name, rdtype, NO_DATA, negative_ttl=ttl, authoritative=aa, detail="no data of that type")
    except dns.resolver.NoNameservers as exc:
        return DnsAnswer(name, rdtype, DNS_UNREACHABLE, detail=f"no nameserver answered: {exc}")
    except dns.exception.Timeout as exc:
        return DnsAnswer(name, rdtype, DNS_UNREACHABLE, detail=f"timeout: {exc}")
    except (dns.exception.DNSException, OSError) as exc:
        return DnsAnswer(name, rdtype, DNS_UNREACHABLE, detail=f"{type(exc).__name__}: {exc}")
    records = tuple(sorted(rdata.to_text() for rdata in answer))
    return DnsAnswer(name, rdtype, FOUND, records=records, authoritative=bool(answer.response.flags & dns.flags.AA))


class wait_out_negative_cache(wait_base):
    """Poll at the base pace, but after a cached negative answer wait until the cache lets go."""

    def __init__(self, base: wait_base) -> None:
        self.base = base

    def __call__(self, retry_state: RetryCallState) -> float:
        pause = self.base(retry_state)
        outcome = retry_state.outcome
        if outcome is None or outcome.failed:
            return pause
        answer = outcome.result()
        # An authoritative server's answer is fresh: asking again soon is useful. A cache's answer
        # (no AA) will be repeated until its negative TTL runs out, so asking before is wasted.
        if isinstance(answer, DnsAnswer) and answer.negative_ttl and not answer.authoritative:
            return max(pause, min(answer.negative_ttl, MAX_NEGATIVE_WAIT))
        return pause


@dataclass
class RecordWait:
    """A wait for one name, with its outcome and the numbers for its summary line."""

    name: str
    stats: WaitStats
    answer: DnsAnswer | None = None
    seen: dict[str, int] = field(default_factory=dict)


def wait_for_record(
    lookup: Lookup,
    name: str,
    *,
    timeout: float,
    log: Any,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    on_poll: Callable[[], None] = lambda: None,
    base_wait: wait_base | None = None,
) -> RecordWait:
    """Poll for an A record until it resolves or `timeout` passes (then DiscoveryTimeout)."""
    stats = WaitStats(started=clock())
    result = RecordWait(name=name, stats=stats)
    deadline = stats.started + timeout

    def attempt() -> DnsAnswer:
        stats.attempts += 1
        answer = lookup(name, "A")
        result.seen[answer.outcome] = result.seen.get(answer.outcome, 0) + 1
        if answer.outcome != stats.last:
            stats.changes += 1
            if not answer.found:
                log.info(
                    "dns_wait_state",
                    name=name,
                    outcome=answer.outcome,
                    detail=answer.detail,
                    negative_ttl=answer.negative_ttl,
                    attempts=stats.attempts,
                    elapsed_s=stats.elapsed(clock),
                )
            stats.last = answer.outcome
        log.debug("dns_poll", name=name, outcome=answer.outcome, attempts=stats.attempts)
        result.answer = answer
        on_poll()
        return answer

    # About twice a second with jitter: a fresh record is seen within ~0.3 s on average, at under
    # 2.5 queries a second per pod (the budget is 5).
    base = base_wait if base_wait is not None else wait_random(0.4, 0.8)
    answer = poll_until(
        attempt,
        done=lambda answer: answer.found,
        wait=wait_out_negative_cache(base),
        deadline=deadline,
        clock=clock,
        sleep=sleep,
    )
    summary = dict(
        name=name,
        attempts=stats.attempts,
        elapsed_s=stats.elapsed(clock),
        seen=result.seen,
    )
    if answer is None or not answer.found:
        last = result.answer
        raise DiscoveryTimeout(
            f"no A record for {name} after {summary['elapsed_s']} s and {stats.attempts} queries; "
            f"last answer: {last.outcome if last else 'none'} ({last.detail if last else ''})",
            hint=(
                "DNS was unreachable: check the cluster DNS (CoreDNS) pods and the pod's /etc/resolv.conf"
                if last is not None and last.outcome == DNS_UNREACHABLE
                else "check that the primary pod exists and is Running, that PGSFS_SERVICE_NAME names the "
                "StatefulSet's serviceName and POD_NAMESPACE its namespace; raise PGSFS_WAIT_TIMEOUT for slow clusters"
            ),
            **summary,
        )
    log.info("dns_wait", addresses=list(answer.records), **summary)
    return result


def service_srv(lookup: Lookup, srv_name: str, service_name: str) -> tuple[list[SrvRecord], str, str]:
    """The Service's SRV records for the named port, falling back to the bare Service name.

    Returns the records, the name that had them, and the last outcome (to tell DNS down apart).
    """
    outcome = NO_RECORD
    for name in (srv_name, service_name):
        answer = lookup(name, "SRV")
        outcome = answer.outcome
        if answer.found:
            records = []
            for text in answer.records:
                priority, weight, port, target = text.split()
                records.append(SrvRecord(target.lower(), int(port), int(priority), int(weight)))
            return records, name, outcome
        if outcome == DNS_UNREACHABLE:
            break
    return [], "", outcome
