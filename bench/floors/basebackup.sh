#!/bin/bash
# Floor of "clone": a bare pg_basebackup with the agent's flags (creating the slot with -C instead
# of a separate CREATE_REPLICATION_SLOT). NO_PROGRESS=1 drops -P (which makes the server size the
# data directory before sending it). Run as postgres.
# Env: PGDATA (target) PRIMARY_HOST PRIMARY_ADDR PGPORT PGPASSFILE SLOT APP.
set -euo pipefail
progress=(-P)
[ -n "${NO_PROGRESS:-}" ] && progress=()
pg_basebackup -d "host=$PRIMARY_HOST port=$PGPORT user=replicator application_name=$APP hostaddr=$PRIMARY_ADDR" \
  -D "$PGDATA" -X stream -c fast -C -S "$SLOT" "${progress[@]}" -v -w 2>/dev/null
