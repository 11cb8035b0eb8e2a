#!/bin/bash
# Floor of the probes: PostgreSQL's own checks for what each probe decides.
# startup/liveness: the postmaster in postmaster.pid lives (pg_ctl status). readiness: a primary
# accepts connections on the pod's address (pg_isready); a replica's WAL receiver streams (psql).
# Usage: probe.sh startup|liveness|readiness primary|replica. Env: PGDATA PGPORT POD_IP.
set -euo pipefail
case "$1/$2" in
  startup/* | liveness/*) pg_ctl status -D "$PGDATA" >/dev/null ;;
  readiness/primary) pg_isready -q -h "$POD_IP" -p "$PGPORT" ;;
  readiness/replica)
    [ "$(psql -XAtq -h /run/postgresql -p "$PGPORT" -U postgres -d postgres \
         -c 'SELECT status FROM pg_stat_wal_receiver')" = streaming ] ;;
  *) echo "usage: probe.sh startup|liveness|readiness primary|replica" >&2; exit 2 ;;
esac
