"""Who this pod is: StatefulSet name and ordinal from the pod name, and the role they give."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A StatefulSet pod is named <statefulset>-<ordinal>; the StatefulSet name is a DNS label.
_POD_NAME = re.compile(r"^(?P<sts>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]{0,8})$")
_SLOT_UNSAFE = re.compile(r"[^a-z0-9_]")

PRIMARY = "primary"
REPLICA = "replica"


@dataclass(frozen=True)
class Identity:
    """The pod's place in the StatefulSet."""

    pod_name: str
    statefulset: str
    ordinal: int
    primary_ordinal: int

    @property
    def role(self) -> str:
        """`primary` for the primary ordinal, `replica` for every other."""
        return PRIMARY if self.ordinal == self.primary_ordinal else REPLICA

    @property
    def primary_pod(self) -> str:
        """Name of the pod that holds the primary ordinal."""
        return f"{self.statefulset}-{self.primary_ordinal}"

    def peer_pod(self, ordinal: int) -> str:
        """Name of the pod with the given ordinal in the same StatefulSet."""
        return f"{self.statefulset}-{ordinal}"

    @property
    def slot_name(self) -> str:
        """This pod's physical replication slot: the pod name made a valid slot name."""
        return slot_name_for(self.pod_name)


def parse_pod_name(pod_name: str) -> tuple[str, int] | None:
    """Split `<statefulset>-<ordinal>` into its parts, or None when it has no ordinal."""
    match = _POD_NAME.fullmatch(pod_name)
    if match is None:
        return None
    return match.group("sts"), int(match.group("ordinal"))


def slot_name_for(pod_name: str) -> str:
    """A replication slot name (lower case, digits, underscores, at most 63) for a pod."""
    return _SLOT_UNSAFE.sub("_", pod_name.lower())[:63] or "replica"
