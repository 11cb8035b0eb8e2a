"""postgres' own command-line arguments (`postgres -c name=value ...`): what they set, and the few
the agent cannot work beside.

Stdlib only and pure. The arguments reach the final server (exec), and the init-time servers too
(single-user mode and the temporary server for initdb.d scripts, with the agent's own settings after
them), as the official entrypoint passes them to its temporary server: an initdb.d script can then
`CREATE EXTENSION` a library that `-c shared_preload_libraries=` loads.
"""

from __future__ import annotations

from collections.abc import Iterable

# Short options that set a setting, as postgres(1) documents them.
_SHORT = {"-p": "port", "-D": "data_directory", "-h": "listen_addresses", "-k": "unix_socket_directories",
          "-B": "shared_buffers", "-N": "max_connections"}  # fmt: skip

# Settings that would take postgres away from the files the agent manages, or from the port everything
# else (probes, replicas' primary_conninfo, announcements) uses: refused, each with what to do instead.
REFUSED = {
    "config_file": "no config_file: the agent's settings (replication, WAL sizes, primary_conninfo) are included "
    "from $PGDATA/postgresql.conf; put your settings in postgresql.conf, ALTER SYSTEM or -c name=value",
    "hba_file": "no hba_file: the agent keeps its replication and catch-all rules in $PGDATA/pg_hba.conf; add "
    "your rules there, between its two blocks",
    "data_directory": "no data_directory or -D: set PGDATA",
    "port": "no port or -p: set PGPORT, which the probes, the replicas and the announcements use too",
}


def settings(args: Iterable[str]) -> dict[str, str]:
    """Every setting the arguments assign (`-c name=value`, `-cname=value`, `--name=value`, and the
    short options above), names lower-cased with '-' as '_'; a later one wins, as in postgres."""
    found: dict[str, str] = {}
    items = list(args)
    for index, arg in enumerate(items):
        following = items[index + 1] if index + 1 < len(items) else None
        if arg == "-c" and following is not None:
            assignment = following
        elif (arg.startswith("-c") and len(arg) > 2) or (arg.startswith("--") and "=" in arg):
            assignment = arg[2:]
        elif arg in _SHORT and following is not None:
            assignment = f"{_SHORT[arg]}={following}"
        elif arg[:2] in _SHORT and len(arg) > 2:
            assignment = f"{_SHORT[arg[:2]]}={arg[2:]}"
        else:
            continue
        name, _, value = assignment.partition("=")
        found[name.replace("-", "_").lower()] = value
    return found


def problems(args: Iterable[str]) -> list[tuple[str, str, str]]:
    """(argument, value, what is expected) for each setting the agent cannot work beside."""
    assigned = settings(args)
    return [(name, assigned[name], expected) for name, expected in REFUSED.items() if name in assigned]
