"""The entrypoint: dispatch like the official image's docker-entrypoint.sh, map errors to exit codes."""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType
from typing import Any, NoReturn

from agent import __version__
from agent.errors import AgentError, ConfigError, Interrupted

OWN_COMMANDS = ("plan", "probe", "logs", "version")
# postgres arguments that only print something: no bootstrap, as in the official image.
INFO_ARGS = frozenset({"--help", "-?", "-V", "--version", "-C", "--describe-config"})


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT/SIGTERM end any wait or copy promptly (PID 1 ignores signals it has no handler for)."""
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)


def _wants_info(args: list[str]) -> bool:
    return any(arg in INFO_ARGS or arg.startswith("-C") for arg in args)


def _exec_foreign(args: list[str]) -> NoReturn:
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        sys.stderr.write(f"pg-sfs-agent: cannot run {args[0]}: {exc.strerror}\n")
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


def _early_logging() -> Any:
    from agent import log

    env = os.environ
    fmt = env.get("PGSFS_LOG_FORMAT", "auto").strip().lower()
    level = env.get("PGSFS_LOG_LEVEL", "info").strip().lower()
    log.configure(fmt if fmt in ("auto", "json", "console") else "auto", level)
    log.bind_identity(env.get("POD_NAME") or env.get("HOSTNAME"), None, None)
    return log.get_logger()


def _report(logger: Any, exc: AgentError) -> int:
    fields = dict(exc.fields)
    if isinstance(exc, ConfigError):
        fields["problems"] = exc.problems
    logger.error(exc.event, error=exc.message, hint=exc.hint, exit_code=exc.exit_code, **fields)
    return exc.exit_code


def _prepare() -> tuple[Any, Any, Any]:
    """Config, logger and runner, shared by `plan` and `postgres`."""
    from agent import log
    from agent.bootstrap import postgres_account
    from agent.config import load_config
    from agent.runner import Runner

    logger = _early_logging()
    config = load_config(os.environ)
    log.configure(config.log_format, config.log_level)
    ident = config.identity
    log.bind_identity(ident.pod_name, ident.ordinal, ident.role)
    return config, logger, Runner(postgres_account())


def cmd_plan() -> int:
    """Print the plan as JSON on stdout; touch nothing."""
    import json

    from agent.bootstrap import observe_and_plan

    logger = None
    try:
        config, logger, runner = _prepare()
        plan, _ = observe_and_plan(config, runner)
    except AgentError as exc:
        return _report(logger or _early_logging(), exc)
    print(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
    return 0


def cmd_postgres(args: list[str]) -> int:
    """Bootstrap, then exec postgres with `args`."""
    started = time.monotonic()
    install_signal_handlers()
    logger: Any = None
    runner: Any = None
    phase = "config"
    try:
        config, logger, runner = _prepare()
        from agent.bootstrap import Bootstrap, World, exec_postgres, observe_and_plan
        from agent.discovery import make_lookup
        from agent.heartbeat import Heartbeat

        owner = (runner.run_as.uid, runner.run_as.gid) if runner.run_as else None
        # Beat at once: the kubelet's first startup probe may come before the plan is made.
        heartbeat = Heartbeat(config.state_dir, owner)
        heartbeat.beat("start", force=True)
        logger.info(
            "agent_start",
            version=__version__,
            pgdata=str(config.pgdata),
            namespace=config.namespace,
            service=config.service_name,
            python=sys.version.split()[0],
        )
        phase = "plan"
        plan, _ = observe_and_plan(config, runner)
        logger.info("plan", **plan.to_dict())
        phase = plan.action
        world = World(runner=runner, lookup=make_lookup(), heartbeat=heartbeat)
        Bootstrap(config, plan, world, logger).run()
        world.beat("exec_postgres")
        logger.info("exec_postgres", action=plan.action, duration_s=round(time.monotonic() - started, 3), args=args)
        # Signals from here on are postgres' own: restore defaults for the exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        exec_postgres(args, runner.run_as)
        return 0  # not reached
    except Interrupted as exc:
        if runner is not None:
            runner.stop_all(grace=1.0)
        (logger or _early_logging()).warning(
            "interrupted",
            signal=signal.Signals(exc.signum).name,
            phase=phase,
            exit_code=exc.exit_code,
            duration_s=round(time.monotonic() - started, 3),
            note="children stopped; unfinished work beside PGDATA is removed at the next start",
        )
        return exc.exit_code
    except AgentError as exc:
        if runner is not None:
            runner.stop_all(grace=1.0)
        return _report(logger or _early_logging(), exc)
    except Exception as exc:
        if runner is not None:
            runner.stop_all(grace=1.0)
        (logger or _early_logging()).exception(
            "unexpected_error", error=f"{type(exc).__name__}: {exc}", phase=phase, exit_code=1
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    """Console script entry: `pg-sfs-agent [postgres [ARGS]] | plan | probe X | logs | version | CMD...`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["postgres"]
    if args[0].startswith("-"):
        args = ["postgres", *args]
    command, rest = args[0], args[1:]
    if command == "version":
        print(f"pg-sfs-agent {__version__}")
        return 0
    if command == "probe":
        from agent import probe

        return probe.run(rest, os.environ)
    if command == "logs":
        from agent import logview

        return logview.run(rest, sys.stdin, sys.stdout)
    if command == "plan":
        return cmd_plan()
    if command == "postgres":
        if _wants_info(rest):
            from agent.bootstrap import exec_postgres, postgres_account

            exec_postgres(rest, postgres_account())
        return cmd_postgres(rest)
    _exec_foreign(args)


def entry() -> None:
    """For `python -m agent`."""
    sys.exit(main())
