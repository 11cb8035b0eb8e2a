"""Talking to a primary over the replication protocol: IDENTIFY_SYSTEM, slots, and why it failed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_fixed
from tenacity.wait import wait_base, wait_random

from agent.errors import AuthenticationFailed, PrimaryUnavailable
from agent.waits import Clock, Sleep, WaitStats, poll_until

OK = "ok"
REFUSED = "connection_refused"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
STARTING = "starting"
IN_RECOVERY = "in_recovery"
HBA_REJECTED = "hba_rejected"
BAD_PASSWORD = "bad_password"  # noqa: S105 - an outcome name, not a password
NO_PRIVILEGE = "no_privilege"
OTHER = "other"
AUTH_FAILURES = frozenset({HBA_REJECTED, BAD_PASSWORD, NO_PRIVILEGE})

# libpq reports these as message text without an SQLSTATE; lower-cased substrings, first match wins.
_MESSAGES: tuple[tuple[str, str], ...] = (
    ("no pg_hba.conf entry", HBA_REJECTED),
    ("pg_hba.conf rejects", HBA_REJECTED),
    ("password authentication failed", BAD_PASSWORD),
    ("authentication failed for user", BAD_PASSWORD),
    ("no password supplied", BAD_PASSWORD),
    ("fe_sendauth", BAD_PASSWORD),
    ("does not exist", BAD_PASSWORD),
    ("must be superuser or replication role", NO_PRIVILEGE),
    ("permission denied to start wal sender", NO_PRIVILEGE),
    ("replication attribute", NO_PRIVILEGE),
    ("connection refused", REFUSED),
    ("the database system is starting up", STARTING),
    ("the database system is shutting down", STARTING),
    ("the database system is in recovery mode", STARTING),
    ("the database system is not yet accepting connections", STARTING),
    ("the database system is not accepting connections", STARTING),
    ("too many clients", STARTING),
    ("timeout expired", TIMEOUT),
    ("timed out", TIMEOUT),
    ("no route to host", UNREACHABLE),
    ("network is unreachable", UNREACHABLE),
    ("could not translate host name", UNREACHABLE),
    ("server closed the connection unexpectedly", REFUSED),
)

_HINTS = {
    HBA_REJECTED: "the primary's pg_hba.conf has no rule admitting replication connections for {user} "
    "from this pod: check the pg-sfs-agent block at the top of pg_hba.conf on the primary",
    BAD_PASSWORD: "the primary rejected the password of {user}: check PGSFS_REPLICATION_PASSWORD "
    "(or PGSFS_REPLICATION_PASSWORD_FILE) matches on every pod, and restart the primary after changing it",
    NO_PRIVILEGE: "role {user} lacks the REPLICATION attribute on the primary: ALTER ROLE {user} REPLICATION, "
    "or check PGSFS_REPLICATION_USER",
}


def classify_error(message: str) -> str:
    """Which kind of failure a libpq/psycopg error message describes."""
    text = message.lower()
    for needle, kind in _MESSAGES:
        if needle in text:
            return kind
    return OTHER


@dataclass(frozen=True)
class SystemInfo:
    """What IDENTIFY_SYSTEM and the parameter status told us about a server."""

    system_identifier: int
    timeline: int
    xlogpos: str
    in_hot_standby: bool
    server_version: int


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect for replication; the password stays in memory only."""

    host: str
    port: int
    user: str
    password: str
    hostaddr: str | None = None
    application_name: str = "pg-sfs-agent"

    def connect_kwargs(self, timeout: float) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect: a physical replication connection."""
        kwargs: dict[str, Any] = dict(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="replication",
            replication="true",
            application_name=self.application_name,
            connect_timeout=max(1, int(timeout)),
            autocommit=True,
        )
        # Always given (empty: none), so a PGHOSTADDR in the pod's environment never redirects it.
        kwargs["hostaddr"] = self.hostaddr or ""
        return kwargs


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def identify_system(endpoint: Endpoint, timeout: float = 3.0) -> SystemInfo:
    """One replication connection and IDENTIFY_SYSTEM: proves TCP, pg_hba, password and privilege."""
    import psycopg

    with psycopg.connect(**endpoint.connect_kwargs(timeout)) as conn:
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
        if row is None:
            raise psycopg.OperationalError("IDENTIFY_SYSTEM returned no row")
        standby = conn.info.parameter_status("in_hot_standby")
        return SystemInfo(
            system_identifier=int(_text(row[0])),
            timeline=int(_text(row[1])),
            xlogpos=_text(row[2]),
            in_hot_standby=standby is not None and _text(standby) == "on",
            server_version=conn.info.server_version,
        )


def timeline_history(endpoint: Endpoint, timeline: int, timeout: float = 5.0) -> str:
    """The primary's history file for `timeline` (TIMELINE_HISTORY); timeline 1 has none."""
    import psycopg

    if timeline <= 1:
        return ""
    with psycopg.connect(**endpoint.connect_kwargs(timeout)) as conn:
        row = conn.execute(f"TIMELINE_HISTORY {int(timeline)}").fetchone()
        if row is None:
            raise psycopg.OperationalError(f"TIMELINE_HISTORY {timeline} returned no row")
        return _text(row[1])


