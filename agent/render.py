"""Pure rendering of the files the agent owns: pg_hba block, settings file, conninfo, passfile."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata

CONF_NAME = "pg-sfs-agent.conf"
INCLUDE_LINE = f"include_if_exists = '{CONF_NAME}'\t# pg-sfs-agent: its settings, rewritten at every start"
HBA_BEGIN = "# BEGIN pg-sfs-agent: managed block, rewritten at every start; add your rules below it"
HBA_TAIL_BEGIN = "# BEGIN pg-sfs-agent: managed catch-all, rewritten at every start; add your rules above it"
HBA_END = "# END pg-sfs-agent"
HBA_FENCE_BEGIN = "# BEGIN pg-sfs-agent: switchover fence of a preStop hook, removed at the next start"
SCRAM_ITERATIONS = 4096


def quote_conf(value: str) -> str:
    """A postgresql.conf string literal: backslashes doubled, quotes doubled."""
    escaped = value.replace("\\", "\\\\").replace("'", "''").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped + "'"


def quote_conninfo(value: str) -> str:
    """A libpq conninfo value: single-quoted with backslash escapes for `\\` and `'`."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted (for single-user mode, where no client library quotes)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """An SQL string literal for standard_conforming_strings = on (the default since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def setup_sql(
    *, superuser: str, superuser_verifier: str | None, replication_user: str | None,
    replication_verifier: str | None, database: str | None, replication_exists: bool = False,
) -> list[str]:
    """The roles (and a new cluster's database) as SQL statements, one per line, passwords as SCRAM
    verifiers: for single-user mode, and for the temporary server (initdb.d scripts, rotated passwords).
    A verifier given as None leaves that role's password as it is."""
    statements = []
    if superuser_verifier is not None:
        statements.append(f"ALTER ROLE {quote_ident(superuser)} PASSWORD {quote_literal(superuser_verifier)}")
    if replication_user is not None and replication_verifier is not None:
        verb = "ALTER" if replication_exists else "CREATE"
        statements.insert(0, f"{verb} ROLE {quote_ident(replication_user)} WITH REPLICATION LOGIN "
                             f"PASSWORD {quote_literal(replication_verifier)}")  # fmt: skip
    # The three databases initdb makes already exist (the official checks pg_database first).
    if database is not None and database not in ("postgres", "template0", "template1"):
        statements.append(f"CREATE DATABASE {quote_ident(database)}")
    if any("\n" in s or "\r" in s for s in statements):
        raise ValueError("single-user mode reads one statement per line: a name holds a line break")
    return statements


def escape_passfile(value: str) -> str:
    """A .pgpass field: `\\` and `:` escaped with a backslash."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def passfile_line(user: str, password: str) -> str:
    """The one line of the replication passfile: any host, port and database, this user."""
    if any(ch in user + password for ch in "\r\n"):
        raise ValueError("a passfile entry cannot hold a line break")
    return f"*:*:*:{escape_passfile(user)}:{escape_passfile(password)}\n"


# The application_name suffix of the primary_conninfo a handoff sets on its successor with ALTER
# SYSTEM (switchover.redirect_successor); ManagedFiles removes such a line if it outlived the handoff.
HANDOFF_SUFFIX = "-handoff"
# wal_receiver_timeout; a replica whose receiver heard nothing for 3/4 of it is not Ready (probe.py).
RECEIVER_TIMEOUT_S = 10
# tcp_user_timeout of the walsender serving a standby (primary_conninfo's options), milliseconds.
WALSENDER_USER_TIMEOUT_MS = 10000


def without_handoff_conninfo(auto_conf: str) -> tuple[str, bool]:
    """postgresql.auto.conf without a primary_conninfo a handoff left there; and whether one was."""
    kept, removed = [], False
    for line in auto_conf.splitlines(keepends=True):
        key = line.split("=", 1)[0].strip()
        if key == "primary_conninfo" and f"{HANDOFF_SUFFIX}'" in line.replace("''", "'"):
            removed = True
            continue
        kept.append(line)
    return "".join(kept), removed


def conninfo(params: dict[str, str]) -> str:
    """A conninfo string from key/value pairs, every value quoted."""
    return " ".join(f"{key}={quote_conninfo(value)}" for key, value in params.items())


def primary_conninfo(*, host: str, port: int, user: str, passfile: str, application_name: str) -> str:
    """primary_conninfo for a standby: no password inline, a passfile instead."""
    return conninfo(
        {
            "host": host,
            "port": str(port),
            "user": user,
            "passfile": passfile,
            "application_name": application_name,
            "connect_timeout": "5",
            # Notice a dead primary in about 30 s rather than after the kernel's two hours.
            "keepalives_idle": "10",
            "keepalives_interval": "5",
            "keepalives_count": "3",
            # The walsender serving this standby takes it from the startup packet: cut off silently,
            # its connection ends after 10 s instead of the server-wide 30 s, and with it the wait
            # of the checkpoint that invalidates its slot (no WAL is removed meanwhile).
            "options": f"-c tcp_user_timeout={WALSENDER_USER_TIMEOUT_MS}",
        }
    )


def settings_file(
    *,
    port: int,
    max_wal_senders: int,
    max_replication_slots: int,
    wal: dict[str, str],
    standby: dict[str, str] | None = None,
    template: dict[str, str] | None = None,
    synchronous_standby_names: str = "",
    archive: dict[str, str] | None = None,
    conf_dir: str | None = None,
) -> str:
    """The agent's settings file; `wal` holds the WAL sizes, `standby` adds primary_conninfo and slot,
    `template` the pgsfs.* placeholders that say which pod template this member runs (agent/podbirth.py),
    `archive` the archive_* settings (agent/archive.py), `conf_dir` the user's tuning directory (read
    first: the settings below win over it, ALTER SYSTEM over both)."""
    lines = [
        "# Managed by pg-sfs-agent and rewritten at every start: do not edit.",
        "# Override a setting with ALTER SYSTEM (postgresql.auto.conf is read after this file).",
        *([f"include_dir = {quote_conf(conf_dir)}\t# PGSFS_CONF_DIR: your tuning (*.conf), before the agent's own"]
          if conf_dir else []),
        "listen_addresses = '*'",
        f"port = {port}",
        "wal_level = replica",
        f"max_wal_senders = {max_wal_senders}",
        f"max_replication_slots = {max_replication_slots}",
        "hot_standby = on",
        # Sized from what pg_wal's volume can give WAL (agent/walbudget.py): its peak stays under half of it.
        *(f"{name} = {quote_conf(value)}" for name, value in wal.items()),
        "password_encryption = 'scram-sha-256'",
        # pg_rewind needs hint bits WAL-logged (or checksums, which new clusters have; older ones may not).
        "wal_log_hints = on",
        # Long clones must not be cut by the walsender timeout while the primary is busy.
        "wal_sender_timeout = '5min'",
        # A replica cut off silently: the kernel gives up on data it never acknowledges after 30 s, so
        # a walsender stuck sending to it exits and its slot can be invalidated before WAL fills the
        # volume (the checkpoint that invalidates a slot waits for its walsender).
        "tcp_user_timeout = '30s'",
        # The receiver asks for a reply after 5 s of silence and gives up after 10 s: readiness sees a
        # silent upstream after 7.5 s, and the receiver reconnects by itself once the network heals.
        f"wal_receiver_timeout = '{RECEIVER_TIMEOUT_S}s'",
    ]
    # WAL archiving through pgBackRest (PGSFS_BACKUP_REPO); without it archive_mode stays off.
    for name, value in (archive or {}).items():
        lines.append(f"{name} = {quote_conf(value)}")
    if synchronous_standby_names:
        lines.append(f"synchronous_standby_names = {quote_conf(synchronous_standby_names)}")
    # Placeholders only the agents read (SHOW): which template this member was started with.
    for name, value in (template or {}).items():
        lines.append(f"{name} = {quote_conf(value)}")
    if standby is not None:
        lines.append(f"primary_conninfo = {quote_conf(standby['primary_conninfo'])}")
        lines.append(f"primary_slot_name = {quote_conf(standby['primary_slot_name'])}")
    return "\n".join(lines) + "\n"


def synchronous_standby_names(policy: str, members: list[str]) -> str:
    """`ANY 1` or `FIRST 2` over the members' application names (their pod names), each quoted;
    never `*`, which would let the agent's own clone and check connections count as standbys."""
    if not policy or not members:
        return ""
    kind, count = policy.split()
    names = ", ".join('"' + name.replace('"', '""') + '"' for name in members)
    return f"{kind} {count} ({names})"


