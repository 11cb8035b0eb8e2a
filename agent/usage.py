"""The command line's own help: the top-level usage and one argument parser shape for every subcommand.

Every subcommand parses its arguments before it reads anything, so `--help` prints and touches
nothing, and an unknown flag is a configuration error (one JSON line, exit 2), as README's table says.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from agent.errors import ConfigError

USAGE = """\
usage: pg-sfs-agent [postgres] [POSTGRES-ARGS...]
       pg-sfs-agent plan | promote [OPTIONS] | backup [OPTIONS] | probe startup|readiness|liveness | prestop
       pg-sfs-agent logs [OPTIONS] | version | help
       pg-sfs-agent COMMAND [ARGS...]

The entrypoint of a PostgreSQL StatefulSet: it finds its ordinal and peers, runs initdb on the
primary ordinal or pg_basebackup on the others, then execs postgres (as the official image's
docker-entrypoint.sh does, a first argument starting with '-' goes to postgres).

commands:
  postgres [ARGS]   bootstrap, then exec postgres ARGS (the image's default command)
  plan              print as JSON what `postgres` would do and why; touches nothing
  promote           in a replica's pod, after the primary is lost: promote this member
  backup            in the primary's pod: a base backup into PGSFS_BACKUP_REPO (pgBackRest)
  probe CHECK       the exec probes of the manifest (startup, readiness, liveness)
  prestop           the manifest's preStop hook: a switchover's primary hands over before its pod goes
  logs              read `kubectl logs --prefix` output on stdin, print aligned lines
  version           the agent's version
  help              this text
  anything else     exec'd unchanged, no setup (e.g. `pg-sfs-agent bash`)

Each command takes --help. `pg-sfs-agent postgres --help` prints postgres' own options.
"""


class CommandParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as a configuration error (a JSON line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError([f"{self.prog}: {message}"],
                          hint=f"see `{self.prog} --help`; nothing was changed")  # fmt: skip


def parser_for(command: str, description: str) -> CommandParser:
    """The parser of `pg-sfs-agent COMMAND`."""
    return CommandParser(prog=f"pg-sfs-agent {command}", description=description)


def parse_plain(command: str, description: str, argv: list[str]) -> None:
    """The arguments of a command that takes none: --help prints `description` and exits 0."""
    parser_for(command, description).parse_args(argv)


def wants_agent_help(args: list[str]) -> bool:
    """`pg-sfs-agent help`, or a lone `-h` (postgres itself would only say that -h needs a value)."""
    return args in (["help"], ["-h"])
