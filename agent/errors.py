"""The agent's one exception hierarchy; the CLI maps each class to its exit code."""

from __future__ import annotations

from typing import ClassVar


class AgentError(Exception):
    """Base of every failure the agent reports on purpose: a message and what to do."""

    exit_code: ClassVar[int] = 1
    event: ClassVar[str] = "agent_failed"

    def __init__(self, message: str, *, hint: str = "", **fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = fields


class ConfigError(AgentError):
    """One or more settings are invalid; every problem is listed at once."""

    exit_code = 2
    event = "config_invalid"

    def __init__(self, problems: list[str], hint: str = "fix the listed environment variables; nothing was touched"
                 ) -> None:  # fmt: skip
        super().__init__(f"{len(problems)} configuration problem(s): " + "; ".join(problems), hint=hint)
        self.problems = problems


class DiscoveryTimeout(AgentError):
    """The primary's DNS record did not appear within PGSFS_WAIT_TIMEOUT."""

    exit_code = 3
    event = "dns_wait_timeout"


class PrimaryUnavailable(AgentError):
    """The primary's record resolved but it never accepted a replication connection in time."""

    exit_code = 4
    event = "primary_wait_timeout"


class AuthenticationFailed(AgentError):
    """The primary rejected us: bad password, no pg_hba entry, or no REPLICATION privilege."""

    exit_code = 5
    event = "primary_auth_failed"


class DataDirConflict(AgentError):
    """PGDATA contradicts the role this pod's ordinal gives it, or is not ours to use."""

    exit_code = 6
    event = "pgdata_conflict"


class SystemIdentifierMismatch(AgentError):
    """This replica's data belongs to another cluster than the primary's."""

    exit_code = 7
    event = "system_identifier_mismatch"


class PrimaryVolumeLost(AgentError):
    """The primary has an empty PGDATA while other members still hold a cluster's data."""

    exit_code = 8
    event = "primary_volume_lost"


class CommandFailed(AgentError):
    """A PostgreSQL program (initdb, pg_basebackup, postgres, psql) failed."""

    exit_code = 9
    event = "command_failed"


class SecretInArgv(AgentError):
    """A command line would have carried a secret, visible to anyone running ps."""

    exit_code = 10
    event = "secret_in_argv_refused"


class NoRoomToMoveAside(AgentError):
    """Data that must make way cannot be moved aside: the volume has no room for it and a new copy."""

    exit_code = 11
    event = "no_room_to_move_aside"


class ReplicaDiverged(AgentError):
    """The replica's data is not on the primary's history: streaming would silently mix two histories."""

    exit_code = 12
    event = "replica_diverged"


class PeerCheckIncomplete(AgentError):
    """A primary with an empty PGDATA could not see every member: initialising could fork the cluster."""

    exit_code = 13
    event = "peer_check_incomplete"


class PromoteRefused(AgentError):
    """`pg-sfs-agent promote` would make two primaries, or lose writes another member has."""

    exit_code = 14
    event = "promote_refused"


class SwitchoverBlocked(AgentError):
    """A switchover cannot hand the primary role over without losing writes or making two primaries."""

    exit_code = 15
    event = "switchover_blocked"


class ArchiveConflict(AgentError):
    """The backup repository holds another cluster's archive under this stanza, or cannot be used."""

    exit_code = 16
    event = "archive_repository_conflict"


class BackupFailed(AgentError):
    """`pg-sfs-agent backup` did not take a backup: not the writable primary, or pgBackRest failed."""

    exit_code = 17
    event = "backup_failed"


class UpgradeRefused(AgentError):
    """A major upgrade cannot be done (an extension missing in the new major, no room, a setting the new
    major rejects, pg_upgrade's own check): refused with the old cluster as it was."""

    exit_code = 18
    event = "upgrade_refused"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; carries the exit code 128 + signum (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
