"""What the agent last applied of the Secret, kept as SCRAM verifiers on the volume (never a password).

A password is set when the Secret changed since it was last applied, and only the one that changed:
never because a container was re-created or the image switched, which would undo an `ALTER ROLE`
(the official image uses POSTGRES_PASSWORD only at init). With no record (data from the official
image, or a state directory that was lost) nothing of the superuser's is touched: the Secret's
verifiers are recorded, and rotation starts from its next change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config
from agent.files import read_limited
from agent.render import verifier_matches

RECORD_NAME = "applied-secrets.json"
SUPERUSER, REPLICATION = "superuser", "replication"


@dataclass(frozen=True)
class PasswordChange:
    """Which passwords to set at this start: `adopt` when there was no record to compare with."""

    roles: tuple[str, ...]
    adopt: bool

    @property
    def needed(self) -> bool:
        """Whether the start must set anything (and record what it set)."""
        return self.adopt or bool(self.roles)


def read_record(state_dir: Path) -> dict[str, str] | None:
    """The record of the last applied verifiers, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads(read_limited(state_dir / RECORD_NAME))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {key: str(record.get(key, "")) for key in (SUPERUSER, REPLICATION)}


def password_change(
    record: dict[str, str] | None, superuser_password: str, replication_password: str
) -> PasswordChange:
    """What to set, decided from the record alone. No record: adopt (the replication role, the agent's
    own, gets the Secret's password; the superuser's is left as it is). A record: the passwords whose
    verifier does not match the Secret (an empty replication password is the standalone's: none)."""
    if record is None:
        return PasswordChange(roles=(REPLICATION,) if replication_password else (), adopt=True)
    changed = []
    # An empty superuser password is trust's (standalone): nothing to set, as for the replication role.
    if superuser_password and not verifier_matches(record[SUPERUSER], superuser_password):
        changed.append(SUPERUSER)
    if replication_password and not verifier_matches(record[REPLICATION], replication_password):
        changed.append(REPLICATION)
    return PasswordChange(roles=tuple(changed), adopt=False)


def pending(config: Config) -> PasswordChange:
    """Which passwords this start sets, from the record on the volume and the Secret."""
    return password_change(read_record(config.state_dir), config.superuser_password.reveal(),
                           config.replication_password.reveal())  # fmt: skip
