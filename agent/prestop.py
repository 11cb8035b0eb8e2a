"""`pg-sfs-agent prestop`: a primary whose pod a switchover's rollout deletes hands its role over first.

The manifest runs it as the container's preStop hook, so it runs while the pod and its address still
exist and postgres still runs. Only when a younger pod's template names another primary ordinal N
(a switchover's rollout reached this pod) and N is a standby on this member's timeline, it fences
this primary (pg_hba rejects every new connection but N's WAL receiver, and every client session is
ended), waits until N has received its WAL to the end, promotes N, and stops postgres at once, so
its WAL ends where N's new timeline forks and it rejoins N as it is at its next start. Clients then
find N while this pod's address still refuses at once, instead of a deleted pod's address that
drops packets (README, "Switchover"). Anything else, or any doubt, changes nothing: the handoff at
this member's next start (agent/switchover.py) stays the way that always works.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, TextIO

from tenacity import wait_fixed

from agent import discovery, history, probe, render, replication
from agent.config import Config
from agent.errors import CommandFailed
from agent.files import write_atomic
from agent.identity import PRIMARY
from agent.podbirth import pod_born
from agent.switchover import promote_successor
from agent.waits import Clock, Sleep, poll_until

HAND_OFF = "hand_off"
NOT_PRIMARY = "not_primary"
NO_SWITCHOVER = "no_switchover"
POD_AGE_UNKNOWN = "pod_age_unknown"
RIVAL_WRITABLE = "rival_writable"
PEERS_SILENT = "peers_silent"
SUCCESSOR_NOT_READY = "successor_not_ready"

REPORT_NAME = "prestop-report.jsonl"

# XLOG_BLCKSZ and the MAXALIGNed sizes of XLogPageHeaderData and XLogLongPageHeaderData.
WAL_PAGE = 8192
SHORT_PAGE_HEADER = 24
LONG_PAGE_HEADER = 40

# The hook must end well inside terminationGracePeriodSeconds (60 s in the manifest): the fence, the
# successor's catch-up and its promotion get this much; past it, the handoff at the next start does it.
BUDGET_S = 30.0

# A primary's timeline is its current WAL file's (pg_control's lags until the first checkpoint).
OWN_QUERY = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN NULL "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))::bit(32)::int END"
)
# Every client session but the hook's own; walsenders (the successor's) and background workers stay.
CLIENTS = "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
TERMINATE_CLIENTS = "SELECT pg_terminate_backend(pid) " + CLIENTS
COUNT_CLIENTS = "SELECT count(*) " + CLIENTS
PEER_QUERY = (
    "SELECT pg_is_in_recovery(), current_setting('pgsfs.primary_ordinal', true), "
    "current_setting('pgsfs.pod_born', true), "
    "GREATEST((SELECT timeline_id FROM pg_control_checkpoint()), (SELECT received_tli FROM pg_stat_wal_receiver)), "
    "pg_last_wal_receive_lsn()::text"
)


@dataclass(frozen=True)
class PeerView:
    """What one other member said over SQL: its role, the primary ordinal its template names, its
    pod's birth, its timeline and how far it received."""

    member: str
    ordinal: int | None
    reachable: bool
    address: str | None = None
    in_recovery: bool | None = None
    names: int | None = None
    born: float | None = None
    timeline: int | None = None
    received: str | None = None
    detail: str = ""


def decide(own_ordinal: int, names: int, own_writable: bool, own_born: float | None, own_timeline: int | None,
           peers: list[PeerView]) -> tuple[str, PeerView | None]:  # fmt: skip
    """Hand the role over now, and to whom? Only a writable member whose own template names it, when
    the youngest pod's template (a rollout replaces old pods, never the reverse) names another
    ordinal N and N is a standby on this member's timeline; no other member may accept writes, and
    every member that resolves must answer (a silent one may be a primary promoted by hand and cut off
    from this member: the handoff at the next start waits for it, this hook does not)."""
    if names != own_ordinal or not own_writable:
        return NOT_PRIMARY, None
    if any(p.reachable and p.in_recovery is False for p in peers):
        return RIVAL_WRITABLE, None
    known = [p for p in peers if p.reachable and p.names is not None and p.born is not None]
    if all(p.names == own_ordinal for p in known):
        return NO_SWITCHOVER, None
    if not all(p.reachable for p in peers):
        return PEERS_SILENT, None
    if own_born is None:
        return POD_AGE_UNKNOWN, None
    youngest = max(known, key=lambda p: p.born or 0.0, default=None)
    if youngest is None or (youngest.born or 0.0) <= own_born or youngest.names == own_ordinal:
        return NO_SWITCHOVER, None
    successor = next((p for p in peers if p.ordinal == youngest.names), None)
    if (
        successor is None
        or not successor.reachable
        or successor.in_recovery is not True
        or successor.timeline != own_timeline
        or successor.received is None
        or successor.address is None
    ):
        return SUCCESSOR_NOT_READY, successor
    return HAND_OFF, successor


