"""/docker-entrypoint-initdb.d with the official image's semantics, run once on a new cluster.

All files run in one bash process, in name order, as the official entrypoint does: an executable
`*.sh` is run, any other `*.sh` is sourced (so it sees the helpers below and the variables earlier
sourced scripts set), `*.sql`, `*.sql.gz`, `*.sql.xz` and `*.sql.zst` go through psql into
POSTGRES_DB as POSTGRES_USER; other files are ignored. The helpers a sourced script may call are
the official ones: `docker_process_sql` (psql with ON_ERROR_STOP, no psqlrc, into POSTGRES_DB, over
the socket whatever PGHOSTADDR says), the `psql` array (`"${psql[@]}"` runs docker_process_sql),
`file_env`, `docker_setup_db` (nothing left to do), `docker_temp_server_stop`/`_start` and
`DATABASE_ALREADY_EXISTS` (empty); the files run inside a function, so a sourced one may use `local`.
PGHOST and PGPORT point at the temporary server's private socket, so a plain `psql` reaches it too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

from agent.errors import CommandFailed
from agent.runner import Runner

# Our own bash, written to the official entrypoint's documented behaviour (not copied from it).
RUNNER = r"""
set -Eeo pipefail
docker_process_sql() {
	local into=()
	if [ -n "$POSTGRES_DB" ]; then into=( --dbname "$POSTGRES_DB" ); fi
	PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "${into[@]}" "$@"
}
# The official helpers a sourced script may call: X, or the content of X_FILE, into X (both set is an error)...
file_env() {
	local var="$1" fileVar="${1}_FILE" def="${2:-}" val="$def"
	if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
		printf >&2 'error: both %s and %s are set (but are exclusive)\n' "$var" "$fileVar"; exit 1
	fi
	if [ "${!var:-}" ]; then val="${!var}"; elif [ "${!fileVar:-}" ]; then val="$(< "${!fileVar}")"; fi
	export "$var"="$val"
	unset "$fileVar"
}
# ...the database and roles, which the agent made before the scripts...
docker_setup_db() { :; }
# ...and the temporary server: stopped and started again on its private socket with its options; one
# a script leaves running in place of the agent's is stopped by the agent before the build is used.
docker_temp_server_stop() { pg_ctl -D "$PGDATA" -m fast -w stop; }
docker_temp_server_start() { pg_ctl -D "$PGDATA" -w start -o "$PGSFS_TEMP_SERVER_OPTIONS"; }
psql=( docker_process_sql )
DATABASE_ALREADY_EXISTS=
# Inside a function, as the official runs them, so a sourced script may use `local`. The glob of the
# official entrypoint, in the same shell: the same order (the locale's), dotfiles skipped.
docker_process_init_files() {
	local f
	for f in "$1"/*; do
		# Which file runs now, for the agent's log and for naming the one that fails.
		printf '%s %s\n' "$EPOCHREALTIME" "$f" >> "$2"
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then echo "$0: running $f"; "$f"; else echo "$0: sourcing $f"; . "$f"; fi ;;
			*.sql)     echo "$0: running $f"; docker_process_sql -f "$f"; echo ;;
			*.sql.gz)  echo "$0: running $f"; gunzip -c "$f" | docker_process_sql; echo ;;
			*.sql.xz)  echo "$0: running $f"; xzcat "$f" | docker_process_sql; echo ;;
			*.sql.zst) echo "$0: running $f"; zstd -dc "$f" | docker_process_sql; echo ;;
			*)         echo "$0: ignoring $f" ;;
		esac
	done
}
docker_process_init_files "$1" "$2"
"""


def scripts(directory: Path) -> list[str]:
    """The names of the files there (for the log; bash's glob decides the order they run in)."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def _progress(progress: Path) -> list[tuple[float, str]]:
    """(start time, file name) of each file the shell reached, in order."""
    entries = []
    for line in progress.read_text(errors="replace").splitlines():
        stamp, _, path = line.partition(" ")
        try:
            entries.append((float(stamp), Path(path).name))
        except ValueError:
            continue
    return entries


def run(
    runner: Runner,
    directory: Path,
    env: Mapping[str, str],
    progress: Path,
    on_tick: Callable[[float, str], None] | None = None,
) -> list[tuple[str, float]]:
    """Run the directory's files in one bash, their output going to the container's log as the
    official image's does; returns each file's name and seconds. No time limit: a restore may take
    hours; `on_tick(elapsed, current file)` runs every second meanwhile. `progress` is a private
    file where the shell notes when it starts each file."""
    if not scripts(directory):
        return []
    progress.write_text("")

    def tick(elapsed: float) -> None:
        if on_tick is not None:
            reached = _progress(progress)
            on_tick(elapsed, reached[-1][1] if reached else "")

    argv = ["bash", "-c", RUNNER, "pg-sfs-agent", str(directory), str(progress)]
    done = runner.run(argv, env=env, on_tick=tick, capture=False)
    ended = time.time()
    reached = _progress(progress)
    if done.returncode != 0:
        failed = reached[-1][1] if reached else "(none)"
        raise CommandFailed(
            f"initdb.d script {failed} failed (bash exit code {done.returncode}); its output is above, "
            "in the container's log",
            hint=f"fix {directory / failed}; the cluster being built is discarded and the next start "
            "initialises again, running every script from the first",
            returncode=done.returncode,
            script=failed,
        )
    ends = [start for start, _ in reached[1:]] + [ended]
    return [(name, round(max(0.0, end - start), 3)) for (start, name), end in zip(reached, ends)]