# A slot's wal_status is NULL until it reserves WAL (created without RESERVE_WAL); ours always do.
NOT_RESERVED = "not_reserved"
LOST = "lost"
KEEP, CREATE, RECREATE = "keep", "create", "recreate"


def slot_step(status: str | None) -> str:
    """What a replica about to clone does with its slot on the primary, given the slot's wal_status.

    Missing: create it. Invalidated (`lost`) or never reserving WAL: its restart point is gone or
    was never set, so pg_basebackup could not stream from it: drop and create it. Anything else
    (reserved, extended, unreserved) still holds WAL from its restart point: keep it.
    """
    if status is None:
        return CREATE
    if status in (LOST, NOT_RESERVED):
        return RECREATE
    return KEEP


def ensure_slot(endpoint: Endpoint, slot: str, timeout: float = 5.0) -> bool:
    """Make the physical slot usable for a new clone (reserving WAL); True when it was (re)created.

    An invalidated slot left from before is dropped and created again; a walsender of this pod's
    previous container that still holds it is ended first (it is the same role's own backend).
    """
    import psycopg
    from psycopg import errors

    step = slot_step(slot_status(endpoint, slot, timeout))
    if step == KEEP:
        return False
    if step == RECREATE:
        drop_slot(endpoint, slot, timeout)
    with psycopg.connect(**endpoint.connect_kwargs(timeout)) as conn:
        try:
            conn.execute(f"CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL")
        except errors.DuplicateObject:
            return False
    return True


def _sql_kwargs(endpoint: Endpoint, timeout: float) -> dict[str, Any]:
    """A plain SQL connection as the replication role (pg_replication_slots is readable by all)."""
    kwargs = endpoint.connect_kwargs(timeout)
    kwargs.pop("replication")
    kwargs["dbname"] = "postgres"
    return kwargs


def slot_status(endpoint: Endpoint, slot: str, timeout: float = 5.0) -> str | None:
    """The slot's wal_status on the primary (`lost` once invalidated, `not_reserved` when it never
    reserved WAL), or None when it is missing. Works on PostgreSQL 13 and later."""
    import psycopg

    with psycopg.connect(**_sql_kwargs(endpoint, timeout)) as conn:
        row = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return None
    return NOT_RESERVED if row[0] is None else str(row[0])


def segment_name_suffix(lsn: int, segment_size: int) -> str:
    """The last 16 hex digits of the name of the WAL segment holding `lsn` (the timeline's 8 come first)."""
    segno = lsn // segment_size
    per_id = 0x100000000 // segment_size
    return f"{segno // per_id:08X}{segno % per_id:08X}"


def segment_kept(endpoint: Endpoint, suffix: str, timeout: float = 5.0) -> bool:
    """Whether the server still has the WAL segment named `<any timeline><suffix>` in pg_wal
    (pg_ls_waldir: the endpoint's role must be a superuser or in pg_monitor)."""
    import psycopg

    with psycopg.connect(**_sql_kwargs(endpoint, timeout)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}(\\.partial)?$' "
            "AND substr(name, 9, 16) = %s",
            (suffix,),
        ).fetchone()
    return bool(row and row[0])


def template_view(endpoint: Endpoint, timeout: float = 5.0) -> tuple[int | None, float | None]:
    """The primary ordinal a member's agent was started with and when its pod was born (the
    pgsfs.* placeholders of its settings file); None for what it does not say (an older agent)."""
    import psycopg

    with psycopg.connect(**_sql_kwargs(endpoint, timeout)) as conn:
        row = conn.execute("SELECT current_setting('pgsfs.primary_ordinal', true), "
                           "current_setting('pgsfs.pod_born', true)").fetchone()  # fmt: skip
    ordinal, born = row if row else (None, None)
    named = number(ordinal, int)
    return int(named) if named is not None else None, number(born, float)


def upgrade_origin(endpoint: Endpoint, timeout: float = 5.0) -> str | None:
    """The primary's pgsfs.upgraded_from (agent/upgrade.py), or None when it was not made by an upgrade."""
    import psycopg

    with psycopg.connect(**_sql_kwargs(endpoint, timeout)) as conn:
        row = conn.execute("SELECT current_setting('pgsfs.upgraded_from', true)").fetchone()
    return str(row[0]) if row and row[0] else None


def number(text: str | None, kind: Callable[[str], float]) -> float | None:
    """`text` as a number of `kind`, or None when it is missing or not one."""
    try:
        return kind(text) if text else None
    except ValueError:
        return None


