"""SQL a switchover's former primary runs on its successor, as the superuser over the network:
promote it, point its WAL receiver, give its running server a setting."""

from __future__ import annotations

from typing import Any


def _connect(host: str, hostaddr: str, port: int, user: str, password: str) -> Any:
    import psycopg

    return psycopg.connect(host=host, hostaddr=hostaddr, port=port, user=user, password=password, dbname="postgres",
                           connect_timeout=5, autocommit=True)  # fmt: skip


def promote_over_sql(host: str, hostaddr: str, port: int, user: str, password: str, slot: str) -> bool | None:
    """pg_promote() on another member as the superuser, waiting up to 60 s for it to finish; only if
    the server at that address is that member (its primary_slot_name is `slot`: a stale DNS record
    and a reused address must not promote another one). None when it was not."""
    with _connect(host, hostaddr, port, user, password) as conn:
        row = conn.execute("SELECT current_setting('primary_slot_name', true)").fetchone()
        if not row or row[0] != slot:
            return None
        row = conn.execute("SELECT pg_promote(true, 60)").fetchone()
    return bool(row and row[0])


def redirect_successor(host: str, hostaddr: str, port: int, user: str, password: str, conninfo: str | None) -> None:
    """Point another member's WAL receiver at `conninfo`, or with None back at its managed settings
    (ALTER SYSTEM, then a reload: primary_conninfo is reloadable since PostgreSQL 13)."""
    from psycopg import sql

    with _connect(host, hostaddr, port, user, password) as conn:
        if conninfo is None:
            conn.execute("ALTER SYSTEM RESET primary_conninfo")
        else:
            conn.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo)))
        conn.execute("SELECT pg_reload_conf()")


def set_until_reload(host: str, hostaddr: str, port: int, user: str, password: str, name: str, value: str) -> str:
    """Give another member's running server a setting now (ALTER SYSTEM, reload, then RESET in the
    file: it holds until that server's next reload or restart, where its managed files take over).
    Returns the value its server reports once the reload took effect."""
    from psycopg import sql

    with _connect(host, hostaddr, port, user, password) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
        shown = ""
        for _ in range(50):  # a backend reloads between commands: at most a few, bounded
            row = conn.execute(sql.SQL("SELECT current_setting({})").format(sql.Literal(name))).fetchone()
            shown = str(row[0]) if row else ""
            if shown == value:
                break
            conn.execute("SELECT pg_sleep(0.05)")
        conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
    return shown
