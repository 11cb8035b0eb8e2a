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

import contextlib
import signal
from collections.abc import Iterator
from typing import Any, Callable

from tenacity import wait_fixed

from agent import history, survey
from agent.context import Part
from agent.errors import CommandFailed, SwitchoverBlocked
from agent.files import fsync_dir
from agent.postgres import child_env
from agent.waits import poll_until

FOLLOW_WRITABLE = "follow_writable"
AWAIT_PROMOTION = "await_promotion"
REFUSE_MANY_WRITABLE = "refuse_many_writable"

PROMOTE_SUCCESSOR = "promote_successor"
WAIT_FOR_SUCCESSOR = "wait_for_successor"
SERVE_OWN_WAL = "serve_own_wal"
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
                   writable: list[str], served_up_to: int | None = None) -> str:  # fmt: skip
    """A former primary (its postgres stopped) and its successor N, still a standby: promote N?

    Only when no member accepts writes and N has every commit this member has, on the same timeline:
    - it shut down cleanly as a primary: N received WAL past its shutdown checkpoint (every commit
      lies before it);
    - it did not (killed, or a handoff that served its WAL failed after): its WAL past the last
      checkpoint may hold commits, so it first serves that WAL as a read-only standby (SERVE_OWN_WAL);
      `served_up_to` is then the end of its WAL, which N must have received in full.
    """
    if writable:
        return REFUSE_WRITABLE
    if served_up_to is None and (not local.clean or local.state != history.SHUT_DOWN):
        return SERVE_OWN_WAL
    if successor_timeline != local.timeline:
        return REFUSE_OTHER_TIMELINE
    if served_up_to is not None:
        return PROMOTE_SUCCESSOR if successor_received >= served_up_to else WAIT_FOR_SUCCESSOR
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

    def run(self, address: str, identify: Callable[[], Any], local: history.LocalPosition,
            own_wal: OwnWalServer) -> bool:  # fmt: skip
        """Wait (bounded) until the successor has every commit this member has, then promote it; else
        refuse. `local` is this member's position from pg_controldata. After an unclean stop, its WAL is
        first served by a read-only standby (`own_wal`).

        Returns True when it served its own WAL (PGDATA is then a standby's, shut down in recovery).
        """
        started = self.world.clock()
        writable, unasked = writable_members(self, min(self.config.peer_check_timeout, 10.0))
        # Before anything is known of the successor: must this member's own WAL be served first?
        served = decide_handoff(local, local.timeline, 0, writable) == SERVE_OWN_WAL
        try:
            self._run(started, address, identify, local, writable, unasked, own_wal if served else None)
        except BaseException:
            if served:  # not handed over: PGDATA is the former primary's again for the next start
                own_wal.give_back()
            raise
        return served

    def _run(self, started: float, address: str, identify: Callable[[], Any], local: history.LocalPosition,
             writable: list[str], unasked: list[str], own_wal: OwnWalServer | None) -> None:  # fmt: skip
        cfg = self.config
        successor = cfg.primary_fqdn.rstrip(".")
        served = own_wal is not None
        seen: dict[str, Any] = {}
        own_end: list[Callable[[], int | None]] = []

        def attempt() -> str:
            self.world.beat("switchover")
            served_up_to = None
            if own_end:
                served_up_to = own_end[0]()
                if served_up_to is None:  # its postgres is still in crash recovery
                    return WAIT_FOR_SUCCESSOR
                seen.update(served_up_to=history.format_lsn(served_up_to))
            result = identify()
            if result.info is None:
                seen.update(outcome=result.outcome, detail=result.detail)
                return WAIT_FOR_SUCCESSOR
            if not result.info.in_hot_standby:
                return PROMOTED_ALREADY
            received = history.parse_lsn(result.info.xlogpos)
            seen.update(timeline=result.info.timeline, received=result.info.xlogpos)
            return decide_handoff(local, result.info.timeline, received, writable, served_up_to)

        def wait() -> str:
            return poll_until(attempt, done=lambda d: d != WAIT_FOR_SUCCESSOR, wait=wait_fixed(0.2),
                              deadline=started + cfg.switchover_timeout, clock=self.world.clock,
                              sleep=self.world.sleep)  # fmt: skip

        if own_wal is not None:
            self.log.info(
                "serving_own_wal", checkpoint=history.format_lsn(local.lsn),
                note="this former primary was not shut down cleanly: its WAL past the last checkpoint may hold "
                "commits its successor lacks. Its postgres runs as a read-only standby (crash recovery, then "
                "connected to nobody) so the successor streams that WAL from here; then it is stopped",
            )  # fmt: skip
            with own_wal.serving() as end_of_wal:
                own_end.append(end_of_wal)
                decision = wait()
        else:
            decision = wait()
        fields = dict(successor=successor, decision=decision, checkpoint=history.format_lsn(local.lsn),
                      timeline=local.timeline, clean=local.clean, served_own_wal=served or None,
                      writable=writable or None, unasked=unasked or None, successor_seen=seen or None)  # fmt: skip
        if decision == PROMOTED_ALREADY:
            self._phase("switchover_handoff", started, **fields)
            return
        if decision != PROMOTE_SUCCESSOR:
            raise self._blocked(decision, successor, local, writable, served)
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
                 writable: list[str], served: bool) -> SwitchoverBlocked:  # fmt: skip
        me = self.config.identity.pod_name
        short = successor.split(".", maxsplit=1)[0]
        back = (f"set PGSFS_PRIMARY_ORDINAL back to {self.config.identity.ordinal} (this member then starts as the "
                "primary again, nothing lost)")  # fmt: skip
        why = {
            REFUSE_WRITABLE: f"{', '.join(writable)} accept(s) writes, so promoting {short} would make two primaries",
            REFUSE_OTHER_TIMELINE: f"{short} is on another timeline than this member",
            WAIT_FOR_SUCCESSOR: (
                f"{short} did not stream this member's WAL to its end (served by a read-only standby here, as it was "
                "not shut down cleanly) within PGSFS_SWITCHOVER_TIMEOUT" if served else
                f"{short} did not receive this member's WAL up to its shutdown checkpoint "
                f"({history.format_lsn(local.lsn)}) within PGSFS_SWITCHOVER_TIMEOUT"
            ),
        }[decision]
        return SwitchoverBlocked(
            f"switchover to {short} not done: {why}; {me}'s data was left untouched and {short} not promoted",
            hint=f"either {back}, or, accepting that writes only {me} has are lost (its WAL is copied aside when it "
            f"is rewound), run `kubectl exec {short} -- pg-sfs-agent promote`",
            decision=decision,
        )


