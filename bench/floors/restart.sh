#!/bin/bash
# Floor of "restart path": on an existing PGDATA, what the agent does before exec, with standard
# commands: the server's version, the settings file and pg_hba block rewritten, ownership and mode
# checked; a replica first looks at the primary (DNS, IDENTIFY_SYSTEM, its slot); then exec postgres
# as the postgres user. Run as root, with the stub postgres first on PATH to end at the exec.
# Env: PGDATA PGPORT ROLE (primary|replica) PRIMARY_HOST SLOT PGSFS_REPLICATION_PASSWORD.
set -euo pipefail
postgres -V >/dev/null
[ -s "$PGDATA/PG_VERSION" ]
if [ "$ROLE" = replica ]; then
  addr=$(getent ahostsv4 "$PRIMARY_HOST" | awk 'NR == 1 { print $1 }')
  export PGPASSWORD=$PGSFS_REPLICATION_PASSWORD
  psql -XAtq -d "host=$PRIMARY_HOST hostaddr=$addr port=$PGPORT user=replicator dbname=replication replication=true" \
    -c IDENTIFY_SYSTEM >/dev/null
  psql -XAtq -d "host=$PRIMARY_HOST hostaddr=$addr port=$PGPORT user=replicator dbname=postgres" \
    -c "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '$SLOT'" >/dev/null
  unset PGPASSWORD
fi
conf=$PGDATA/pg-sfs-agent.conf
printf "listen_addresses = '*'\nport = %s\nwal_level = replica\n" "$PGPORT" >"$conf.tmp"
mv "$conf.tmp" "$conf"
cp "$PGDATA/pg_hba.conf" "$PGDATA/pg_hba.conf.tmp"
mv "$PGDATA/pg_hba.conf.tmp" "$PGDATA/pg_hba.conf"
find "$PGDATA" ! -user postgres -exec chown -h postgres:postgres {} +
chmod 0700 "$PGDATA"
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA"
