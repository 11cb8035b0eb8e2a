"""Unit tests of agent.replication: error classification and the primary wait (fake clock).

The server-side messages are PostgreSQL's own texts (15 and 16). To see them the way the agent does,
wrapped by real libpq and psycopg, a tiny server on 127.0.0.1 answers the startup packet with an
ErrorResponse: libpq, psycopg and the agent's try_identify are all real.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from agent.announce import error_response
from agent.errors import AuthenticationFailed, PrimaryUnavailable
from agent.replication import (
    BAD_PASSWORD,
    HBA_REJECTED,
    IN_RECOVERY,
    NO_PRIVILEGE,
    OK,
    OTHER,
    REFUSED,
    STARTING,
    TIMEOUT,
    UNREACHABLE,
    Attempt,
    Endpoint,
    SystemInfo,
    classify_error,
    segment_name_suffix,
    try_identify,
    wait_for_primary,
)
from tests.unit.conftest import ScriptedServer

TARGET = "postgresql-sfs-0.postgresql-svc.pg.svc.cluster.local."
WRAP = 'connection failed: connection to server at "198.18.0.3", port 5432 failed: '
HBA_PG15 = (
    'FATAL:  no pg_hba.conf entry for replication connection from host "198.18.0.3", user "replicator", no encryption'
)
HBA_REJECT = 'FATAL:  pg_hba.conf rejects replication connection for host "198.18.0.3", user "postgres", no encryption'
BAD_PW = 'FATAL:  password authentication failed for user "replicator"'
NO_ROLE = 'FATAL:  role "replicator" does not exist'
PRIV_PG15 = "FATAL:  must be superuser or replication role to start walsender"
PRIV_PG16 = (
    "FATAL:  permission denied to start WAL sender\n"
    "DETAIL:  Only roles with the REPLICATION attribute may start a WAL sender process."
)
REFUSED_MSG = "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"

CASES = [
    (HBA_PG15, HBA_REJECTED),
    (HBA_PG15.replace("no encryption", "SSL encryption"), HBA_REJECTED),
    (HBA_REJECT, HBA_REJECTED),
    (BAD_PW, BAD_PASSWORD),
    ("fe_sendauth: no password supplied", BAD_PASSWORD),
    (NO_ROLE, BAD_PASSWORD),
    (PRIV_PG15, NO_PRIVILEGE),
    (PRIV_PG16, NO_PRIVILEGE),
    (REFUSED_MSG, REFUSED),
    ("FATAL:  the database system is starting up", STARTING),
    ("FATAL:  the database system is shutting down", STARTING),
    ("FATAL:  the database system is in recovery mode", STARTING),
    (
        "FATAL:  the database system is not yet accepting connections\n"
        "DETAIL:  Consistent recovery state has not been yet reached.",
        STARTING,
    ),
    ("FATAL:  sorry, too many clients already", STARTING),
    ("timeout expired", TIMEOUT),
    ("connection timeout expired", TIMEOUT),
    ("No route to host\n\tIs the server running on that host and accepting TCP/IP connections?", UNREACHABLE),
    ("Network is unreachable", UNREACHABLE),
    (f'could not translate host name "{TARGET}" to address: Name or service not known', UNREACHABLE),
    (
        "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n"
        "\tbefore or while processing the request.",
        REFUSED,
    ),
    ("FATAL:  number of requested standby connections exceeds max_wal_senders (currently 10)", OTHER),
    ("", OTHER),
]


@pytest.mark.parametrize(("message", "kind"), CASES)
def test_classify_server_messages(message: str, kind: str) -> None:
    assert classify_error(message) == kind
    # psycopg wraps libpq's text; try_identify also squeezes whitespace.
    assert classify_error(WRAP + message) == kind
    assert classify_error(" ".join((WRAP + message).split())) == kind


def test_classify_multi_host_wrapper() -> None:
    text = (
        'connection failed: connection to server at "198.18.0.3", port 5432 failed: '
        + BAD_PW
        + '\nMultiple connection attempts failed. All failures were:\n- host: "198.18.0.3", port: 5432: '
        + BAD_PW
    )
    assert classify_error(text) == BAD_PASSWORD


# -- real libpq against a scripted server ------------------------------------------------------

@pytest.fixture
def server_factory() -> Iterator:
    servers: list[ScriptedServer] = []

    def make(code: str, message: str, detail: str | None = None) -> ScriptedServer:
        servers.append(ScriptedServer(error_response(message, code=code, detail=detail)))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def endpoint(port: int, password: str = "s3cr3t-repl-pw") -> Endpoint:
    return Endpoint(host="127.0.0.1", port=port, user="replicator", password=password)


@pytest.mark.parametrize(
    ("code", "message", "detail", "kind"),
    [
        ("28000", HBA_PG15[len("FATAL:  "):], None, HBA_REJECTED),
        ("28P01", 'password authentication failed for user "replicator"', None, BAD_PASSWORD),
        ("42501", "must be superuser or replication role to start walsender", None, NO_PRIVILEGE),
        ("42501", "permission denied to start WAL sender",
         "Only roles with the REPLICATION attribute may start a WAL sender process.", NO_PRIVILEGE),
        ("57P03", "the database system is starting up", None, STARTING),
        ("57P03", "the database system is not yet accepting connections",
         "Consistent recovery state has not been yet reached.", STARTING),
    ],
)  # fmt: skip
def test_try_identify_through_real_libpq(
    server_factory, code: str, message: str, detail: str | None, kind: str
) -> None:
    server = server_factory(code, message, detail)
    attempt = try_identify(endpoint(server.port), timeout=3.0)
    assert attempt.outcome == kind, attempt.detail
    assert message in attempt.detail
    assert "s3cr3t-repl-pw" not in attempt.detail
    startup = server.startups[0]
    assert b"replication\0true\0" in startup or b"replication\0database\0" in startup
    assert b"user\0replicator\0" in startup


def test_try_identify_connection_refused() -> None:
    # Bind then close a socket: nothing listens on that loopback port for the next moment.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempt = try_identify(endpoint(port), timeout=2.0)
    assert attempt.outcome == REFUSED, attempt.detail
    assert "Connection refused" in attempt.detail


def test_endpoint_connect_kwargs() -> None:
    kwargs = Endpoint("h", 5433, "replicator", "pw", hostaddr="198.18.0.3").connect_kwargs(0.2)
    assert kwargs["connect_timeout"] == 1
    assert (kwargs["dbname"], kwargs["replication"], kwargs["hostaddr"], kwargs["port"]) == (
        "replication",
        "true",
        "198.18.0.3",
        5433,
    )
    assert Endpoint("h", 5432, "u", "p").connect_kwargs(7.9)["hostaddr"] == ""  # never the environment's PGHOSTADDR
    assert Endpoint("h", 5432, "u", "p").connect_kwargs(7.9)["connect_timeout"] == 7


# -- wait_for_primary -------------------------------------------------------------------------

INFO = SystemInfo(system_identifier=7301234567890123456, timeline=1, xlogpos="0/3000148", in_hot_standby=False,
                  server_version=150010)  # fmt: skip


def script(*attempts: Attempt):
    """identify() replaying the attempts, the last one forever; counts calls."""
    queue = list(attempts)
    calls: list[int] = []

    def identify() -> Attempt:
        calls.append(1)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    identify.calls = calls  # type: ignore[attr-defined]
    return identify


def test_ok_at_once(clock, log) -> None:
    polls: list[int] = []
    info = wait_for_primary(
        script(Attempt(OK, info=INFO)), timeout=60, auth_attempts=3, user="replicator", target=TARGET, log=log,
        clock=clock, sleep=clock.sleep, on_poll=lambda: polls.append(1),
    )  # fmt: skip
    assert info == INFO
    assert clock.sleeps == [] and polls == [1]
    assert log.events("primary_wait_state") == []
    [done] = log.events("primary_wait", "info")
    assert done["system_identifier"] == str(INFO.system_identifier) and done["attempts"] == 1


@pytest.mark.parametrize(
    ("kind", "detail", "hint_has"),
    [
        (BAD_PASSWORD, BAD_PW, "PGSFS_REPLICATION_PASSWORD"),
        (HBA_REJECTED, HBA_PG15, "pg_hba.conf"),
        (NO_PRIVILEGE, PRIV_PG16, "ALTER ROLE replicator REPLICATION"),
    ],
)
def test_gives_up_after_auth_attempts(clock, log, kind: str, detail: str, hint_has: str) -> None:
    identify = script(Attempt(kind, detail=detail))
    with pytest.raises(AuthenticationFailed) as info:
        wait_for_primary(identify, timeout=600, auth_attempts=3, user="replicator", target=TARGET, log=log,
                         clock=clock, sleep=clock.sleep, auth_pause=3.0)  # fmt: skip
    error = info.value
    assert error.exit_code == 5 and error.event == "primary_auth_failed"
    assert len(identify.calls) == 3  # type: ignore[attr-defined]
    assert clock.sleeps == [3.0, 3.0]  # a Secret mid-rotation gets a few seconds, not a hammering
    assert "replicator" in error.message and TARGET in error.message and kind in error.message
    assert "replicator" in error.hint and hint_has in error.hint
    assert error.fields["reason"] == kind and error.fields["attempts"] == 3
    assert len(log.events("primary_wait_state")) == 1


def test_auth_failure_never_shows_the_password(server_factory, clock, log) -> None:
    password = "Pa55-never-shown-\\:'"
    server = server_factory("28P01", 'password authentication failed for user "replicator"')
    ep = endpoint(server.port, password)
    with pytest.raises(AuthenticationFailed) as info:
        wait_for_primary(lambda: try_identify(ep, timeout=3.0), timeout=600, auth_attempts=2, user="replicator",
                         target=TARGET, log=log, clock=clock, sleep=clock.sleep)  # fmt: skip
    error = info.value
    everything = f"{error.message} {error.hint} {error.fields} {log.lines}"
    assert password not in everything
    assert "PGSFS_REPLICATION_PASSWORD" in error.hint
    assert len(server.startups) == 2


def test_auth_failures_count_across_other_outcomes(clock, log) -> None:
    identify = script(
        Attempt(REFUSED), Attempt(BAD_PASSWORD), Attempt(STARTING), Attempt(BAD_PASSWORD), Attempt(BAD_PASSWORD),
        Attempt(OK, info=INFO),
    )  # fmt: skip
    with pytest.raises(AuthenticationFailed):
        wait_for_primary(identify, timeout=600, auth_attempts=3, user="replicator", target=TARGET, log=log,
                         clock=clock, sleep=clock.sleep)  # fmt: skip
    assert len(identify.calls) == 5  # type: ignore[attr-defined]


def test_rotated_secret_recovers(clock, log) -> None:
    identify = script(Attempt(BAD_PASSWORD, detail=BAD_PW), Attempt(OK, info=INFO))
    assert wait_for_primary(identify, timeout=600, auth_attempts=3, user="replicator", target=TARGET, log=log,
                            clock=clock, sleep=clock.sleep) == INFO  # fmt: skip


def test_waits_out_startup_then_succeeds_one_line_per_change(clock, log) -> None:
    attempts = [Attempt(REFUSED)] * 4 + [Attempt(STARTING)] * 3 + [Attempt(IN_RECOVERY)] * 2 + [Attempt(REFUSED)]
    identify = script(*attempts, Attempt(OK, info=INFO))
    assert wait_for_primary(identify, timeout=600, auth_attempts=3, user="replicator", target=TARGET, log=log,
                            clock=clock, sleep=clock.sleep) == INFO  # fmt: skip
    states = log.events("primary_wait_state", "info")
    assert [s["outcome"] for s in states] == [REFUSED, STARTING, IN_RECOVERY, REFUSED]
    assert [s["attempts"] for s in states] == [1, 5, 8, 10]
    assert len(clock.sleeps) == 10
    assert all(0.5 <= s <= 1.0 for s in clock.sleeps)
    [done] = log.events("primary_wait", "info")
    assert done["seen"] == {REFUSED: 5, STARTING: 3, IN_RECOVERY: 2, OK: 1}


@pytest.mark.parametrize("kind", [REFUSED, STARTING, IN_RECOVERY, TIMEOUT, UNREACHABLE, OTHER])
def test_unavailable_after_timeout(clock, log, kind: str) -> None:
    start = clock()
    identify = script(Attempt(kind, detail="why"))
    with pytest.raises(PrimaryUnavailable) as info:
        wait_for_primary(identify, timeout=20, auth_attempts=3, user="replicator", target=TARGET, log=log,
                         clock=clock, sleep=clock.sleep)  # fmt: skip
    error = info.value
    assert error.exit_code == 4 and error.event == "primary_wait_timeout"
    assert clock() - start <= 20
    assert error.fields["elapsed_s"] >= 18
    assert 20 <= error.fields["attempts"] <= 41
    assert error.fields["reason"] == kind
    assert kind in error.message and "20 s" in error.message
    assert len(log.events("primary_wait_state")) == 1


def test_the_segment_holding_a_position_is_named_as_postgresql_names_it() -> None:
    # 0/3000028 with 16 MB segments: segment 3 of log 0; 1/0 starts log 1.
    # As XLogFileName: segment number / and % segments per 4 GB log id.
    assert segment_name_suffix(0x3000028, 16 * 1048576) == "0000000000000003"
    assert segment_name_suffix(0x1FF000000, 16 * 1048576) == "00000001000000FF"
    assert segment_name_suffix(0x1FF000000, 64 * 1048576) == "000000010000003F"
