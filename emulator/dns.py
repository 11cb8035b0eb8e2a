"""Emulated cluster DNS: BIND 9 authoritative for the cluster domain, fed like CoreDNS by endpoints.

BIND runs as `named -g` in its own host namespace on the emulated network; every file lives in a
run directory under the network's workdir. Endpoint changes become TSIG-signed dynamic updates
(dnspython) that replace whole RRsets. They are sent by a worker thread that entered BIND's network
namespace with setns(2) once at start: the namespace is per-thread on Linux, so the sockets of that
thread (and only those) live beside BIND. No helper process, no pipe protocol, errors arrive as
Python exceptions; the worker also implements the propagation delay and keeps updates in order.
With `negative_cache=True` an unbound resolver in front (its own host) caches NXDOMAIN for the
negative TTL, the way CoreDNS's cache plugin does.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import math
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from . import netns as nsx
from .network import GUARD_NET, Host, Network
from .waiting import wait_until

TSIG_KEY = "pgsfs-update."
_START_TIMEOUT = 20.0
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_QUERY_RE = re.compile(
    r"(?:client @\S+ (?P<bclient>[0-9.]+)#\d+ \([^)]*\): query: (?P<bname>\S+) IN (?P<btype>\S+))"
    r"|(?:info: (?P<uclient>[0-9.]+) (?P<uname>\S+) (?P<utype>\S+) IN$)"
)


@dataclass(frozen=True)
class ServiceEndpoints:
    """What the Endpoints/EndpointSlice of one headless Service says (ready addresses only)."""

    namespace: str
    service: str
    port_name: str
    port: int
    endpoints: tuple[tuple[str, str], ...]
    # A ClusterIP Service as the emulator shows it: no per-pod names, and its own TTL (None: the
    # negative TTL, as for the headless Service).
    pod_records: bool = True
    ttl: int | None = None

    def records(self, domain: str) -> dict[tuple[str, str], list[str]]:
        """The RRsets CoreDNS serves for it: (absolute name, type) -> rdata texts."""
        svc = f"{self.service}.{self.namespace}.svc.{domain}."
        out: dict[tuple[str, str], list[str]] = {}
        if not self.endpoints:
            return out
        weight = math.floor(100 / len(self.endpoints))
        ips: list[str] = []
        srv: list[str] = []
        for pod, ip in self.endpoints:
            pod_fqdn = f"{pod}.{svc}"
            if self.pod_records:
                out.setdefault((pod_fqdn, "A"), []).append(ip)
            if ip not in ips:
                ips.append(ip)
            srv.append(f"0 {weight} {self.port} {pod_fqdn}")
        out[(svc, "A")] = ips
        if self.pod_records:
            out[(svc, "SRV")] = srv
            out[(f"_{self.port_name}._tcp.{svc}", "SRV")] = list(srv)
        return out

    def names(self, domain: str) -> set[str]:
        """Every owner name this service may have published (also when it has no endpoint)."""
        svc = f"{self.service}.{self.namespace}.svc.{domain}."
        return {svc, f"_{self.port_name}._tcp.{svc}"} | {f"{p}.{svc}" for p, _ in self.endpoints}


class ClusterDNS:
    """Cluster DNS on an emulated Network: BIND (+ optional unbound cache), fed by set_endpoints()."""

    def __init__(
        self,
        network: Network,
        domain: str = "cluster.local",
        negative_ttl: int = 5,
        negative_cache: bool = False,
        propagation_delay: float = 0.0,
        host_name: str = "dns",
        query_log: bool = False,
    ) -> None:
        """Describe the DNS; `start()` (or entering the context) creates its hosts and servers."""
        self.network = network
        self.domain = domain.strip(".")
        self.negative_ttl = int(negative_ttl)
        self.negative_cache = negative_cache
        self.propagation_delay = float(propagation_delay)
        self.host_name = host_name
        self.query_log_enabled = query_log
        self.rundir = network.workdir / host_name
        self.bind_host: Host | None = None
        self.cache_host: Host | None = None
        self._secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self._named: subprocess.Popen[Any] | None = None
        self._unbound: subprocess.Popen[Any] | None = None
        self._serial = int(time.time())
        # Endpoint state that has passed the propagation delay: what BIND serves (or will
        # serve once up again). Key: (namespace, service).
        self._published: dict[tuple[str, str], ServiceEndpoints] = {}
        self._pending: collections.deque[tuple[float, ServiceEndpoints]] = collections.deque()
        self._busy = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._server_lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._state = "new"

    # -- lifecycle

    def __enter__(self) -> ClusterDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> ClusterDNS:
        """Create the DNS host(s), start BIND (and unbound), start the update worker."""
        if self._state == "started":
            return self
        if self._state != "new":
            raise RuntimeError("ClusterDNS cannot be restarted after close(); use down()/up()")
        self._state = "started"
        try:
            self.rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.bind_host = self.network.add_host(self.host_name)
            if self.negative_cache:
                self.cache_host = self.network.add_host(f"{self.host_name}-cache")
            self._worker = threading.Thread(
                target=self._work, name=f"dns-updates-{self.network.prefix}", daemon=True
            )
            self._worker.start()
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the worker and the servers and remove the DNS hosts. Idempotent."""
        if self._state != "started":
            self._state = "closed"
            return
        self._state = "closed"
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(10)
        if self.network.running:
            self.stop()
            for host in (self.cache_host, self.bind_host):
                if host is not None and host.name in self.network.hosts:
                    self.network.remove_host(host.name)

    # -- addresses and pod configuration

    @property
    def bind_ip(self) -> str:
        """Address of the authoritative server (BIND)."""
        if self.bind_host is None:
            raise RuntimeError("ClusterDNS not started")
        return self.bind_host.ip

    @property
    def nameserver_ip(self) -> str:
        """The address pods put in resolv.conf: unbound's when caching, else BIND's."""
        return self.cache_host.ip if self.cache_host is not None else self.bind_ip

    def search_path(self, namespace: str) -> list[str]:
        """A pod's resolv.conf search list in `namespace` (like the kubelet writes it)."""
        return [f"{namespace}.svc.{self.domain}", f"svc.{self.domain}", self.domain]

    def configure_host(self, host: Host | str, namespace: str = "pg") -> Path:
        """Write the host's resolv.conf as a pod in `namespace` gets it (ndots:5)."""
        return self.network.write_resolv_conf(
            host, self.nameserver_ip, self.search_path(namespace), ndots=5
        )

    # -- endpoints

    def set_endpoints(
        self,
        namespace: str,
        service: str,
        port_name: str,
        port: int,
        endpoints: Sequence[tuple[str, str]],
        *,
        pod_records: bool = True,
        ttl: int | None = None,
    ) -> None:
        """Publish the ready endpoints (pod hostname, IP) of a headless Service, replacing all.

        Applied asynchronously after `propagation_delay` seconds, in call order; an empty list
        makes every name of the service NXDOMAIN. `flush()` waits for it. `pod_records=False` and a
        `ttl` publish a ClusterIP Service as a name holding its endpoints' addresses.
        """
        for pod, ip in endpoints:
            ipaddress.IPv4Address(ip)  # fail here, not later in the worker
            if not _LABEL_RE.match(pod):
                raise ValueError(f"pod hostname {pod!r} is not a DNS label")
        spec = ServiceEndpoints(namespace, service, port_name, int(port), tuple(endpoints), pod_records, ttl)
        with self._cond:
            self._raise_pending_error()
            if self._state != "started":
                raise RuntimeError("ClusterDNS not started")
            self._pending.append((time.monotonic() + self.propagation_delay, spec))
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every update queued so far is applied (or raise its error / TimeoutError)."""
        timeout = self.propagation_delay + 30.0 if timeout is None else timeout
        with self._cond:
            done = self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)
            self._raise_pending_error()
            if not done:
                raise TimeoutError(f"DNS updates not applied within {timeout:.1f}s")

    def published(self) -> dict[tuple[str, str], ServiceEndpoints]:
        """Endpoint state currently served (after the propagation delay)."""
        with self._server_lock:
            return dict(self._published)

    # -- faults

    @property
    def is_up(self) -> bool:
        """True while the server pods talk to is running."""
        front = self._unbound if self.negative_cache else self._named
        return front is not None and front.poll() is None

    def stop(self) -> None:
        """Stop the DNS servers (fault "DNS down"): pods' queries time out. Records are kept."""
        with self._server_lock:
            for attr in ("_unbound", "_named"):
                proc = getattr(self, attr)
                if proc is not None:
                    self.network.stop_process(proc, grace=5.0)
                    setattr(self, attr, None)

    down = stop

    def up(self) -> None:
        """(Re)start the servers serving the current state (zone rendered afresh, cache empty)."""
        with self._server_lock:
            if self.is_up:
                return
            self.stop()
            self._write_bind_files()
            self._named = self._spawn(
                self.bind_host, ["named", "-g", "-4", "-c", str(self.rundir / "named.conf")],
                "named.log",
            )  # fmt: skip
            self._wait_answering(self.bind_host, self.bind_ip, self._named, "named.log")
            if self.cache_host is not None:
                self._write_unbound_conf()
                self._unbound = self._spawn(
                    self.cache_host, ["unbound", "-d", "-c", str(self.rundir / "unbound.conf")],
                    "unbound.log",
                )  # fmt: skip
                self._wait_answering(self.cache_host, self.cache_host.ip, self._unbound,
                                     "unbound.log")  # fmt: skip

    # -- query log

    def query_log(self) -> list[tuple[str, str, str]]:
        """(client IP, absolute query name, type) of every query the front server logged.

        Needs `query_log=True`. The front server is unbound when caching (then BIND sees only
        cache misses), else BIND. Meant for counting queries per pod in benchmarks.
        """
        if not self.query_log_enabled:
            raise RuntimeError("ClusterDNS(query_log=True) is needed")
        log = self.rundir / ("unbound.log" if self.negative_cache else "named.log")
        out = []
        for line in log.read_text(errors="replace").splitlines():
            m = _QUERY_RE.search(line)
            if m:
                kind = "b" if m.group("bclient") else "u"
                client, name, rdtype = (m.group(kind + f) for f in ("client", "name", "type"))
                out.append((client, name if name.endswith(".") else name + ".", rdtype))
        return out

    def query_count(self, client_ip: str | None = None) -> int:
        """Number of queries logged so far, optionally only those from `client_ip`."""
        return sum(1 for c, _, _ in self.query_log() if client_ip is None or c == client_ip)

    # -- worker: propagation delay, ordering, dynamic updates

    def _work(self) -> None:
        assert self.bind_host is not None
        try:
            nsx.enter_netns(self.bind_host.netns)  # this thread only; it never leaves
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            return
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    if self._pending:
                        delay = self._pending[0][0] - time.monotonic()
                        if delay <= 0:
                            break
                        self._cond.wait(delay)
                    else:
                        self._cond.wait()
                _, spec = self._pending.popleft()
                self._busy = True
            try:
                self._apply(spec)
            except BaseException as exc:
                with self._cond:
                    self._error = self._error or exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _apply(self, spec: ServiceEndpoints) -> None:
        key = (spec.namespace, spec.service)
        with self._server_lock:
            old = self._published.get(key)
            if spec.endpoints:
                self._published[key] = spec
            else:
                self._published.pop(key, None)
            if self._named is None or self._named.poll() is not None:
                return  # down: up() renders the zone from the published state
            update = dns.update.UpdateMessage(
                f"{self.domain}.",
                keyring=dns.tsigkeyring.from_text({TSIG_KEY: self._secret}),
                keyname=dns.name.from_text(TSIG_KEY),
                keyalgorithm=dns.tsig.HMAC_SHA256,
            )
            # Delete every name this service had or has, then add the new RRsets: one atomic
            # update, so clients never see a partial set and SRV weights stay uniform.
            names = spec.names(self.domain) | (old.names(self.domain) if old else set())
            for name in sorted(names):
                update.delete(name)
            for (name, rdtype), rdatas in spec.records(self.domain).items():
                update.add(name, self.negative_ttl if spec.ttl is None else spec.ttl, rdtype, *rdatas)
            response = dns.query.tcp(update, self.bind_ip, timeout=10.0)
            if response.rcode() != dns.rcode.NOERROR:
                raise RuntimeError(
                    f"DNS update for {key} refused: {dns.rcode.to_text(response.rcode())}"
                )

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"DNS update failed: {error}") from error

    # -- servers

    def _spawn(self, host: Host | None, argv: list[str], log: str) -> subprocess.Popen[Any]:
        assert host is not None
        return self.network.spawn(host, argv, log=self.rundir / log)

    def _wait_answering(
        self, host: Host | None, server: str, proc: subprocess.Popen[Any] | None, log: str
    ) -> None:
        """Wait until `server` answers the zone's SOA from inside `host` (fail fast if it died)."""
        assert host is not None and proc is not None
        query = dns.message.make_query(f"{self.domain}.", "SOA")

        def answered() -> bool:
            if proc.poll() is not None:
                tail = (self.rundir / log).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"DNS server exited ({proc.returncode}); {log}:\n{tail}")
            try:
                resp = self.network.call_in(host, dns.query.udp, query, server, timeout=0.5)
            except (OSError, dns.exception.Timeout):
                return False
            return bool(resp.rcode() == dns.rcode.NOERROR and resp.answer)

        wait_until(answered, _START_TIMEOUT, 0.1, f"DNS server {server} to answer")

    def _write_bind_files(self) -> None:
        """named.conf, the cluster zone rendered from the published state, the empty root zone."""
        self._serial += 1
        d = self.rundir
        for jnl in d.glob("*.jnl"):
            jnl.unlink()  # the zone file below is the whole truth
        ttl = self.negative_ttl
        lines = [
            f"$ORIGIN {self.domain}.",
            f"$TTL {ttl}",
            f"@ {ttl} IN SOA ns.dns.{self.domain}. hostmaster.{self.domain}. ({self._serial} "
            f"7200 1800 86400 {ttl})",
            f"@ IN NS ns.dns.{self.domain}.",
            f"ns.dns IN A {self.bind_ip}",
        ]
        for spec in self._published.values():
            record_ttl = ttl if spec.ttl is None else spec.ttl
            for (name, rdtype), rdatas in spec.records(self.domain).items():
                lines += [f"{name} {record_ttl} IN {rdtype} {rdata}" for rdata in rdatas]
        (d / "cluster.zone").write_text("\n".join(lines) + "\n")
        # An authoritative-only server says REFUSED outside its zones; CoreDNS would forward
        # and the world would say NXDOMAIN. An empty root zone gives that NXDOMAIN.
        (d / "root.zone").write_text(
            f"$TTL {ttl}\n@ IN SOA root-ns.invalid. hostmaster.invalid. (1 7200 1800 86400 {ttl})\n"
            f"@ IN NS root-ns.invalid.\nroot-ns.invalid. IN A {self.bind_ip}\n"
        )
        querylog = "yes" if self.query_log_enabled and not self.negative_cache else "no"
        (d / "named.conf").write_text(f"""\
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port 53 {{ {self.bind_ip}; 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ any; }};
    minimal-responses no;
    querylog {querylog};
}};
controls {{ }};
key "{TSIG_KEY}" {{ algorithm hmac-sha256; secret "{self._secret}"; }};
zone "{self.domain}" {{
    type primary;
    file "{d}/cluster.zone";
    allow-update {{ key "{TSIG_KEY}"; }};
}};
zone "." {{ type primary; file "{d}/root.zone"; }};
""")

    def _write_unbound_conf(self) -> None:
        """unbound as CoreDNS's cache: everything from BIND, NXDOMAIN kept for the negative TTL."""
        assert self.cache_host is not None
        d = self.rundir
        (d / "unbound.conf").write_text(f"""\
server:
    interface: {self.cache_host.ip}
    port: 53
    do-ip6: no
    access-control: {GUARD_NET} allow
    access-control: 127.0.0.0/8 allow
    directory: "{d}"
    chroot: ""
    username: ""
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    log-queries: {"yes" if self.query_log_enabled else "no"}
    num-threads: 1
    outgoing-range: 64
    module-config: "iterator"
    qname-minimisation: no
    do-not-query-localhost: no
    prefetch: no
    serve-expired: no
    cache-min-ttl: 0
    cache-max-negative-ttl: {self.negative_ttl}
remote-control:
    control-enable: no
stub-zone:
    name: "{self.domain}."
    stub-addr: {self.bind_ip}
    stub-prime: no
stub-zone:
    name: "."
    stub-addr: {self.bind_ip}
    stub-prime: no
""")
