"""The announcement a waiting member gives on postgres' port, read by a real libpq client."""

from __future__ import annotations

import socket

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import announce, replication
from agent.announce import Announcer
from emulator.waiting import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@given(st.integers(min_value=1, max_value=2**64 - 1), st.text(max_size=40))
def test_announcements_read_back(system_identifier: int, doing: str) -> None:
    said = announce.holds_message(system_identifier, doing)
    assert announce.read_announcement(said) == (True, system_identifier, None)
    said = announce.holds_message(system_identifier, doing, timeline=3)
    assert announce.read_announcement(said) == (True, system_identifier, 3)
    assert announce.read_announcement(announce.empty_message(doing)) == (False, None, None)


def test_other_errors_are_not_announcements() -> None:
    assert announce.read_announcement("the database system is starting up") is None


@pytest.mark.parametrize("sslmode", ["prefer", "disable", "allow"])
def test_libpq_gets_a_retryable_error_naming_the_cluster(sslmode: str) -> None:
    port = _free_port()
    with Announcer(port, announce.holds_message(7711490745716584460, "checking the primary"), host="127.0.0.1") as a:
        assert a.start() is None
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(host="127.0.0.1", port=port, user="u", dbname="replication", replication="true",
                            sslmode=sslmode, gssencmode="disable", connect_timeout=3)  # fmt: skip
    message = str(caught.value)
    assert replication.classify_error(message) == replication.STARTING
    assert announce.read_announcement(message) == (True, 7711490745716584460, None)


def test_the_message_can_change_and_the_port_is_free_after_close() -> None:
    port = _free_port()
    a = Announcer(port, announce.empty_message("waiting to clone"), host="127.0.0.1")
    assert a.start() is None
    a.say(announce.holds_message(42, "clone finished"))
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(host="127.0.0.1", port=port, connect_timeout=3, gssencmode="disable")
    assert announce.read_announcement(str(caught.value)) == (True, 42, None)
    a.close()
    with socket.socket() as s:  # what postgres does next: bind the same port at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_taken_port_is_reported_not_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert Announcer(port, "x", host="127.0.0.1").start() is not None


def test_a_connection_flood_is_answered_by_a_bounded_number_of_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Review F-L12: one thread per connection, each up to ~6 s, without a bound.
    monkeypatch.setattr(announce, "MAX_ANSWERING", 4)
    port = _free_port()
    held: list[socket.socket] = []
    with Announcer(port, announce.holds_message(42, "clone finished"), host="127.0.0.1") as a:
        assert a.start() is None
        try:
            for _ in range(4):  # silent clients take every slot
                held.append(socket.create_connection(("127.0.0.1", port), timeout=3))
            with socket.create_connection(("127.0.0.1", port), timeout=3) as extra:
                assert extra.recv(16) == b"", "one more is closed at once"
        finally:
            for sock in held:
                sock.close()

        def answered() -> bool:
            try:
                psycopg.connect(host="127.0.0.1", port=port, connect_timeout=3, gssencmode="disable")
            except psycopg.OperationalError as exc:
                return announce.read_announcement(str(exc)) == (True, 42, None)
            return False

        wait_until(answered, 10, what="a slot to come back once a client leaves")
