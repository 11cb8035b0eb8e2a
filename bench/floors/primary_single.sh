#!/bin/bash
# Third floor of "primary first start": the agent's guarantees (nothing reachable before the role
# exists) without a temporary server: initdb, configuration, the role created in single-user mode
# (SQL on stdin), exec postgres. Run as postgres.
# Env: PGDATA PGPORT POSTGRES_PASSWORD PGSFS_REPLICATION_PASSWORD.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
init_cluster "$PGDATA"
# Single-user mode takes no psql variables: the password is quoted here, on stdin, never on argv.
quoted=${PGSFS_REPLICATION_PASSWORD//\'/\'\'}
printf "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '%s';\n" "$quoted" |
  postgres --single -D "$PGDATA" -j postgres >/dev/null
exec postgres -D "$PGDATA"
