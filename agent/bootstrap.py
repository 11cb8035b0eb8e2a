"""Carrying out the plan: one start, split by what each part owns (see Bootstrap.run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent import initdbd, majors, repository, secretsrecord, walbudget
from agent.buildarea import BuildArea
from agent.config import Config
from agent.context import Context, World
from agent.managed import ManagedFiles
from agent.pgdata import DataDirState, inspect, read_major
from agent.plan import CLONE, INIT, REFUSE, START, Plan, make_plan
from agent.postgres import child_env, server_major
from agent.primary import Primary
from agent.privileges import NSS_VARIABLES, account_groups, drop_to, postgres_account
from agent.replica import Replica
from agent.runner import RunAs, Runner

__all__ = ["Bootstrap", "World", "exec_postgres", "observe_and_plan", "postgres_account"]


def _has_initdb_scripts(directory: Path) -> bool:
    try:
        return bool(initdbd.scripts(directory))
    except OSError:  # unreadable: the temporary server's script runner reports it, as it always did
        return True


def observe_and_plan(
    config: Config, runner: Runner, major: int | None = None, args: tuple[str, ...] = ()
) -> tuple[Plan, DataDirState]:
    """Read the local world (PGDATA, the server version, applied secrets, pg_wal's volume) and decide.

    `major`: the server's major version when already known (it is asked of `postgres -V` otherwise);
    `args`: postgres' own arguments, whose settings win over the agent's.
    """
    state = inspect(config.pgdata)
    passwords = secretsrecord.pending(config) if state.initialised and config.identity.role == "primary" else None
    major = major if major is not None else server_major(runner)
    wal = walbudget.observe(config.pgdata, config.initdb_args, args, config.volume_size)
    scripts = _has_initdb_scripts(config.initdb_dir) if not state.initialised else False
    plan = make_plan(
        config, state, server_major=major, passwords=passwords, euid=os.geteuid(), wal_observed=wal,
        initdb_scripts=scripts, carried=majors.available(config.majors_dir),
    )  # fmt: skip
    return plan, state


class Bootstrap:
    """Carries out one plan, logging one line per phase with its duration."""

    def __init__(self, config: Config, plan: Plan, world: World, log: Any) -> None:
        self.ctx = Context(config, plan, world, log)
        self.files = ManagedFiles(self.ctx)
        self.build = BuildArea(self.ctx)
        self.primary = Primary(self.ctx, self.files, self.build)
        self.replica = Replica(self.ctx, self.files, self.build)

    def run(self) -> None:
        """Everything up to (not including) exec of postgres."""
        ctx = self.ctx
        plan = ctx.plan
        if plan.action == REFUSE:
            assert plan.refusal is not None
            raise plan.refusal.to_error()
        self.files._mkdir_owned(ctx.config.state_dir)
        if plan.binaries is not None and plan.data_major is not None:
            self._run_major(plan.data_major, plan.binaries)
        ctx.world.beat(plan.action)
        if plan.action == START and not self._starts_writable():
            # Its postgres recovers: WAL it marked ready would never be archived (agent/repository.py).
            repository.push_ready(ctx.config, ctx.world.runner, ctx.config.pgdata, ctx.log, ctx.world.clock,
                                  ctx.world.beat)  # fmt: skip
        if ctx.config.identity.role == "primary":
            self._carry_out(self.primary.init, self.primary.restart)
        else:
            with self.replica.announcing():
                self._carry_out(self.replica.clone, self.replica.restart)
            if plan.action == CLONE:
                # A clone of a primary that still runs an older major (a new pod during an upgrade's roll)
                # holds that major's data: its postgres must be that major's too, which the image carries.
                cloned = read_major(ctx.config.pgdata)
                bindir = majors.available(ctx.config.majors_dir).get(cloned) if cloned is not None else None
                if cloned is not None and cloned != plan.server_major and bindir is not None:
                    self._run_major(cloned, bindir)

    def _run_major(self, data_major: int, bindir: str) -> None:
        """From here on (the programs the agent runs, and the postgres it becomes) `bindir`'s major: the
        data's, older than the image's, until the primary has upgraded and this member clones it."""
        majors.use(bindir)
        self.ctx.log.info("older_major", data_major=data_major, image_major=self.ctx.plan.server_major,
                          binaries=bindir, note="this member runs its data's major until its primary has "
                          "upgraded, then clones from it")  # fmt: skip

    def _starts_writable(self) -> bool:
        """The primary ordinal with a primary's PGDATA: its postgres archives on by itself."""
        pgdata = self.ctx.config.pgdata
        signals = ("standby.signal", "recovery.signal")
        return self.ctx.config.identity.role == "primary" and not any((pgdata / s).exists() for s in signals)

    def _carry_out(self, build_new: Any, restart: Any) -> None:
        if self.ctx.plan.remove_leftover:
            self.build.remove_leftover(Path(self.ctx.plan.remove_leftover))
        if self.ctx.plan.action in (INIT, CLONE):
            build_new()
        elif self.ctx.plan.action == START:
            restart()
        self.files.fix_ownership()


def exec_postgres(args: list[str], account: RunAs | None) -> None:
    """Replace this process with postgres, secrets stripped from its environment.

    `account` is given only when still root (the info arguments path): drop to it first.
    """
    if account is not None:
        drop_to(account, account_groups(account))
    env = child_env()
    # nss_wrapper served initdb and psql; postgres itself needs no passwd entry (as in the official image).
    if env.get("LD_PRELOAD", "").endswith("/libnss_wrapper.so"):
        for name in NSS_VARIABLES:
            env.pop(name, None)
    os.execvpe("postgres", ["postgres", *args], env)
