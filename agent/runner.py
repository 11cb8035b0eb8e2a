"""The one way the agent starts programs: never with a secret in argv, always stoppable."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Callable, Union

from agent.errors import SecretInArgv
from agent.secret import contains_secret

Input = Union[bytes, None]
# How often a long-running child's caller hears that it still runs (heartbeats follow it).
TICK_SECONDS = 1.0


@dataclass(frozen=True)
class RunAs:
    """An unprivileged user to run programs as.

    The entrypoint never uses it (it becomes postgres before starting anything, so no signal ever
    crosses users); in-process tests running as root do.
    """

    uid: int
    gid: int
    home: str


class Runner:
    """Starts PostgreSQL's programs; refuses argv holding a secret; stops its children on demand."""

    def __init__(self, run_as: RunAs | None = None, killpg: Callable[[int, int], None] = os.killpg) -> None:
        self.run_as = run_as
        self.children: list[subprocess.Popen[Any]] = []
        self.stop_failures: list[str] = []
        # Injectable so tests can make a stop fail the way EPERM did when signals crossed users.
        self.killpg = killpg

    def _check(self, argv: Sequence[str]) -> None:
        if contains_secret(argv):
            raise SecretInArgv(
                f"refused to run {argv[0]}: its command line would carry a secret, visible in ps",
                hint="this is a bug in pg-sfs-agent: secrets go in 0600 files or the environment",
            )

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a program in its own session (the agent forwards signals itself)."""
        self._check(argv)
        kwargs: dict[str, Any] = {}
        if self.run_as is not None:
            kwargs.update(user=self.run_as.uid, group=self.run_as.gid, extra_groups=[])
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,
            umask=0o077,
            **kwargs,
        )
        self.children.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: Input = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_tick: Callable[[float], None] | None = None,
        capture: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run to completion and capture output; the child is stopped if the agent is interrupted.

        `on_tick(elapsed)` is called about every second while the child runs (heartbeats, progress);
        `capture=False` lets the output go to the container's log (stderr) instead.
        """
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        if capture:
            proc = self.spawn(argv, env=env, stdin=stdin, cwd=cwd)
        else:
            proc = self.spawn(argv, env=env, stdin=stdin, cwd=cwd, stdout=sys.stderr.fileno(), stderr=None)
        started = time.monotonic()
        try:
            while True:
                step = TICK_SECONDS if on_tick is not None else None
                if timeout is not None:
                    remaining = timeout - (time.monotonic() - started)
                    step = remaining if step is None else min(step, max(0.0, remaining))
                try:
                    # communicate() may be called again after it times out: it keeps what it read.
                    out, err = proc.communicate(input=input, timeout=step)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if timeout is not None and elapsed >= timeout:
                        raise
                    if on_tick is not None:
                        on_tick(elapsed)
        except BaseException:
            self.stop(proc)
            raise
        finally:
            self._forget(proc)
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def run_last_line(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600.0
    ) -> tuple[bytes, bytes]:
        """Run a program whose output may be far too large to keep (pg_waldump over a GB of WAL);
        returns its last complete stdout line and its stderr. Reads to EOF, so only for programs
        that end by themselves."""
        with tempfile.TemporaryFile() as errors:
            proc = self.spawn(argv, env=env, stderr=errors)
            assert proc.stdout is not None
            last, pending = b"", b""
            try:
                while chunk := proc.stdout.read(1 << 20):
                    data = pending + chunk
                    end = data.rfind(b"\n")
                    if end < 0:
                        pending = data
                        continue
                    # The line before the last newline is whole: a partial line always starts `data`.
                    last = data[data.rfind(b"\n", 0, end) + 1 : end]
                    pending = data[end + 1 :]
                proc.stdout.close()
                proc.wait(timeout=timeout)
            except BaseException:
                self.stop(proc)
                raise
            finally:
                self._forget(proc)
            errors.seek(0)
            return (pending or last), errors.read()

    def _forget(self, proc: subprocess.Popen[Any]) -> None:
        if proc in self.children and proc.poll() is not None:
            self.children.remove(proc)

    def stop(self, proc: subprocess.Popen[Any], grace: float = 1.0, sig: int = signal.SIGTERM) -> bool:
        """Signal a child, give it `grace` seconds, then kill it; reaps it when it can.

        Never raises: it runs on every failure and interrupt path, where a second exception would
        replace the first with a traceback. A child it could not stop is recorded in `stop_failures`
        and False is returned.
        """
        try:
            if proc.poll() is None:
                # The child leads its own session: signal the whole group, grandchildren included.
                self._signal_group(proc, sig)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=max(grace, 5.0))
        except (OSError, subprocess.SubprocessError) as exc:
            self.stop_failures.append(f"pid {proc.pid} ({_program(proc)}): {type(exc).__name__}: {exc}")
            return False
        finally:
            self._forget(proc)
        return True

    def _signal_group(self, proc: subprocess.Popen[Any], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.killpg(proc.pid, sig)

    def stop_all(self, grace: float = 1.0) -> list[str]:
        """Stop every child still running (on SIGINT/SIGTERM or failure); never raises.

        Returns what could not be stopped (empty when all went well), for the caller to log.
        """
        for proc in list(self.children):
            self.stop(proc, grace=grace)
        failures, self.stop_failures = self.stop_failures, []
        return failures


def _program(proc: subprocess.Popen[Any]) -> str:
    args = proc.args
    first = args[0] if isinstance(args, (list, tuple)) and args else args
    return os.path.basename(str(first))
