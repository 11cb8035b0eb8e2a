"""The one way the agent starts programs: never with a secret in argv, always stoppable."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Union

from agent.errors import SecretInArgv
from agent.secret import contains_secret

Input = Union[bytes, None]


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user PostgreSQL programs run as when the agent is root."""

    uid: int
    gid: int
    home: str


class Runner:
    """Starts PostgreSQL's programs; refuses argv holding a secret; stops its children on demand."""

    def __init__(self, run_as: RunAs | None = None) -> None:
        self.run_as = run_as
        self.children: list[subprocess.Popen[Any]] = []

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
    ) -> subprocess.CompletedProcess[bytes]:
        """Run to completion and capture output; the child is stopped if the agent is interrupted."""
        proc = self.spawn(argv, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, cwd=cwd)
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except BaseException:
            self.stop(proc)
            raise
        finally:
            self._forget(proc)
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def _forget(self, proc: subprocess.Popen[Any]) -> None:
        if proc in self.children and proc.poll() is not None:
            self.children.remove(proc)

    def stop(self, proc: subprocess.Popen[Any], grace: float = 1.0, sig: int = signal.SIGTERM) -> None:
        """Signal a child, give it `grace` seconds, then kill it; always reaps it."""
        if proc.poll() is None:
            try:
                # The child leads its own session: signal the whole group, grandchildren included.
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self._forget(proc)

    def stop_all(self, grace: float = 1.0) -> None:
        """Stop every child still running (on SIGINT/SIGTERM or failure)."""
        for proc in list(self.children):
            self.stop(proc, grace=grace)
