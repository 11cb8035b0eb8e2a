"""The bootstrap's heartbeat: a small file the startup probe reads to know the agent makes progress."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HEARTBEAT_NAME = "heartbeat.json"
# The startup probe accepts a heartbeat this recent; the agent beats far more often.
FRESH_SECONDS = 60.0


class Heartbeat:
    """Writes `{ts, phase, pid}` atomically, at most once a second."""

    def __init__(self, state_dir: Path, owner: tuple[int, int] | None = None) -> None:
        self.path = state_dir / HEARTBEAT_NAME
        self.owner = owner
        self.phase = "start"
        self._last = 0.0

    def beat(self, phase: str | None = None, *, force: bool = False) -> None:
        """Record that the agent is alive in `phase`; cheap to call in every poll."""
        if phase is not None and phase != self.phase:
            self.phase = phase
            force = True
        now = time.time()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"ts": now, "phase": self.phase, "pid": os.getpid()}))
            if self.owner is not None:
                os.chown(tmp, *self.owner)
            os.replace(tmp, self.path)
        except OSError:
            # A heartbeat that cannot be written only makes the startup probe stricter.
            pass
