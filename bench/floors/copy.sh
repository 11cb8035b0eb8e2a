#!/bin/bash
# Floor of "clone" without PostgreSQL: copy the data directory (pg_wal's old segments left out, as
# pg_basebackup leaves them out) and make it durable. Run as postgres. Env: SRC (a data directory),
# DST (must not exist).
set -euo pipefail
mkdir -m 0700 "$DST"
for entry in "$SRC"/* "$SRC"/.[!.]*; do
  [ -e "$entry" ] || continue
  if [ "${entry##*/}" = pg_wal ]; then
    mkdir -m 0700 "$DST/pg_wal"
  else
    cp -a "$entry" "$DST/"
  fi
done
sync -f "$DST"
