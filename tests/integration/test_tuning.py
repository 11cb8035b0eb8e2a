"""PGSFS_CONF_DIR: the user's postgresql.conf tuning (a mounted ConfigMap in the manifest), included
before the agent's own settings and checked by postgres at every start."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tests.integration.agentctl import agent_postgres, connect, json_lines, pod_env, run_agent
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_the_tuning_directory_applies_under_the_agents_settings_and_a_bad_one_is_named(volume_root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="pgsfs-conf-") as tmp:
        conf_dir = Path(tmp)
        conf_dir.chmod(0o755)  # what a ConfigMap's files are: readable by the postgres user
        (conf_dir / "tuning.conf").write_text(
            "work_mem = '12MB'\nshared_buffers = '64MB'\n"
            "max_wal_senders = 1   # the agent's own setting: its value wins\n"
        )
        (conf_dir / "tuning.conf").chmod(0o644)
        (conf_dir / "notes.txt").write_text("not a .conf file: never read\n")
        env = pod_env(volume_root, 0, free_port(), PGSFS_CONF_DIR=str(conf_dir))
        with agent_postgres(env, volume_root / "agent.log") as server, connect(server.port) as conn:
            assert conn.execute("SHOW work_mem").fetchone() == ("12MB",)
            assert conn.execute("SHOW shared_buffers").fetchone() == ("64MB",)
            assert conn.execute("SHOW max_wal_senders").fetchone() != ("1",)
            conn.execute("ALTER SYSTEM SET work_mem = '13MB'")  # ALTER SYSTEM wins over the tuning
        with agent_postgres(env, volume_root / "again.log") as server, connect(server.port) as conn:
            assert conn.execute("SHOW work_mem").fetchone() == ("13MB",)

        bad_ones = (("shared_buffers = 'lots'\n", "shared_buffers"), ("no_such_setting = 1\n", "no_such_setting"))
        for bad, named in bad_ones:
            (conf_dir / "zz-bad.conf").write_text(bad)
            (conf_dir / "zz-bad.conf").chmod(0o644)
            done = run_agent(env, "postgres", timeout=120)
            assert done.returncode == 2, done.stderr[-2000:]
            error = json_lines(done.stderr)[-1]
            assert error["event"] == "config_invalid" and named in error["error"], error
            assert "PGSFS_CONF_DIR" in error["error"] and "zz-bad.conf" in error["error"], error["error"]
        (conf_dir / "zz-bad.conf").unlink()
        with agent_postgres(env, volume_root / "fixed.log") as server, connect(server.port) as conn:
            assert conn.execute("SHOW work_mem").fetchone() == ("13MB",)
        plan = json.loads(run_agent(env, "plan").stdout)
        assert plan["action"] == "start"
