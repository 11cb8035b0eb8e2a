"""When this pod was created, as far as its volume can tell: the pod's template revision, ordered.

A container that restarts keeps its pod's environment, so a pod the rollout has not reached yet
acts on the old primary ordinal (review M3). Two members whose templates disagree can only tell
whose is current by which pod is younger: a StatefulSet rolls old pods into new ones, never back.
The first container of a pod (a new POD_UID, from the downward API) records the time on the volume;
its later containers read it back. The agent shows it, with its primary ordinal, to the other
members as the placeholder settings `pgsfs.pod_born` and `pgsfs.primary_ordinal`.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.files import write_atomic

BIRTH_NAME = "pod-birth.json"
# The placeholder settings in the agent's settings file, read by other members with current_setting().
TEMPLATE_ORDINAL = "pgsfs.primary_ordinal"
TEMPLATE_BORN = "pgsfs.pod_born"


def pod_born(state_dir: Path, pod_uid: str, now: float, owner: tuple[int, int] | None = None) -> float | None:
    """The wall-clock time this pod's first container started (kept in the state dir, keyed by the
    pod's UID); None without a UID (an older manifest, `docker run`)."""
    if not pod_uid:
        return None
    path = state_dir / BIRTH_NAME
    try:
        with open(path, "rb") as handle:
            seen = json.loads(handle.read(4096))
        if seen.get("uid") == pod_uid:
            return float(seen["born"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    write_atomic(path, json.dumps({"uid": pod_uid, "born": now}) + "\n", mode=0o600, owner=owner)
    return now
