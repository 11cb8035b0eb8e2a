"""E2E checks of the emulated cluster DNS, queried from inside a pod namespace the way the agent does."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from emulator.dns import ClusterDNS
from emulator.network import Host, Network
from emulator.nsclient import query_in
from emulator.waiting import wait_until

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)
for _binary in ("ip", "named", "unbound"):
    if not shutil.which(_binary):
        pytest.skip(f"needs {_binary}", allow_module_level=True)

NS, SVC, PORT_NAME, PORT = "pg", "postgresql-svc", "postgresql-port", 5432
SVC_FQDN = f"{SVC}.{NS}.svc.cluster.local."
SRV_FQDN = f"_{PORT_NAME}._tcp.{SVC_FQDN}"
NEG_TTL = 5


def pod_fqdn(i: int) -> str:
    return f"postgresql-sfs-{i}.{SVC_FQDN}"


class Env:
    """A network, a DNS and one client pod configured like a pod of namespace `pg`."""

    def __init__(self, net: Network, dns: ClusterDNS, client: Host) -> None:
        self.net, self.dns, self.client = net, dns, client

    def q(self, name: str, rdtype: str = "A", **extra: Any) -> dict[str, Any]:
        return query_in(self.net, self.client, [{"name": name, "type": rdtype, **extra}])[0]

    def many(self, *queries: tuple[str, str]) -> list[dict[str, Any]]:
        return query_in(self.net, self.client, [{"name": n, "type": t} for n, t in queries])

    def endpoints(self, n: int) -> list[tuple[str, str]]:
        """n fake pod endpoints (addresses in the run's /24, beyond any real host)."""
        base = self.net.subnet.network_address
        return [(f"postgresql-sfs-{i}", str(base + 200 + i)) for i in range(n)]


@contextlib.contextmanager
def _env(**dns_kw: Any) -> Iterator[Env]:
    with Network() as net, ClusterDNS(net, **dns_kw) as dns:
        client = net.add_host("client")
        dns.configure_host(client, NS)
        yield Env(net, dns, client)


@pytest.fixture(scope="module")
def shared() -> Iterator[Env]:
    with _env(negative_ttl=NEG_TTL, query_log=True) as env:
        yield env


@pytest.fixture
def env(shared: Env) -> Iterator[Env]:
    yield shared
    shared.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, [])
    shared.dns.flush()


def _answers(result: dict[str, Any], rdtype: str) -> list[str]:
    return sorted(r["rdata"] for r in result["answer"] if r["type"] == rdtype)


def _srv(result: dict[str, Any]) -> list[tuple[int, int, int, str]]:
    assert result["outcome"] == "answer", result
    out = []
    for text in _answers(result, "SRV"):
        prio, weight, port, target = text.split()
        out.append((int(prio), int(weight), int(port), target))
    return out


def _assert_nxdomain(result: dict[str, Any], negative_ttl: int = NEG_TTL) -> None:
    assert result["outcome"] == "nxdomain", result
    assert result["aa"], "the cluster DNS answers authoritatively"
    soa = [r for r in result["authority"] if r["type"] == "SOA"]
    assert len(soa) == 1 and soa[0]["name"] == "cluster.local.", result
    assert soa[0]["ttl"] == negative_ttl
    assert int(soa[0]["rdata"].split()[-1]) == negative_ttl  # SOA minimum


def test_nxdomain_before_endpoints(env: Env) -> None:
    names = [pod_fqdn(0), SVC_FQDN, SRV_FQDN]
    for result in env.many(*[(n, t) for n in names for t in ("A", "SRV")]):
        _assert_nxdomain(result)
    # The way a pod resolves a short name: ndots:5 tries the search list first.
    short = env.q(f"postgresql-sfs-0.{SVC}", search=True)
    assert short["outcome"] == "nxdomain"


@pytest.mark.parametrize(("count", "weight"), [(3, 33), (2, 50), (1, 100)])
def test_records_for_ready_endpoints(env: Env, count: int, weight: int) -> None:
    eps = env.endpoints(count)
    env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps)
    env.dns.flush()
    results = env.many(
        *[(pod_fqdn(i), "A") for i in range(count)], (SVC_FQDN, "A"), (SVC_FQDN, "SRV"),
        (SRV_FQDN, "SRV"), (pod_fqdn(0), "AAAA"), (pod_fqdn(count), "A"),
    )  # fmt: skip
    pods, svc_a, svc_srv, port_srv, aaaa, missing = (
        results[:count], *results[count:],
    )  # fmt: skip
    for (_, ip), result in zip(eps, pods):
        assert result["outcome"] == "answer" and result["aa"]
        assert _answers(result, "A") == [ip]
        assert result["answer"][0]["ttl"] == NEG_TTL
    assert _answers(svc_a, "A") == sorted(ip for _, ip in eps)
    expected = sorted((0, weight, PORT, pod_fqdn(i)) for i in range(count))
    assert _srv(svc_srv) == expected
    assert _srv(port_srv) == expected
    # Like CoreDNS, the targets' addresses come along in the additional section.
    assert {r["rdata"] for r in port_srv["additional"] if r["type"] == "A"} >= {ip for _, ip in eps}
    assert aaaa["outcome"] == "noanswer" and aaaa["rcode"] == "NOERROR"
    _assert_nxdomain(missing)
    short = env.q(f"postgresql-sfs-0.{SVC}", search=True)
    assert short["qname"] == pod_fqdn(0) and _answers(short, "A") == [eps[0][1]]


