"""Unit tests of agent.cli: dispatch, foreign commands, info arguments, config errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent import __version__, cli

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def run_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"pg-sfs-agent {__version__}\n"


def test_foreign_command_is_executed_untouched() -> None:
    done = run_agent("echo", "hi")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hi\n", "")


def test_foreign_command_exit_code_passes_through() -> None:
    done = run_agent("sh", "-c", "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")


def test_missing_foreign_command() -> None:
    done = run_agent("no-such-program-pgsfs")
    assert done.returncode == 127
    assert "cannot run no-such-program-pgsfs" in done.stderr


@pytest.mark.parametrize("args", [["help"], ["-h"], ["plan", "--help"], ["version", "--help"], ["probe", "--help"],
                                  ["promote", "--help"], ["logs", "--help"]])  # fmt: skip
def test_every_help_prints_and_touches_nothing(args: list[str], tmp_path: Path) -> None:
    # An environment where a start would bootstrap (and `plan` would print a plan): help does neither.
    pgdata = tmp_path / "vol" / "pgdata"
    env = _clean_env(POD_NAME="postgresql-sfs-1", POD_NAMESPACE="pg", PGDATA=str(pgdata),
                     POSTGRES_PASSWORD="Cli-S3cret-one", PGSFS_REPLICATION_PASSWORD="Cli-S3cret-two")  # fmt: skip
    done = run_agent(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: pg-sfs-agent"), done.stdout
    assert done.stderr == ""
    assert not (tmp_path / "vol").exists()


@pytest.mark.parametrize("args", [["plan", "--bogus"], ["version", "-x"], ["promote", "--force"], ["logs", "--nope"]])
def test_an_unknown_flag_is_refused_with_exit_2_and_touches_nothing(args: list[str], tmp_path: Path) -> None:
    env = _clean_env(POD_NAME="postgresql-sfs-1", POD_NAMESPACE="pg", PGDATA=str(tmp_path / "vol" / "pgdata"),
                     POSTGRES_PASSWORD="Cli-S3cret-one", PGSFS_REPLICATION_PASSWORD="Cli-S3cret-two")  # fmt: skip
    done = run_agent(*args, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert args[1] in done.stderr and done.stdout == ""
    assert not (tmp_path / "vol").exists()


def test_probe_misuse_is_exit_2_with_its_usage() -> None:
    done = run_agent("probe", "sideways")
    assert done.returncode == 2
    assert "sideways" in done.stdout and "usage: pg-sfs-agent probe" in done.stdout


def test_a_lone_help_flag_prints_the_agents_usage_then_postgres_help() -> None:
    # The official image answers `docker run postgres --help` with postgres' help; users keep that.
    # The real postgres prints it (as root, the agent becomes postgres first).
    done = run_agent("--help", env=_clean_env(PATH=f"{PG_BIN}:/usr/bin:/bin"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: pg-sfs-agent")
    assert "postgres is the PostgreSQL server." in done.stdout.split("usage: pg-sfs-agent", 2)[1]


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["-C", "data_directory"], True),
        (["-Cdata_directory"], True),
        (["--version"], True),
        (["-V"], True),
        (["--help"], True),
        (["-?"], True),
        (["--describe-config"], True),
        (["-c", "shared_buffers=1GB", "-C", "port"], True),
        ([], False),
        (["-c", "max_connections=200"], False),
        (["-D", "/var/lib/postgresql/data"], False),
        (["--config-file=/etc/postgresql.conf"], False),
    ],
)
def test_wants_info(args: list[str], wanted: bool) -> None:
    assert cli._wants_info(args) is wanted


def _clean_env(**extra: str) -> dict[str, str]:
    """No inherited POD_*/PGSFS_*/POSTGRES_* settings: only what the test gives."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV")}
    return {**keep, **extra}


