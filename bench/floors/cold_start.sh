#!/bin/bash
# Floor of "cold start of 3 pods": primary_init.sh, then for each replica in turn what the agent
# does: pg_basebackup (same flags, creating its slot), standby settings, start, and wait until the
# primary sees it streaming. One namespace's loopback: the primary on PGPORT, replica N on PGPORT+N.
# Run as postgres. Env: VOLROOT (postgres-owned, empty) PGPORT POSTGRES_PASSWORD PGSFS_REPLICATION_PASSWORD.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"
mkdir -p "$VOLROOT/pod0"
PGDATA=$VOLROOT/pod0/pgdata "$here/primary_init.sh"
passfile=$VOLROOT/replication.pgpass
( umask 077; printf '*:*:*:replicator:%s\n' "$PGSFS_REPLICATION_PASSWORD" >"$passfile" )
for n in 1 2; do
  mkdir -p "$VOLROOT/pod$n"
  data=$VOLROOT/pod$n/pgdata
  app=postgresql-sfs-$n
  PGPASSFILE=$passfile pg_basebackup -d "host=127.0.0.1 port=$PGPORT user=replicator application_name=$app-clone" \
    -D "$data" -X stream -c fast -C -S "postgresql_sfs_$n" -P -v -w 2>/dev/null
  touch "$data/standby.signal"
  cat >>"$data/postgresql.conf" <<CONF
port = $((PGPORT + n))
primary_conninfo = 'host=127.0.0.1 port=$PGPORT user=replicator passfile=$passfile application_name=$app'
primary_slot_name = 'postgresql_sfs_$n'
CONF
  pg_ctl -D "$data" -l "$data.log" -w -s start
  wait_streaming "$app"
done
