#!/bin/bash
# Floor of "primary first start": the fewest PostgreSQL commands that reach the agent's state:
# initdb with checksums, the agent's settings and pg_hba block, the server started (pg_ctl -w),
# the replication role created. The server keeps running. Run as postgres.
# Env: PGDATA PGPORT POSTGRES_PASSWORD PGSFS_REPLICATION_PASSWORD.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
init_cluster "$PGDATA"
pg_ctl -D "$PGDATA" -l "$PGDATA.log" -w -s start
create_replication_role
