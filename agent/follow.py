"""May a restarting replica follow the primary? Observe, decide with a pure function, then act."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenacity import wait_fixed

from agent import history, probe, replication, switchover, walend
from agent.context import Part
from agent.errors import (
    AgentError,
    CommandFailed,
    DataDirConflict,
    NoRoomToMoveAside,
    ReplicaDiverged,
    SystemIdentifierMismatch,
)
from agent.files import fix_tree_ownership, free_bytes, fsync_dir, tree_size
from agent.pgdata import builds_inside, inspect, volume_dir
from agent.postgres import controldata, rewind
from agent.switchover import Handoff, OwnWalServer
from agent.waits import poll_until

if TYPE_CHECKING:
    from agent.replica import Replica

START = "start"
CREATE_SLOT = "create_slot"
RECLONE_LOST_SLOT = "reclone_lost_slot"
REFUSE_OTHER_CLUSTER = "refuse_other_cluster"
REFUSE_DIVERGED = "refuse_diverged"
RECLONE_DIVERGED = "reclone_diverged"
REJOIN = "rejoin"
REWIND = "rewind"
# Room kept free beyond a copy's own size (for a clone: the WAL written while it runs).
COPY_MARGIN = 64 * 1048576


def decide_restart(
    local_system_identifier: int | None,
    primary_system_identifier: int,
    verdict: history.Verdict | None,
    slot_status: str | None,
    on_divergence: str,
    former_primary: bool = False,
    clean: bool = True,
    wal_kept: bool | None = None,
) -> str:
    """What a restarting replica does once it has seen the primary: every branch, no effects.

    `verdict` is None when the clusters differ (histories of two clusters are not compared); a newer
    timeline than the primary's is always refused (the data untouched), for a former primary too;
    `slot_status` is the slot's wal_status (None: no slot; `lost`: invalidated). A `former_primary`
    (no standby.signal) rejoins as it is only when it shut down cleanly on the primary's history;
    otherwise it is rewound (pg_rewind finds the exact fork, even after a crash). `wal_kept` says
    whether the primary still has the WAL from this member's position (None: not known): with no
    slot and that WAL gone, a new slot would stream nothing, ever, so it clones again (review M6).
    """
    if local_system_identifier is not None and local_system_identifier != primary_system_identifier:
        return REFUSE_OTHER_CLUSTER
    if verdict is not None and verdict.outcome == history.NEWER_TIMELINE:
        # It went on after a promotion the primary never saw: its writes are the newest. Never rewound
        # onto the older timeline nor moved aside for it, whatever PGSFS_ON_DIVERGENCE says.
        return REFUSE_DIVERGED
    if former_primary:
        if verdict is None or not verdict.may_follow or not clean:
            return REWIND
        # Its slot was invalidated while it was away, or there is none, and the WAL is gone.
        return RECLONE_LOST_SLOT if _wal_gone(slot_status, wal_kept) else REJOIN
    if verdict is not None and not verdict.may_follow:
        return RECLONE_DIVERGED if on_divergence == "reclone" else REFUSE_DIVERGED
    if _wal_gone(slot_status, wal_kept):
        return RECLONE_LOST_SLOT
    if slot_status in (None, replication.LOST):  # a lost slot whose WAL is still there: made again
        return CREATE_SLOT
    return START


def _wal_gone(slot_status: str | None, wal_kept: bool | None) -> bool:
    """No usable slot and no WAL to resume from: an invalidated slot counts as gone unless the
    primary is known to still have that WAL (review M1); a missing one only when it is known not to."""
    if slot_status == replication.LOST:
        return wal_kept is not True
    return slot_status is None and wal_kept is False


class FollowCheck(Part):
    """The restart check of a standby against the primary: same cluster, same history, a usable slot."""

    def __init__(self, ctx: Any, replica: Replica) -> None:
        super().__init__(ctx)
        self.replica = replica

    def check_primary(self) -> bool:
        """A bounded look at the primary, then `decide_restart`: start, refuse, or clone again.

        Returns True when the replica cloned again (its data moved aside first).
        """
        cfg = self.config
        started = self.world.clock()
        budget = cfg.restart_check_timeout
        switchover.give_back(self.pgdata, self.log)  # a handoff killed half-way: the former primary's data
        state = inspect(self.pgdata)
        local = state.system_identifier
        former = not state.standby_signal  # a former primary, on a replica ordinal now
        try:
            address = self.replica._resolve_primary(budget / 2)
            remaining = max(1.0, budget - (self.world.clock() - started))
            info = self.replica.wait_for_primary(address, timeout=remaining)
        except AgentError as exc:
            if former:
                # Never start a former primary unchecked: it may hold writes the primary lacks.
                raise DataDirConflict(
                    f"PGDATA holds a former primary and the primary {cfg.primary_fqdn.rstrip('.')} did not "
                    f"answer ({exc.event}): it rejoins only once the primary can show it is on its history; "
                    "the data here was left untouched",
                    hint="the pod restarts and checks again; make sure the member of PGSFS_PRIMARY_ORDINAL runs",
                ) from exc
            self._phase(
                "primary_check_skipped",
                started,
                reason=exc.event,
                detail=exc.message,
                note="starting as a standby anyway: postgres reconnects by itself",
            )
            return False
        endpoint = self._endpoint(cfg.primary_fqdn, address)
        same_cluster = local is None or info.system_identifier == local
        control = controldata(self.world.runner, self.pgdata) if same_cluster else ""
        position = history.parse_controldata(control) if same_cluster else None
        if info.in_hot_standby and former and position is not None:
            # A switchover: this member was the primary and its successor is still a standby.
            wal_end = walend.local_wal_end(self.world.runner, self.pgdata, control)
            server = OwnWalServer(self.ctx, self.replica.files, before_start=self._clear_stale_lock)
            served = Handoff(self.ctx).run(address, lambda: self.world.identify(endpoint, 3.0), position, wal_end,
                                           server)  # fmt: skip
            info = self.replica.wait_for_primary(address, timeout=cfg.switchover_timeout, accept_standby=False)
            if served:  # it ran as a standby since: a standby now, at the end of its WAL
                former = False
                control = controldata(self.world.runner, self.pgdata)
                position = history.parse_controldata(control)
        if position is not None and not former:
            position = self._through_local_wal(position, control)
        verdict = self.compare_histories(endpoint, info, position) if position is not None else None
        if verdict is not None and position is not None and verdict.outcome == history.AHEAD_OF_PRIMARY and \
                info.in_hot_standby:
            # Upstream is a switchover's successor, still streaming from the same primary as this member
            # did: it catches up within moments, so "ahead" is only a race; look again, briefly.
            info = self._until_upstream_has(endpoint, info, position.lsn)
            verdict = self.compare_histories(endpoint, info, position)
        status = self._slot_status(endpoint) if verdict is not None and verdict.may_follow else None
        kept = self._wal_kept(address, position, control) if status in (None, replication.LOST) and verdict and \
            verdict.may_follow else None  # fmt: skip
        action = decide_restart(local, info.system_identifier, verdict, status, cfg.on_divergence,
                                former_primary=former, clean=position.clean if position else True,
                                wal_kept=kept)  # fmt: skip
        self._phase(
            "primary_check", started, system_identifier=str(info.system_identifier), decision=action,
            history=verdict.outcome if verdict else None, timeline=verdict.local_timeline if verdict else None,
            slot_status=status, wal_kept=kept, former_primary=former or None,
            upstream_standby=info.in_hot_standby or None,
        )  # fmt: skip
        if action == REJOIN:
            self.log.info("rejoining", note="a former primary that shut down cleanly on the primary's history: "
                          "it follows as a standby, nothing copied")  # fmt: skip
            if status in (None, replication.LOST):
                self.replica.ensure_slot(address)
            return False
        if action == REWIND:
            return self.rewind(address)
        if action == REFUSE_OTHER_CLUSTER:
            raise SystemIdentifierMismatch(
                f"this replica's data belongs to cluster {local} but the primary "
                f"{cfg.primary_fqdn.rstrip('.')} runs cluster {info.system_identifier}: the primary was "
                "re-initialised; the data here was left untouched",
                hint="if the primary's new cluster is the right one, move this pod's PGDATA aside (or delete "
                "its PersistentVolumeClaim) so it clones again; otherwise restore the primary",
                local_system_identifier=str(local),
                primary_system_identifier=str(info.system_identifier),
            )
        if action in (REFUSE_DIVERGED, RECLONE_DIVERGED):
            assert verdict is not None
            self.diverged(verdict, reclone=action == RECLONE_DIVERGED)
            return True
        if action == RECLONE_LOST_SLOT:
            self.reclone_after_lost_slot(missing=status is None)
            return True
        if action == CREATE_SLOT:
            self.replica.ensure_slot(address)
        return False

    def _until_upstream_has(self, endpoint: replication.Endpoint, info: replication.SystemInfo,
                            lsn: int) -> replication.SystemInfo:  # fmt: skip
        """IDENTIFY_SYSTEM again until the upstream standby holds `lsn` or a few seconds passed."""
        seen = [info]

        def attempt() -> bool:
            result = self.world.identify(endpoint, 3.0)
            if result.info is not None:
                seen.append(result.info)
            return history.parse_lsn(seen[-1].xlogpos) >= lsn or seen[-1].timeline != info.timeline

        poll_until(attempt, done=bool, wait=wait_fixed(0.2), deadline=self.world.clock() + 10.0,
                   clock=self.world.clock, sleep=self.world.sleep)  # fmt: skip
        return seen[-1]

    def _through_local_wal(self, position: history.LocalPosition, control: str) -> history.LocalPosition:
        """A standby's history goes as far as the WAL in its pg_wal, replayed or not (pg_control only
        proves what was replayed and flushed): received WAL past a fork is a fork too (review M7)."""
        try:
            layout = walend.layout(control)
            end = walend.local_wal_end(self.world.runner, self.pgdata, control)
        except (AgentError, KeyError, ValueError) as exc:
            self.log.warning("wal_end_unknown", detail=getattr(exc, "message", str(exc)),
                             note="the history check uses pg_control's position alone")  # fmt: skip
            return position
        if layout.timeline != position.timeline or end <= position.lsn:
            return position
        self.log.info("local_wal_past_control", control=history.format_lsn(position.lsn),
                      wal_end=history.format_lsn(end), timeline=position.timeline)  # fmt: skip
        return history.LocalPosition(position.timeline, end, position.clean, position.state)

    def _wal_kept(self, address: str, position: history.LocalPosition | None, control: str) -> bool | None:
        """Does the primary still have the WAL segment this member resumes from? None when unknown."""
        if position is None:
            return None
        cfg = self.config
        su = replication.Endpoint(host=cfg.primary_fqdn.rstrip("."), hostaddr=address, port=cfg.port,
                                  user=cfg.superuser, password=cfg.superuser_password.reveal(),
                                  application_name=f"{cfg.identity.pod_name}-agent")  # fmt: skip
        try:
            size = walend.layout(control).segment_size
            return self.world.segment_kept(su, replication.segment_name_suffix(position.lsn, size))
        except Exception as exc:  # psycopg.Error, or a control file without the size: not known
            self.log.warning("wal_check_failed", detail=" ".join(str(exc).split()),
                             note="a missing slot is created as before")  # fmt: skip
            return None

    def _slot_status(self, endpoint: replication.Endpoint) -> str | None:
        try:
            return self.world.slot_status(endpoint, self.config.identity.slot_name)
        except Exception as exc:  # a slot problem must not block a restart
            self.log.warning("slot_check_failed", detail=str(exc))
            return "unknown"

    def rewind(self, address: str) -> bool:
        """pg_rewind onto the primary's history; if it cannot, move aside and clone (True then)."""
        cfg = self.config
        started = self.world.clock()
        self.world.beat("rewind")
        self._save_diverged_wal()
        self._clear_stale_lock()
        try:
            said = rewind(self.world.runner, self.pgdata, host=cfg.primary_fqdn.rstrip("."), hostaddr=address,
                          port=cfg.port, user=cfg.superuser, password=cfg.superuser_password.reveal())  # fmt: skip
        except CommandFailed as exc:
            self.log.warning("rewind_failed", detail=exc.message, note="moving the data aside to clone again")
            self.move_aside_and_clone("rewind-failed", "replica_recloning", f"pg_rewind failed ({exc.message})")
            return True
        self._phase("rewound", started, primary=cfg.primary_fqdn.rstrip("."), pg_rewind=said)
        self.replica.ensure_slot(address)
        return False

    def _clear_stale_lock(self) -> None:
        if probe.remove_stale_lock(self.pgdata):
            self.log.info("stale_lock_removed", file=str(self.pgdata / "postmaster.pid"),
                          note="left by a postgres that was killed")  # fmt: skip

    def _save_diverged_wal(self) -> None:
        """pg_rewind replaces this member's WAL past the fork with the primary's: the transactions
        only it has would be gone. Copy its pg_wal aside first (never deleted), if there is room."""
        wal = self.pgdata / "pg_wal"
        needed, free = room_for_copy(wal, volume_dir(self.pgdata))
        if needed > free:
            raise NoRoomToMoveAside(
                f"this former primary must be rewound, which discards the WAL only it has; a copy of its pg_wal "
                f"({needed // 1048576} MB with a margin) does not fit on the volume. The data here was left untouched",
                hint="grow the PersistentVolumeClaim, or copy PGDATA/pg_wal elsewhere and delete it from there "
                "if its transactions are not needed",
                needed_mb=needed // 1048576,
            )
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if builds_inside(self.pgdata):
            aside = self.pgdata / f".pgsfs-diverged-wal-{stamp}"
        else:
            aside = self.pgdata.with_name(f"{self.pgdata.name}.diverged-wal-{stamp}")
        shutil.copytree(wal, aside, symlinks=True)
        size = needed - COPY_MARGIN
        if self.owner is not None:
            fix_tree_ownership(aside, *self.owner)
        self.log.warning(
            "diverged_wal_saved", copy=str(aside), size_mb=round(size / 1048576, 1),
            note="pg_rewind drops the transactions only this member had; their WAL is kept here "
            "(read it with pg_waldump); delete it once you no longer need it",
        )  # fmt: skip

    def compare_histories(
        self, endpoint: replication.Endpoint, info: replication.SystemInfo, local: history.LocalPosition
    ) -> history.Verdict:
        """Where this replica's data ends (pg_control) against the primary's timeline history."""
        text = ""
        if local.timeline < info.timeline:
            import psycopg

            try:
                text = self.world.timeline_history(endpoint, info.timeline)
            except psycopg.Error as exc:
                raise CommandFailed(
                    f"could not read the primary's timeline history {info.timeline}: {' '.join(str(exc).split())}",
                    hint="the next start tries again; the data here was left untouched",
                ) from exc
        return history.compare(local, info.timeline, history.parse_lsn(info.xlogpos), history.parse_history(text))

    def diverged(self, verdict: history.Verdict, *, reclone: bool) -> None:
        """Not on the primary's history: refuse with the data untouched, or clone again if allowed."""
        where = {
            history.AHEAD_OF_PRIMARY: "it has replayed WAL the primary has not written: the primary's data is "
            "older than this replica's (a restored or copied volume started without promotion)",
            history.FORKED: "it went on past the point where the primary's history left its timeline",
            history.NEWER_TIMELINE: "it is on a newer timeline than the primary",
            history.NOT_IN_HISTORY: "its timeline is not in the primary's history",
        }[verdict.outcome]
        fields = asdict(verdict)
        hint = (
            "find out which copy holds the writes you need. If it is the primary's, set PGSFS_ON_DIVERGENCE=reclone "
            "on this pod (its data is moved aside, never deleted, and it clones again) or delete its PVC; if it is "
            "this replica's, make it the primary instead"
        )
        if verdict.outcome == history.NEWER_TIMELINE:
            hint = (
                "this member went on after a promotion the primary never saw, so its writes are the newest: make it "
                f"the primary (set the primary ordinal to {self.config.identity.ordinal} and apply). Only if its "
                "writes are not needed, move its PGDATA aside or delete its PVC (PGSFS_ON_DIVERGENCE=reclone never "
                "discards a newer timeline)"
            )
        if not reclone:
            raise ReplicaDiverged(
                f"this replica's data is not on the primary's history: {where} (replica timeline "
                f"{verdict.local_timeline} at {verdict.local_lsn}, primary timeline {verdict.primary_timeline} "
                f"at {verdict.primary_lsn}); streaming would silently mix the two. The data here was left untouched",
                hint=hint,
                **fields,
            )
        self.move_aside_and_clone(
            "diverged",
            "replica_diverged_recloning",
            f"this replica's data is not on the primary's history ({where})",
            outcome=verdict.outcome,
        )

    def reclone_after_lost_slot(self, missing: bool = False) -> None:
        """The primary removed WAL this replica needs: move its data aside and clone again."""
        slot = self.config.identity.slot_name
        if missing:
            self.move_aside_and_clone(
                "wal-gone", "slot_missing_wal_gone",
                f"the primary has no slot {slot} for this replica (it was away during a switchover, or the slot "
                "was dropped) and no longer has the WAL this replica would resume from: a new slot would stream "
                "nothing", slot=slot,
            )  # fmt: skip
            return
        self.move_aside_and_clone(
            "slot-invalidated",
            "slot_invalidated",
            f"slot {slot} was invalidated (the primary removed WAL this replica still needed, max_slot_wal_keep_size)",
            slot=slot,
        )

    def move_aside_and_clone(self, suffix: str, event: str, why: str, **fields: Any) -> None:
        """Rename PGDATA to `$PGDATA.<suffix>-<time>` and clone again, only if a new copy fits beside it.

        The data is never deleted; a crash at any point leaves either the old data in place (this
        runs again) or an empty PGDATA (a clone); the clone drops and recreates an invalidated slot.
        """
        if builds_inside(self.pgdata):
            raise DataDirConflict(
                f"{why}, so it must clone again, but PGDATA {self.pgdata} is its volume's mount point and "
                "cannot be moved aside; the data here was left untouched",
                hint="set PGDATA to a subdirectory of the volume (like /var/lib/postgresql/data/pgdata, after "
                "moving the data there), or, if this replica's data is not needed, empty the volume",
                **fields,
            )
        needed, free = room_for_copy(self.pgdata, self.pgdata.parent)
        if needed > free:
            raise NoRoomToMoveAside(
                f"{why}, so it must clone again; its data stays and a new copy needs about {needed // 1048576} MB, "
                f"but the volume has {free // 1048576} MB free. PGDATA was not touched",
                hint="grow the PersistentVolumeClaim, or, if this replica's data is not needed (the primary "
                "has everything it had), delete the PVC (or move PGDATA away) so the pod clones afresh",
                needed_mb=needed // 1048576,
                free_mb=free // 1048576,
                **fields,
            )
        aside = self.pgdata.with_name(f"{self.pgdata.name}.{suffix}-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(self.pgdata, aside)
        fsync_dir(self.pgdata.parent)
        self.log.warning(
            event,
            moved_aside=str(aside),
            note=f"{why}; cloning again. Delete the moved-aside copy once you no longer need it",
            **fields,
        )
        self.replica.clone()


def room_for_copy(source: Path, volume: Path, margin: int = COPY_MARGIN) -> tuple[int, int]:
    """Bytes a copy of `source` needs on `volume` (its size plus a margin: for a new clone beside
    moved-aside data, the WAL written meanwhile), and the bytes free there."""
    return tree_size(source) + margin, free_bytes(volume)
