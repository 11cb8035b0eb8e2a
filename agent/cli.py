"""The entrypoint: dispatch like the official image's docker-entrypoint.sh, map errors to exit codes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from agent import __version__
from agent.errors import AgentError, ConfigError, Interrupted

OWN_COMMANDS = ("plan", "probe", "logs", "version", "promote", "prestop")
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


def _prints_a_setting_of_a_new_cluster(args: list[str]) -> bool:
    """`postgres -C name` on a PGDATA with no cluster yet: the official entrypoint initialises first
    (it does not count -C as a help argument), then postgres prints the value. Otherwise -C only reads."""
    from agent.config import DEFAULT_PGDATA

    only_c = not any(arg in INFO_ARGS and arg != "-C" for arg in args)
    pgdata = Path(os.environ.get("PGDATA") or DEFAULT_PGDATA)
    return only_c and not os.path.lexists(pgdata / "PG_VERSION")


def _cannot_run(program: str, exc: OSError) -> int:
    """A program that could not be exec'd: one plain line, and the shell's exit codes (127, 126)."""
    sys.stderr.write(f"pg-sfs-agent: cannot run {program}: {exc.strerror}\n")
    return 127 if isinstance(exc, FileNotFoundError) else 126


def _exec_foreign(args: list[str]) -> NoReturn:
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        sys.exit(_cannot_run(args[0], exc))


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


def _prepare(server_args: tuple[str, ...] = ()) -> tuple[Any, Any, Any]:
    """Config, logger and runner, shared by `plan` and `postgres` (whose arguments are checked too).

    The runner starts programs as the agent's own user: `postgres` becomes the postgres user before
    it starts any, and `plan` only runs `postgres -V`, which root may run.
    """
    from agent import log
    from agent.config import load_config
    from agent.postgres import require_scram
    from agent.runner import Runner

    logger = _early_logging()
    require_scram()
    config = load_config(os.environ, server_args=server_args)
    log.configure(config.log_format, config.log_level)
    ident = config.identity
    log.bind_identity(ident.pod_name, ident.ordinal, ident.role)
    return config, logger, Runner()


def _become_postgres(config: Any, runner: Any, account: Any, logger: Any) -> int | None:
    """Root: refuse a contradicting PGDATA untouched, else hand postgres its directories and drop to it.

    Not root: check the volume is writable and give initdb a passwd entry if our uid has none.
    Returns the server's major version when it was asked for (the plan after the drop reuses it).
    """
    from agent import privileges
    from agent.bootstrap import observe_and_plan
    from agent.plan import REFUSE

    if account is None:
        privileges.check_unprivileged(config)
        nss = privileges.nss_wrapper_env(config.state_dir)
        os.environ.update(nss)
        if nss:
            logger.info("nss_wrapper", uid=os.geteuid(), passwd=nss["NSS_WRAPPER_PASSWD"],
                        note="this uid has no passwd entry; initdb and psql get one from nss_wrapper")
        return None
    # Look before touching: a PGDATA the plan refuses keeps its owner and mode.
    plan, _ = observe_and_plan(config, runner)
    if plan.action == REFUSE:
        assert plan.refusal is not None
        logger.info("plan", **plan.to_dict())
        raise plan.refusal.to_error()
    prepared = privileges.prepare_as_root(config, account)
    privileges.drop_to(account, prepared.groups)
    if prepared.entries_chowned or prepared.chowned_dirs:
        logger.info(
            "ownership_fixed",
            pgdata=str(config.pgdata),
            entries=prepared.entries_chowned,
            directories=list(prepared.chowned_dirs) or None,
        )
    if prepared.pgdata_mode_was is not None:
        logger.info("mode_fixed", pgdata=str(config.pgdata), was=oct(prepared.pgdata_mode_was))
    return plan.server_major


def _stop_children(runner: Any, logger: Any) -> None:
    """Stop what the agent started; never raises, so the original failure is what gets reported."""
    if runner is None:
        return
    # A second SIGTERM from the kubelet must not cut the cleanup short with a traceback; it is bounded.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        failures = runner.stop_all(grace=1.0)
    except Exception as exc:  # stop_all does not raise; this guards the guarantee itself
        failures = [f"{type(exc).__name__}: {exc}"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failures:
        (logger or _early_logging()).warning(
            "cleanup_failed",
            children=failures,
            note="a child could not be stopped; it ends with the container",
        )


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame, for an unexpected error's one-line report."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno} in {last.name}"


def cmd_plan(args: list[str]) -> int:
    """Print the plan as JSON on stdout; touch nothing."""
    import json

    from agent.bootstrap import observe_and_plan
    from agent.usage import parse_plain

    logger = None
    try:
        parse_plain("plan", "Print as JSON what `pg-sfs-agent postgres` would do here and why; touches nothing.", args)
        config, logger, runner = _prepare()
        plan, _ = observe_and_plan(config, runner)
        from agent import upgrader

        shown = plan.to_dict()
        record, resume = upgrader.resume_state(config.pgdata)
        if record is not None:
            # `postgres` does this before it looks at PGDATA; the plan above is of PGDATA as it is now.
            shown["upgrade_resume"] = {"phase": record.phase, "decision": resume.value,
                                       "from_major": record.from_major, "to_major": record.to_major}  # fmt: skip
    except AgentError as exc:
        return _report(logger or _early_logging(), exc)
    except Exception as exc:
        return _unexpected(logger, exc, "plan")
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def cmd_version(args: list[str]) -> int:
    """Print the agent's version."""
    from agent.usage import parse_plain

    try:
        parse_plain("version", "Print the agent's version.", args)
    except AgentError as exc:
        return _report(_early_logging(), exc)
    print(f"pg-sfs-agent {__version__}")
    return 0


