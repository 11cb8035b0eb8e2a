"""Unit tests of agent.runner.Runner with real child processes (true, false, sleep, sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import SecretInArgv
from agent.runner import Runner
from agent.secret import Secret


def _gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["run", "spawn"])
def test_refuses_argv_with_a_secret_before_starting(tmp_path: Path, how: str) -> None:
    Secret("hunter2-unit-secret")
    marker = tmp_path / "started"
    runner = Runner()
    argv = ["sh", "-c", f"touch {marker}", "sh", "--password=hunter2-unit-secret"]
    with pytest.raises(SecretInArgv) as info:
        getattr(runner, how)(argv)
    assert info.value.exit_code == 10 and info.value.event == "secret_in_argv_refused"
    assert "hunter2-unit-secret" not in str(info.value) and "hunter2-unit-secret" not in info.value.hint
    assert not marker.exists()
    assert runner.children == []


def test_empty_secret_blocks_nothing() -> None:
    Secret("")
    assert Runner().run(["true"]).returncode == 0


def test_run_true_false_and_output() -> None:
    runner = Runner()
    assert runner.run(["true"]).returncode == 0
    assert runner.run(["false"]).returncode == 1
    done = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    assert runner.run(["cat"], input=b"through stdin").stdout == b"through stdin"
    assert runner.children == []  # finished children are forgotten


def test_run_env_cwd_umask_and_session(tmp_path: Path) -> None:
    runner = Runner()
    done = runner.run(["sh", "-c", 'echo "$X"; pwd; umask'], env={"X": "y", "PATH": os.defpath}, cwd=str(tmp_path))
    assert done.stdout.decode().split("\n")[:3] == ["y", str(tmp_path), "0077"]
    code = f"import os; print(os.getsid(0) == os.getpid(), os.getsid(0) != {os.getsid(0)})"
    assert runner.run([sys.executable, "-c", code]).stdout == b"True True\n"


def test_stop_sleep_is_prompt_and_reaps() -> None:
    runner = Runner()
    proc = runner.spawn(["sleep", "30"])
    assert runner.children == [proc]
    started = time.monotonic()
    runner.stop(proc, grace=1.0)
    assert time.monotonic() - started < 1.0  # sleep dies of SIGTERM at once
    assert proc.returncode == -15
    assert runner.children == []
    assert _gone(proc.pid)


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace() -> None:
    runner = Runner()
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    )
    proc = runner.spawn([sys.executable, "-c", code])
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # handler installed
    started = time.monotonic()
    runner.stop(proc, grace=0.5)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 3.0
    assert proc.returncode == -9
    assert _gone(proc.pid)
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()


def test_stop_all_and_stop_of_a_finished_child() -> None:
    runner = Runner()
    procs = [runner.spawn(["sleep", "30"]) for _ in range(2)]
    runner.stop_all(grace=1.0)
    assert runner.children == []
    assert all(p.returncode == -15 and _gone(p.pid) for p in procs)
    runner.stop(procs[0])  # stopping again is harmless


def test_run_timeout_stops_and_reaps_the_child(tmp_path: Path) -> None:
    runner = Runner()
    pidfile = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        runner.run(["sh", "-c", f'echo $$ > "{pidfile}"; exec sleep 30'], timeout=0.5)
    assert runner.children == []
    assert _gone(int(pidfile.read_text()))


def _refuse_signals(_pid: int, _sig: int) -> None:
    """What os.killpg did when root without CAP_KILL signalled postgres' uid."""
    raise PermissionError(1, "Operation not permitted")


def test_a_stop_that_fails_never_raises_and_is_reported() -> None:
    runner = Runner(killpg=_refuse_signals)
    proc = runner.spawn(["sleep", "30"])
    try:
        assert runner.stop(proc, grace=0.1) is False
        assert runner.stop_all(grace=0.1) != []  # still there: reported again, still no exception
        failures = runner.stop_all(grace=0.1)
        assert len(failures) == 1 and f"pid {proc.pid} (sleep): PermissionError" in failures[0]
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_run_interrupted_with_a_failing_stop_raises_the_original_error(tmp_path: Path) -> None:
    runner = Runner(killpg=_refuse_signals)
    pidfile = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        runner.run(["sh", "-c", f'echo $$ > "{pidfile}"; exec sleep 30'], timeout=0.3)
    pid = int(pidfile.read_text())
    os.kill(pid, 9)
    assert runner.stop_failures and "PermissionError" in runner.stop_failures[0]
