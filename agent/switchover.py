"""Switchover without an operator: the primary ordinal moves, and the agents hand the role over.

When PGSFS_PRIMARY_ORDINAL changes from F to N and the StatefulSet rolls (highest ordinal first):
- members restarted before the switch follow N even while N is still a standby (cascading);
- N, restarted while still a standby, follows the member that accepts writes (F) and never
  promotes itself (`decide_designated`);
- F's agent, restarting, knows its own postgres is stopped (it cannot accept writes). It promotes N
  once N has received F's WAL up to its shutdown checkpoint, then rejoins N (`decide_handoff`).
So no acknowledged write is lost and at no instant do two members accept writes. Decisions are
pure; `Designated` and `Handoff` carry them out.
"""

from __future__ import annotations

from typing import Any, Callable

from tenacity import wait_fixed

from agent import history, survey
from agent.context import Part
from agent.errors import CommandFailed, SwitchoverBlocked
from agent.waits import poll_until

FOLLOW_WRITABLE = "follow_writable"
AWAIT_PROMOTION = "await_promotion"
REFUSE_MANY_WRITABLE = "refuse_many_writable"

PROMOTE_SUCCESSOR = "promote_successor"
WAIT_FOR_SUCCESSOR = "wait_for_successor"
REFUSE_UNCLEAN = "refuse_unclean"
REFUSE_WRITABLE = "refuse_writable"
REFUSE_OTHER_TIMELINE = "refuse_other_timeline"
PROMOTED_ALREADY = "promoted_already"  # seen, not decided: someone promoted the successor meanwhile

START_PRIMARY = "start_primary"
REFUSE_OTHER_PRIMARY = "refuse_other_primary"


def decide_designated(writable: list[str]) -> str:
    """The primary ordinal holds a standby: follow the one writable member, or wait to be promoted."""
    if len(writable) > 1:
        return REFUSE_MANY_WRITABLE
    return FOLLOW_WRITABLE if writable else AWAIT_PROMOTION


def decide_primary_restart(writable: list[str]) -> str:
    """The primary ordinal holds a primary's data: start it only while no other member accepts
    writes (one promoted while this member was away must not get a rival)."""
    return REFUSE_OTHER_PRIMARY if writable else START_PRIMARY


def decide_handoff(local: history.LocalPosition, successor_timeline: int, successor_received: int,
                   writable: list[str]) -> str:  # fmt: skip
    """A former primary (its postgres stopped) and its successor N, still a standby: promote N?

    Only when no member accepts writes, this member shut down cleanly (so nothing past its shutdown
    checkpoint exists), and N received WAL past that checkpoint on the same timeline: every commit
    lies before the checkpoint, so N has them all.
    """
    if writable:
        return REFUSE_WRITABLE
    if not local.clean:
        return REFUSE_UNCLEAN
    if successor_timeline != local.timeline:
        return REFUSE_OTHER_TIMELINE
    return PROMOTE_SUCCESSOR if successor_received > local.lsn else WAIT_FOR_SUCCESSOR


def writable_members(part: Part, timeout: float) -> tuple[list[str], list[str]]:
    """Ask every other member whether it accepts writes: (the writable ones, those not asked).

    Fails open on silence (a member that cannot be asked is logged, not counted): the one member
    that could accept writes is the one whose postgres is known to be stopped, or this one.
    """
    peers, unchecked = part._survey_members(timeout, stop_early=False)
    writable = [m.name.split(".")[0] for m in peers.members.values() if m.writable]
    silent = [m.name.split(".")[0] for m in peers.members.values() if m.state == survey.SILENT]
    return sorted(writable), sorted(silent + [n.split(".")[0] for n in unchecked])


def _ask_writable(part: Part, event: str, timeout: float, decide: Callable[[list[str]], str]) -> tuple[str, list[str]]:
    """Survey who accepts writes, decide, and log the phase `event` with both."""
    started = part.world.clock()
    writable, unasked = writable_members(part, timeout)
    decision = decide(writable)
    part._phase(event, started, decision=decision, writable=writable or None, unasked=unasked or None)
    return decision, writable


def promote_over_sql(host: str, hostaddr: str, port: int, user: str, password: str) -> bool:
    """pg_promote() on another member as the superuser, waiting up to 60 s for it to finish."""
    import psycopg

    with psycopg.connect(host=host, hostaddr=hostaddr, port=port, user=user, password=password, dbname="postgres",
                         connect_timeout=5, autocommit=True) as conn:  # fmt: skip
        row = conn.execute("SELECT pg_promote(true, 60)").fetchone()
    return bool(row and row[0])


class Designated(Part):
    """The primary ordinal's agent when PGDATA is still a standby: whom to follow meanwhile."""

    def upstream(self) -> str | None:
        """The pod name to follow (the one writable member), or None to wait unconnected."""
        timeout = min(self.config.peer_check_timeout, 10.0)
        decision, writable = _ask_writable(self, "designated_standby", timeout, decide_designated)
        if decision == REFUSE_MANY_WRITABLE:
            raise SwitchoverBlocked(
                f"this member holds the primary ordinal and is still a standby, and {', '.join(writable)} all "
                "accept writes: the cluster already has two primaries; nothing was changed here",
                hint="stop the member that should not be primary (its writes since the split need reconciling by "
                "hand), then restart this pod",
                writable=writable,
            )
        if decision == AWAIT_PROMOTION:
            self.log.warning(
                "awaiting_promotion",
                note="no member accepts writes: this standby waits, unconnected, to be promoted; the former "
                "primary's agent promotes it when that pod restarts (a switchover). If the former primary is "
                f"lost, run `kubectl exec {self.config.identity.pod_name} -- pg-sfs-agent promote`",
            )
            return None
        self.log.info(
            "following_until_promoted",
            upstream=writable[0],
            note=f"a switchover in progress: this standby follows {writable[0]} until that member's agent, at "
            "its restart, promotes it",
        )
        return writable[0]