def lift_fence(pgdata: Path, log: Any) -> bool:
    """Remove a fence a preStop hook left in pg_hba.conf (it was killed, or the pod restarted); True
    when there was one. Run at every start, before postgres."""
    hba = pgdata / "pg_hba.conf"
    with contextlib.suppress(OSError):
        text = hba.read_text()
        if render.HBA_FENCE_BEGIN in text:
            st = hba.stat()
            write_atomic(hba, render.without_fence(text), mode=st.st_mode & 0o777, owner=(st.st_uid, st.st_gid))
            log.info("prestop_fence_lifted", file=str(hba), note="left by a preStop hook that did not finish")
            return True
    return False


class Fence:
    """This primary's doors, closed for a handoff; the next start opens them (lift_fence)."""

    def __init__(self, config: Config, conn: Any, connect_local: Callable[[], Any], clock: Clock,
                 sleep: Sleep) -> None:  # fmt: skip
        self.config = config
        self.conn = conn
        self.connect_local = connect_local
        self.clock = clock
        self.sleep = sleep
        self.hba = config.pgdata / "pg_hba.conf"

    def close(self, successor_address: str, deadline: float) -> int:
        """Fence, end every client session, and return the end of the WAL they could have written."""
        text = self.hba.read_text()
        st = self.hba.stat()
        # Owned as before: a hook run as root must leave a file postgres can read.
        write_atomic(self.hba, render.with_fence(text, self.config.replication_user, successor_address),
                     mode=st.st_mode & 0o777, owner=(st.st_uid, st.st_gid))  # fmt: skip
        self.conn.execute("SELECT pg_reload_conf()")
        # Proof, not a pause: a new connection is refused once the postmaster has read the fence.
        if not poll_until(self._refused, done=bool, wait=wait_fixed(0.05), deadline=deadline, clock=self.clock,
                          sleep=self.sleep):  # fmt: skip
            raise CommandFailed("the fence did not take effect (a new local connection was still accepted)")
        self.conn.execute(TERMINATE_CLIENTS)
        if poll_until(lambda: _row(self.conn, COUNT_CLIENTS)[0], done=lambda n: n == 0, wait=wait_fixed(0.05),
                      deadline=deadline, clock=self.clock, sleep=self.sleep):  # fmt: skip
            raise CommandFailed("client sessions did not end after pg_terminate_backend()")
        insert, segment = _row(self.conn, "SELECT pg_current_wal_insert_lsn()::text, "
                                          "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')")
        end = record_end(history.parse_lsn(insert), int(segment))
        # What a session with synchronous_commit off was told is committed may not be flushed yet.
        poll_until(lambda: history.parse_lsn(_row(self.conn, "SELECT pg_current_wal_flush_lsn()::text")[0]),
                   done=lambda flushed: flushed >= end, wait=wait_fixed(0.02), deadline=deadline, clock=self.clock,
                   sleep=self.sleep)  # fmt: skip
        return end

    def _refused(self) -> bool:
        import psycopg

        try:
            self.connect_local().close()
        except psycopg.Error as exc:
            return replication.classify_error(str(exc)) == replication.HBA_REJECTED
        return False


