# Shared steps of the floor scripts: PostgreSQL's own commands doing what the agent does.
# Sourced, not run. Expects PGPORT, POSTGRES_PASSWORD, PGSFS_REPLICATION_PASSWORD.

# The settings the agent writes to pg-sfs-agent.conf (agent/render.py settings_file).
write_settings() {  # DATADIR
  cat >>"$1/postgresql.conf" <<CONF
listen_addresses = '*'
port = $PGPORT
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_keep_size = '1GB'
max_slot_wal_keep_size = '10GB'
password_encryption = 'scram-sha-256'
wal_sender_timeout = '5min'
CONF
}

# The agent's pg_hba block, first (first match wins), the rest as initdb wrote it.
write_hba() {  # DATADIR
  local hba=$1/pg_hba.conf
  { printf '%s\n' \
      "host replication replicator 0.0.0.0/0 scram-sha-256" \
      "host replication replicator ::/0 scram-sha-256" \
      "host replication all 0.0.0.0/0 reject" \
      "host replication all ::/0 reject" \
      "host all all 0.0.0.0/0 scram-sha-256" \
      "host all all ::/0 scram-sha-256"
    cat "$hba"; } >"$hba.new"
  mv "$hba.new" "$hba"
}

# initdb with data checksums, the superuser's password from a 0600 file, then the configuration.
init_cluster() {  # DATADIR
  local pw
  pw=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" >"$pw"
  initdb -D "$1" -U postgres --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 \
    --data-checksums >/dev/null
  rm -f "$pw"
  write_settings "$1"
  write_hba "$1"
}

# psql over the local socket as the superuser (PGHOST may name a private socket directory).
local_psql() {  # [PSQL ARGS]
  psql -X -q -v ON_ERROR_STOP=1 -h "${PGHOST:-/run/postgresql}" -p "$PGPORT" -U postgres -d postgres "$@"
}

# The replication role, its password sent as the server hashes it (SCRAM): never on argv.
create_replication_role() {
  local_psql <<'SQL'
\getenv pw PGSFS_REPLICATION_PASSWORD
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
SQL
}

# Until the primary (on PGPORT) shows APP streaming; bounded to 60 s.
wait_streaming() {  # APP
  local n
  for n in $(seq 3000); do
    if [ "$(local_psql -At -c "SELECT count(*) FROM pg_stat_replication
             WHERE application_name = '$1' AND state = 'streaming'")" = 1 ]; then
      return 0
    fi
    sleep 0.02
  done
  echo "timed out waiting for $1 to stream" >&2
  return 1
}
