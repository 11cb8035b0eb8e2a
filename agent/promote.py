"""`pg-sfs-agent promote`: make this replica the primary after the primary is lost, never beside one.

Run in the replica's pod (`kubectl exec postgresql-sfs-N -- pg-sfs-agent promote`). It asks every
member (SRV targets and ordinals, as the re-init guard does) over SQL what it is and how much WAL
it holds, then promotes this one only when no member accepts writes, every member that resolves
answered (or the operator named it with `--assume-down`), and none holds more WAL: the timeline
first, then the furthest of what it received and what it replayed, so a commit acknowledged by a
synchronous standby's flush is never behind the one promoted (`--even-if-behind` overrides only
that last rule). `--dry-run` only reports. The report is JSON on stdout; the decision is the pure
`decide`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Callable

from agent import discovery, probe, survey
from agent.config import Config
from agent.errors import CommandFailed, PromoteRefused
from agent.history import parse_lsn
from agent.usage import parser_for

# pg_current_wal_flush_lsn() raises on a standby: CASE calls it only on a primary. A standby's
# timeline is the newer of its last restartpoint's and the one its WAL receiver streams.
QUERY = (
    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END, "
    "GREATEST((SELECT timeline_id FROM pg_control_checkpoint()), (SELECT received_tli FROM pg_stat_wal_receiver))"
)


@dataclass(frozen=True)
class MemberView:
    """What one member said: reachable, a standby or not, its timeline and positions."""

    member: str
    reachable: bool
    in_recovery: bool | None = None
    timeline: int | None = None
    received: str | None = None
    replayed: str | None = None
    written: str | None = None
    detail: str = ""

    @property
    def holds(self) -> tuple[int, int]:
        """How much WAL it holds, comparable across members: (timeline, furthest of received and replayed)."""
        return (self.timeline or 0, max(_lsn(self.received), _lsn(self.replayed), _lsn(self.written)))


def _lsn(text: str | None) -> int:
    return parse_lsn(text) if text else -1


def decide(local: MemberView, others: list[MemberView], even_if_behind: bool,
           assume_down: frozenset[str] = frozenset()) -> str | None:  # fmt: skip
    """Why this member must not be promoted now, or None when it may.

    Fails closed: a member that resolves but does not answer may be a primary cut off from this
    member and not from its clients, so it blocks unless the operator named it in `assume_down`.
    """
    if not local.reachable or local.in_recovery is not True:
        return f"this member ({local.member}) is not a running standby: {local.detail or 'not in recovery'}"
    writable = [o.member for o in others if o.reachable and o.in_recovery is False]
    if writable:
        return f"{', '.join(writable)} accept(s) writes: promoting here would make two primaries"
    unknown = sorted(assume_down - {o.member for o in others})
    if unknown:
        return f"--assume-down names {', '.join(unknown)}, which did not resolve as a member: check the pod names"
    answering = sorted(o.member for o in others if o.reachable and o.member in assume_down)
    if answering:
        return f"--assume-down names {', '.join(answering)}, which answered: it is not down"
    silent = [o for o in others if not o.reachable and o.member not in assume_down]
    if silent:
        said = "; ".join(f"{o.member}: {o.detail or 'no answer'}" for o in silent)
        return (
            f"{', '.join(o.member for o in silent)} resolve(s) but did not answer ({said}): a primary cut off from "
            "this member may still take its clients' writes. Check that pod and its node; only once it is down "
            "(or its node is gone), pass --assume-down with its name"
        )
    ahead = [o.member for o in others if o.reachable and o.in_recovery and o.holds > local.holds]
    if ahead and not even_if_behind:
        return (
            f"{', '.join(ahead)} hold(s) more WAL than this member (timeline {local.timeline}, received "
            f"{local.received}, replayed {local.replayed}): promote the most advanced one instead, or pass "
            "--even-if-behind to lose what only they have"
        )
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """promote's arguments; --help prints help and exits 0, anything unknown is a ConfigError."""
    parser = parser_for(
        "promote",
        "Promote this replica to primary after the primary is lost, never beside another primary. "
        "Run it in the replica's pod: kubectl exec postgresql-sfs-N -- pg-sfs-agent promote. Every member is "
        "asked over SQL; the JSON report on stdout shows what each said.",
    )
    parser.add_argument("--dry-run", action="store_true", help="report and decide, promote nothing")
    parser.add_argument("--even-if-behind", action="store_true",
                        help="promote although another standby holds more WAL (what only it has is lost)")  # fmt: skip
    parser.add_argument("--assume-down", action="append", default=[], metavar="POD",
                        help="a member that resolves but does not answer, which you checked is down (its pod or "
                        "node gone); repeat for several. Without it such a member blocks the promotion")  # fmt: skip
    return parser.parse_args(argv)


