"""Switchover without an operator: the primary ordinal moves, and the agents hand the role over.

When PGSFS_PRIMARY_ORDINAL changes from F to N and the StatefulSet rolls (highest ordinal first):
- members restarted before the switch follow N even while N is still a standby (cascading);
- N, restarted while still a standby, follows the member that accepts writes (F) and never
  promotes itself (`decide_designated`);
- F's agent, restarting, knows its own postgres is stopped (it cannot accept writes). It promotes N
  once N has received F's WAL up to its shutdown checkpoint, then rejoins N (`decide_handoff`). If F
  was killed, its postgres first runs as a read-only standby serving its WAL until N has all of it.
So no acknowledged write is lost and at no instant do two members accept writes. Decisions are
pure; `Designated` and `Handoff` carry them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tenacity import wait_fixed

from agent import history, replication, survey
from agent.context import Part
from agent.errors import CommandFailed, SwitchoverBlocked
from agent.files import remove_durably
from agent.identity import slot_name_for
from agent.pgdata import HANDOFF_MARKER, newest_timeline
from agent.plan import PASSFILE_NAME
from agent.render import HANDOFF_SUFFIX, primary_conninfo, synchronous_standby_names
from agent.successor import promote_over_sql, redirect_successor, set_until_reload
from agent.waits import poll_until

if TYPE_CHECKING:
    from agent.config import Config
    from agent.ownwal import OwnWalServer

FOLLOW_WRITABLE = "follow_writable"
AWAIT_PROMOTION = "await_promotion"
REFUSE_MANY_WRITABLE = "refuse_many_writable"

PROMOTE_SUCCESSOR = "promote_successor"
WAIT_FOR_SUCCESSOR = "wait_for_successor"
SERVE_OWN_WAL = "serve_own_wal"
REFUSE_WRITABLE = "refuse_writable"
REFUSE_OTHER_TIMELINE = "refuse_other_timeline"
PROMOTED_ALREADY = "promoted_already"  # seen, not decided: someone promoted the successor meanwhile

HAND_OFF = "hand_off"
KEEP_ROLE = "keep_role"
REFUSE_TEMPLATES_DISAGREE = "refuse_templates_disagree"

START_PRIMARY = "start_primary"
REFUSE_OTHER_PRIMARY = "refuse_other_primary"
REFUSE_NEWER_TIMELINE = "refuse_newer_timeline"


def decide_designated(writable: list[str]) -> str:
    """The primary ordinal holds a standby: follow the one writable member, or wait to be promoted."""
    if len(writable) > 1:
        return REFUSE_MANY_WRITABLE
    return FOLLOW_WRITABLE if writable else AWAIT_PROMOTION


def decide_primary_restart(writable: list[str], newer: list[str] | None = None) -> str:
    """The primary ordinal holds a primary's data: start it only while no other member accepts
    writes and none holds a newer timeline than this one (a member promoted while this one was away
    must not get a rival, even while it restarts: its writes are the newest)."""
    if writable:
        return REFUSE_OTHER_PRIMARY
    return REFUSE_NEWER_TIMELINE if newer else START_PRIMARY


def decide_handoff(timeline: int, wal_end: int, successor_timeline: int | None, successor_received: int | None,
                   writable: list[str], serving: bool, newer: list[str] | None = None) -> str:  # fmt: skip
    """A former primary (its postgres stopped) whose WAL ends at `wal_end`, and its successor N, still a
    standby: promote N?

    Only when no member accepts writes or holds a newer timeline (one promoted by hand meanwhile holds
    writes neither has), and N, on the same timeline, has received this member's WAL to its end: every
    commit it acknowledged lies before that end. Until then its WAL is served by a read-only standby
    here (SERVE_OWN_WAL), whether it was killed or shut down cleanly while N lagged. N's timeline and
    position None: its postgres runs but takes no connection yet (a standby whose hot standby waits for
    WAL only this member has, review M8): never promoted so, but served, which may be what it waits for.
    """
    if writable:
        return REFUSE_WRITABLE
    if newer:
        return REFUSE_NEWER_TIMELINE
    if successor_timeline is None or successor_received is None:
        return WAIT_FOR_SUCCESSOR if serving else SERVE_OWN_WAL
    if successor_timeline != timeline:
        return REFUSE_OTHER_TIMELINE
    if successor_received >= wal_end:
        return PROMOTE_SUCCESSOR
    return WAIT_FOR_SUCCESSOR if serving else SERVE_OWN_WAL


def decide_template(own_ordinal: int, own_born: float | None, successor_ordinal: int,
                    successor_names: int | None, successor_born: float | None) -> str:  # fmt: skip
    """A former primary whose template names `successor_ordinal` as the primary, before it hands off:
    whose pod template is current? (review M3)

    A container restart keeps its pod's template. If the successor's template names this member,
    one of the two is stale, and the younger pod has the current one (a rollout replaces old pods,
    never the reverse): when the successor's pod is younger, this member keeps its role (it was
    promoted by a handoff and restarted before the rollout reached it); when this pod is younger
    (a switch to a lower ordinal: the former primary is rolled first), it hands off. Unknown
    (older agents, no POD_UID) keeps the handoff, as before.
    """
    if successor_names is None or successor_names == successor_ordinal:
        return HAND_OFF
    if own_born is None or successor_born is None or successor_born <= own_born:
        return HAND_OFF
    return KEEP_ROLE if successor_names == own_ordinal else REFUSE_TEMPLATES_DISAGREE


def rivals(part: Part, own_timeline: int | None = None,
           timeout: float | None = None) -> tuple[list[str], list[str], list[str]]:  # fmt: skip
    """The other members that accept writes, those on a newer timeline than `own_timeline` (none
    when it is None), and those that stayed silent, each a pod name (the newer ones with their
    timeline). Silence is reported, not counted: the caller decides what it may risk.

    Members that answer make this quick; one that resolves but stays silent is waited for, up to
    `timeout` (PGSFS_PEER_CHECK_TIMEOUT): a restarting member's agent announces what it holds (its
    timeline too) within a second or two of its start.
    """
    wait = part.config.peer_check_timeout if timeout is None else timeout
    peers, unchecked = part._survey_members(wait, stop_early=False)
    members = list(peers.members.values())
    writable = sorted(m.name.split(".")[0] for m in members if m.writable)
    newer = sorted(f"{m.name.split('.')[0]} (timeline {m.timeline})" for m in members
                   if own_timeline is not None and m.timeline is not None and m.timeline > own_timeline)  # fmt: skip
    silent = sorted([m.name.split(".")[0] for m in members if m.state == survey.SILENT] +
                    [n.split(".")[0] for n in unchecked])  # fmt: skip
    if peers.dns_problem:  # nobody could even be looked up: that is silence too
        silent.append(f"every member (DNS: {peers.dns_problem})")
    return writable, newer, silent


def _ask_writable(part: Part, event: str, timeout: float, decide: Callable[[list[str]], str]) -> tuple[str, list[str]]:
    """Survey who accepts writes, decide, and log the phase `event` with both."""
    started = part.world.clock()
    writable, _, unasked = rivals(part, timeout=timeout)
    decision = decide(writable)
    part._phase(event, started, decision=decision, writable=writable or None, unasked=unasked or None)
    return decision, writable


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
                note="no member accepts writes: this standby waits to be promoted, streaming from the member it "
                "followed before (else from nobody); the former primary's agent promotes it when that pod restarts "
                "(a switchover). If the former primary is "
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
    """Before the primary ordinal starts its primary: is another member writable, or on a newer timeline?"""

    def check(self) -> None:
        """Refuse (exit 15, data untouched) while another member accepts writes or holds a newer timeline."""
        started = self.world.clock()
        own = newest_timeline(self.pgdata)
        writable, newer, silent = rivals(self, own)
        decision = decide_primary_restart(writable, newer)
        self._phase("writable_check", started, decision=decision, timeline=own, writable=writable or None,
                    newer_timeline=newer or None, unasked=silent or None)  # fmt: skip
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
        if decision == REFUSE_NEWER_TIMELINE:
            who = ", ".join(newer)
            raise SwitchoverBlocked(
                f"this member holds the primary ordinal on timeline {own}, but {who} hold(s) a newer timeline: "
                "a member was promoted while this one was away and may hold writes this one lacks; starting here "
                "would fork the cluster. The data here was left untouched",
                hint="set the primary ordinal to the member on the newest timeline and apply (this member then "
                "rejoins it); see README, 'Lost primary volume'",
                decision=decision,
                newer_timeline=newer,
            )
        if silent:
            # Not refused: a member whose pod exists but never runs (a lost node, a long crash loop) would
            # otherwise hold the primary down, and the ordinal-move runbook would deadlock (README).
            self.log.warning(
                "started_beside_silent_members", silent=silent,
                note="these members resolve but did not answer within PGSFS_PEER_CHECK_TIMEOUT; if one of them "
                "was promoted while this member was away, it refuses to follow this one (newer timeline, exit 12, "
                "its data untouched): then move the primary ordinal to it",
            )  # fmt: skip


class Handoff(Part):
    """A former primary's agent whose successor is still a standby: promote it, without losing a write."""

    def __init__(self, ctx: Any, promote: Callable[..., bool | None] = promote_over_sql,
                 redirect: Callable[..., None] = redirect_successor,
                 set_setting: Callable[..., str] = set_until_reload) -> None:  # fmt: skip
        super().__init__(ctx)
        self.promote = promote
        self.redirect = redirect
        self.set_setting = set_setting

    def run(self, address: str, identify: Callable[[], Any], local: history.LocalPosition, wal_end: int,
            own_wal: OwnWalServer) -> bool:  # fmt: skip
        """Wait (bounded) until the successor has received this member's WAL to `wal_end` (fixed before
        anything reads it), serving that WAL from a read-only standby here while it lacks some; then
        promote it, else refuse. Returns True when it served (PGDATA is then a standby's).
        """
        started = self.world.clock()
        # The same look as the primary ordinal's before it starts: a member promoted by hand meanwhile
        # (writable, or on a newer timeline) must not get a rival (review H2, found by the role model).
        writable, newer, unasked = rivals(self, max(local.timeline, newest_timeline(self.pgdata)))
        cfg = self.config
        successor = cfg.primary_fqdn.rstrip(".")
        seen: dict[str, Any] = {}

        alive: list[Callable[[], None]] = []
        pointed: list[bool] = []

        def attempt(serving: bool) -> str:
            self.world.beat("switchover")
            for check in alive:
                check()
            result = identify()
            if result.info is None:
                seen.update(outcome=result.outcome, detail=result.detail)
                if result.outcome == replication.STARTING:  # it runs, but cannot answer yet
                    return decide_handoff(local.timeline, end(), None, None, writable, serving, newer)
                return WAIT_FOR_SUCCESSOR
            if not result.info.in_hot_standby:
                return PROMOTED_ALREADY
            if serving and not pointed and self._point_successor(successor, address, here=True):
                pointed.append(True)
            seen.update(timeline=result.info.timeline, received=result.info.xlogpos)
            received = history.parse_lsn(result.info.xlogpos)
            return decide_handoff(local.timeline, end(), result.info.timeline, received, writable, serving, newer)

        def end() -> int:
            # A recovery alone (review M8) appends its checkpoints: the successor gets those too, so this
            # member rejoins it as it is, on its history.
            return own_wal.recovered_end if own_wal.recovered_end is not None else wal_end

        def wait(serving: bool) -> str:
            return poll_until(lambda: attempt(serving), done=lambda d: d != WAIT_FOR_SUCCESSOR, wait=wait_fixed(0.2),
                              deadline=started + cfg.switchover_timeout, clock=self.world.clock,
                              sleep=self.world.sleep)  # fmt: skip

        decision = wait(serving=False)
        served = decision == SERVE_OWN_WAL
        try:
            if served:
                self.log.info(
                    "serving_own_wal", wal_end=history.format_lsn(wal_end), successor_received=seen.get("received"),
                    note="its successor lacks WAL this former primary has (it may hold acknowledged commits): its "
                    "postgres runs as a read-only standby, connected to nobody, so the successor streams that WAL "
                    "from here to its end; then it is stopped",
                )  # fmt: skip
                with own_wal.serving() as running:
                    alive.append(running)
                    # The successor may have started connected to nobody (no member was writable
                    # then): point it here, and back at its own settings once done. One that takes
                    # no connection yet is pointed once it does (it may already follow this member).
                    if self._point_successor(successor, address, here=True):
                        pointed.append(True)
                    try:
                        decision = wait(serving=True)
                    finally:
                        if pointed:
                            self._point_successor(successor, address, here=False)
            fields = dict(successor=successor, decision=decision, wal_end=history.format_lsn(end()),
                          timeline=local.timeline, clean=local.clean, served_own_wal=served or None,
                          writable=writable or None, newer_timeline=newer or None, unasked=unasked or None,
                          successor_seen=seen or None)  # fmt: skip
            if decision == PROMOTED_ALREADY:
                self._phase("switchover_handoff", started, **fields)
            elif decision != PROMOTE_SUCCESSOR:
                raise self._blocked(decision, successor, wal_end, writable, newer, served,
                                    never_opened=served and not own_wal.opened)  # fmt: skip
            else:
                promoted = self._promote(successor, address)
                self._phase("switchover_promoted", started, promoted=promoted, **fields)
        except BaseException:
            if served:  # not handed over: PGDATA is the former primary's again for the next start
                own_wal.give_back()
            raise
        if served:
            own_wal.handed_over()
        return served

    def _point_successor(self, successor: str, address: str, *, here: bool) -> bool:
        cfg = self.config
        conninfo = primary_conninfo(
            host=cfg.pod_fqdn(cfg.identity.pod_name).rstrip("."), port=cfg.port, user=cfg.replication_user,
            passfile=str(cfg.state_dir / PASSFILE_NAME),
            application_name=f"{successor.split('.', maxsplit=1)[0]}{HANDOFF_SUFFIX}",
        )  # fmt: skip
        try:
            self.redirect(successor, address, cfg.port, cfg.superuser, cfg.superuser_password.reveal(),
                          conninfo if here else None)  # fmt: skip
            return True
        except Exception as exc:  # psycopg.Error; kept broad so no traceback reaches the user
            detail = " ".join(str(exc).split())
            if here and replication.classify_error(detail) == replication.STARTING:
                self.log.warning("successor_not_pointed", successor=successor, detail=detail,
                                 note="it takes no connection yet; pointed here once it does, and it may already "
                                 "follow this member by its own settings")  # fmt: skip
                return False
            if here:
                raise CommandFailed(
                    f"could not point {successor} at this former primary to stream its WAL: {detail}",
                    hint="the successor must accept the superuser (POSTGRES_USER) over the network; the pod restarts "
                    "and tries again",
                ) from exc
            self.log.warning("handoff_conninfo_left", successor=successor, detail=detail,
                             note="its agent removes it at that member's next start")  # fmt: skip
            return False

    def _promote(self, successor: str, address: str) -> bool:
        return promote_successor(self.config, self.log, successor, address, self.promote, self.set_setting)

    def _blocked(self, decision: str, successor: str, wal_end: int, writable: list[str], newer: list[str],
                 served: bool, never_opened: bool = False) -> SwitchoverBlocked:  # fmt: skip
        me = self.config.identity.pod_name
        short = successor.split(".", maxsplit=1)[0]
        back = (f"set the primary ordinal back to {self.config.identity.ordinal}, apply, and delete this pod "
                f"(kubectl delete pod {me}: the rollout restarts the highest ordinal first and waits for it, while "
                "this pod, on the old revision, would never be reached); it then starts as the primary again, "
                "nothing lost")  # fmt: skip
        why = {
            REFUSE_WRITABLE: f"{', '.join(writable)} accept(s) writes, so promoting {short} would make two primaries",
            REFUSE_NEWER_TIMELINE: (
                f"{', '.join(newer)} hold(s) a newer timeline (promoted by hand meanwhile?), so promoting {short} "
                "would fork the cluster"
            ),
            REFUSE_OTHER_TIMELINE: f"{short} is on another timeline than this member",
            WAIT_FOR_SUCCESSOR: (
                f"{short} did not receive this member's WAL to its end ({history.format_lsn(wal_end)}"
                f"{', served by a read-only standby here' if served else ''}) within PGSFS_SWITCHOVER_TIMEOUT"
            ),
        }[decision]
        hint = (f"either {back}, or, accepting that writes only {me} has are lost (its WAL is copied aside when it "
                f"is rewound), run `kubectl exec {short} -- pg-sfs-agent promote`")  # fmt: skip
        if never_opened:
            # Review M8: hot standby waits for a snapshot that is not overflowed, which WAL that ends
            # with a transaction of more than 64 open subtransactions never gives. As a primary, crash
            # recovery does not need one.
            why = (f"the read-only standby started here to serve {short} this member's WAL never accepted "
                   f"connections within PGSFS_SWITCHOVER_TIMEOUT (hot standby could not open: one cause is a "
                   "transaction with more than 64 subtransactions open when this member stopped)")  # fmt: skip
            hint = (f"{back}; its crash recovery as the primary needs no hot standby, and once it runs, "
                    "switch again: a clean shutdown leaves nothing to serve")  # fmt: skip
        if decision == REFUSE_NEWER_TIMELINE:
            hint = ("set the primary ordinal to the member on the newest timeline and apply: this member then "
                    "rejoins it (rewound if it diverged, its own WAL copied aside); see README, 'Lost primary volume'")
        return SwitchoverBlocked(
            f"switchover to {short} not done: {why}; {me}'s data was left untouched and {short} not promoted",
            hint=hint, decision=decision,
        )  # fmt: skip