def drop_slot(endpoint: Endpoint, slot: str, timeout: float = 5.0) -> None:
    """Drop a physical slot, ending a lingering walsender of ours that still holds it.

    Called only from this pod's agent, before its own postgres runs: a walsender active on this
    pod's slot can only be a leftover of its previous container, waiting for wal_sender_timeout.
    """
    import psycopg
    from psycopg import errors

    with psycopg.connect(**_sql_kwargs(endpoint, timeout)) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s AND active",
            (slot,),
        )

    def drop() -> None:
        with psycopg.connect(**endpoint.connect_kwargs(timeout)) as conn:
            conn.execute(f"DROP_REPLICATION_SLOT {slot}")

    # The ended walsender takes a moment to release the slot: retry "in use", for a bounded time.
    Retrying(
        retry=retry_if_exception_type(errors.ObjectInUse),
        wait=wait_fixed(0.2),
        stop=stop_after_delay(timeout * 2),
        reraise=True,
    )(drop)


@dataclass(frozen=True)
class Attempt:
    """One try at IDENTIFY_SYSTEM, classified."""

    outcome: str
    detail: str = ""
    info: SystemInfo | None = None


def try_identify(endpoint: Endpoint, timeout: float = 3.0) -> Attempt:
    """IDENTIFY_SYSTEM once, turning every failure into a classified Attempt."""
    import psycopg

    try:
        info = identify_system(endpoint, timeout)
    except psycopg.Error as exc:
        message = " ".join(str(exc).split())
        return Attempt(classify_error(message), detail=message)
    except OSError as exc:
        return Attempt(classify_error(str(exc)) if str(exc) else OTHER, detail=str(exc))
    if info.in_hot_standby:
        return Attempt(IN_RECOVERY, detail="the server is a standby (in_hot_standby=on)", info=info)
    return Attempt(OK, info=info)


class _AuthPacing(wait_base):
    """Give a Secret mid-rotation a few seconds between authentication attempts."""

    def __init__(self, base: wait_base, auth_pause: float) -> None:
        self.base = base
        self.auth_pause = auth_pause

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed and outcome.result().outcome in AUTH_FAILURES:
            return self.auth_pause
        return self.base(retry_state)


def wait_for_primary(
    identify: Callable[[], Attempt],
    *,
    timeout: float,
    auth_attempts: int,
    user: str,
    target: str,
    log: Any,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    on_poll: Callable[[], None] = lambda: None,
    auth_pause: float = 3.0,
    accept_standby: bool = False,
) -> SystemInfo:
    """Retry IDENTIFY_SYSTEM until it works; auth failures a few times, the rest until `timeout`.

    `accept_standby`: a standby's answer is enough too (a switchover's successor, before its promotion).
    """
    stats = WaitStats(started=clock())
    deadline = stats.started + timeout
    auth_failures = 0

    def usable(result: Attempt) -> bool:
        return result.outcome == OK or (accept_standby and result.outcome == IN_RECOVERY and result.info is not None)

    seen: dict[str, int] = {}
    last = Attempt(OTHER)

    def attempt() -> Attempt:
        nonlocal auth_failures, last
        stats.attempts += 1
        result = identify()
        last = result
        seen[result.outcome] = seen.get(result.outcome, 0) + 1
        if result.outcome in AUTH_FAILURES:
            auth_failures += 1
        if result.outcome not in (stats.last, OK) and not usable(result):
            log.info(
                "primary_wait_state",
                primary=target,
                outcome=result.outcome,
                detail=result.detail,
                attempts=stats.attempts,
                elapsed_s=stats.elapsed(clock),
            )
        stats.last = result.outcome
        on_poll()
        return result

    result = poll_until(
        attempt,
        done=usable,
        wait=_AuthPacing(wait_random(0.5, 1.0), auth_pause),
        deadline=deadline,
        clock=clock,
        sleep=sleep,
        give_up=lambda: auth_failures >= auth_attempts,
    )
    summary: dict[str, Any] = dict(primary=target, attempts=stats.attempts, elapsed_s=stats.elapsed(clock), seen=seen)
    if result is not None and usable(result) and result.info is not None:
        log.info(
            "primary_wait",
            system_identifier=str(result.info.system_identifier),
            timeline=result.info.timeline,
            server_version=result.info.server_version,
            standby=result.info.in_hot_standby or None,
            **summary,
        )
        return result.info
    if last.outcome in AUTH_FAILURES:
        raise AuthenticationFailed(
            f"the primary {target} refused replication user {user} ({last.outcome}): {last.detail}",
            hint=_HINTS[last.outcome].format(user=user),
            reason=last.outcome,
            **summary,
        )
    raise PrimaryUnavailable(
        f"the primary {target} did not answer IDENTIFY_SYSTEM within {timeout:g} s; "
        f"last: {last.outcome} {last.detail}".strip(),
        hint="check the primary pod's logs (kubectl logs) and that it is Running; "
        "raise PGSFS_WAIT_TIMEOUT if it is still initialising",
        reason=last.outcome,
        **summary,
    )
