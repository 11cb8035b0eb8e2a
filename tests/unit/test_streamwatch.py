"""Unit tests of agent.streamwatch: reading the standby's conninfo back, and timing a stuck receiver."""

from __future__ import annotations

import socket
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent import render, streamwatch
from agent.announce import error_response

STARTING_UP = error_response("the database system is starting up", code="57P03")
VALUES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


@given(host=VALUES, passfile=VALUES)
def test_the_conninfo_the_agent_writes_reads_back_exactly(tmp_path_factory, host: str, passfile: str) -> None:
    pgdata = tmp_path_factory.mktemp("pgdata")
    conninfo = render.primary_conninfo(host=host, port=5433, user="repl", passfile=passfile, application_name="p-1")
    (pgdata / render.CONF_NAME).write_text(f"port = 5432\nprimary_conninfo = {render.quote_conf(conninfo)}\n")
    assert streamwatch.standby_conninfo(pgdata) == conninfo
    values = streamwatch.conninfo_values(conninfo)
    assert (values["host"], values["port"], values["passfile"]) == (host, "5433", passfile)


def test_postgresql_auto_conf_wins_and_no_setting_is_none(tmp_path: Path) -> None:
    assert streamwatch.standby_conninfo(tmp_path) is None
    (tmp_path / render.CONF_NAME).write_text("primary_conninfo = 'host=a'\n")
    (tmp_path / "postgresql.auto.conf").write_text("primary_conninfo = 'host=''b'' port=5'  # set by a handoff\n")
    assert streamwatch.standby_conninfo(tmp_path) == "host='b' port=5"
    assert streamwatch.conninfo_values("host='b' port=5") == {"host": "b", "port": "5"}


def _never(*_: object) -> bool:
    raise AssertionError("the upstream must not be asked while the standby streams")


def test_time_counts_only_while_the_upstream_answers_and_the_receiver_does_not_stream(tmp_path: Path) -> None:
    mark = tmp_path / streamwatch.MARK_NAME
    # First probe that sees it stuck: the count starts (0 s), kept in a 0600 file.
    assert streamwatch.not_streaming_for(tmp_path, "100", False, lambda: True, 1000.0) == 0.0
    assert mark.stat().st_mode & 0o777 == 0o600
    assert streamwatch.not_streaming_for(tmp_path, "100", False, lambda: True, 1070.0) == 70.0
    # A partition (the upstream does not answer) resets it: after healing, the receiver gets its
    # minute to reconnect before anything restarts it.
    assert streamwatch.not_streaming_for(tmp_path, "100", False, lambda: False, 1080.0) == 0.0
    assert not mark.exists()
    assert streamwatch.not_streaming_for(tmp_path, "100", False, lambda: True, 1090.0) == 0.0
    assert streamwatch.not_streaming_for(tmp_path, "100", False, lambda: True, 1100.0) == 10.0
    # Streaming resets it without asking the upstream.
    assert streamwatch.not_streaming_for(tmp_path, "100", True, _never, 1110.0) == 0.0
    assert not mark.exists()


def test_a_new_postmaster_starts_the_count_afresh(tmp_path: Path) -> None:
    streamwatch.not_streaming_for(tmp_path, "100", False, lambda: True, 1000.0)
    assert streamwatch.not_streaming_for(tmp_path, "200", False, lambda: True, 1500.0) == 0.0
    assert streamwatch.not_streaming_for(tmp_path, "200", False, lambda: True, 1530.0) == 30.0


def test_a_planted_symlink_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / streamwatch.MARK_NAME).symlink_to(target)
    for now in (1000.0, 1100.0):  # never counts (so never fails liveness) and never raises
        assert streamwatch.not_streaming_for(tmp_path, "100", False, lambda: True, now) == 0.0
    assert target.read_text() == "keep"


def test_an_upstream_serves_when_it_asks_a_replication_client_to_authenticate(upstream) -> None:
    assert streamwatch.upstream_serves("127.0.0.1", upstream.port, "repl")
    # What it was sent: a protocol 3.0 StartupMessage for a physical replication connection, no password.
    assert upstream.startups[-1] == b"user\0repl\0replication\0true\0\0"
    # Crash recovery or a shutdown: PostgreSQL refuses ("the database system is starting up").
    upstream.reply = STARTING_UP
    assert not streamwatch.upstream_serves("127.0.0.1", upstream.port, "repl")
    # A frozen server: the kernel completes the handshake, nothing answers.
    upstream.reply = None
    assert not streamwatch.upstream_serves("127.0.0.1", upstream.port, "repl", timeout=0.3)


def test_an_upstream_that_does_not_listen_or_resolve_does_not_serve() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not streamwatch.upstream_serves("127.0.0.1", port, "repl")
    assert not streamwatch.upstream_serves("no-such-host.invalid", 5432, "repl")