def with_include(postgresql_conf: str) -> str:
    """postgresql.conf with the include of the agent's file as its last line (added once)."""
    kept = [line for line in postgresql_conf.splitlines() if CONF_NAME not in line]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", INCLUDE_LINE]) + "\n"


def quote_hba(name: str) -> str:
    """A pg_hba.conf user or database field: always double-quoted, so a name like `all`, `+group` or
    one with spaces or commas means itself (pg_hba cannot hold a double quote; config refuses one)."""
    if '"' in name or "\n" in name:
        raise ValueError("pg_hba.conf cannot hold a double quote or a line break in a name")
    return f'"{name}"'


def _hba_rows(rows: list[tuple[str, str, str, str, str]]) -> str:
    return "\n".join(f"{t:<7} {d:<12} {u:<16} {a:<12} {m}" for t, d, u, a, m in rows)


def hba_block(replication_user: str) -> str:
    """The managed pg_hba rules that come first: replication only for the replication role, with
    SCRAM, from anywhere; every other role refused replication."""
    user = quote_hba(replication_user)
    rows = [
        ("host", "replication", user, "0.0.0.0/0", "scram-sha-256"),
        ("host", "replication", user, "::/0", "scram-sha-256"),
        ("host", "replication", "all", "0.0.0.0/0", "reject"),
        ("host", "replication", "all", "::/0", "reject"),
    ]
    return f"{HBA_BEGIN}\n{_hba_rows(rows)}\n{HBA_END}\n"


