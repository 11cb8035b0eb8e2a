"""What every part of the bootstrap shares: the config, the plan, the effects (World), the log."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agent import announce, discovery, replication, survey
from agent.config import Config
from agent.heartbeat import Heartbeat
from agent.pgdata import work_dir_for
from agent.plan import Plan
from agent.runner import Runner
from agent.waits import Clock, Sleep


@dataclass
class World:
    """The effects bootstrap needs, injectable for tests: programs, DNS, the primary, time."""

    runner: Runner
    lookup: discovery.Lookup
    identify: Callable[[replication.Endpoint, float], replication.Attempt] = replication.try_identify
    ensure_slot: Callable[[replication.Endpoint, str], bool] = replication.ensure_slot
    slot_status: Callable[[replication.Endpoint, str], str | None] = replication.slot_status
    timeline_history: Callable[[replication.Endpoint, int], str] = replication.timeline_history
    segment_kept: Callable[[replication.Endpoint, str], bool] = replication.segment_kept
    template_view: Callable[[replication.Endpoint], tuple[int | None, float | None]] = replication.template_view
    upgrade_origin: Callable[[replication.Endpoint], str | None] = replication.upgrade_origin
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep
    heartbeat: Heartbeat | None = None
    announcer: Callable[[int, str], announce.Announcer] = announce.Announcer

    def beat(self, phase: str | None = None) -> None:
        """Tell the startup probe we are alive."""
        if self.heartbeat is not None:
            self.heartbeat.beat(phase)


class Context:
    """One start's shared state; the parts (primary, replica, files, build area) read it through `Part`."""

    def __init__(self, config: Config, plan: Plan, world: World, log: Any) -> None:
        self.config = config
        self.plan = plan
        self.world = world
        self.log = log
        account = world.runner.run_as
        self.owner = (account.uid, account.gid) if account else None
        self.pgdata = config.pgdata
        self.work = work_dir_for(config.pgdata)
        self.announcer: announce.Announcer | None = None


class Part:
    """Base of the bootstrap's parts: shorthand for the shared context, and its helpers."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def config(self) -> Config:
        """The validated configuration."""
        return self.ctx.config

    @property
    def plan(self) -> Plan:
        """The plan being carried out."""
        return self.ctx.plan

    @property
    def world(self) -> World:
        """The injectable effects."""
        return self.ctx.world

    @property
    def log(self) -> Any:
        """The structured logger."""
        return self.ctx.log

    @property
    def owner(self) -> tuple[int, int] | None:
        """uid and gid files must get, when the agent still runs as root; else None."""
        return self.ctx.owner

    @property
    def pgdata(self) -> Path:
        """PGDATA."""
        return self.ctx.pgdata

    @property
    def work(self) -> Path:
        """The build directory beside PGDATA."""
        return self.ctx.work

    def _phase(self, name: str, started: float, **fields: Any) -> None:
        self.log.info(name, duration_s=round(self.world.clock() - started, 3), **fields)

    def _endpoint(self, host: str, hostaddr: str | None) -> replication.Endpoint:
        return replication.Endpoint(
            host=host.rstrip("."),
            hostaddr=hostaddr,
            port=self.config.port,
            user=self.config.replication_user,
            password=self.config.replication_password.reveal(),
            application_name=f"{self.config.identity.pod_name}-agent",
        )

    def _mkdir_owned(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chmod(path, mode)
        if self.owner is not None:
            os.chown(path, *self.owner)

    def _survey_members(self, timeout: float, stop_early: bool) -> tuple[survey.Survey, list[str]]:
        """Ask the other members (SRV targets, then ordinals) IDENTIFY_SYSTEM until each answered or
        `timeout`; returns the survey and the names never checked (none when DNS did not answer)."""
        cfg = self.config
        srv, _, outcome = discovery.service_srv(self.world.lookup, cfg.srv_fqdn, cfg.service_fqdn)
        peers = survey.Survey(
            lookup=self.world.lookup,
            identify=lambda name, address, budget: self.world.identify(self._endpoint(name, address), budget),
            clock=self.world.clock,
            sleep=self.world.sleep,
            own_name=cfg.pod_fqdn(cfg.identity.pod_name).lower(),
            pod_fqdn=lambda n: cfg.pod_fqdn(cfg.identity.peer_pod(n)),
            expected=cfg.members,
        )
        if outcome == discovery.DNS_UNREACHABLE:
            peers.dns_problem = "no nameserver answered the Service's SRV query"
            return peers, []
        return peers, peers.run([r.fqdn for r in srv], timeout, stop_early=stop_early, on_poll=self.world.beat)