class OwnWalServer(Part):
    """A former primary killed mid-run: its postgres as a read-only standby, so its successor can stream
    the WAL only it has (crash recovery replays it all before the first connection is accepted)."""

    def __init__(self, ctx: Any, files: Any, before_start: Callable[[], None] = lambda: None) -> None:
        super().__init__(ctx)
        self.files = files
        self.before_start = before_start

    @contextlib.contextmanager
    def serving(self) -> Iterator[Callable[[], int | None]]:
        """Run it (standby.signal, connected to nobody) until the block ends; yields a function giving
        how far its WAL goes (None while it does not accept connections yet). Stopped cleanly at the end."""
        cfg = self.config
        self.files.write_config(self.pgdata, standby=True, connect=False)
        self.before_start()
        if self.ctx.announcer is not None:
            self.ctx.announcer.close()  # its postgres needs the port
        with open(cfg.state_dir / "own-wal-server.log", "ab") as out:
            proc = self.world.runner.spawn(["postgres", "-D", str(self.pgdata)], env=child_env(), stdout=out,
                                           stderr=out)  # fmt: skip
        endpoint = self._endpoint("localhost", "127.0.0.1")

        def end_of_wal() -> int | None:
            if proc.poll() is not None:
                raise CommandFailed(
                    f"postgres, started to serve this former primary's WAL, exited with {proc.returncode}",
                    hint=f"see {cfg.state_dir / 'own-wal-server.log'}; the pod restarts and tries again",
                )
            attempt = self.world.identify(endpoint, 2.0)
            return history.parse_lsn(attempt.info.xlogpos) if attempt.info is not None else None

        try:
            yield end_of_wal
        finally:
            # Fast shutdown of a standby: a restartpoint, then "shut down in recovery".
            self.world.runner.stop(proc, grace=cfg.switchover_timeout, sig=signal.SIGINT)

    def give_back(self) -> None:
        """The handoff failed after serving: remove standby.signal, so the next start sees the former
        primary again (and, its state being "shut down in recovery", serves its WAL again first)."""
        signal_file = self.pgdata / "standby.signal"
        if signal_file.exists():
            signal_file.unlink()
            fsync_dir(self.pgdata)
            self.log.info("standby_signal_removed", note="the handoff did not happen: PGDATA is the former "
                          "primary's again, untouched otherwise")  # fmt: skip