def hba_tail(method: str = "scram-sha-256") -> str:
    """The managed pg_hba rules that come last: every other TCP connection with SCRAM, or `trust` for
    a standalone server that asked for it (the official image appends its `host all all all` line the
    same way), so the user's rules above it win."""
    rows = [("host", "all", "all", "0.0.0.0/0", method), ("host", "all", "all", "::/0", method)]
    return f"{HBA_TAIL_BEGIN}\n{_hba_rows(rows)}\n{HBA_END}\n"


def fence_block(replication_user: str, successor_address: str) -> str:
    """pg_hba rules that come before all others while a primary hands its role over (agent/prestop.py):
    no new connection at all, local ones too, except the successor's WAL receiver reconnecting."""
    prefix = 128 if ":" in successor_address else 32
    rows = [
        ("host", "replication", quote_hba(replication_user), f"{successor_address}/{prefix}", "scram-sha-256"),
        ("local", "all", "all", "", "reject"),
        ("host", "all", "all", "0.0.0.0/0", "reject"),
        ("host", "all", "all", "::/0", "reject"),
    ]
    return f"{HBA_FENCE_BEGIN}\n{_hba_rows(rows)}\n{HBA_END}\n"


def with_fence(pg_hba: str, replication_user: str, successor_address: str) -> str:
    """pg_hba.conf with the fence first and everything else as it was."""
    return fence_block(replication_user, successor_address) + without_fence(pg_hba)


def without_fence(pg_hba: str) -> str:
    """pg_hba.conf without a fence block (the rest byte for byte)."""
    lines = pg_hba.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HBA_FENCE_BEGIN)
        end = next(i for i in range(start, len(lines)) if lines[i].strip() == HBA_END)
    except StopIteration:
        return pg_hba
    return "".join(lines[:start] + lines[end + 1:])


def with_hba_block(pg_hba: str, replication_user: str, method: str = "scram-sha-256") -> str:
    """pg_hba.conf with the replication block first, the catch-all block last (first match wins, so
    the user's own rules between them take effect: reject, hostssl, cert, network limits), and the
    user's lines kept as they were. A block left by an earlier version, catch-all included, is replaced."""
    out: list[str] = []
    inside = False
    for line in pg_hba.splitlines():
        if line.strip() in (HBA_BEGIN, HBA_TAIL_BEGIN, HBA_FENCE_BEGIN):
            inside = True
            continue
        if inside:
            if line.strip() == HBA_END:
                inside = False
            continue
        out.append(line)
    rest = "\n".join(out).strip("\n")
    return hba_block(replication_user) + ("\n" + rest + "\n\n" if rest else "\n") + hba_tail(method)


def _saslprep(password: str) -> str | None:
    """RFC 4013 SASLprep as PostgreSQL applies it; None when the password is not preparable."""
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch for ch in password if not stringprep.in_table_b1(ch))
    if not mapped:
        return None
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    # As src/common/saslprep.c: the checks run on the mapped input, before normalisation.
    if any(test(ch) for ch in mapped for test in prohibited):
        return None
    has_randal = any(stringprep.in_table_d1(ch) for ch in mapped)
    if has_randal and (
        any(stringprep.in_table_d2(ch) for ch in mapped)
        or not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1]))
    ):
        return None
    return unicodedata.normalize("NFKC", mapped)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it, so no plain password is ever sent."""
    prepared = _saslprep(password)
    raw = (prepared if prepared is not None else password).encode("utf-8")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", raw, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def verifier_matches(verifier: str, password: str) -> bool:
    """True when the SCRAM verifier was made from this password."""
    try:
        head, keys = verifier.split("$", 2)[1:]
        iterations_text, salt_b64 = head.split(":")
        salt = base64.b64decode(salt_b64)
        expected = scram_verifier(password, salt=salt, iterations=int(iterations_text))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected.split("$", 2)[2], keys)
