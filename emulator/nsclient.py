"""DNS client run *inside* a network namespace, the way the agent resolves (dnspython, resolv.conf).

As a script: `ip netns exec NS python nsclient.py < queries.json` prints one JSON result per query.
A query is {"name", "type", "search" (bool, default false), "lifetime" (s), "server" (optional: ask
that address directly instead of resolv.conf's nameserver)}. From Python use `query_in()`.
The script needs only dnspython, so it runs by path (with `python -I`: emulator/dns.py must not
shadow dnspython's `dns` package).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.rcode
import dns.rdatatype
import dns.resolver


def _rrsets(section: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": rrset.name.to_text(),
            "ttl": rrset.ttl,
            "type": dns.rdatatype.to_text(rrset.rdtype),
            "rdata": rdata.to_text(),
        }
        for rrset in section
        for rdata in rrset
    ]


def _describe(response: Any) -> dict[str, Any]:
    return {
        "rcode": dns.rcode.to_text(response.rcode()),
        "aa": bool(response.flags & dns.flags.AA),
        "answer": _rrsets(response.answer),
        "authority": _rrsets(response.authority),
        "additional": _rrsets(response.additional),
    }


def resolve_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Resolve one query with dnspython and describe the outcome and the response as plain data."""
    if spec.get("server"):
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [spec["server"]]
    else:
        resolver = dns.resolver.Resolver()  # /etc/resolv.conf, i.e. the namespace's own
    resolver.lifetime = float(spec.get("lifetime", 3.0))
    resolver.timeout = min(2.0, resolver.lifetime)
    out: dict[str, Any] = {"name": spec["name"], "type": spec.get("type", "A")}
    started = time.monotonic()
    try:
        answer = resolver.resolve(
            spec["name"], out["type"], search=bool(spec.get("search", False)),
            raise_on_no_answer=False,
        )  # fmt: skip
        out["qname"] = answer.qname.to_text()
        out.update(_describe(answer.response))
        out["outcome"] = "answer" if answer.rrset is not None else "noanswer"
    except dns.resolver.NXDOMAIN as exc:
        qname = exc.qnames()[-1]
        out["qname"] = qname.to_text()
        out.update(_describe(exc.responses()[qname]))
        out["outcome"] = "nxdomain"
    except dns.resolver.NoNameservers as exc:
        out.update(outcome="nonameservers", error=str(exc))
    except dns.exception.Timeout as exc:
        out.update(outcome="timeout", error=str(exc))
    except dns.exception.DNSException as exc:
        out.update(outcome="error", error=f"{type(exc).__name__}: {exc}")
    out["elapsed"] = round(time.monotonic() - started, 4)
    return out


def query_in(
    network: Any, host: Any, queries: list[dict[str, Any]], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Run `queries` from inside `host` (a Host or namespace of `network`) and return the results."""
    # -I keeps this directory off sys.path: our dns.py would otherwise shadow dnspython.
    argv = network.exec_argv(host, [sys.executable, "-I", str(Path(__file__).resolve())])
    res = subprocess.run(
        argv, input=json.dumps(queries), capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"nsclient failed ({res.returncode}): {res.stderr.strip()}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def main() -> int:
    """Read a JSON list of queries on stdin, print one JSON result per line."""
    for spec in json.load(sys.stdin):
        print(json.dumps(resolve_one(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
