#!/bin/bash
# Second floor of "primary first start", step for step what the agent (and the official image's
# docker-entrypoint.sh) does: initdb, configuration, a temporary server on a private socket only,
# role and passwords, stop it, exec postgres. Run as postgres.
# Env: PGDATA PGPORT POSTGRES_PASSWORD PGSFS_REPLICATION_PASSWORD.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
init_cluster "$PGDATA"
sock=$(mktemp -d)
pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$sock" -l "$PGDATA.log" -w -s start
PGHOST=$sock create_replication_role
PGHOST=$sock local_psql <<'SQL'
\getenv pw POSTGRES_PASSWORD
ALTER ROLE postgres PASSWORD :'pw';
SQL
pg_ctl -D "$PGDATA" -m fast -w -s stop
rmdir "$sock"
exec postgres -D "$PGDATA"