def test_endpoint_removal(env: Env) -> None:
    eps = env.endpoints(3)
    env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps)
    env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, [eps[0], eps[2]])
    env.dns.flush()
    gone, kept, svc, srv = env.many(
        (pod_fqdn(1), "A"), (pod_fqdn(2), "A"), (SVC_FQDN, "A"), (SRV_FQDN, "SRV")
    )
    _assert_nxdomain(gone)
    assert _answers(kept, "A") == [eps[2][1]]
    assert _answers(svc, "A") == sorted([eps[0][1], eps[2][1]])
    assert _srv(srv) == [(0, 50, PORT, pod_fqdn(0)), (0, 50, PORT, pod_fqdn(2))]
    env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, [])
    env.dns.flush()
    for result in env.many((pod_fqdn(0), "A"), (SVC_FQDN, "A"), (SVC_FQDN, "SRV"),
                           (SRV_FQDN, "SRV")):  # fmt: skip
        _assert_nxdomain(result)


def test_a_client_service_is_a_name_holding_its_endpoints_addresses(env: Env) -> None:
    # postgresql-rw/-ro as clients meet them: the name resolves to the Ready pods' addresses, with
    # TTL 0 (kube-proxy sends each new connection to a current endpoint), no per-pod names, no SRV.
    rw = f"postgresql-rw.{NS}.svc.cluster.local."
    eps = env.endpoints(2)
    env.dns.set_endpoints(NS, "postgresql-rw", PORT_NAME, PORT, eps, pod_records=False, ttl=0)
    env.dns.flush()
    name, srv, pod_name = env.many((rw, "A"), (rw, "SRV"), (f"postgresql-sfs-0.{rw}", "A"))
    assert _answers(name, "A") == sorted(ip for _, ip in eps)
    assert {r["ttl"] for r in name["answer"]} == {0}
    assert srv["outcome"] == "noanswer", srv
    _assert_nxdomain(pod_name)
    short = env.q("postgresql-rw", search=True)
    assert short["qname"] == rw and _answers(short, "A") == sorted(ip for _, ip in eps)
    env.dns.set_endpoints(NS, "postgresql-rw", PORT_NAME, PORT, [], pod_records=False, ttl=0)
    env.dns.flush()
    _assert_nxdomain(env.q(rw))


def test_out_of_zone_names_are_nxdomain(env: Env) -> None:
    for result in env.many(("example.com.", "A"), ("postgresql-sfs-0.", "A")):
        assert result["outcome"] == "nxdomain", result  # not REFUSED / NoNameservers


def test_query_log_counts_per_client(env: Env) -> None:
    before = env.dns.query_count(env.client.ip)
    env.many(*[(SVC_FQDN, "A")] * 3)
    wait_until(lambda: env.dns.query_count(env.client.ip) >= before + 3, 5, 0.05, "query log")


def test_propagation_delay_and_order() -> None:
    delay = 1.0
    with _env(negative_ttl=NEG_TTL, propagation_delay=delay) as env:
        eps = env.endpoints(3)
        started = time.monotonic()
        env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps)
        env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps[:2])  # supersedes the first
        _assert_nxdomain(env.q(SVC_FQDN))  # not yet propagated
        env.dns.flush()
        assert time.monotonic() - started >= delay
        assert _answers(env.q(SVC_FQDN), "A") == sorted(ip for _, ip in eps[:2])


def test_negative_caching_with_unbound() -> None:
    ttl = 3
    with _env(negative_ttl=ttl, negative_cache=True) as env:
        assert env.dns.nameserver_ip != env.dns.bind_ip
        eps = env.endpoints(1)
        first = env.q(pod_fqdn(0))
        asked_at = time.monotonic()
        assert first["outcome"] == "nxdomain" and not first["aa"], "via the cache"
        env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps)
        env.dns.flush()
        # BIND has it, the cache still denies it: what a pod sees right after publication.
        direct = env.q(pod_fqdn(0), server=env.dns.bind_ip)
        assert _answers(direct, "A") == [eps[0][1]]
        assert env.q(pod_fqdn(0))["outcome"] == "nxdomain"
        resolved = wait_until(
            lambda: env.q(pod_fqdn(0))["outcome"] == "answer", ttl + 3, 0.2,
            "the cached NXDOMAIN to expire",
        )  # fmt: skip
        waited = time.monotonic() - asked_at
        assert resolved and ttl - 1 <= waited <= ttl + 3, waited
        answer = env.q(pod_fqdn(0))
        assert _answers(answer, "A") == [eps[0][1]] and not answer["aa"]


def test_dns_down_then_up() -> None:
    with _env(negative_ttl=NEG_TTL, query_log=True) as env:
        eps = env.endpoints(2)
        env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps)
        env.dns.flush()
        assert _answers(env.q(SVC_FQDN), "A") == sorted(ip for _, ip in eps)
        env.dns.down()
        assert not env.dns.is_up
        failed = env.q(SVC_FQDN, lifetime=1.0)
        assert failed["outcome"] in ("timeout", "nonameservers"), failed
        # The API keeps changing while DNS is down; the server shows it once back.
        env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps[:1])
        env.dns.flush()
        env.dns.up()
        assert env.dns.is_up
        svc, srv = env.many((SVC_FQDN, "A"), (SRV_FQDN, "SRV"))
        assert _answers(svc, "A") == [eps[0][1]]
        assert _srv(srv) == [(0, 100, PORT, pod_fqdn(0))]
        # Dynamic updates keep working after the restart.
        env.dns.set_endpoints(NS, SVC, PORT_NAME, PORT, eps)
        env.dns.flush()
        assert _answers(env.q(SVC_FQDN), "A") == sorted(ip for _, ip in eps)