def cmd_promote(args: list[str]) -> int:
    """`promote [--dry-run] [--even-if-behind] [--assume-down POD]`: this replica becomes the primary
    (see agent/promote.py); `--help` prints its help and promotes nothing."""
    logger = None
    try:
        from agent import promote

        options = promote.parse_args(args)  # before anything is read: --help and bad flags touch nothing
        config, logger, _ = _prepare()
        from agent.discovery import make_lookup

        return promote.run(options, config, make_lookup(), logger)
    except AgentError as exc:
        return _report(logger or _early_logging(), exc)
    except Exception as exc:
        return _unexpected(logger, exc, "promote")


def cmd_prestop(args: list[str]) -> int:
    """`prestop`: the container's preStop hook (see agent/prestop.py); it logs into the container's log."""
    from agent import log, prestop
    from agent.usage import parse_plain

    logger = None
    try:
        parse_plain("prestop", "The manifest's preStop hook: when a switchover's rollout deletes the primary's pod, "
                    "hand the role over to the new primary ordinal before the pod goes; otherwise nothing.", args)
        from agent import privileges

        account = privileges.postgres_account()
        if account is not None:
            # As postgres' own user: only that user may signal it (the manifest leaves root no CAP_KILL).
            privileges.drop_to(account, privileges.account_groups(account))
        config, logger, _ = _prepare()
        with prestop.report_stream(config.state_dir, sys.stderr) as stream:
            log.configure("json", config.log_level, stream=stream)
            from agent.discovery import make_lookup

            return prestop.PreStop(config, make_lookup(), logger, time.monotonic, time.sleep).run()
    except AgentError as exc:
        return _report(logger or _early_logging(), exc)
    except Exception as exc:
        return _unexpected(logger, exc, "prestop")


def cmd_backup(args: list[str]) -> int:
    """`backup [--type full|diff|incr]`: a base backup of this pod's primary (see agent/backup.py)."""
    logger = None
    try:
        from agent import backup, privileges

        options = backup.parse_args(args)  # before anything is read: --help and bad flags touch nothing
        config, logger, _ = _prepare()
        return backup.run(options, config, privileges.postgres_account(), logger, time.monotonic)
    except AgentError as exc:
        return _report(logger or _early_logging(), exc)
    except Exception as exc:
        return _unexpected(logger, exc, "backup")


