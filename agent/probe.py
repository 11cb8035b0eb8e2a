"""Exec probes for the kubelet: cheap local checks, no heavy imports (stdlib only)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from agent.files import read_limited
from agent.heartbeat import FRESH_SECONDS, HEARTBEAT_NAME
from agent.pgdata import default_state_dir
from agent.render import RECEIVER_TIMEOUT_S
from agent.streamwatch import (
    NOT_STREAMING_LIMIT_S,
    conninfo_values,
    not_streaming_for,
    standby_conninfo,
    upstream_serves,
)

_ORDINAL = re.compile(r"-(0|[1-9][0-9]*)$")


class ProbeFailed(Exception):
    """The probe's verdict is no; the message says why (the kubelet shows it in events)."""


DEFAULT_SOCKET_DIR = "/var/run/postgresql"


def _pgdata(env: Mapping[str, str]) -> Path:
    return Path(env.get("PGDATA", "/var/lib/postgresql/data"))


def _state_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("PGSFS_STATE_DIR") or str(default_state_dir(_pgdata(env))))


def _is_postgres(pid: int) -> bool:
    """Whether a live process `pid` is a postgres. A postmaster.pid left by a crash names a pid
    that the next container reuses: PID 1 is then the agent, alive but not postgres."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == "postgres"
    except OSError:
        return False


def postmaster_lines(pgdata: Path) -> list[str]:
    """postmaster.pid's lines ([] when unreadable). postgres writes that file, so it is read as any
    file root reads where postgres writes: 4 KiB at most, no link followed, no FIFO or device."""
    try:
        return read_limited(pgdata / "postmaster.pid", 4096).decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def own_socket(pgdata: Path, sockdir: str, port: int) -> str:
    """The path of postgres' socket in `sockdir` (postmaster.pid's), when it is a socket owned by
    PGDATA's owner; else ProbeFailed. The probes run as root: they never connect to another user's
    socket because a file postgres can write names it."""
    path = os.path.join(sockdir or DEFAULT_SOCKET_DIR, f".s.PGSQL.{port}")
    try:
        owner = os.lstat(pgdata).st_uid
        st = os.lstat(path)
    except FileNotFoundError:
        return path  # nothing there to connect to: the check itself reports that postgres did not answer
    except OSError as exc:
        raise ProbeFailed(f"postgres did not answer on {path}: {exc.strerror or exc}") from exc
    if not os.path.isabs(path) or not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner:
        raise ProbeFailed(f"{path}, named by postmaster.pid, is not a socket of PGDATA's owner (uid {owner}): "
                          "not connecting to it")  # fmt: skip
    return path


def postmaster_status(pgdata: Path) -> tuple[int, str, str] | None:
    """(pid, socket dir, status) from postmaster.pid when that postmaster is alive, else None."""
    lines = postmaster_lines(pgdata)
    try:
        pid = int(lines[0])
    except (ValueError, IndexError):
        return None
    if not _is_postgres(pid):
        return None
    sockdir = lines[4].strip() if len(lines) > 4 else ""
    status = lines[7].strip() if len(lines) > 7 else ""
    return pid, sockdir, status


def remove_stale_lock(pgdata: Path) -> bool:
    """Remove postmaster.pid when it names no running postgres; True if it did.

    A killed postgres leaves one naming PID 1, which in the new container is the agent: pg_rewind's
    single-user crash recovery (a grandchild) would take it for a running server.
    """
    lock = pgdata / "postmaster.pid"
    if lock.exists() and postmaster_status(pgdata) is None:
        lock.unlink()
        return True
    return False


def heartbeat_age(state_dir: Path, now: float) -> float | None:
    """Seconds since the agent's last heartbeat, or None when there is none."""
    try:
        data = json.loads(read_limited(state_dir / HEARTBEAT_NAME, 4096))
        return now - float(data["ts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_primary(env: Mapping[str, str]) -> bool:
    name = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
    match = _ORDINAL.search(name)
    if match is None:
        return True  # a name without an ordinal: the agent runs standalone (docker run), as the primary
    return int(match.group(1)) == int(env.get("PGSFS_PRIMARY_ORDINAL", "0") or 0)


def check_startup(env: Mapping[str, str], now: float) -> str:
    """Pass while the bootstrap's heartbeat is fresh (a long clone) or once postgres runs."""
    running = postmaster_status(_pgdata(env))
    if running is not None:
        return f"postgres running (pid {running[0]}, {running[2] or 'starting'})"
    age = heartbeat_age(_state_dir(env), now)
    if age is not None and age <= FRESH_SECONDS:
        return f"bootstrap in progress (heartbeat {age:.1f} s ago)"
    raise ProbeFailed(
        "no postgres running and no fresh bootstrap heartbeat" + (f" (last {age:.0f} s ago)" if age is not None else "")
    )


# A postmaster that accepts a connection and forks a backend answers an SSLRequest at once.
LIVENESS_ANSWER_SECONDS = 1.5
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def postmaster_answers(sockdir: str, port: int, timeout: float = LIVENESS_ANSWER_SECONDS) -> str | None:
    """None when postgres answers on its Unix socket within `timeout`, else why not.

    An SSLRequest needs no password and logs nothing, yet proves the postmaster accepts, forks and
    the backend runs; a server in crash recovery or at its connection limit still answers it.
    """
    path = os.path.join(sockdir or DEFAULT_SOCKET_DIR, f".s.PGSQL.{port}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(SSL_REQUEST)
            answer = sock.recv(1)
    except socket.timeout:
        return f"postgres did not answer on {path} within {timeout} s (hung?)"
    except OSError as exc:
        return f"postgres did not answer on {path}: {exc.strerror or exc}"
    if answer not in (b"N", b"S", b"E"):
        return f"postgres gave no answer on {path}"
    return None


def _postmaster_port(pgdata: Path, env: Mapping[str, str]) -> int:
    """The port postgres really listens on (postmaster.pid's fourth line), else PGPORT."""
    try:
        return int(postmaster_lines(pgdata)[3])
    except (ValueError, IndexError):
        return int(env.get("PGPORT", "5432") or 5432)


def check_liveness(env: Mapping[str, str], now: float) -> str:
    """Local only, never the primary: postgres answers on its socket, or the bootstrap still beats;
    and the primary ordinal does not wait connected to nobody for long."""
    running = postmaster_status(_pgdata(env))
    if running is None:
        return check_startup(env, now)
    pid, sockdir, status = running
    if status in ("starting", "stopping", ""):
        # Crash recovery or a shutdown in progress: the process lives, and it may take long.
        return f"postgres {status or 'starting'} (pid {pid})"
    port = _postmaster_port(_pgdata(env), env)
    own_socket(_pgdata(env), sockdir, port)
    problem = postmaster_answers(sockdir, port)
    if problem is not None:
        raise ProbeFailed(problem)
    stuck = standby_stuck_for(_pgdata(env), sockdir, env, now)
    if stuck > NOT_STREAMING_LIMIT_S:
        # Its upstream answers, yet it has not streamed for a minute: a lost slot or removed WAL make
        # the receiver retry forever (review M6). A restart lets the agent ask and re-clone if need be.
        raise ProbeFailed(f"the standby has not streamed for {stuck:.0f} s although its upstream runs and takes "
                          "replication connections; restarting lets the agent find out why (a lost slot or "
                          "removed WAL is re-cloned)")  # fmt: skip
    waiting = connected_to_nobody_for(_pgdata(env), env, now)
    if waiting is not None and waiting > AWAIT_PROMOTION_LIMIT_S:
        # Its agent surveyed once, at start: a blip then, or a second ordinal change, would leave it
        # here forever, the rollout waiting on it (review H6). A restart surveys the members again.
        raise ProbeFailed(f"the primary ordinal has waited connected to nobody for {waiting:.0f} s; restarting it "
                          "asks the members again whom to follow")  # fmt: skip
    return f"postgres answers (pid {pid}, {status})"


# How long the primary ordinal, still a standby, may wait unconnected before liveness restarts it.
AWAIT_PROMOTION_LIMIT_S = 60.0


def connected_to_nobody_for(pgdata: Path, env: Mapping[str, str], now: float) -> float | None:
    """Seconds the primary ordinal's postgres has run as a standby with an empty primary_conninfo (the
    agent's file, then postgresql.auto.conf, read with a size limit), or None when it is not so."""
    if not _is_primary(env) or not (pgdata / "standby.signal").exists():
        return None
    conninfo = standby_conninfo(pgdata)
    if conninfo is None or conninfo.strip():
        return None
    try:
        started = float(_postmaster_start(pgdata))
    except ValueError:
        return None
    return max(0.0, now - started)


def _postmaster_start(pgdata: Path) -> str:
    """postmaster.pid's third line (the postmaster's start time), or "" when unreadable."""
    try:
        return postmaster_lines(pgdata)[2].strip()
    except IndexError:
        return ""


def standby_stuck_for(pgdata: Path, sockdir: str, env: Mapping[str, str], now: float) -> float:
    """Seconds a standby with an upstream has not streamed while that upstream ran and took connections
    (agent/streamwatch.py); 0 for a primary, a standby without upstream, or a failed local query."""
    conninfo = standby_conninfo(pgdata) if (pgdata / "standby.signal").exists() else None
    if not conninfo or not conninfo.strip():
        return 0.0
    receiver = _receiver(env, sockdir, _postmaster_port(pgdata, env))
    if receiver is None:
        return 0.0  # the local query failed (connection limit, a slow server): no evidence either way
    values = conninfo_values(conninfo)
    host, port, user = values.get("host", ""), int(values.get("port") or 5432), values.get("user", "")
    return not_streaming_for(_state_dir(env), _postmaster_start(pgdata), receiver[0] == "streaming",
                             lambda: bool(host and user) and upstream_serves(host, port, user), now)  # fmt: skip


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_readiness(env: Mapping[str, str], now: float) -> str:
    """Primary: accepting connections over TCP. Replica, or the primary ordinal still a standby: streaming."""
    running = postmaster_status(_pgdata(env))
    if running is None:
        raise ProbeFailed("postgres is not running")
    _, sockdir, status = running
    port = int(env.get("PGPORT", "5432") or 5432)
    host = env.get("POD_IP") or "127.0.0.1"
    in_recovery = (_pgdata(env) / "standby.signal").exists()
    # The primary ordinal still in recovery is a switchover's successor: Ready once it streams, so
    # the rollout goes on to the former primary, whose agent promotes it (agent/switchover.py).
    if _is_primary(env) and not in_recovery:
        # postmaster.pid says "ready" for a hot standby too: standby.signal tells recovery apart.
        if status != "ready":
            raise ProbeFailed(f"postgres is {status or 'starting'}, not ready as a primary")
        if not _tcp_open(host, port):
            raise ProbeFailed(f"postgres does not accept TCP connections on {host}:{port}")
        return "primary ready"
    if status not in ("ready", "standby"):
        raise ProbeFailed(f"postgres is {status or 'starting'}, not accepting connections yet")
    own_socket(_pgdata(env), sockdir, port)
    receiver = _receiver(env, sockdir, port)
    if receiver is None or receiver[0] != "streaming":
        raise ProbeFailed(f"replica not streaming (wal receiver: {receiver[0] if receiver else 'no answer'})")
    silent_s = receiver[1]
    # "streaming" lasts until wal_receiver_timeout on a silently cut connection; the upstream answers
    # the receiver's ping within half of it, so a longer silence means the upstream is gone.
    if silent_s and float(silent_s) > RECEIVER_TIMEOUT_S * 0.75:
        raise ProbeFailed(f"replica streaming but heard nothing from its upstream for {silent_s} s")
    behind = designated_lag_problem(receiver[2]) if _is_primary(env) else None
    if behind is not None:
        raise ProbeFailed(behind)
    return "replica streaming"


# The primary ordinal still a standby is Ready only this close to its upstream's WAL (review L1): Ready
# lets the rollout restart the former primary, whose handoff then waits for all of that WAL to be
# replayed here, writes stopped; about a second of replay, not the minutes a far-behind standby needs.
DESIGNATED_MAX_LAG_BYTES = 16 * 1024 * 1024


def designated_lag_problem(lag_bytes: str) -> str | None:
    """Why the primary ordinal's standby is not Ready yet, from the bytes its upstream had written
    that it has not replayed ("" when not known: the receiver has had no message yet); None when close."""
    try:
        lag = int(float(lag_bytes))
    except ValueError:
        return None
    if lag <= DESIGNATED_MAX_LAG_BYTES:
        return None
    return (f"the primary ordinal's standby is {lag / 1048576:.0f} MB behind the WAL its upstream has written "
            f"(Ready within {DESIGNATED_MAX_LAG_BYTES // 1048576} MB, so that a switchover's handoff is short)")


def _receiver(env: Mapping[str, str], sockdir: str, port: int) -> tuple[str, str, str] | None:
    """(WAL receiver status, seconds since it last heard its upstream, bytes of the upstream's WAL not
    replayed here) over the local socket, as psql prints them; status "none" when no receiver runs;
    None when psql fails."""
    done = subprocess.run(
        [
            "psql",
            "-XAtq",
            "-h",
            sockdir or DEFAULT_SOCKET_DIR,
            "-p",
            str(port),
            "-U",
            env.get("POSTGRES_USER", "postgres"),
            "-d",
            "postgres",
            "-c",
            # latest_end_lsn: the upstream's end of WAL as of its last message.
            "SELECT status, round(extract(epoch FROM now() - last_msg_receipt_time)), "
            "pg_wal_lsn_diff(latest_end_lsn, pg_last_wal_replay_lsn())::bigint FROM pg_stat_wal_receiver",
        ],
        capture_output=True,
        text=True,
        timeout=2,
        check=False,
        env={"PATH": env.get("PATH", os.defpath), "PGCONNECT_TIMEOUT": "1", **_password_env(env)},
    )
    if done.returncode != 0:
        return None
    state, silent_s, lag_bytes = ([*done.stdout.strip().split("|"), "", ""])[:3]
    return state or "none", silent_s, lag_bytes


def _password_env(env: Mapping[str, str]) -> dict[str, str]:
    """PGPASSWORD for psql from the container's POSTGRES_PASSWORD (or its _FILE, read with a limit), so
    a user who hardened local auth in pg_hba.conf does not make every standby un-Ready (review L7);
    only ever sent to postgres' own socket (own_socket), never in argv."""
    password = env.get("POSTGRES_PASSWORD") or ""
    path = env.get("POSTGRES_PASSWORD_FILE")
    if not password and path:
        try:
            password = read_limited(Path(path), 4096).decode("utf-8", "replace").rstrip("\n")
        except OSError:
            password = ""
    return {"PGPASSWORD": password} if password else {}


CHECKS = {"startup": check_startup, "readiness": check_readiness, "liveness": check_liveness}


PROBE_HELP = """usage: pg-sfs-agent probe startup|readiness|liveness

The manifest's exec probes: exit 0 when healthy, 1 when not (the reason on stdout), 2 on misuse.
  startup    the agent's bootstrap heartbeat is fresh, or postgres runs
  readiness  postgres accepts connections (README "Probes" says what each role must show)
  liveness   postgres answers on its socket; a standby stuck for over a minute fails
See README "Probes" for every rule."""


def run(argv: list[str], env: Mapping[str, str]) -> int:
    """`pg-sfs-agent probe startup|readiness|liveness`: 0 when healthy, 1 when not, 2 on misuse."""
    if argv in (["--help"], ["-h"]):
        print(PROBE_HELP)
        return 0
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(f"pg-sfs-agent probe: expected one of {', '.join(CHECKS)}, got {' '.join(argv) or 'nothing'}")
        print(PROBE_HELP)
        return 2
    try:
        print(CHECKS[argv[0]](env, time.time()))
    except ProbeFailed as exc:
        print(f"{argv[0]} probe failed: {exc}")
        return 1
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"{argv[0]} probe failed: {exc}")
        return 1
    return 0