def _ask(connect: Callable[..., Any], member: str, **where: Any) -> MemberView:
    import psycopg

    try:
        with connect(**where) as conn:
            row = conn.execute(QUERY).fetchone()
    except psycopg.Error as exc:
        return MemberView(member, False, detail=" ".join(str(exc).split()))
    in_recovery, received, replayed, written, timeline = row
    return MemberView(member, True, bool(in_recovery), int(timeline), received, replayed, written)


def each_member(config: Config, lookup: discovery.Lookup) -> Iterator[tuple[str, int | None, str]]:
    """The other members the re-init guard would ask (SRV targets, then ordinals past the highest
    found) that resolve: FQDN, ordinal when known, address."""
    srv, _, _ = discovery.service_srv(lookup, config.srv_fqdn, config.service_fqdn)

    def pod_fqdn(n: int) -> str:
        return config.pod_fqdn(config.identity.peer_pod(n))

    targets, own_fqdn = [r.fqdn for r in srv], config.pod_fqdn(config.identity.pod_name).lower()
    found: set[int] = set()
    asked: set[str] = set()
    while pending := [n for n in survey.member_names(targets, pod_fqdn, found, own_fqdn) if n not in asked]:
        for name in pending:
            asked.add(name)
            address, _ = survey.resolve(lookup, name)
            if address is None:
                continue
            ordinal = survey.ordinal_of(name, pod_fqdn, found)
            if ordinal is not None:
                found.add(ordinal)
            yield name, ordinal, address


def observe(config: Config, lookup: discovery.Lookup) -> tuple[MemberView, list[MemberView]]:
    """This member (over its Unix socket) and every other member that resolves (over TCP)."""
    import psycopg

    def connect(**where: Any) -> Any:
        return psycopg.connect(user=config.superuser, password=config.superuser_password.reveal(),
                               dbname="postgres", connect_timeout=3, autocommit=True, **where)  # fmt: skip

    running = probe.postmaster_status(config.pgdata)
    own = config.identity.pod_name
    if running is None:
        local = MemberView(own, False, detail="postgres is not running in this pod")
    else:
        try:
            # The superuser's password goes only to postgres' own socket, not where a file points.
            socket_path = probe.own_socket(config.pgdata, running[1], config.port)
        except probe.ProbeFailed as exc:
            local = MemberView(own, False, detail=str(exc))
        else:
            local = _ask(connect, own, host=os.path.dirname(socket_path), hostaddr="", port=config.port)
    others = [_ask(connect, name.split(".")[0], host=name.rstrip("."), hostaddr=address, port=config.port)
              for name, _, address in each_member(config, lookup)]  # fmt: skip
    return local, others


def run(args: argparse.Namespace, config: Config, lookup: discovery.Lookup, log: Any) -> int:
    """Report, decide, and (unless --dry-run) promote this member; 0 on success, 14 when refused."""
    import psycopg

    dry_run = bool(args.dry_run)
    local, others = observe(config, lookup)
    refusal = decide(local, others, even_if_behind=bool(args.even_if_behind),
                     assume_down=frozenset(args.assume_down))  # fmt: skip
    report: dict[str, Any] = {"member": asdict(local), "others": [asdict(o) for o in others], "refused": refusal,
                              "assumed_down": sorted(args.assume_down) or None}  # fmt: skip
    if refusal is None and not dry_run:
        running = probe.postmaster_status(config.pgdata)
        assert running is not None
        # The superuser's password goes only to postgres' own socket (observe checked it as well).
        socket_dir = os.path.dirname(probe.own_socket(config.pgdata, running[1], config.port))
        with psycopg.connect(host=socket_dir, hostaddr="", port=config.port, user=config.superuser,
                             password=config.superuser_password.reveal(), dbname="postgres",
                             autocommit=True) as conn:  # fmt: skip
            promoted = conn.execute("SELECT pg_promote(true, 60)").fetchone()
        report["promoted"] = bool(promoted and promoted[0])
    print(json.dumps(report, indent=2, sort_keys=True))
    sys.stdout.flush()
    if refusal is not None:
        raise PromoteRefused(
            f"not promoting {local.member}: {refusal}; nothing was changed",
            hint="see the report on stdout: each member's role, timeline and received/replayed positions",
        )
    if not dry_run and not report["promoted"]:
        raise CommandFailed(
            f"pg_promote() on {local.member} did not report the promotion done within 60 s",
            hint="check `SELECT pg_is_in_recovery()` in this pod: if still true, see postgres' log and run promote "
            "again; if false, it finished late: move the primary ordinal to this member",
        )
    if not dry_run:
        log.warning(
            "promoted",
            member=local.member,
            timeline_was=local.timeline,
            replayed=local.replayed,
            note=f"now set the primary ordinal to {config.identity.ordinal} in kustomization.yaml "
            "(postgresql-primary) and apply: every member then follows this one (README, 'Lost primary volume')",
        )
    return 0
