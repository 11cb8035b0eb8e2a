"""The primary ordinal holding a standby (a switchover's successor): follow the writable member,
but only once its history is shown to continue this member's (review L8), as every replica does."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from agent import history, historycheck, survey
from agent.context import Part
from agent.errors import ReplicaDiverged, SystemIdentifierMismatch
from agent.identity import Identity
from agent.managed import ManagedFiles
from agent.pgdata import inspect
from agent.postgres import controldata
from agent.streamwatch import conninfo_values, standby_conninfo
from agent.switchover import FOLLOW_WRITABLE, Designated

WAIT_UNCONNECTED = "wait_unconnected"
REFUSE_OTHER_CLUSTER = "refuse_other_cluster"
REFUSE_DIVERGED = "refuse_diverged"

# How long the writable member, just seen by the survey, gets to answer IDENTIFY_SYSTEM.
IDENTIFY_TIMEOUT = 5.0


def decide_follow(local_system_identifier: int | None, upstream_system_identifier: int | None,
                  verdict: history.Verdict | None) -> str:  # fmt: skip
    """May the designated standby stream from the writable member? Only onto its own history.

    `upstream_system_identifier` None: the member did not answer, so nothing is known and the
    standby starts unconnected (it never streams WAL it has not checked). `verdict` None: not compared.
    """
    if upstream_system_identifier is None:
        return WAIT_UNCONNECTED
    if local_system_identifier is not None and local_system_identifier != upstream_system_identifier:
        return REFUSE_OTHER_CLUSTER
    if verdict is None or not verdict.may_follow:
        return REFUSE_DIVERGED
    return FOLLOW_WRITABLE


def former_upstream(conninfo: str | None, identity: Identity) -> str | None:
    """The other member of this StatefulSet that `conninfo` (this standby's primary_conninfo before the
    start) streamed from, or None."""
    host = conninfo_values(conninfo).get("host", "") if conninfo else ""
    pod = host.split(".", 1)[0]
    prefix = f"{identity.statefulset}-"
    if not pod.startswith(prefix) or not pod[len(prefix):].isdigit() or pod == identity.pod_name:
        return None
    return pod


class DesignatedFollow(Part):
    """Chooses the upstream (`Designated`), checks its history, then writes the standby settings."""

    def __init__(self, ctx: Any, files: ManagedFiles) -> None:
        super().__init__(ctx)
        self.files = files

    def run(self) -> None:
        """Follow the one writable member once checked; wait unconnected when there is none."""
        before = standby_conninfo(self.pgdata)  # read before the managed files are written again
        upstream = Designated(self.ctx).upstream()
        if upstream is None:
            former = former_upstream(before, self.config.identity)
            if former is None:
                self.files.write_config(self.pgdata, standby=True, connect=False)
                return
            # No member accepts writes: most often the former primary was killed during its handoff, and
            # its agent serves its WAL from a standby when it starts. Streaming from it needs nobody to
            # reach this member: its own hot standby may not open before that WAL arrives (review M8).
            self.log.info("awaiting_promotion_from", upstream=former,
                          note=f"streaming from {former}, which it followed before, until promoted")  # fmt: skip
            self.files.write_config(self.pgdata, standby=True, upstream=self.config.pod_fqdn(former))
            return
        fqdn = self.config.pod_fqdn(upstream)
        address, _ = survey.resolve(self.world.lookup, fqdn)
        if address is None or self._check(upstream, fqdn, address) == WAIT_UNCONNECTED:
            self.log.warning("designated_unchecked", upstream=upstream,
                             note="the writable member did not answer the history check: this standby starts "
                             "unconnected and checks again at its next start")  # fmt: skip
            self.files.write_config(self.pgdata, standby=True, connect=False)
            return
        try:
            created = self.world.ensure_slot(self._endpoint(fqdn, address), self.config.identity.slot_name)
            self.log.info("slot_ready", slot=self.config.identity.slot_name, created=created, on=upstream)
        except Exception as exc:  # psycopg.Error: postgres retries streaming by itself
            self.log.warning("slot_check_failed", detail=" ".join(str(exc).split()), on=upstream)
        self.files.write_config(self.pgdata, standby=True, upstream=fqdn)

    def _check(self, upstream: str, fqdn: str, address: str) -> str:
        started = self.world.clock()
        endpoint = self._endpoint(fqdn, address)
        info = self.world.identify(endpoint, IDENTIFY_TIMEOUT).info
        local = inspect(self.pgdata).system_identifier
        verdict = None
        if info is not None and (local is None or local == info.system_identifier):
            control = controldata(self.world.runner, self.pgdata)
            position = historycheck.through_local_wal(self, history.parse_controldata(control), control)
            verdict = historycheck.compare_with(self, endpoint, info, position)
        decision = decide_follow(local, info.system_identifier if info else None, verdict)
        self._phase("designated_history_check", started, decision=decision, upstream=upstream,
                    history=verdict.outcome if verdict else None)  # fmt: skip
        if decision == REFUSE_OTHER_CLUSTER:
            assert info is not None
            raise SystemIdentifierMismatch(
                f"this member holds the primary ordinal and a standby of cluster {local}, but the writable member "
                f"{upstream} runs cluster {info.system_identifier}; the data here was left untouched",
                hint=f"find out which cluster is the right one; if {upstream}'s, move this pod's PGDATA aside (or "
                "delete its PersistentVolumeClaim) so it clones again",
                local_system_identifier=str(local), primary_system_identifier=str(info.system_identifier),
            )  # fmt: skip
        if decision == REFUSE_DIVERGED:
            assert verdict is not None
            raise ReplicaDiverged(
                f"this member holds the primary ordinal and a standby whose data is not on the history of the "
                f"writable member {upstream} ({verdict.outcome}: this standby on timeline {verdict.local_timeline} "
                f"at {verdict.local_lsn}, {upstream} on timeline {verdict.primary_timeline} at "
                f"{verdict.primary_lsn}); following it would silently mix two histories. The data here was left "
                "untouched",
                hint=f"find out which copy holds the writes you need. If {upstream}'s, set the primary ordinal to "
                f"{upstream}'s ordinal and apply: this member then rejoins it as a replica (PGSFS_ON_DIVERGENCE="
                f"reclone moves its data aside and clones). If this member's, stop {upstream} and run "
                f"`kubectl exec {self.config.identity.pod_name} -- pg-sfs-agent promote`",
                **asdict(verdict),
            )  # fmt: skip
        return decision
