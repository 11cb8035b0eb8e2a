"""The liveness probe means what the manifest says: a postgres that hangs gets the pod restarted.

postgres is PID 1 of the pod; freezing it (SIGSTOP from the node) leaves the process alive, its
postmaster.pid in place and its socket file present, so only a probe that asks postgres itself can
tell. The kubelet (the emulator's, at the fast probe scale) must then kill and restart the
container, and postgres must come back on its data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from emulator.waiting import wait_until
from tests.e2e.cluster_support import container_pid1, require_pods
from tests.e2e.fault_support import PRIMARY, make_cluster, report

require_pods()

# At probe_scale 0.2 the liveness probe runs every 2 s and fails the pod after 6 failures; the
# container then gets the grace period before SIGKILL (a frozen postgres handles no signal).
RESTART_DEADLINE = 90.0


def test_a_hung_postgres_fails_liveness_and_is_restarted() -> None:
    c = make_cluster(replicas=1, grace_period=5)
    with c:
        c.wait_ready([PRIMARY], timeout=60)
        token = "written before the freeze"
        c.psql(PRIMARY, f"create table kept (v text); insert into kept values ('{token}')")
        pid1 = container_pid1(c, PRIMARY)
        assert pid1 is not None
        before = c.restarts(PRIMARY)
        os.kill(pid1, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            wait_until(lambda: c.restarts(PRIMARY) > before, RESTART_DEADLINE, 0.2, "a liveness restart")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGCONT)
        took = time.monotonic() - frozen_at
        failures = [what for _, who, what in c.events(PRIMARY) if who == PRIMARY and "liveness probe failed" in what]
        assert failures and "did not answer" in failures[-1], failures
        c.wait_ready([PRIMARY], timeout=60)
        assert c.psql(PRIMARY, "select v from kept") == token
        report("liveness", frozen_to_restart_s=round(took, 1))