def promote_successor(cfg: Config, log: Any, successor: str, address: str,
                      promote: Callable[..., bool | None] = promote_over_sql,
                      set_setting: Callable[..., str] = set_until_reload) -> bool:  # fmt: skip
    """Promote `successor` (the primary ordinal of `cfg`) at `address`, synchronous from its first commit
    when replication is; CommandFailed when it could not be, or when that address is not that member."""
    try:
        _synchronous_from_the_first_commit(cfg, log, successor, address, set_setting)
        promoted = promote(successor, address, cfg.port, cfg.superuser, cfg.superuser_password.reveal(),
                           slot_name_for(successor.split(".", maxsplit=1)[0]))  # fmt: skip
    except Exception as exc:  # psycopg.Error; kept broad so no traceback reaches the user
        raise CommandFailed(
            f"could not promote {successor}: {' '.join(str(exc).split())}",
            hint="the successor must accept the superuser (POSTGRES_USER) over the network; the pod restarts "
            f"and tries again, or promote it by hand: kubectl exec {successor.split('.', maxsplit=1)[0]} "
            "-- pg-sfs-agent promote",
        ) from exc
    if promoted is None:
        raise CommandFailed(
            f"the server at {successor}'s address ({address}) is not {successor} (its primary_slot_name differs): "
            "a stale DNS record? Nothing was promoted",
            hint="the pod restarts and looks again; check the cluster DNS for the successor's record",
        )
    return promoted