def test_config_error_through_plan_lists_every_problem() -> None:
    env = _clean_env(
        POD_NAME="not-a-pod",
        POD_NAMESPACE="pg",
        PGPORT="-1",
        PGSFS_WAIT_TIMEOUT="soon",
        PGSFS_CLONE_MAX_RATE="9",
        POSTGRES_PASSWORD="Cli-S3cret-one",
        PGSFS_LOG_FORMAT="json",
    )
    done = run_agent("plan", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    [error] = [line for line in lines if line["event"] == "config_invalid"]
    assert error["level"] == "error"
    assert error["exit_code"] == 2
    assert error["hint"]
    problems = error["problems"]
    for variable in ("POD_NAME", "PGPORT", "PGSFS_WAIT_TIMEOUT", "PGSFS_CLONE_MAX_RATE", "PGSFS_REPLICATION_PASSWORD"):
        assert any(p.startswith(f"{variable}=") for p in problems), (variable, problems)
    assert len(problems) == 5, problems
    assert "Cli-S3cret-one" not in done.stderr


@pytest.fixture
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


@pytest.mark.usefixtures("_restore_structlog")
def test_config_error_exit_code_from_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key in list(os.environ):
        if key.startswith(("POD_", "PGSFS_", "POSTGRES_", "PG")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("POD_NAME", "x")
    monkeypatch.setenv("PGSFS_LOG_FORMAT", "json")
    assert cli.main(["plan"]) == 2
    err = capsys.readouterr().err
    assert '"config_invalid"' in err


@pytest.mark.usefixtures("_restore_structlog")
def test_a_failure_with_a_child_that_cannot_be_stopped_ends_in_one_json_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The shipped image's crash: the error path's stop raised EPERM and printed a traceback."""
    from agent import bootstrap
    from agent.errors import CommandFailed
    from agent.runner import Runner

    for key in list(os.environ):
        if key.startswith(("POD_", "PGSFS_", "POSTGRES_", "PG")):
            monkeypatch.delenv(key)
    for key, value in {
        "POD_NAME": "postgresql-sfs-0",
        "POD_NAMESPACE": "pg",
        "PGDATA": str(tmp_path / "vol" / "pgdata"),
        "POSTGRES_PASSWORD": "Cli-S3cret-two",
        "PGSFS_REPLICATION_PASSWORD": "Cli-S3cret-three",
        "PGSFS_LOG_FORMAT": "json",
    }.items():
        monkeypatch.setenv(key, value)
    children = []

    def refuse(_pid: int, _sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    real_prepare = cli._prepare

    def prepare(_server_args: tuple[str, ...] = ()) -> tuple[object, object, Runner]:
        config, logger, _ = real_prepare()
        return config, logger, Runner(killpg=refuse)

    def failing_run(self: bootstrap.Bootstrap) -> None:
        children.append(self.ctx.world.runner.spawn(["sleep", "30"]))
        raise CommandFailed("initdb failed with exit code 1: boom", hint="read it")

    monkeypatch.setattr(cli, "_prepare", prepare)
    monkeypatch.setattr(cli, "_become_postgres", lambda _config, _runner, _account, _logger: None)
    monkeypatch.setattr(bootstrap.Bootstrap, "run", failing_run)
    try:
        assert cli.main(["postgres"]) == 9
    finally:
        for proc in children:
            proc.kill()
            proc.wait()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [json.loads(line) for line in err.splitlines()]
    events = [line["event"] for line in lines]
    assert events[-2:] == ["cleanup_failed", "command_failed"], events
    assert lines[-1]["exit_code"] == 9 and lines[-1]["level"] == "error"


@pytest.mark.usefixtures("_restore_structlog")
def test_an_unexpected_error_is_one_json_line_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode(_argv: list[str] | None = None) -> int:
        raise RuntimeError("nobody planned this")

    monkeypatch.setattr(cli, "main", explode)
    with pytest.raises(SystemExit) as info:
        cli.entry()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [json.loads(x) for x in err.splitlines()]
    assert line["event"] == "unexpected_error" and "nobody planned this" in line["error"]
    assert line["where"].startswith("test_cli.py:")


def test_readme_exit_code_table_matches_the_error_classes() -> None:
    """Every AgentError subclass has its row (code and event) in README's table, and nothing else."""
    import re

    from agent import errors

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {(int(code), event) for code, event in re.findall(r"^\| (\d+) \| `([a-z_]+)` \|", table, re.M)}
    classes = {(cls.exit_code, cls.event) for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.AgentError) and cls is not errors.AgentError}
    assert classes <= rows, classes - rows
    documented_extra = rows - classes
    assert documented_extra == {(1, "unexpected_error")}, documented_extra
    codes = [code for code, _ in classes]
    assert len(codes) == len(set(codes)), "one exit code per failure"
