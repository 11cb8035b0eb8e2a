"""The agent's own connections send a password only over SCRAM (review F-L7).

A stand-in server asks for the password in clear text or as md5, as a compromised member or a pod
holding a member's name could, and records what the client sends next: that a password was not sent
is what only a stand-in can show. tests/integration/test_primary.py meets a real server whose
pg_hba asks for it in clear text.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import psycopg
import pytest

from agent import postgres
from agent.announce import read_exact

CLEARTEXT_REQUEST = b"R" + struct.pack("!II", 8, 3)
MD5_REQUEST = b"R" + struct.pack("!II", 12, 5) + b"salt"


class Harvester:
    """Asks every client for its password with `request`, keeps whatever comes back."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(5)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                length, code = struct.unpack("!II", read_exact(conn, 8))
                if code == 80877103:  # SSLRequest: no
                    conn.sendall(b"N")
                    length, code = struct.unpack("!II", read_exact(conn, 8))
                read_exact(conn, length - 8)
                conn.sendall(self.request)
                self.received = conn.recv(4096)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def agent_auth(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("PGREQUIREAUTH", raising=False)
    monkeypatch.setattr(postgres, "_REQUIRE_AUTH_SET", [])
    postgres.require_scram()
    yield
    os.environ.pop("PGREQUIREAUTH", None)


@pytest.mark.usefixtures("agent_auth")
@pytest.mark.parametrize("request_bytes", [CLEARTEXT_REQUEST, MD5_REQUEST])
def test_a_password_is_never_sent_to_a_server_that_asks_for_it_in_clear_or_as_md5(request_bytes: bytes) -> None:
    server = Harvester(request_bytes)
    try:
        with pytest.raises(psycopg.OperationalError, match=r"require_auth|authentication method requirement"):
            psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", password="Harvest-Me-1",
                            dbname="postgres", connect_timeout=3)  # fmt: skip
    finally:
        server.close()
    assert b"Harvest-Me-1" not in server.received
    assert not server.received.startswith(b"p"), "no password message at all"


@pytest.mark.usefixtures("agent_auth")
def test_children_do_not_inherit_the_agents_requirement() -> None:
    assert os.environ["PGREQUIREAUTH"] == postgres.REQUIRE_AUTH
    assert "PGREQUIREAUTH" not in postgres.child_env()


def test_a_requirement_the_pod_sets_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGREQUIREAUTH", "scram-sha-256")
    monkeypatch.setattr(postgres, "_REQUIRE_AUTH_SET", [])
    postgres.require_scram()
    assert os.environ["PGREQUIREAUTH"] == "scram-sha-256"
    assert postgres.child_env()["PGREQUIREAUTH"] == "scram-sha-256"
