"""May a restarting replica follow the primary? Observe, decide with a pure function, then act."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tenacity import wait_fixed

from agent import history, historycheck, majors, replication, switchover, upgrade, walend
from agent.context import Part
from agent.errors import (
    AgentError,
    DataDirConflict,
    SwitchoverBlocked,
    SystemIdentifierMismatch,
)
from agent.makeway import MakeWay
from agent.ownwal import OwnWalServer
from agent.pgdata import inspect
from agent.podbirth import pod_born
from agent.postgres import controldata
from agent.switchover import Handoff
from agent.waits import poll_until

if TYPE_CHECKING:
    from agent.replica import Replica

START = "start"
CREATE_SLOT = "create_slot"
RECLONE_LOST_SLOT = "reclone_lost_slot"
REFUSE_OTHER_CLUSTER = "refuse_other_cluster"
RECLONE_UPGRADED = "reclone_upgraded"
REFUSE_DIVERGED = "refuse_diverged"
RECLONE_DIVERGED = "reclone_diverged"
REJOIN = "rejoin"
REWIND = "rewind"


def decide_restart(
    local_system_identifier: int | None,
    primary_system_identifier: int,
    verdict: history.Verdict | None,
    slot_status: str | None,
    on_divergence: str,
    former_primary: bool = False,
    clean: bool = True,
    wal_kept: bool | None = None,
    upgraded_from_here: bool = False,
    end_known: bool = False,
) -> str:
    """What a restarting replica does once it has seen the primary: every branch, no effects.

    `verdict` is None when the clusters differ (histories of two clusters are not compared); a newer
    timeline than the primary's is always refused (the data untouched), for a former primary too;
    `slot_status` is the slot's wal_status (None: no slot; `lost`: invalidated). A `former_primary`
    (no standby.signal) rejoins as it is only when it shut down cleanly on the primary's history;
    otherwise it is rewound (pg_rewind finds the exact fork, even after a crash). `end_known`: the
    position is where its WAL ends (read with pg_waldump), not its last checkpoint, so one that
    stopped without a shutdown checkpoint (killed, or stopped at once after a preStop handoff) and is
    on the primary's history rejoins too: its recovery as a standby replays that WAL, then follows.
    `wal_kept` says whether the primary still has the WAL from this member's position (None: not known): with no
    slot and that WAL gone, a new slot would stream nothing, ever, so it clones again (review M6).
    `upgraded_from_here`: the primary's cluster is a major upgrade of this standby's, which holds
    nothing the old one did not (upgrade.upgraded_from_here): it clones the new one, its data aside.
    """
    if local_system_identifier is not None and local_system_identifier != primary_system_identifier:
        return RECLONE_UPGRADED if upgraded_from_here and not former_primary else REFUSE_OTHER_CLUSTER
    if verdict is not None and verdict.outcome == history.NEWER_TIMELINE:
        # It went on after a promotion the primary never saw: its writes are the newest. Never rewound
        # onto the older timeline nor moved aside for it, whatever PGSFS_ON_DIVERGENCE says.
        return REFUSE_DIVERGED
    if former_primary:
        if verdict is None or not verdict.may_follow or not (clean or end_known):
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
        self.makeway = MakeWay(ctx, replica)
        # Set by the check when this former primary keeps its role (`_keeps_role`): started as a primary.
        self.keeps_role = False

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
        address: str | None = None
        info: replication.SystemInfo | None = None
        try:
            address = self.replica._resolve_primary(budget / 2)
            remaining = max(1.0, budget - (self.world.clock() - started))
            info = self.replica.wait_for_primary(address, timeout=remaining)
        except AgentError as exc:
            if former and address is not None and exc.fields.get("reason") == replication.STARTING:
                # Its postgres runs but takes no connection: a successor whose hot standby waits for WAL
                # only this member has (review M8). The handoff serves it, and promotes only once it can tell.
                self.log.warning("successor_unreadable", successor=cfg.primary_fqdn.rstrip("."), detail=exc.message,
                                 note="this former primary serves its WAL to it before anything else")  # fmt: skip
            elif former:
                # Never start a former primary unchecked: it may hold writes the primary lacks.
                raise DataDirConflict(
                    f"PGDATA holds a former primary and the primary {cfg.primary_fqdn.rstrip('.')} did not "
                    f"answer ({exc.event}): it rejoins only once the primary can show it is on its history; "
                    "the data here was left untouched",
                    hint="the pod restarts and checks again; make sure the member of PGSFS_PRIMARY_ORDINAL runs",
                ) from exc
            else:
                self._phase(
                    "primary_check_skipped",
                    started,
                    reason=exc.event,
                    detail=exc.message,
                    note="starting as a standby anyway: postgres reconnects by itself",
                )
                return False
        assert address is not None
        endpoint = self._endpoint(cfg.primary_fqdn, address)
        same_cluster = local is None or info is None or info.system_identifier == local
        control = controldata(self.world.runner, self.pgdata) if same_cluster else ""
        position = history.parse_controldata(control) if same_cluster else None
        wal_end: int | None = None
        if (info is None or info.in_hot_standby) and former and position is not None:
            # A switchover: this member was the primary and its successor is still a standby.
            if self._keeps_role(address, started):
                return False
            wal_end = walend.local_wal_end(self.world.runner, self.pgdata, control)
            server = OwnWalServer(self.ctx, self.replica.files, before_start=self.makeway.clear_stale_lock)
            served = Handoff(self.ctx).run(address, lambda: self.world.identify(endpoint, 3.0), position, wal_end,
                                           server)  # fmt: skip
            info = self.replica.wait_for_primary(address, timeout=cfg.switchover_timeout, accept_standby=False)
            if served:  # it ran as a standby since: a standby now, at the end of its WAL (read above)
                former = False
                control = controldata(self.world.runner, self.pgdata)
                position = history.parse_controldata(control)
        assert info is not None  # unreadable only for a former primary in its cluster: the handoff ran
        end_known = False
        if position is not None and not former:
            position = self._through_local_wal(position, control, wal_end)
        elif position is not None and not position.clean:
            position, end_known = self._crashed_primary_end(position, control)
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
        from_here = not same_cluster and not former and self._upgraded_from_here(address, local)
        action = decide_restart(local, info.system_identifier, verdict, status, cfg.on_divergence,
                                former_primary=former, clean=position.clean if position else True,
                                wal_kept=kept, upgraded_from_here=from_here, end_known=end_known)  # fmt: skip
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
            return self.makeway.rewind(address)
        if action == RECLONE_UPGRADED:
            if self.plan.binaries is not None:
                majors.forget(self.plan.binaries)  # the clone and its postgres are the image's major
            self.makeway.move_aside_and_clone(
                "pre-upgrade", "clone_after_upgrade",
                f"the primary runs PostgreSQL {info.server_version // 10000}, upgraded from this replica's cluster "
                f"{local}, of which this replica holds nothing more",
                primary_system_identifier=str(info.system_identifier),
            )  # fmt: skip
            return True
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
            self.makeway.diverged(verdict, reclone=action == RECLONE_DIVERGED)
            return True
        if action == RECLONE_LOST_SLOT:
            self.makeway.reclone_after_lost_slot(missing=status is None)
            return True
        if action == CREATE_SLOT:
            self.replica.ensure_slot(address)
        return False

    def _crashed_primary_end(self, position: history.LocalPosition,
                             control: str) -> tuple[history.LocalPosition, bool]:  # fmt: skip
        """A former primary that stopped without a shutdown checkpoint: its position through the end of
        its WAL, and whether that end is known (else pg_control's position, and it is rewound)."""
        try:
            end = walend.local_wal_end(self.world.runner, self.pgdata, control)
        except AgentError as exc:
            self.log.warning("wal_end_unknown", detail=exc.message, note="this former primary is rewound")
            return position, False
        return self._through_local_wal(position, control, end), True

    def _upgraded_from_here(self, address: str, local: int | None) -> bool:
        """Is the primary's cluster an upgrade of this standby's, which holds nothing more? Unknown is no."""
        try:
            origin = upgrade.parse_origin(self.world.upgrade_origin(self._superuser_endpoint(address)))
            if origin is None:
                return False
            control = controldata(self.world.runner, self.pgdata)
            position = self._through_local_wal(history.parse_controldata(control), control)
        except Exception as exc:  # psycopg.Error or CommandFailed: not known, so refused as another cluster
            self.log.warning("upgrade_origin_unknown", detail=" ".join(str(exc).split()))
            return False
        same = upgrade.upgraded_from_here(local, position.timeline, position.lsn, origin)
        self.log.info("upgrade_origin", primary_upgraded_from=origin.setting(), local_timeline=position.timeline,
                      local_end=history.format_lsn(position.lsn), clone=same)  # fmt: skip
        return same

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

    def _through_local_wal(self, position: history.LocalPosition, control: str,
                           known_end: int | None = None) -> history.LocalPosition:  # fmt: skip
        return historycheck.through_local_wal(self, position, control, known_end)

    def _superuser_endpoint(self, address: str) -> replication.Endpoint:
        cfg = self.config
        return replication.Endpoint(host=cfg.primary_fqdn.rstrip("."), hostaddr=address, port=cfg.port,
                                    user=cfg.superuser, password=cfg.superuser_password.reveal(),
                                    application_name=f"{cfg.identity.pod_name}-agent")  # fmt: skip

    def _keeps_role(self, address: str, started: float) -> bool:
        """Before a handoff: does the successor's template name this member as the primary, from a
        younger pod? Then this pod's template is the stale one, and this member keeps the role it was
        handed (review M3): True, after the same look for rivals as any primary start."""
        cfg = self.config
        try:
            names, born = self.world.template_view(self._superuser_endpoint(address))
        except Exception as exc:  # psycopg.Error: not known, so the template is followed, as before
            self.log.warning("template_check_failed", detail=" ".join(str(exc).split()),
                             note="the handoff follows this pod's template")  # fmt: skip
            return False
        own = pod_born(cfg.state_dir, cfg.pod_uid, time.time(), owner=self.owner)
        ident = cfg.identity
        decision = switchover.decide_template(ident.ordinal, own, ident.primary_ordinal, names, born)
        self._phase("template_check", started, decision=decision, primary_ordinal=ident.primary_ordinal,
                    successor_names=names, successor_born=born, pod_born=own)  # fmt: skip
        if decision == switchover.HAND_OFF:
            return False
        successor = cfg.primary_fqdn.split(".", maxsplit=1)[0]
        if decision == switchover.REFUSE_TEMPLATES_DISAGREE:
            raise SwitchoverBlocked(
                f"this member's template names {successor} as the primary, but {successor}, in a younger pod, "
                f"names ordinal {names}: the primary ordinal changed twice while this pod kept its template; "
                "nothing was changed here",
                hint="let the rollout finish (it replaces this pod with the current template); if it waits on "
                "this pod, delete it (kubectl delete pod)", decision=decision,
            )  # fmt: skip
        self.log.warning(
            "role_kept", successor=successor,
            note=f"{successor}, in a younger pod, names this member as the primary: this pod's template is the "
            "stale one (a container restart keeps it), so this member keeps the role it was handed instead of "
            "handing it back; the rollout then replaces this pod with the current template",
        )  # fmt: skip
        switchover.PrimaryGuard(self.ctx).check()
        self.keeps_role = True
        return True

    def _wal_kept(self, address: str, position: history.LocalPosition | None, control: str) -> bool | None:
        """Does the primary still have the WAL segment this member resumes from? None when unknown."""
        if position is None:
            return None
        su = self._superuser_endpoint(address)
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

    def compare_histories(
        self, endpoint: replication.Endpoint, info: replication.SystemInfo, local: history.LocalPosition
    ) -> history.Verdict:
        """Where this replica's data ends against the primary's timeline history."""
        return historycheck.compare_with(self, endpoint, info, local)
