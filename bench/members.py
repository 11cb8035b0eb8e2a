"""Long-lived members in a sandbox: a primary and a replica started by the agent, for later benchmarks."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import AGENT, SUPERUSER_PASSWORD, pod_env, postmaster_pid, stop_postmaster
from bench.context import Ctx
from bench.sandbox import Sandbox, replication_ready, streaming_since
from emulator.network import Host

START_TIMEOUT = 120.0


@dataclass
class Member:
    """One pod of the sandbox running postgres through the agent."""

    pod: str
    host: Host
    volume: Path
    proc: subprocess.Popen[Any] | None = None
    log: Path | None = None  # the output of its latest start

    @property
    def pgdata(self) -> Path:
        """The member's data directory."""
        return self.volume / "pgdata"

    def pid(self) -> int:
        """The postmaster's PID (from postmaster.pid)."""
        pid = postmaster_pid(self.pgdata)
        if pid is None:
            raise RuntimeError(f"{self.pod} has no postmaster.pid")
        return pid

    def env(self, **kw: Any) -> dict[str, str]:
        """The pod's environment."""
        return pod_env(self.pod, self.host.ip, self.volume, **kw)

    def stop(self) -> None:
        """Fast shutdown; the data stays."""
        stop_postmaster(self.pgdata)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


def start(sb: Sandbox, ctx: Ctx, member: Member, primary: Member | None = None, args: tuple[str, ...] = (),
          timeout: float = START_TIMEOUT) -> float:  # fmt: skip
    """`pg-sfs-agent postgres ARGS` for the member; returns once it serves (or streams, for a replica)."""
    log = ctx.logdir / f"{member.pod}-{int(time.time() * 1000)}.log"
    member.log = log
    t0 = time.time()
    proc = sb.spawn(member.host, [str(AGENT), "postgres", *args], member.env(), log)
    member.proc = proc
    try:
        if primary is None:
            sb.call(
                replication_ready, member.host.ip, t0 + timeout, lambda: proc.poll() is None,
                timeout=timeout + 10,
            )  # fmt: skip
        else:
            sb.call(
                streaming_since, primary.host.ip, SUPERUSER_PASSWORD, {member.pod}, t0 + timeout,
                timeout=timeout + 10,
            )  # fmt: skip
    except BaseException as exc:
        raise RuntimeError(f"{member.pod} did not come up: {exc}\n{log.read_text(errors='replace')[-2000:]}") from exc
    return time.time() - t0


def new_member(sb: Sandbox, pod: str, ns_name: str) -> Member:
    """A fresh pod namespace and empty volume for `pod` (a StatefulSet pod name)."""
    return Member(pod=pod, host=sb.pod(ns_name), volume=sb.volume(ns_name))
