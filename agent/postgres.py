"""PostgreSQL's own programs, driven for the agent: version, initdb, a temporary server, clone."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable

from tenacity import Retrying, retry_if_exception, retry_if_result, stop_after_delay, stop_never, wait_fixed

from agent.config import SECRET_VARIABLES
from agent.errors import CommandFailed, ConfigError
from agent.render import conninfo
from agent.runner import Runner

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
_PROGRESS = re.compile(r"(\d+)/(\d+) kB \((\d+)%\)")
PROGRESS_INTERVAL = 5.0
# The temporary server's pg_hba.conf: only its private socket directory reaches it.
TEMP_SERVER_HBA = (
    "# pg-sfs-agent's temporary server: reachable only through its private 0700 socket directory\n"
    "local all all trust\n"
)
TEMP_SERVER_PROGRESS = 60.0


# libpq (16 and later; psycopg bundles one) then sends a password only to a server that asks for
# SCRAM, or sends none to one that asks for nothing (trust on the private socket): never in clear
# text or as an md5 hash, which a compromised member or a pod holding a member's name could harvest.
REQUIRE_AUTH = "scram-sha-256,none"
_REQUIRE_AUTH_SET: list[bool] = []


def require_scram() -> None:
    """Make every connection the agent itself opens refuse to send a password except over SCRAM
    (PGREQUIREAUTH, unless the pod sets one); its children do not inherit it (child_env)."""
    if "PGREQUIREAUTH" not in os.environ:
        os.environ["PGREQUIREAUTH"] = REQUIRE_AUTH
        _REQUIRE_AUTH_SET.append(True)


def child_env(extra: Mapping[str, str] | None = None, *, keep_secrets: bool = False) -> dict[str, str]:
    """The environment for a child: ours without secrets (unless asked), plus `extra`; without the
    agent's own PGREQUIREAUTH (postgres' dblink or a script's psql keep the pod's libpq defaults)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if keep_secrets or (key not in SECRET_VARIABLES and not key.endswith("_PASSWORD_FILE"))
    }
    if _REQUIRE_AUTH_SET:
        env.pop("PGREQUIREAUTH", None)
    env.update(extra or {})
    return env


def _tail(data: bytes, limit: int = 800) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:]


def server_major(runner: Runner) -> int | None:
    """The major version of the `postgres` binary on PATH, or None if it cannot be run."""
    try:
        done = runner.run(["postgres", "-V"], env=child_env(), timeout=30)
    except OSError:
        return None
    match = _VERSION.search(done.stdout.decode("utf-8", "replace"))
    return int(match.group(1)) if match else None


def config_problem(runner: Runner, datadir: Path, postgres: str = "postgres") -> str | None:
    """What `postgres` rejects in the configuration files `datadir` reads (all of them, includes too),
    or None: `postgres -C` loads them and exits, as a start would, without starting anything."""
    done = runner.run([postgres, "-D", str(datadir), "-C", "data_directory"], env=child_env({"LC_MESSAGES": "C"}),
                      timeout=60)  # fmt: skip
    return None if done.returncode == 0 else " ".join(done.stderr.decode("utf-8", "replace").split())[-600:]


def controldata(runner: Runner, datadir: Path) -> str:
    """pg_controldata's report on `datadir`, in English whatever the locale (the labels are parsed)."""
    done = runner.run(["pg_controldata", str(datadir)], env=child_env({"LC_ALL": "C", "LANG": "C"}), timeout=60)
    check(done, "pg_controldata", "PGDATA's pg_control could not be read; see the message above")
    return done.stdout.decode("utf-8", "replace")


def rewind(runner: Runner, pgdata: Path, *, host: str, hostaddr: str, port: int, user: str, password: str) -> str:
    """pg_rewind PGDATA onto the primary's history (it runs crash recovery first if needed); the
    password goes through the child's environment, never argv."""
    source = conninfo({"host": host, "hostaddr": hostaddr, "port": str(port), "user": user, "dbname": "postgres",
                       "connect_timeout": "10"})  # fmt: skip
    # pg_rewind reads the source's timeline from its control file, which a just-promoted primary
    # updates only at its next checkpoint: without one it answers "no rewind required", wrongly.
    import psycopg

    try:
        with psycopg.connect(host=host, hostaddr=hostaddr, port=port, user=user, password=password, dbname="postgres",
                             connect_timeout=10, autocommit=True) as conn:  # fmt: skip
            conn.execute("CHECKPOINT")
    except psycopg.Error as exc:
        raise CommandFailed(
            f"could not ask the primary for a checkpoint before pg_rewind: {' '.join(str(exc).split())}",
            hint="the primary must accept the superuser (POSTGRES_USER) over the network; the next start tries again",
        ) from exc
    argv = ["pg_rewind", f"--target-pgdata={pgdata}", f"--source-server={source}", "--progress"]
    done = runner.run(argv, env=child_env({"PGPASSWORD": password}), timeout=24 * 3600)
    check(done, "pg_rewind", "see its message; the data is moved aside and cloned again when the volume has room")
    return _tail(done.stderr + done.stdout, 400)