class Tee:
    """A text stream that writes to several (the hook's stderr and its report file)."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def report_stream(state_dir: Path, stderr: TextIO) -> Iterator[Any]:
    """Where the hook logs: its stderr (which the kubelet shows only when it fails) and a report file
    on the volume, which the next start logs (`replay_report`): the story of a switchover belongs in
    `kubectl logs`, and a hook cannot write there (the container's stdio are the runtime's, root's)."""
    try:
        fd = os.open(state_dir / REPORT_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        yield stderr
        return
    with open(fd, "a", buffering=1) as report:
        yield Tee(stderr, report)


def replay_report(state_dir: Path, log: Any) -> int:
    """Log what the last preStop hook said (each of its lines as `prestop_hook`, with the time it was
    said), then remove its report; the number of lines."""
    path = state_dir / REPORT_NAME
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    count = 0
    for line in lines:
        try:
            said = dict(json.loads(line))
        except ValueError:
            continue
        fields = {k: v for k, v in said.items() if k not in ("level", "pod", "ordinal", "role", "timestamp")}
        log.info("prestop_hook", said_at=said.get("timestamp"), said=fields.pop("event", None), **fields)
        count += 1
    with contextlib.suppress(OSError):
        path.unlink()
    return count


def ask_peer(config: Config, member: str, ordinal: int | None, address: str) -> PeerView:
    """One member's view over SQL as the superuser; unreachable with the error's text."""
    import psycopg

    try:
        with psycopg.connect(host=member, hostaddr=address, port=config.port, user=config.superuser,
                             password=config.superuser_password.reveal(), dbname="postgres", connect_timeout=2,
                             autocommit=True) as conn:  # fmt: skip
            row = conn.execute(PEER_QUERY).fetchone()
    except psycopg.Error as exc:
        return PeerView(member.split(".", maxsplit=1)[0], ordinal, False, address, detail=" ".join(str(exc).split()))
    in_recovery, names, born, timeline, received = row if row else (None,) * 5
    named = replication.number(names, int)
    return PeerView(member.split(".", maxsplit=1)[0], ordinal, True, address, bool(in_recovery),
                    int(named) if named is not None else None, replication.number(born, float),
                    int(timeline) if timeline is not None else None, received)  # fmt: skip


def observe_peers(config: Config, lookup: discovery.Lookup) -> list[PeerView]:
    """Every other member that resolves, asked over SQL."""
    from agent.promote import each_member

    members = list(each_member(config, lookup))
    if not members:
        return []
    # At once: a member whose pod is going too (a scale-down, a deleted StatefulSet) may drop packets
    # until libpq's connect timeout, and the pod's deletion waits for this hook.
    with ThreadPoolExecutor(len(members)) as pool:
        return list(pool.map(lambda m: ask_peer(config, *m), members))


class PreStop:
    """One run of the hook: observe, decide, and, for a switchover, fence, wait, promote, stop."""

    def __init__(self, config: Config, lookup: discovery.Lookup, log: Any, clock: Clock, sleep: Sleep,
                 stop_postgres: Callable[[int], None] = lambda pid: os.kill(pid, signal.SIGQUIT)) -> None:  # fmt: skip
        self.config = config
        self.lookup = lookup
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.stop_postgres = stop_postgres

    def _connect_local(self) -> Any:
        import psycopg

        running = probe.postmaster_status(self.config.pgdata)
        if running is None:
            raise CommandFailed("postgres is not running in this pod")
        socket_path = probe.own_socket(self.config.pgdata, running[1], self.config.port)
        return psycopg.connect(host=os.path.dirname(socket_path), hostaddr="", port=self.config.port,
                               user=self.config.superuser, password=self.config.superuser_password.reveal(),
                               dbname="postgres", connect_timeout=3, autocommit=True)  # fmt: skip

    def run(self) -> int:
        """0 whether it handed over or had nothing to do; an AgentError when a handoff failed half-way
        (its fence lifted again, the successor not promoted)."""
        started = self.clock()
        cfg = self.config
        ident = cfg.identity
        running = probe.postmaster_status(cfg.pgdata)
        if ident.role != PRIMARY or running is None:
            return 0  # a replica's pod, or nothing running: nothing to hand over, nothing worth a line
        with self._connect_local() as conn:
            in_recovery, timeline = _row(conn, OWN_QUERY)
            born = pod_born(cfg.state_dir, cfg.pod_uid, time.time())
            peers = observe_peers(cfg, self.lookup)
            decision, successor = decide(ident.ordinal, ident.primary_ordinal, not in_recovery, born, timeline, peers)
            fields = dict(decision=decision, successor=successor.member if successor else None, timeline=timeline,
                          peers=[asdict(p) for p in peers])  # fmt: skip
            if decision == NO_SWITCHOVER:
                return 0  # a plain restart of the primary's pod: a boring restart tells nothing here
            if decision != HAND_OFF or successor is None:
                # A switchover it leaves to the next start: why, told there.
                self.log.info("prestop", duration_s=round(self.clock() - started, 3), **fields)
                return 0
            return self._hand_off(conn, running[0], successor, timeline, started)

    def _hand_off(self, conn: Any, postmaster: int, successor: PeerView, timeline: int, started: float) -> int:
        cfg = self.config
        assert successor.ordinal is not None and successor.address is not None
        as_switched = replace(cfg, identity=replace(cfg.identity, primary_ordinal=successor.ordinal))
        fqdn = as_switched.primary_fqdn.rstrip(".")
        deadline = started + BUDGET_S
        fence = Fence(cfg, conn, self._connect_local, self.clock, self.sleep)
        try:
            end = fence.close(successor.address, deadline)
            fenced = round(self.clock() - started, 3)
            self.log.info("prestop_fenced", successor=successor.member, wal_end=history.format_lsn(end),
                          duration_s=fenced, note="no new connection but the successor's WAL receiver, every "
                          "client session ended; promoting it once it has received this WAL")  # fmt: skip
            received = poll_until(lambda: ask_peer(cfg, fqdn, successor.ordinal, successor.address or ""),
                                  done=lambda p: _holds(p, timeline, end) or p.in_recovery is False,
                                  wait=wait_fixed(0.05), deadline=deadline, clock=self.clock,
                                  sleep=self.sleep)  # fmt: skip
            if not _holds(received, timeline, end):
                raise CommandFailed(
                    f"{successor.member} did not receive this primary's WAL to its end ({history.format_lsn(end)}) "
                    f"within {BUDGET_S:.0f} s (it said: in recovery {received.in_recovery}, timeline "
                    f"{received.timeline}, received {received.received}) {received.detail}".rstrip()
                )
            # Looked at again just before: a member promoted by hand meanwhile must not get a rival.
            writable = [p.member for p in observe_peers(cfg, self.lookup) if p.reachable and p.in_recovery is False]
            if writable:
                raise CommandFailed(f"{', '.join(writable)} accept(s) writes: promoting would make two primaries")
            promoted = promote_successor(as_switched, self.log, fqdn, successor.address)
        except Exception as exc:
            # The fence stays: the pod is going away, and a promotion that answered late must not find
            # this member taking writes again. Its next start lifts it.
            detail = getattr(exc, "message", None) or " ".join(str(exc).split())
            self.log.warning("prestop_not_handed_over", successor=successor.member, detail=detail,
                             duration_s=round(self.clock() - started, 3),
                             note="not promoted by this hook; this member takes no new connection until postgres "
                             "stops, and hands over at its next start, as without the hook")  # fmt: skip
            return 0
        self.log.info("switchover_promoted", by="prestop", successor=fqdn, promoted=promoted, timeline=timeline,
                      wal_end=history.format_lsn(end), duration_s=round(self.clock() - started, 3),
                      note="its WAL ends where the successor's timeline forks; postgres stops at once and this "
                      "member rejoins the successor at its next start")  # fmt: skip
        self.stop_postgres(postmaster)
        return 0


def _holds(peer: PeerView, timeline: int, end: int) -> bool:
    return (peer.reachable and peer.in_recovery is True and peer.timeline == timeline and peer.received is not None
            and history.parse_lsn(peer.received) >= end)  # fmt: skip


def record_end(insert: int, segment_size: int) -> int:
    """Where the last WAL record ends, from the insert position: that points past the header of the
    next page when the last record ended on a page boundary, and no flush reaches it until more WAL
    is written."""
    if insert % segment_size == LONG_PAGE_HEADER:
        return insert - LONG_PAGE_HEADER
    if insert % WAL_PAGE == SHORT_PAGE_HEADER:
        return insert - SHORT_PAGE_HEADER
    return insert


def _row(conn: Any, sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    if row is None:
        raise CommandFailed(f"no row from: {sql}")
    return tuple(row)
