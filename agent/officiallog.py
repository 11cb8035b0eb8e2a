"""The plain lines the official entrypoint prints, for the tools that wait on them.

Testcontainers' PostgreSQL modules wait until "database system is ready to accept connections" has
appeared twice (Java `withTimes(2)`, Go `WithOccurrence(2)`): the official image's temporary server
says it once at init, the real server once more. CI scripts grep "PostgreSQL init process complete".
The agent's own story stays in its JSON lines; these few go beside them, as the official prints them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TextIO

READY = "database system is ready to accept connections"
INIT_COMPLETE = "PostgreSQL init process complete; ready for start up."
SKIPPING = "PostgreSQL Database directory appears to contain a database; Skipping initialization"
# Single-user mode has no server to say it; this line says so, and still counts for those tools.
SINGLE_USER_READY = (
    "pg-sfs-agent: roles and database were set in single-user mode, with no server to wait for; "
    f"where the official image's temporary server logs it: {READY}"
)


# The official entrypoint's warning, word for word but for its last sentence's docker-run advice.
TRUST_WARNING = """\
********************************************************************************
WARNING: POSTGRES_HOST_AUTH_METHOD has been set to "trust". This will allow
         anyone with access to the Postgres port to access your database without
         a password, even if POSTGRES_PASSWORD is set. See PostgreSQL
         documentation about "trust":
         https://www.postgresql.org/docs/current/auth-trust.html
         In Docker's default configuration, this is effectively any other
         container on the same system.

         It is not recommended to use POSTGRES_HOST_AUTH_METHOD=trust. Replace
         it with "-e POSTGRES_PASSWORD=password" instead to set a password in
         "docker run". (pg-sfs-agent accepts trust only outside a StatefulSet.)
********************************************************************************"""


# Every plain line the agent itself prints (the container log's other plain lines are postgres').
AGENT_LINES = frozenset({INIT_COMPLETE, SKIPPING, SINGLE_USER_READY, *TRUST_WARNING.splitlines()})


def say(*lines: str, stream: TextIO | None = None) -> None:
    """Print plain lines on the container log (stderr, beside the JSON lines)."""
    out = stream or sys.stderr
    out.write("".join(f"{line}\n" for line in lines))
    out.flush()


def echo_server_log(path: Path, stream: TextIO | None = None) -> None:
    """Copy the init-time server's log to the container log, as the official image's temporary server
    writes there: its ready line, and the server side (with CONTEXT) of an initdb.d script's error."""
    out = stream or sys.stderr
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            shutil.copyfileobj(log, out)
    except OSError:
        return
    out.flush()
