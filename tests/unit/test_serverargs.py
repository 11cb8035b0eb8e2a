"""Unit tests of agent.serverargs: the settings postgres' arguments assign, and the refused ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import serverargs


@pytest.mark.parametrize(("args", "expected"), [
    (["-c", "shared_preload_libraries=pg_cron"], {"shared_preload_libraries": "pg_cron"}),
    (["-cwork_mem=4MB"], {"work_mem": "4MB"}),
    (["--max-connections=50"], {"max_connections": "50"}),
    (["-p", "5433", "-B", "1GB"], {"port": "5433", "shared_buffers": "1GB"}),
    (["-p5433"], {"port": "5433"}),
    (["-c", "Work_Mem=1MB", "-c", "work_mem=2MB"], {"work_mem": "2MB"}),  # the later one wins, as in postgres
    (["-c"], {}),
    (["--describe-config"], {}),
])  # fmt: skip
def test_settings(args: list[str], expected: dict[str, str]) -> None:
    assert serverargs.settings(args) == expected


@pytest.mark.parametrize(("args", "refused"), [
    (["-c", "config_file=/etc/postgresql/postgresql.conf"], "config_file"),
    (["--hba_file=/etc/pg_hba.conf"], "hba_file"),
    (["-D", "/elsewhere"], "data_directory"),
    (["-p", "5433"], "port"),
    (["-c", "port=5433"], "port"),
])  # fmt: skip
def test_what_bypasses_the_managed_files_is_refused_with_what_to_do(args: list[str], refused: str) -> None:
    [(name, _value, expected)] = serverargs.problems(args)
    assert name == refused and expected.startswith(f"no {refused}")


@given(st.lists(st.sampled_from(["-c", "work_mem=1MB", "--wal-level=replica", "-N", "20", "-k", "/tmp", "x"]),
                max_size=8))  # fmt: skip
def test_ordinary_arguments_are_never_refused(args: list[str]) -> None:
    assert serverargs.problems(args) == []
