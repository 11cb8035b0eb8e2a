"""SIGINT and SIGTERM during a wait end the agent promptly, with the conventional exit code."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.agentctl import agent_argv, json_lines, pod_env, wait_for
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_dns_wait(volume_root: Path, sig: signal.Signals, code: int) -> None:
    # In this namespace cluster DNS answers NXDOMAIN for every pod, so a replica waits for the primary's record.
    env = pod_env(volume_root, 1, free_port())
    log_path = volume_root / "agent.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(agent_argv("postgres"), env=env, stdout=log, stderr=log)
    try:
        wait_for(
            lambda: any(line["event"] == "dns_wait_state" for line in json_lines(log_path.read_text())),
            30,
            "the replica to report its DNS wait",
        )
        sent = time.monotonic()
        proc.send_signal(sig)
        returncode = proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert returncode == code
    assert took < 2.0, f"took {took:.2f} s to stop"
    lines = json_lines(log_path.read_text())
    state = next(line for line in lines if line["event"] == "dns_wait_state")
    assert state["outcome"] == "no_record"  # the empty zone's NXDOMAIN (DNS down: tests/e2e/test_faults.py)
    last = lines[-1]
    assert last["event"] == "interrupted" and last["signal"] == sig.name and last["exit_code"] == code
    assert not (volume_root / "pgdata").exists()
