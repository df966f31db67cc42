#!/usr/bin/env bash
# Install (Debian packages) and start the real services the integration tests talk to.
#
#   PostgreSQL  a dedicated cluster `kronos_test`, 127.0.0.1:55432 only, role `kronos`
#               (password `kronos`, may create databases) and database `kronos_test`:
#               postgresql://kronos:kronos@127.0.0.1:55432/kronos_test
#               Tests use that URL unless KRONOS_TEST_POSTGRES_URL names another server (then
#               this script does nothing); each test creates and drops its own database.
#   S3          not here: each test starts moto's S3 server itself (tests/production_stack.py).
#
# Idempotent and fast when everything already runs (one connection attempt). Exports nothing.
# The cluster is for tests only: it runs without fsync.
set -euo pipefail

PG_CLUSTER=kronos_test
PG_PORT=55432
PG_USER=kronos
PG_PASSWORD=kronos
PG_DB=kronos_test

say() { echo "test-services: $*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

as_postgres() {  # peer authentication over the local socket of our cluster
    as_root runuser -u postgres -- "$@"
}

test_db_answers() {
    command -v psql >/dev/null 2>&1 &&
        PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" \
            -d "$PG_DB" -tAc 'SELECT 1' >/dev/null 2>&1
}

if [ -n "${KRONOS_TEST_POSTGRES_URL:-}" ]; then
    say "using KRONOS_TEST_POSTGRES_URL; not starting a PostgreSQL of our own"
    exit 0
fi
if test_db_answers; then
    say "PostgreSQL ready at 127.0.0.1:$PG_PORT (database $PG_DB)"
    exit 0
fi

# 1. Install PostgreSQL when its server binaries are missing.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_createcluster >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "PostgreSQL is not installed and this is not a Debian-like system: install PostgreSQL" \
            "yourself and set KRONOS_TEST_POSTGRES_URL to a role that may create databases" >&2
        exit 1
    fi
    say "installing PostgreSQL (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
fi
PG_VERSION=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)

# 2. Create our own cluster, so a system PostgreSQL on 5432 is neither needed nor touched.
if ! pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c {found=1} END {exit !found}'; then
    say "creating cluster $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
    as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" --start-conf manual \
        --locale C.UTF-8 >/dev/null
fi
CONF_DIR=/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d
as_root mkdir -p "$CONF_DIR"
as_root tee "$CONF_DIR/kronos-test.conf" >/dev/null <<EOF
# Written by scripts/test-services.sh: a throwaway test database, speed over durability.
listen_addresses = '127.0.0.1'
port = $PG_PORT
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

# 3. Start it and wait until it accepts connections.
if ! pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c && $4 == "online" {found=1} END {exit !found}'; then
    say "starting cluster $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    say "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT within 30s;" \
        "see /var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log" >&2
    exit 1
fi

# 4. The test role (it creates one database per test) and its default database.
as_postgres psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qc "
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;"
if [ -z "$(as_postgres psql -p "$PG_PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
    as_postgres createdb -p "$PG_PORT" -O "$PG_USER" "$PG_DB"
fi

if ! test_db_answers; then
    say "PostgreSQL runs but $PG_USER cannot log in to $PG_DB over 127.0.0.1:$PG_PORT;" \
        "check /etc/postgresql/$PG_VERSION/$PG_CLUSTER/pg_hba.conf" >&2
    exit 1
fi
say "PostgreSQL ready at 127.0.0.1:$PG_PORT (database $PG_DB)"