def check(done: subprocess.CompletedProcess[bytes], what: str, hint: str) -> None:
    """Raise CommandFailed with the program's last words when it failed."""
    if done.returncode != 0:
        raise CommandFailed(
            f"{what} failed with exit code {done.returncode}: {_tail(done.stderr) or _tail(done.stdout)}",
            hint=hint,
            returncode=done.returncode,
        )


def initdb(
    runner: Runner,
    datadir: Path,
    *,
    superuser: str,
    pwfile: Path,
    args: tuple[str, ...],
    host_auth: str = "scram-sha-256",
) -> None:
    """initdb with data checksums (so pg_rewind works later), the password from a file; `host_auth`
    for its loopback lines (trust only for a standalone server asked to trust everyone).

    --no-sync: the caller makes the whole build durable with one syncfs before it becomes PGDATA,
    which costs a fraction of initdb's fsync of every file.
    """
    argv = [
        "initdb",
        "-D",
        str(datadir),
        # One argument: a name starting with "-" must not be read as an option.
        f"--username={superuser}",
        f"--pwfile={pwfile}",
        "--auth-local=trust",
        f"--auth-host={host_auth}",
        "--data-checksums",
        "--no-sync",
        *args,
    ]
    done = runner.run(argv, env=child_env())
    check(
        done,
        "initdb",
        "read initdb's message above; POSTGRES_INITDB_ARGS may hold a bad option; a full volume also ends here",
    )


def single_user(
    runner: Runner, datadir: Path, statements: list[str], database: str = "postgres", server_args: Sequence[str] = ()
) -> None:
    """Run SQL statements (one per line) in a single-user postgres: no socket, no port, nothing to reach.

    exit_on_error makes any ERROR end the backend with a failure; statements are never logged (they
    carry password verifiers). -F: the caller syncs the filesystem once at the end. `server_args`
    (the user's) come before the agent's own settings, so those win.
    """
    argv = [
        "postgres", "--single", "-F", "-D", str(datadir), *server_args,
        "-c", "exit_on_error=on", "-c", "log_statement=none", "-c", "log_min_error_statement=panic",
        "-c", "log_min_messages=warning",
        # Its commits must never wait for a standby (there is none yet).
        "-c", "synchronous_standby_names=", "--", database,
    ]  # fmt: skip
    done = runner.run(argv, env=child_env(), input="".join(f"{s};\n" for s in statements).encode())
    check(done, "postgres --single (roles and database)", "read postgres' message above; the build was discarded")


def recover_alone(runner: Runner, datadir: Path) -> None:
    """Finish a crashed primary's recovery in a single-user postgres (no socket, no port), which then
    exits on the end of its input with a shutdown checkpoint: PGDATA is left cleanly shut down."""
    argv = ["postgres", "--single", "-D", str(datadir), "-c", "log_min_messages=warning",
            "-c", "synchronous_standby_names=", "-c", "lc_messages=C", "--", "template1"]  # fmt: skip
    done = runner.run(argv, env=child_env(), input=b"")
    check(done, "postgres --single (crash recovery)", "read postgres' message above; the data was left as it was")