def cmd_postgres(args: list[str]) -> int:
    """Bootstrap, then exec postgres with `args`."""
    started = time.monotonic()
    install_signal_handlers()
    logger: Any = None
    runner: Any = None
    phase = "config"
    try:
        config, logger, runner = _prepare(tuple(args))
        from agent import privileges
        from agent.bootstrap import Bootstrap, World, exec_postgres, observe_and_plan
        from agent.discovery import make_lookup
        from agent.heartbeat import Heartbeat

        account = privileges.postgres_account()
        logger.info(
            "agent_start",
            version=__version__,
            pgdata=str(config.pgdata),
            namespace=config.namespace,
            service=config.service_name,
            python=sys.version.split()[0],
            started_as="root" if account else "non-root",
            uid=account.uid if account else os.geteuid(),
            gid=account.gid if account else os.getegid(),
        )
        if config.standalone:
            logger.info(
                "standalone",
                hostname=config.identity.pod_name,
                note="no StatefulSet pod name, POD_NAME or namespace: one server on its own, as the official "
                "image runs (no members to survey, no replication role unless PGSFS_REPLICATION_PASSWORD is set)",
            )
        if config.host_auth_method == "trust":
            from agent import officiallog

            officiallog.say(officiallog.TRUST_WARNING)
            logger.warning("trust_authentication", note="POSTGRES_HOST_AUTH_METHOD=trust: every TCP connection is "
                           "let in without a password; accepted only because this server runs on its own")  # fmt: skip
        if config.short_secrets:
            logger.warning(
                "short_password",
                variables=list(config.short_secrets),
                note="accepted, as by the official image; but a secret under 8 characters could match "
                "ordinary text, so it is not looked for in command lines and logs: use 8 or more",
            )
        phase = "privileges"
        from agent import upgrader

        # An upgrade whose pg_upgrade finished may have left PGDATA renamed aside: finish it first.
        upgrader.finish_interrupted(config.pgdata, logger)
        from agent import prestop

        prestop.replay_report(config.state_dir, logger)  # the pod's last preStop hook, told here
        prestop.lift_fence(config.pgdata, logger)  # a preStop hook killed half-way
        major = _become_postgres(config, runner, account, logger)
        # Beat at once: the kubelet's first startup probe may come before the plan is made.
        heartbeat = Heartbeat(config.state_dir)
        heartbeat.beat("start", force=True)
        phase = "plan"
        # Again after the drop: ownership may have changed, and the plan checks it for this uid.
        plan, _ = observe_and_plan(config, runner, major, tuple(args))
        logger.info("plan", **plan.to_dict())
        phase = plan.action
        world = World(runner=runner, lookup=make_lookup(), heartbeat=heartbeat)
        Bootstrap(config, plan, world, logger).run()
        world.beat("exec_postgres")
        logger.info("exec_postgres", action=plan.action, duration_s=round(time.monotonic() - started, 3), args=args)
        # Signals from here on are postgres' own: restore defaults for the exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        exec_postgres(args, None)
        return 0  # not reached
    except Interrupted as exc:
        _stop_children(runner, logger)
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
        _stop_children(runner, logger)
        return _report(logger or _early_logging(), exc)
    except Exception as exc:
        _stop_children(runner, logger)
        return _unexpected(logger, exc, phase)


def _unexpected(logger: Any, exc: BaseException, phase: str) -> int:
    """An error nobody planned for: one JSON line with where it happened, never a traceback."""
    (logger or _early_logging()).error(
        "unexpected_error",
        error=f"{type(exc).__name__}: {exc}",
        where=_where(exc),
        phase=phase,
        exit_code=1,
        hint="a bug in pg-sfs-agent: please report it with this line",
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    """Console script entry: `pg-sfs-agent [postgres [ARGS]] | plan | probe X | logs | version | CMD...`."""
    from agent import usage

    args = list(sys.argv[1:] if argv is None else argv)
    if usage.wants_agent_help(args):
        print(usage.USAGE, end="")
        return 0
    if args == ["--help"]:
        # The official image answers `--help` with postgres' help: ours first, then that.
        print(usage.USAGE)
        sys.stdout.flush()
    if not args:
        args = ["postgres"]
    if args[0].startswith("-"):
        args = ["postgres", *args]
    command, rest = args[0], args[1:]
    if command == "version":
        return cmd_version(rest)
    if command == "probe":
        from agent import probe

        return probe.run(rest, os.environ)
    if command == "logs":
        from agent import logview

        return logview.run(rest, sys.stdin, sys.stdout)
    if command == "plan":
        return cmd_plan(rest)
    if command == "promote":
        return cmd_promote(rest)
    if command == "backup":
        return cmd_backup(rest)
    if command == "prestop":
        return cmd_prestop(rest)
    if command == "postgres":
        if _wants_info(rest) and not _prints_a_setting_of_a_new_cluster(rest):
            from agent.bootstrap import exec_postgres
            from agent.privileges import postgres_account

            try:
                exec_postgres(rest, postgres_account())
            except OSError as exc:
                return _cannot_run("postgres", exc)
        return cmd_postgres(rest)
    _exec_foreign(args)


def entry() -> None:
    """The console script and `python -m agent`: whatever happens, a JSON line, never a traceback."""
    try:
        code = main()
    except Exception as exc:
        code = _unexpected(None, exc, "entry")
    sys.exit(code)
