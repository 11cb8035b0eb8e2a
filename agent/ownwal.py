"""A former primary whose successor lacks some of its WAL serves that WAL from a read-only standby.

Hot standby may never open on WAL that ends inside a transaction with more than 64 subtransactions
(its running-xacts snapshot is overflowed, and no later record ends it): then the crash recovery is
finished alone first, in a single-user postgres that nothing can reach, whose shutdown checkpoint
gives the standby a snapshot at once (review M8).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from typing import Any, Callable

from tenacity import wait_fixed

from agent import history, walend
from agent.context import Part
from agent.errors import CommandFailed
from agent.files import remove_durably, write_atomic
from agent.pgdata import HANDOFF_MARKER
from agent.postgres import child_env, controldata, recover_alone
from agent.switchover import give_back
from agent.waits import poll_until

# The server's own log lines (lc_messages=C on its command line): recovery has replayed every record
# it has, and hot standby opened.
CONSISTENT = "consistent recovery state reached"
HOT_STANDBY_OPEN = "ready to accept read-only connections"
# Once consistent, hot standby opens at once unless its snapshot waits for a transaction to end.
HOT_STANDBY_GRACE = 5.0
# Settings of this private server: its log in the file the agent reads, in words the agent knows.
SERVER_OPTIONS = ("-c", "lc_messages=C", "-c", "logging_collector=off", "-c", "log_destination=stderr")

OPENED = "opened"
SNAPSHOT_PENDING = "snapshot_pending"
NOT_OPENED = "not_opened"


def decide_opening(answered: bool, log_text: str, consistent_for: float | None) -> str:
    """Where the serving standby stands: OPENED once it answers; SNAPSHOT_PENDING once it replayed all
    it has (`consistent_for` seconds ago) without opening hot standby for HOT_STANDBY_GRACE; else waiting."""
    if answered:
        return OPENED
    if consistent_for is not None and consistent_for >= HOT_STANDBY_GRACE and HOT_STANDBY_OPEN not in log_text:
        return SNAPSHOT_PENDING
    return NOT_OPENED


class OwnWalServer(Part):
    """A former primary whose successor lacks some of its WAL: its postgres as a read-only standby,
    connected to nobody, so the successor streams that WAL from it.

    The handoff is recorded on the volume (HANDOFF_MARKER, before standby.signal): a kill at any
    instant leaves PGDATA recognisably the former primary's, never an ordinary standby's.
    """

    def __init__(self, ctx: Any, files: Any, before_start: Callable[[], None] = lambda: None) -> None:
        super().__init__(ctx)
        self.files = files
        self.before_start = before_start
        # False once it has run for PGSFS_SWITCHOVER_TIMEOUT without accepting connections (review M8).
        self.opened = True
        # The end of its WAL after a recovery alone (its checkpoints follow the end read before).
        self.recovered_end: int | None = None
        self.logfile = self.config.state_dir / "own-wal-server.log"
        self._log_start = 0

    @contextlib.contextmanager
    def serving(self) -> Iterator[Callable[[], None]]:
        """Run it until the block ends; yields a check that raises once that postgres has exited.
        Stopped at the end with a fast shutdown (a restartpoint, then "shut down in recovery")."""
        write_atomic(self.pgdata / HANDOFF_MARKER, "serving this former primary's WAL to its successor\n",
                     owner=self.owner)  # fmt: skip
        self.files.write_config(self.pgdata, standby=True, connect=False)
        self.before_start()
        if self.ctx.announcer is not None:
            self.ctx.announcer.close()  # its postgres needs the port
        proc = [self._spawn()]

        def running() -> None:
            if proc[0].poll() is not None:
                raise CommandFailed(
                    f"postgres, started to serve this former primary's WAL, exited with {proc[0].returncode}",
                    hint=f"see {self.logfile}; the pod restarts and tries again",
                )

        try:
            if self._until_it_serves(running) == SNAPSHOT_PENDING:
                self._stop(proc[0])
                self._recover_alone()
                proc[0] = self._spawn()
                self._until_it_serves(running)
            yield running
        finally:
            # Well inside the pod's grace period; a kill here leaves the marker, so nothing is forgotten.
            self._stop(proc[0])

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.logfile, "ab") as out:
            self._log_start = out.tell()
            return self.world.runner.spawn(["postgres", "-D", str(self.pgdata), *SERVER_OPTIONS], env=child_env(),
                                           stdout=out, stderr=out)  # fmt: skip

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        self.world.runner.stop(proc, grace=min(self.config.switchover_timeout, 20.0), sig=signal.SIGINT)

    def _until_it_serves(self, running: Callable[[], None]) -> str:
        """Wait (bounded) until it accepts replication connections, so the successor, pointed here next,
        connects at its first try rather than after wal_retrieve_retry_interval; or until its log shows
        hot standby waiting for a snapshot its WAL never gives."""
        endpoint = self._endpoint("localhost", "127.0.0.1")
        consistent_since: list[float] = []

        def state() -> str:
            self.world.beat("switchover")
            running()
            if self.world.identify(endpoint, 2.0).info is not None:
                return OPENED
            text = self._server_log()
            if CONSISTENT in text and not consistent_since:
                consistent_since.append(self.world.clock())
            since = self.world.clock() - consistent_since[0] if consistent_since else None
            return decide_opening(False, text, since)

        deadline = self.world.clock() + self.config.switchover_timeout
        outcome = poll_until(state, done=lambda s: s != NOT_OPENED, wait=wait_fixed(0.1), deadline=deadline,
                             clock=self.world.clock, sleep=self.world.sleep)  # fmt: skip
        self.opened = outcome == OPENED
        return outcome or NOT_OPENED

    def _server_log(self) -> str:
        """What the server started last has logged (its first MB is all the decision needs)."""
        try:
            with open(self.logfile, "rb") as log:
                log.seek(self._log_start)
                return log.read(1024 * 1024).decode("utf-8", "replace")
        except OSError:
            return ""

    def _recover_alone(self) -> None:
        """Finish crash recovery as the primary it was, in a single-user postgres (no socket, no
        port: nothing can write), then serve again from its clean shutdown."""
        started = self.world.clock()
        self.world.beat("switchover")
        remove_durably(self.pgdata / "standby.signal")  # the marker stays: a kill here is given back
        recover_alone(self.world.runner, self.pgdata)
        self.files.write_config(self.pgdata, standby=True, connect=False)
        control = controldata(self.world.runner, self.pgdata)
        self.recovered_end = walend.local_wal_end(self.world.runner, self.pgdata, control)
        self._phase("own_wal_recovered_alone", started, wal_end=history.format_lsn(self.recovered_end),
                    note="hot standby could not open on this WAL (it ends inside a transaction with more than 64 "
                    "subtransactions): crash recovery was finished alone, so the standby serving it opens at "
                    "once; the successor now gets this member's WAL to its new end")  # fmt: skip

    def handed_over(self) -> None:
        """The successor was promoted: PGDATA is a standby's from now on (it follows the successor)."""
        remove_durably(self.pgdata / HANDOFF_MARKER)

    def give_back(self) -> None:
        """The handoff did not happen: PGDATA is the former primary's again for the next start."""
        give_back(self.pgdata, self.log)

