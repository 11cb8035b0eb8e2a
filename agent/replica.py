"""A replica's part of a start: wait for the primary, clone, or check that it may follow it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import announce, discovery, history, memberslots, replication
from agent.buildarea import BuildArea
from agent.context import Part
from agent.errors import (
    CommandFailed,
)
from agent.files import free_bytes
from agent.follow import FollowCheck
from agent.identity import slot_name_for
from agent.makeway import settle_moved_aside_wal
from agent.managed import ManagedFiles
from agent.pgdata import inspect, newest_timeline
from agent.postgres import (
    basebackup,
    controldata,
)


class Replica(Part):
    """Clones the primary, or checks a restarting standby against it (cluster, history, slot)."""

    def __init__(self, ctx: Any, files: ManagedFiles, build: BuildArea) -> None:
        super().__init__(ctx)
        self.files = files
        self.build = build
        self.follow = FollowCheck(ctx, self)

    def _resolve_primary(self, timeout: float) -> str:
        """The primary's address from its per-pod A record, waiting up to `timeout`."""
        waited = discovery.wait_for_record(
            self.world.lookup,
            self.config.primary_fqdn,
            timeout=timeout,
            log=self.log,
            clock=self.world.clock,
            sleep=self.world.sleep,
            on_poll=self.world.beat,
        )
        assert waited.answer is not None
        return waited.answer.records[0]

    def wait_for_primary_record(self) -> str:
        """Wait for the primary's per-pod A record, then cross-check the Service's SRV records."""
        cfg = self.config
        self.world.beat("dns_wait")
        address = self._resolve_primary(cfg.wait_timeout)
        srv, srv_name, _ = discovery.service_srv(self.world.lookup, cfg.srv_fqdn, cfg.service_fqdn)
        primary_target = cfg.primary_fqdn.lower()
        listed = [r for r in srv if r.fqdn == primary_target]
        self.log.info(
            "srv_check",
            srv_name=srv_name.rstrip(".") or None,
            members=len(srv),
            primary_listed=bool(listed),
            srv_port=listed[0].port if listed else None,
        )
        if listed and listed[0].port != cfg.port:
            self.log.warning(
                "srv_port_mismatch",
                srv_port=listed[0].port,
                pgport=cfg.port,
                hint="PGPORT differs from the Service's named port; using PGPORT",
            )
        return address

    def wait_for_primary(self, address: str, timeout: float | None = None,
                         accept_standby: bool = True) -> replication.SystemInfo:  # fmt: skip
        """Wait until the primary ordinal answers IDENTIFY_SYSTEM: as a primary, or (`accept_standby`)
        as a standby, a switchover's successor that this member follows (cascading) until it is promoted."""
        cfg = self.config
        self.world.beat("primary_wait")
        endpoint = self._endpoint(cfg.primary_fqdn, address)
        info = replication.wait_for_primary(
            lambda: self.world.identify(endpoint, 3.0),
            timeout=timeout if timeout is not None else cfg.wait_timeout,
            auth_attempts=cfg.auth_attempts,
            user=cfg.replication_user,
            target=cfg.primary_fqdn.rstrip("."),
            log=self.log,
            clock=self.world.clock,
            sleep=self.world.sleep,
            on_poll=self.world.beat,
            accept_standby=accept_standby,
        )
        return info

    def ensure_slot(self, address: str) -> None:
        """The replica's own physical slot on the primary, so the primary keeps its WAL."""
        import psycopg

        started = self.world.clock()
        slot = self.config.identity.slot_name
        try:
            created = self.world.ensure_slot(self._endpoint(self.config.primary_fqdn, address), slot)
        except psycopg.Error as exc:
            raise CommandFailed(
                f"could not prepare replication slot {slot} on the primary: {' '.join(str(exc).split())}",
                hint="the slot is still held by another connection or the primary refused; the next start "
                "tries again; see the primary's log",
                slot=slot,
            ) from exc
        self._phase("slot_ready", started, slot=slot, created=created)

    def clone(self) -> None:
        """Wait for the primary, make sure our slot exists, clone beside PGDATA, configure, move."""
        cfg = self.config
        # psycopg takes ~80 ms to import: pay it before the wait, not after the record appears.
        import psycopg  # noqa: F401

        address = self.wait_for_primary_record()
        self.wait_for_primary(address)
        self.ensure_slot(address)
        passfile = self.files.write_passfile()
        for settled in settle_moved_aside_wal(self.pgdata, cfg.waldir, self.owner):
            self.log.info("wal_moved_aside", to=str(settled), note="the WAL of data moved aside before a kill")
        datadir = self.build.start("clone")
        self.world.beat("clone")
        started = self.world.clock()
        self.log.info(
            "clone_started",
            primary=cfg.primary_fqdn.rstrip("."),
            slot=cfg.identity.slot_name,
            max_rate=cfg.clone_max_rate,
        )
        try:
            with self.build.writing_behind(datadir):
                result = basebackup(
                    self.world.runner,
                    target=datadir,
                    host=cfg.primary_fqdn.rstrip("."),
                    hostaddr=address,
                    port=cfg.port,
                    user=cfg.replication_user,
                    passfile=passfile,
                    slot=cfg.identity.slot_name,
                    application_name=f"{cfg.identity.pod_name}-clone",
                    max_rate=cfg.clone_max_rate,
                    on_progress=lambda fields: self.log.info("clone_progress", **fields),
                    on_tick=self.world.beat,
                    clock=self.world.clock,
                    stall_timeout=cfg.clone_stall_timeout,
                    waldir=cfg.waldir,
                )
        except CommandFailed as exc:
            raise self._clone_failed(exc) from exc
        self._check_clone(datadir)
        synced = self.build.make_durable(datadir)
        self._phase("clone", started, **{k: v for k, v in result.items() if k != "elapsed_s"}, synced_s=synced)
        self.files.write_config(datadir, standby=True)
        self.build.move_into_place(datadir)
        cloned = inspect(self.pgdata).system_identifier
        if self.ctx.announcer is not None and cloned is not None:
            self.ctx.announcer.say(announce.holds_message(cloned, "clone done, starting", newest_timeline(self.pgdata)))

    def _check_clone(self, datadir: Path) -> None:
        """Refuse, and discard, a clone PostgreSQL would refuse to start forever (history.unusable_clone)."""
        try:
            label = (datadir / "backup_label").read_text()
        except OSError:
            return  # no backup_label: nothing to check against
        state = history.controldata_values(controldata(self.world.runner, datadir)).get("Database cluster state", "")
        problem = history.unusable_clone(label, state)
        if problem is not None:
            raise self._clone_failed(CommandFailed(
                problem, hint="nothing to do: the clone was discarded, and the pod restarts and clones again, from "
                "the primary as it is now", reason="clone_unusable",
            ))  # fmt: skip

    def _clone_failed(self, exc: CommandFailed) -> CommandFailed:
        """Discard the partial clone now (it is ours and never usable) and explain a full volume."""
        free_mb = None
        if self.work.exists():
            self.build.remove_leftover(self.work)
        try:
            # ext4 returns freed blocks at its next journal commit: flush first, or the free space
            # reported is what it was before the partial clone (pg_basebackup's own cleanup) went.
            os.sync()
            free_mb = round(free_bytes(self.work.parent) / 1048576, 1)
        except OSError:
            pass
        if "no space left" in exc.message.lower():
            return CommandFailed(
                f"the volume holding PGDATA is full: {exc.message}",
                hint="the clone needs at least the primary's size plus the WAL written meanwhile; grow the "
                "PersistentVolumeClaim (or free space on it), then restart the pod; PGDATA was not touched",
                free_mb_after_cleanup=free_mb,
                **exc.fields,
            )
        exc.fields["free_mb_after_cleanup"] = free_mb
        return exc

    def restart(self) -> None:
        """Existing PGDATA: check the primary briefly (refuse, or clone again), then refresh the files."""
        # Check first: data of another cluster must be left exactly as it was.
        if self.follow.check_primary():
            return
        if self.follow.keeps_role:  # a former primary whose pod template is the stale one: primary still
            self.files.write_config(self.pgdata, standby=False)
            return
        cfg = self.config
        ordinals = range(max(cfg.members, cfg.max_replication_slots + 1))
        members = {slot_name_for(cfg.identity.peer_pod(n)) for n in ordinals}
        memberslots.set_aside(self.pgdata, cfg.state_dir, members, self.log)
        self.files.write_config(self.pgdata, standby=True)

    @contextlib.contextmanager
    def announcing(self) -> Iterator[None]:
        """Say on postgres' port what this member holds until postgres starts (see agent/announce.py)."""
        local = inspect(self.pgdata).system_identifier
        message = (
            announce.holds_message(local, "checking the primary before starting", newest_timeline(self.pgdata))
            if local is not None
            else announce.empty_message("waiting to clone the primary")
        )
        self.ctx.announcer = self.world.announcer(self.config.port, message)
        problem = self.ctx.announcer.start()
        if problem is not None:
            self.log.warning("announce_failed", port=self.config.port, detail=problem,
                             note="a primary initialising now cannot see what this member holds")  # fmt: skip
        try:
            yield
        finally:
            self.ctx.announcer.close()