class PrimaryGuard(Part):
    """Before the primary ordinal starts its primary: is another member already writable?"""

    def check(self) -> None:
        """Refuse (exit 15, data untouched) while another member accepts writes."""
        timeout = min(self.config.peer_check_timeout, 2.0)
        decision, writable = _ask_writable(self, "writable_check", timeout, decide_primary_restart)
        if decision == REFUSE_OTHER_PRIMARY:
            who = ", ".join(writable)
            raise SwitchoverBlocked(
                f"this member holds the primary ordinal, but {who} accept(s) writes (promoted while this one "
                "was away?): starting here would make two primaries; the data here was left untouched",
                hint=f"if {who} is to stay the primary, set the primary ordinal to its ordinal and apply: this "
                "member then rejoins it (rewound if it diverged, its own WAL copied aside); otherwise stop "
                f"{who} and restart this pod",
                decision=decision,
                writable=writable,
            )


class Handoff(Part):
    """A former primary's agent whose successor is still a standby: promote it, without losing a write."""

    def run(self, address: str, identify: Callable[[], Any], local: history.LocalPosition) -> None:
        """Wait (bounded) until the successor has WAL past `local` (this member's shutdown checkpoint,
        from pg_controldata), then promote it; else refuse."""
        cfg = self.config
        started = self.world.clock()
        successor = cfg.primary_fqdn.rstrip(".")
        writable, unasked = writable_members(self, min(cfg.peer_check_timeout, 10.0))
        seen: dict[str, Any] = {}

        def attempt() -> str:
            self.world.beat("switchover")
            result = identify()
            if result.info is None:
                seen.update(outcome=result.outcome, detail=result.detail)
                return WAIT_FOR_SUCCESSOR
            if not result.info.in_hot_standby:
                return PROMOTED_ALREADY
            received = history.parse_lsn(result.info.xlogpos)
            seen.update(timeline=result.info.timeline, received=result.info.xlogpos)
            return decide_handoff(local, result.info.timeline, received, writable)

        decision = poll_until(
            attempt,
            done=lambda d: d != WAIT_FOR_SUCCESSOR,
            wait=wait_fixed(0.2),
            deadline=started + cfg.switchover_timeout,
            clock=self.world.clock,
            sleep=self.world.sleep,
        )
        fields = dict(successor=successor, decision=decision, checkpoint=history.format_lsn(local.lsn),
                      timeline=local.timeline, clean=local.clean, writable=writable or None,
                      unasked=unasked or None, successor_seen=seen or None)  # fmt: skip
        if decision == PROMOTED_ALREADY:
            self._phase("switchover_handoff", started, **fields)
            return
        if decision != PROMOTE_SUCCESSOR:
            raise self._blocked(decision, successor, local, writable)
        try:
            promoted = promote_over_sql(successor, address, cfg.port, cfg.superuser, cfg.superuser_password.reveal())
        except Exception as exc:  # psycopg.Error; kept broad so no traceback reaches the user
            raise CommandFailed(
                f"could not promote {successor}: {' '.join(str(exc).split())}",
                hint="the successor must accept the superuser (POSTGRES_USER) over the network; the pod restarts "
                f"and tries again, or promote it by hand: kubectl exec {successor.split('.')[0]} -- pg-sfs-agent "
                "promote",
            ) from exc
        self._phase("switchover_promoted", started, promoted=promoted, **fields)

    def _blocked(self, decision: str, successor: str, local: history.LocalPosition,
                 writable: list[str]) -> SwitchoverBlocked:  # fmt: skip
        me = self.config.identity.pod_name
        short = successor.split(".", maxsplit=1)[0]
        back = (f"set PGSFS_PRIMARY_ORDINAL back to {self.config.identity.ordinal} (this member then starts as the "
                "primary again, nothing lost)")  # fmt: skip
        why = {
            REFUSE_WRITABLE: f"{', '.join(writable)} accept(s) writes, so promoting {short} would make two primaries",
            REFUSE_UNCLEAN: "this member did not shut down cleanly, so it may hold commits past what "
            f"{short} received",
            REFUSE_OTHER_TIMELINE: f"{short} is on another timeline than this member",
            WAIT_FOR_SUCCESSOR: f"{short} did not receive this member's WAL up to its shutdown checkpoint "
            f"({history.format_lsn(local.lsn)}) within PGSFS_SWITCHOVER_TIMEOUT",
        }[decision]
        return SwitchoverBlocked(
            f"switchover to {short} not done: {why}; {me}'s data was left untouched and {short} not promoted",
            hint=f"either {back}, or, accepting that writes only {me} has are lost (its WAL is copied aside when it "
            f"is rewound), run `kubectl exec {short} -- pg-sfs-agent promote`",
            decision=decision,
        )