def _synchronous_from_the_first_commit(cfg: Config, log: Any, successor: str, address: str,
                                       set_setting: Callable[..., str]) -> None:  # fmt: skip
    """With synchronous replication, the successor gets synchronous_standby_names before it is
    promoted: it may not have been restarted under the new ordinal yet (a switch to a lower
    ordinal), and its own files would leave it empty until then (review M4)."""
    if not cfg.synchronous_standbys or cfg.standalone:
        return
    ident = cfg.identity
    others = [ident.peer_pod(n) for n in range(cfg.max_replication_slots + 1) if n != ident.primary_ordinal]
    names = synchronous_standby_names(cfg.synchronous_standbys, others)
    shown = set_setting(successor, address, cfg.port, cfg.superuser, cfg.superuser_password.reveal(),
                        "synchronous_standby_names", names)  # fmt: skip
    log.info("successor_synchronous", successor=successor, synchronous_standby_names=shown)


def give_back(pgdata: Path, log: Any) -> bool:
    """Undo an unfinished handoff (standby.signal, then the marker); True when there was one.

    Its state is then "shut down in recovery" or "in archive recovery": the next handoff reads
    its WAL's end again and serves it first if the successor lacks any.
    """
    marker = pgdata / HANDOFF_MARKER
    if not marker.exists():
        return False
    remove_durably(pgdata / "standby.signal")
    remove_durably(marker)
    log.info("handoff_given_back", note="a handoff that did not finish (the successor was not promoted by this "
             "member): PGDATA is the former primary's again, untouched otherwise")  # fmt: skip
    return True