class TempServer:
    """A postgres on the build directory, reachable only through a private Unix socket."""

    def __init__(
        self, runner: Runner, datadir: Path, sockdir: Path, port: int, superuser: str, server_args: Sequence[str] = ()
    ) -> None:
        self.runner = runner
        # The user's postgres arguments, before the agent's settings (later ones win in postgres).
        self.server_args = tuple(server_args)
        self.superuser = superuser
        self.datadir = datadir
        self.sockdir = sockdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = datadir.parent / "temporary-server.log"

    def options(self) -> list[str]:
        """The server's options after `-D`: the user's arguments, then the agent's (later ones win)."""
        return [
            *self.server_args,
            "-c",
            "listen_addresses=",
            "-c",
            f"unix_socket_directories={self.sockdir}",
            "-c",
            f"port={self.port}",
            "-c",
            f"hba_file={self.sockdir / 'pg_hba.conf'}",
            # Commits here (roles, initdb.d, rotated passwords) must never wait for a standby.
            "-c",
            "synchronous_standby_names=",
            # With archiving on, WAL it completes is marked ready and archived by the real server: none
            # is pushed before the stanza is checked (a new cluster's is made once it is in place).
            "-c",
            "archive_command=",
        ]

    def start(
        self,
        timeout: float | None = None,
        on_poll: Callable[[], None] = lambda: None,
        on_progress: Callable[[float, str], None] = lambda _elapsed, _last: None,
    ) -> None:
        """Start it and wait until it accepts connections: for as long as its crash recovery takes
        (`timeout` None) while the process lives, beating `on_poll` and reporting every minute."""
        hba = self.sockdir / "pg_hba.conf"
        # Its own hba file: trust on the private 0700 socket directory only, whatever the cluster's
        # pg_hba.conf says (a user who hardened local auth must not lock the agent out).
        hba.write_text(TEMP_SERVER_HBA)
        os.chmod(hba, 0o600)
        if os.geteuid() == 0:  # in-process use as root (tests): the server's user must read it
            owner = os.stat(self.sockdir)
            os.chown(hba, owner.st_uid, owner.st_gid)
        argv = ["postgres", "-D", str(self.datadir), *self.options()]
        with open(self.logfile, "ab") as log:
            self.proc = self.runner.spawn(argv, env=child_env(), stdout=log, stderr=log)
        import psycopg

        started = time.monotonic()
        reported = started

        def connect() -> None:
            nonlocal reported
            on_poll()
            if self.proc is not None and self.proc.poll() is not None:
                raise CommandFailed(
                    f"the temporary server exited with code {self.proc.returncode}: {_tail(self.logfile.read_bytes())}",
                    hint="read the server's message; a full volume or a bad setting in POSTGRES_INITDB_ARGS ends here",
                )
            now = time.monotonic()
            if now - reported >= TEMP_SERVER_PROGRESS:
                reported = now
                on_progress(round(now - started, 1), _tail(self.logfile.read_bytes(), 300))
            try:
                with psycopg.connect(**self.conninfo("postgres"), connect_timeout=2):
                    pass
            except psycopg.OperationalError as exc:
                if f'role "{self.superuser}" does not exist' in str(exc):
                    raise ConfigError(
                        [f"POSTGRES_USER={self.superuser!r}: no such role in the cluster in PGDATA; expected the "
                         "name of the cluster's superuser"],
                        hint="the official image uses POSTGRES_USER only at init: set it to the superuser the "
                        "cluster was made with (the role of OID 10); its data and roles are as they were",
                    ) from None
                raise

        def not_up_yet(exc: BaseException) -> bool:
            # Only "not there yet" is worth waiting for; a real error (bad role) is raised at once.
            text = str(exc).lower()
            return isinstance(exc, psycopg.OperationalError) and any(
                phrase in text for phrase in ("no such file", "starting up", "connection refused", "not yet accepting")
            )

        retrying = Retrying(
            retry=retry_if_exception(not_up_yet),
            wait=wait_fixed(0.01),
            stop=stop_after_delay(timeout) if timeout is not None else stop_never,
            reraise=True,
        )
        retrying(connect)

    def conninfo(self, dbname: str, user: str | None = None) -> dict[str, Any]:
        """Connection keywords for psycopg over the private socket (an empty hostaddr: a PGHOSTADDR in
        the pod's environment would otherwise send libpq over TCP)."""
        return {"host": str(self.sockdir), "hostaddr": "", "port": self.port, "dbname": dbname,
                "user": user or self.superuser}  # fmt: skip

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT): checkpoint, then exit."""
        if self.proc is None:
            return
        self.runner.stop(self.proc, grace=timeout, sig=signal.SIGINT)
        if self.proc.returncode not in (0, -signal.SIGINT):
            raise CommandFailed(
                f"the temporary server did not stop cleanly (exit {self.proc.returncode})",
                hint="read its log: " + _tail(self.logfile.read_bytes()),
            )
        ours = self.proc.pid
        self.proc = None
        self._stop_successor(ours, timeout)

    def _stop_successor(self, ours: int, timeout: float) -> None:
        """Stop a postmaster an initdb.d script started in place of ours (`pg_ctl restart`, the
        pg_cron recipe): it runs on the build's data, detached from the agent, and would still hold
        it when the build becomes PGDATA. The official entrypoint stops whichever postmaster the pid
        file names, too."""
        from agent.probe import postmaster_status

        running = postmaster_status(self.datadir)
        if running is None or running[0] == ours:
            return
        successor = running[0]
        with contextlib.suppress(ProcessLookupError):
            os.kill(successor, signal.SIGINT)

        def gone() -> bool:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(successor, os.WNOHANG)  # in a container the agent is PID 1: it reaps orphans
            return postmaster_status(self.datadir) is None  # a clean stop removes postmaster.pid

        stopped = Retrying(
            retry=retry_if_result(lambda done: not done), wait=wait_fixed(0.05), stop=stop_after_delay(timeout),
            retry_error_callback=lambda _state: False,
        )(gone)  # fmt: skip
        if not stopped:
            raise CommandFailed(
                f"an initdb.d script restarted the temporary server (pid {successor}), which did not stop",
                hint="read its log: " + _tail(self.logfile.read_bytes()),
            )


def basebackup(
    runner: Runner,
    *,
    target: Path,
    host: str,
    hostaddr: str | None,
    port: int,
    user: str,
    passfile: Path,
    slot: str,
    application_name: str,
    max_rate: str | None,
    on_progress: Callable[[dict[str, Any]], None],
    on_tick: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    stall_timeout: float = 300.0,
    waldir: Path | None = None,
) -> dict[str, Any]:
    """pg_basebackup with WAL streaming, a fast checkpoint and our slot; progress as events.

    Ended (CommandFailed, `reason=stalled`) when it reports nothing for `stall_timeout` seconds:
    a primary that stopped sending, or a connection that died without a reset.
    """
    params = {"host": host, "port": str(port), "user": user, "application_name": application_name}
    if hostaddr:
        params["hostaddr"] = hostaddr
    # A primary that vanishes without a reset is noticed in about 25 s, not after two hours.
    params.update(keepalives_idle="10", keepalives_interval="5", keepalives_count="3")
    conn = conninfo(params)
    argv = [
        "pg_basebackup",
        "-d",
        conn,
        "-D",
        str(target),
        "-X",
        "stream",
        "-c",
        "fast",
        "-S",
        slot,
        "-P",
        "-v",
        "-w",
        # The caller makes the clone durable with one syncfs (BuildArea.make_durable).
        "--no-sync",
    ]
    if max_rate:
        argv += ["-r", max_rate]
    if waldir is not None:
        argv.append(f"--waldir={waldir}")
    started = clock()
    proc = runner.spawn(argv, env=child_env({"PGPASSFILE": str(passfile)}), stdout=subprocess.DEVNULL)
    lines: queue.Queue[str | None] = queue.Queue()
    tail: list[str] = []

    def pump(stream: IO[bytes]) -> None:
        buf = b""
        while True:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
            if not chunk:
                break
            buf += chunk
            *complete, buf = re.split(rb"[\r\n]", buf)
            for raw in complete:
                if raw.strip():
                    lines.put(raw.decode("utf-8", "replace"))
        if buf.strip():
            lines.put(buf.decode("utf-8", "replace"))
        lines.put(None)

    assert proc.stderr is not None
    reader = threading.Thread(target=pump, args=(proc.stderr,), daemon=True)
    reader.start()
    last_report = started
    last_change = started
    done_kb, total_kb, percent = 0, 0, 0
    try:
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line is None:
                break
            now = clock()
            if line:
                last_change = now
            elif now - last_change > stall_timeout:
                runner.stop(proc)
                raise CommandFailed(
                    f"pg_basebackup made no progress for {stall_timeout:.0f} s (at {percent}%, "
                    f"{done_kb // 1024} MB of {total_kb // 1024} MB): the primary stopped sending or the "
                    "connection is dead",
                    hint="the partial clone is discarded and the next start clones again; if it keeps "
                    "stalling, look at the primary (its load, its log) and the network; raise "
                    "PGSFS_CLONE_STALL_TIMEOUT if its checkpoint alone takes that long",
                    reason="stalled",
                    stall_timeout_s=stall_timeout,
                )
            if line:
                match = _PROGRESS.search(line)
                if match:
                    done_kb, total_kb, percent = (int(g) for g in match.groups())
                else:
                    tail.append(line)
                    del tail[:-20]
            if now - last_report >= PROGRESS_INTERVAL:
                last_report = now
                elapsed = now - started
                on_progress(_progress(done_kb, total_kb, percent, elapsed))
            on_tick()
        returncode = proc.wait()
    except BaseException:
        runner.stop(proc)
        raise
    finally:
        reader.join(timeout=2)
        runner._forget(proc)
    elapsed = clock() - started
    if returncode != 0:
        raise CommandFailed(
            f"pg_basebackup failed with exit code {returncode}: {' | '.join(tail[-5:])}",
            hint="a full volume, a dropped connection or a primary restart end here; the partial clone is "
            "discarded and the next start clones again",
            returncode=returncode,
        )
    return _progress(done_kb, total_kb, 100 if total_kb else percent, elapsed)


def _progress(done_kb: int, total_kb: int, percent: int, elapsed: float) -> dict[str, Any]:
    return {
        "percent": percent,
        "done_mb": round(done_kb / 1024, 1),
        "total_mb": round(total_kb / 1024, 1),
        "rate_mb_s": round(done_kb / 1024 / elapsed, 2) if elapsed > 0 else 0.0,
        "elapsed_s": round(elapsed, 1),
    }
