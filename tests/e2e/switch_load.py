"""A client for switchover tests, run inside a client namespace of the emulated cluster.

Writer: autocommit INSERTs of 1, 2, 3, ... through a libpq multi-host URI with
target_session_attrs=read-write (what README offers clients), or through the hosts --write-to names
(the postgresql-rw Service), recording each acknowledged one.
Sampler: every 0.1 s asks each member `pg_is_in_recovery()` and records which accept writes.
Bounded by --seconds and --max-writes; ends early when --stop-file appears. One JSON line per
event on stdout. The password comes from PGPASSWORD, never argv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import psycopg

_out_lock = threading.Lock()


def emit(**fields: Any) -> None:
    """One JSON line, whole, even from two threads."""
    with _out_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def writer(dsn: str, table: str, stop: threading.Event, deadline: float, max_writes: int, fresh: bool) -> None:
    """Insert until told to stop; reconnect (to whichever member is writable) after any error, or
    before every write when `fresh` (a client that opens a connection per transaction)."""
    n = 0
    conn: psycopg.Connection[Any] | None = None
    while not stop.is_set() and time.monotonic() < deadline and n < max_writes:
        try:
            if conn is None:
                conn = psycopg.connect(dsn, autocommit=True)
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (n + 1,))
            n += 1
            emit(ack=n, t=time.time())
            if fresh:
                conn.close()
                conn = None
        except psycopg.Error as exc:
            emit(error=" ".join(str(exc).split())[:200], t=time.time(), next=n + 1)
            if conn is not None:
                conn.close()
                conn = None
            stop.wait(0.05)
        else:
            stop.wait(0.01)
    if conn is not None:
        conn.close()


def sampler(members: list[str], dsn_base: str, stop: threading.Event, deadline: float) -> None:
    """Which members accept writes, ten times a second (one connection per member, kept)."""
    conns: dict[str, psycopg.Connection[Any] | None] = dict.fromkeys(members)
    while not stop.is_set() and time.monotonic() < deadline:
        writable = []
        for host in members:
            try:
                conn = conns[host]
                if conn is None:
                    conn = conns[host] = psycopg.connect(f"{dsn_base} host={host} connect_timeout=1", autocommit=True)
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    writable.append(host.split(".")[0])
            except psycopg.Error:
                old = conns[host]
                if old is not None:
                    old.close()
                conns[host] = None
        emit(sample=writable, t=time.time())
        stop.wait(0.1)
    for conn in conns.values():
        if conn is not None:
            conn.close()


def main() -> int:
    """Run writer and sampler until the stop file, the count or the time limit."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", required=True, help="comma-separated member host names (sampled)")
    ap.add_argument("--write-to", help="comma-separated hosts the writer connects to (default: the members)")
    ap.add_argument("--user", required=True)
    ap.add_argument("--table", default="acked")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--max-writes", type=int, default=200000)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--fresh", action="store_true", help="a new connection for every write")
    args = ap.parse_args()
    members = args.members.split(",")
    base = f"dbname=postgres user={args.user}"
    dsn = f"{base} host={args.write_to or ','.join(members)} target_session_attrs=read-write connect_timeout=2"
    stop = threading.Event()
    deadline = time.monotonic() + args.seconds
    threads = [
        threading.Thread(target=writer, args=(dsn, args.table, stop, deadline, args.max_writes, args.fresh),
                         daemon=True),
        threading.Thread(target=sampler, args=(members, base, stop, deadline), daemon=True),
    ]
    for t in threads:
        t.start()
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        if os.path.exists(args.stop_file):
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(10)
    emit(done=True, t=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
