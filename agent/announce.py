"""While the agent works and postgres is not running yet, say on postgres' port what this member holds.

A primary whose volume is empty must find out whether another member still holds the cluster
before it initialises a new one (the re-init guard). A replica that is still waiting (to clone, or
to check the primary before starting its standby) runs no postgres, so without this it would look
exactly like a pod with nothing: the guard could only wait and guess. The agent therefore answers
every connection on the port with a PostgreSQL ErrorResponse (SQLSTATE 57P03, "the database
system is starting up", which clients treat as retryable) whose message says whether this member
holds data and of which cluster. The listener closes before postgres starts.
"""

from __future__ import annotations

import re
import socket
import socketserver
import struct
import threading
from typing import Any

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
PROTOCOL_3 = 196608
PREFIX = "the database system is starting up (pg-sfs-agent: "
_HOLDS = re.compile(r"pg-sfs-agent: holds cluster (\d+)(?: timeline (\d+))?")
_EMPTY = "pg-sfs-agent: holds no data"
MAX_PACKET = 10000


def holds_message(system_identifier: int, doing: str, timeline: int | None = None) -> str:
    """The announcement of a member whose PGDATA holds cluster `system_identifier` (on `timeline`:
    a member promoted while the primary was away says so, and the primary does not start beside it)."""
    on = f" timeline {timeline}" if timeline is not None else ""
    return f"{PREFIX}holds cluster {system_identifier}{on}; {doing})"


def empty_message(doing: str) -> str:
    """The announcement of a member whose PGDATA is empty."""
    return f"{PREFIX}holds no data; {doing})"


def read_announcement(message: str) -> tuple[bool, int | None, int | None] | None:
    """(holds data, its system identifier, its timeline if said) from an error message, or None if
    no agent said it."""
    match = _HOLDS.search(message)
    if match:
        return True, int(match.group(1)), int(match.group(2)) if match.group(2) else None
    if _EMPTY in message:
        return False, None, None
    return None


def error_response(message: str, *, code: str = "57P03", severity: str = "FATAL", detail: str | None = None) -> bytes:
    """A protocol-3 ErrorResponse (by default FATAL 57P03, "cannot connect now") carrying `message`."""
    fields = [("S", severity), ("V", severity), ("C", code), ("M", message)]
    if detail:
        fields.append(("D", detail))
    body = b"".join(key.encode() + value.encode("utf-8") + b"\0" for key, value in fields) + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def read_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from the socket; ConnectionError if the peer goes away first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(2.0)
        try:
            # libpq may first ask for GSS encryption, then for SSL: decline both, then the startup packet.
            for _ in range(3):
                length, code = struct.unpack("!II", read_exact(sock, 8))
                if code in (SSL_REQUEST, GSSENC_REQUEST) and length == 8:
                    sock.sendall(b"N")
                    continue
                if code != PROTOCOL_3 or not 8 <= length <= MAX_PACKET:
                    return  # a cancel request or something that is not a client: just close
                read_exact(sock, length - 8)
                sock.sendall(error_response(self.server.message))  # type: ignore[attr-defined]
                return
        except (OSError, ConnectionError, struct.error):
            return


# Connections answered at once: a flood costs at most this many threads (each lives up to ~6 s);
# any more are closed as they come. A member needs one now and then.
MAX_ANSWERING = 64


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int, message: str) -> None:
        self.address_family = family
        self.message = message
        self.slots = threading.BoundedSemaphore(MAX_ANSWERING)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # One socket for IPv4 and IPv6, as postgres' listen_addresses='*' covers both.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


ANNOUNCE_POLL_S = 0.02


class Announcer:
    """Answers on postgres' port until `close()`; never fails the start (a busy port is logged)."""

    def __init__(self, port: int, message: str, host: str | None = None) -> None:
        self.port = port
        self.message = message
        # Every address by default, as postgres listens; tests on the host pass loopback.
        self.host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str | None:
        """Listen; returns why it could not (the port is taken, no network), or None."""
        problem = None
        candidates: tuple[tuple[int, str], ...] = ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0"))  # noqa: S104
        if self.host is not None:
            candidates = ((socket.AF_INET6 if ":" in self.host else socket.AF_INET, self.host),)
        for family, host in candidates:
            try:
                self._server = _Server((host, self.port), family, self.message)
                break
            except OSError as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if self._server is None:
            return problem
        # close() waits for the serving loop to see the shutdown: up to one poll interval, which is on
        # the path to exec (every replica start), hence short; 50 wake-ups a second cost nothing.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(ANNOUNCE_POLL_S,), daemon=True)
        self._thread.start()
        return None

    def say(self, message: str) -> None:
        """Change what is announced (for example once the clone is done)."""
        self.message = message
        if self._server is not None:
            self._server.message = message

    def close(self) -> None:
        """Stop listening, so postgres can bind the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Announcer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
