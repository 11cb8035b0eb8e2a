"""The decision: from the config and what PGDATA holds, a plan of what bootstrap will do and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agent.archive import RESTORE_RECORD
from agent.config import Config
from agent.errors import AgentError, DataDirConflict
from agent.identity import PRIMARY
from agent.pgdata import DataDirState
from agent.render import CONF_NAME
from agent.secretsrecord import RECORD_NAME, PasswordChange
from agent.upgrade import MajorChoice, MajorDecision, decide_major
from agent.walbudget import WalDecision, WalObservation, decide

INIT = "init"
CLONE = "clone"
START = "start"
REFUSE = "refuse"

PASSFILE_NAME = "replication.pgpass"


@dataclass(frozen=True)
class Refusal:
    """Why the agent will not go on, as the error it will raise."""

    event: str
    exit_code: int
    message: str
    hint: str

    def to_error(self) -> AgentError:
        """The exception the bootstrap raises for this refusal."""
        return DataDirConflict(self.message, hint=self.hint)


@dataclass(frozen=True)
class Plan:
    """What `pg-sfs-agent postgres` will do, in order; `pg-sfs-agent plan` prints it."""

    pod: str
    ordinal: int
    role: str
    action: str
    reason: str
    steps: tuple[str, ...]
    pgdata: str
    files: tuple[str, ...]
    remove_leftover: str | None
    primary: str | None
    slot: str | None
    server_major: int | None
    data_major: int | None
    refusal: Refusal | None
    wal: WalDecision | None = None
    # Decisions that need what other members answer: made at run time by pure functions, listed here
    # with their outcomes, since `plan` asks nobody.
    remote_decisions: tuple[str, ...] = ()
    # The programs to run when they are not the image's own: an older major the data holds.
    binaries: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (lists instead of tuples)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data


def _major(version: str | None) -> int | None:
    if version is None:
        return None
    try:
        return int(version.split(".")[0])
    except ValueError:
        return None


def _refusal(state: DataDirState, major: MajorDecision | None, euid: int) -> Refusal | None:
    """The contradiction in PGDATA that makes starting unsafe, if any."""
    pgdata = state.path
    code, event = DataDirConflict.exit_code, DataDirConflict.event

    def refuse(message: str, hint: str) -> Refusal:
        return Refusal(event=event, exit_code=code, message=message, hint=hint)

    if euid != 0 and state.exists and state.owner_uid is not None and state.owner_uid != euid:
        return refuse(
            f"PGDATA {pgdata} is owned by uid {state.owner_uid}, but the agent runs as uid {euid} and, "
            "not being root, cannot fix that",
            "run the container as root (the agent fixes ownership, then drops to postgres), or make the "
            "volume's owner the container's user (securityContext.runAsUser / fsGroup)",
        )
    if state.exists and state.sample_entries == ("(not a directory)",):
        return refuse(f"PGDATA {pgdata} exists but is not a directory", "point PGDATA at a directory")
    if not state.empty and not state.initialised:
        return refuse(
            f"PGDATA {pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION; "
            f"found {', '.join(state.sample_entries)})",
            "the agent never deletes data it does not own: inspect it, move it away, then restart the pod",
        )
    if state.initialised:
        if major is not None and major.choice is MajorChoice.REFUSE:
            return refuse(major.message, major.hint)
        return None
    if state.leftover is not None and not state.leftover.ours:
        return refuse(
            f"{state.leftover.path} exists but is not provably an unfinished init or clone of this PGDATA",
            "inspect it and move it away; the agent does not delete what it cannot prove is its own",
        )
    return None


REMOTE_DECISIONS = {
    INIT: (
        "peer_survey (survey.judge): init | refuse_holders (exit 8) | incomplete (exit 13)",
    ),
    "restore": (
        "peer_survey (survey.judge): init | refuse_holders (exit 8) | incomplete (exit 13)",
        "backup_check (archive.restore_problem): restore | refuse (exit 16: no such stanza, or no backup in it)",
    ),
    CLONE: (
        "wait_for_primary: its record, then IDENTIFY_SYSTEM as a primary (exit 3, 4 or 5 at the deadline)",
        "slot (replication.slot_step): create | keep | recreate",
    ),
    "restart_replica": (
        "primary_check (follow.decide_restart): start | create_slot | reclone_lost_slot | "
        "refuse_other_cluster (exit 7) | reclone_upgraded (the primary's cluster is a major upgrade of this "
        "standby's, which holds nothing more: pgsfs.upgraded_from) | refuse_diverged (exit 12) | reclone_diverged | "
        "rejoin | rewind "
        "(the last two for a former primary); skipped while the primary does not answer within "
        "PGSFS_RESTART_CHECK_TIMEOUT, except for a former primary, which then refuses (exit 6), or hands off "
        "if its successor's postgres runs but takes no connection yet",
        "template_check (switchover.decide_template), a former primary whose successor is still a standby: "
        "hand_off | keep_role (the successor's younger pod names this member: this pod's template is stale, it "
        "starts as the primary) | refuse_templates_disagree (exit 15)",
        "handoff (switchover.decide_handoff), a former primary whose successor is still a standby, against "
        "the end of its WAL (pg_waldump): promote_successor | serve_own_wal (the successor lacks some: its WAL "
        "served by a read-only standby the successor is pointed at, until it has it all, then promote) | "
        "wait_for_successor | refuse_writable | refuse_newer_timeline | refuse_other_timeline (exit 15 at "
        "PGSFS_SWITCHOVER_TIMEOUT); an unfinished handoff (pgsfs.handoff) is given back first",
    ),
    START: (
        "primary_guard (switchover.decide_primary_restart): start_primary | refuse_other_primary | "
        "refuse_newer_timeline (exit 15: another member accepts writes, or holds a newer timeline than this "
        "one; a silent member is waited for up to PGSFS_PEER_CHECK_TIMEOUT, then logged, not refused)",
    ),
    "designated_standby": (
        "designated (switchover.decide_designated): follow_writable | await_promotion (streaming from the "
        "member it followed before, else from nobody) | refuse_many_writable (exit 15)",
        "designated_history_check (designated.decide_follow), before following the writable member: "
        "follow_writable | wait_unconnected | refuse_other_cluster (exit 7) | refuse_diverged (exit 12)",
    ),
}


def _decisions_key(action: str, is_primary: bool, standby: bool) -> str:
    if action != START:
        return action
    if not is_primary:
        return "restart_replica"
    return "designated_standby" if standby else START


def make_plan(
    config: Config,
    state: DataDirState,
    *,
    server_major: int | None,
    passwords: PasswordChange | None = None,
    euid: int = 0,
    wal_observed: WalObservation | None = None,
    initdb_scripts: bool = False,
    carried: Mapping[int, str] | None = None,
) -> Plan:
    """Decide what to do; pure, so `plan` and `postgres` always agree for the same inputs.

    `initdb_scripts`: the initdb.d directory holds scripts (they need a temporary server);
    `carried`: the majors whose programs the image carries (major -> bin directory).
    """
    ident = config.identity
    is_primary = ident.role == PRIMARY
    conf_files = (
        f"{state.path}/{CONF_NAME}",
        f"{state.path}/postgresql.conf",
        f"{state.path}/pg_hba.conf",
    )
    passfile = str(config.state_dir / PASSFILE_NAME)
    standby_files = (*conf_files, f"{state.path}/standby.signal", passfile)
    secrets_state = str(config.state_dir / RECORD_NAME)
    leftover = state.leftover.path if state.leftover is not None and state.leftover.ours else None
    major = _major_decision(state, config, server_major, carried or {})
    refusal = _refusal(state, major, euid)
    upgrading = major is not None and major.choice is MajorChoice.UPGRADE
    older = major is not None and major.choice is MajorChoice.OLDER
    primary = None if is_primary else config.primary_fqdn
    slot = None if is_primary else ident.slot_name

    steps: tuple[str, ...]
    files: tuple[str, ...]
    if refusal is not None:
        action, reason, steps, files, leftover = REFUSE, refusal.message, (), (), None
    elif state.initialised:
        action = START
        if is_primary and state.standby_signal:
            reason = (
                "PGDATA holds a standby on the primary ordinal (a switchover in progress): follow the member "
                "that accepts writes until its agent promotes this one at its restart, or until "
                "`pg-sfs-agent promote`; never promote by itself"
            )
            steps = ("survey_writable", "follow_writable", "write_config", "fix_ownership", "exec_postgres")
            files = standby_files
        elif is_primary and state.recovery_signal:
            reason = (
                "PGDATA holds a restored cluster still in archive recovery (recovery.signal): refresh the managed "
                "files with the recovery settings of its restore record, start, replay to the target and promote"
            )
            steps = (*(() if config.standalone else ("check_no_other_primary",)), "write_config", "fix_ownership",
                     "exec_postgres")  # fmt: skip
            files = (*conf_files, str(config.state_dir / RESTORE_RECORD))
        elif is_primary:
            reason = "PGDATA holds a primary's cluster: refresh the managed files and start"
            # None: not looked at (a test, or no record could be read): set and record them.
            change = passwords or PasswordChange(roles=(), adopt=True)
            rotate = () if not change.needed else ("adopt_passwords",) if change.adopt else ("apply_passwords",)
            guard = () if config.standalone else ("check_no_other_primary",)
            upgrade = ("upgrade_major",) if upgrading else ()
            steps = (*guard, *upgrade, "write_config", *rotate, "fix_ownership", "exec_postgres")
            files = (*conf_files, secrets_state) if rotate else conf_files
            if upgrading:
                reason = (
                    f"PGDATA holds a primary's cluster of PostgreSQL {state.pg_version}: upgrade it to {server_major} "
                    "in place (pg_upgrade --link, built beside PGDATA, the old cluster kept aside), then start"
                )
        elif state.standby_signal:
            reason = "PGDATA holds a standby: refresh the managed files, check the primary briefly, start"
            steps = ("check_primary", "write_config", "fix_ownership", "exec_postgres")
            files = standby_files
        else:
            reason = (
                "PGDATA holds a former primary on a replica ordinal: once the primary answers, rejoin it as a "
                "standby if it shut down cleanly on the primary's history, else rewind it (pg_rewind), else "
                "move it aside and clone; never start it unchecked"
            )
            steps = ("check_primary", "rejoin_or_rewind", "write_config", "fix_ownership", "exec_postgres")
            files = standby_files
    elif is_primary and config.archive is not None and config.archive.restore_from is not None:
        action = INIT
        source = config.archive.restore_from
        reason = (
            f"empty PGDATA on the primary ordinal and PGSFS_RESTORE_FROM={source}: restore that stanza's newest "
            f"backup beside it (pgBackRest), move it into place, and let postgres replay the archive to "
            f"{config.archive.restore_target} and promote"
        )
        steps = (
            *(() if config.standalone else ("check_peers_for_data",)),
            "check_backup_exists",
            "restore_backup",
            "record_restore",
            "sync_volume",
            "move_into_place",
            "ensure_stanza",
            "write_config",
            "fix_ownership",
            "exec_postgres",
        )
        files = (*conf_files, str(config.state_dir / RESTORE_RECORD))
    elif is_primary:
        action = INIT
        reason = "empty PGDATA on the primary ordinal: initialise a new cluster beside it, then move it into place"
        # initdb.d scripts need a server (private socket); otherwise single-user mode is enough.
        setup = (
            ("start_temporary_server", "create_replication_role", "create_database", "run_initdb_scripts",
             "stop_temporary_server")
            if initdb_scripts
            else ("create_roles_single_user",)
        )  # fmt: skip
        steps = (
            *(() if config.standalone else ("check_peers_for_data",)),
            "initdb",
            "write_config",
            *setup,
            "sync_volume",
            "move_into_place",
            "fix_ownership",
            "exec_postgres",
        )
        files = (*conf_files, secrets_state)
    else:
        action = CLONE
        reason = "empty PGDATA on a replica ordinal: clone the primary beside it, then move it into place"
        steps = (
            "wait_for_primary_record",
            "wait_for_primary",
            "ensure_slot",
            "clone",
            "write_config",
            "move_into_place",
            "fix_ownership",
            "exec_postgres",
        )
        files = standby_files
    if older and major is not None:
        steps = (f"use_major_{_major(state.pg_version)}", *steps)
        reason += (
            f"; with PostgreSQL {state.pg_version}'s programs (the data's major, carried by this image), until "
            "its primary has upgraded"
        )
    if leftover is not None:
        steps = ("remove_leftover", *steps)
    decisions_key = "restore" if "restore_backup" in steps else _decisions_key(action, is_primary, state.standby_signal)
    return Plan(
        pod=ident.pod_name,
        ordinal=ident.ordinal,
        role=ident.role,
        action=action,
        reason=reason,
        steps=steps,
        pgdata=state.path,
        files=files,
        remove_leftover=leftover,
        primary=primary,
        slot=slot,
        server_major=server_major,
        data_major=_major(state.pg_version),
        refusal=refusal,
        remote_decisions=()
        if config.standalone
        else REMOTE_DECISIONS.get(decisions_key, ()),
        wal=decide(config.wal_configured(), wal_observed) if wal_observed is not None and refusal is None else None,
        binaries=major.bindir if older and major is not None else None,
    )


def _major_decision(
    state: DataDirState, config: Config, server_major: int | None, carried: Mapping[int, str]
) -> MajorDecision | None:
    data_major = _major(state.pg_version)
    if not state.initialised or server_major is None:
        return None
    if data_major is None:
        return MajorDecision(
            MajorChoice.REFUSE,
            message=f"PGDATA {state.path} has a PG_VERSION that names no major version: {state.pg_version}",
            hint="inspect PGDATA; the agent does not start a cluster whose major it cannot tell",
        )
    return decide_major(
        state.path, data_major, server_major, carried,
        writable_primary=config.identity.role == PRIMARY and not state.standby_signal and not state.recovery_signal,
        external_wal=state.wal_linked,
    )  # fmt: skip
