"""What users bring from the official postgres image, shared by the tests that bring it."""

from __future__ import annotations

# The official README's example initdb.d script, verbatim in behaviour: psql over the default socket.
README_EXAMPLE_SCRIPT = """#!/bin/bash
set -e

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-EOSQL
	CREATE USER docker;
	CREATE DATABASE docker;
	GRANT ALL PRIVILEGES ON DATABASE docker TO docker;
EOSQL
"""
