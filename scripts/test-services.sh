#!/usr/bin/env bash
# Make sure the programs behind the integration tests' real services are installed. Starts nothing.
#
#   PostgreSQL  server binaries only (initdb, pg_ctl, postgres). The tests start a throwaway
#               cluster themselves: initdb under a temp folder, 127.0.0.1 on a free port, stopped
#               and deleted when the session ends (tests/support/postgres.py). No system cluster
#               is created, configured or started; the Debian package's own cluster, if the
#               package creates one, is left stopped and not started at boot by us.
#               KRONOS_TEST_POSTGRES_URL (a role that may create databases) uses another server
#               instead; then this script does nothing for PostgreSQL.
#   S3          moto's S3 server, a Python package of the test extra: each test starts it on a
#               free port and stops it (tests/support/production.py). Nothing to install here.
#   Chromium    the Debian packages chromium and chromium-driver: the MLflow UI test drives a
#               headless browser (selenium, of the test extra) against a tracking server it starts.
#
# Idempotent and fast when everything is installed. Exports nothing.
set -euo pipefail

say() { echo "test-services: $*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

have_postgres_binaries() {
    local dir
    for dir in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
        [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] && return 0
    done
    return 1
}

install_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        say "chromium and chromedriver present (the MLflow UI test starts a headless one of its own)"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "chromium and chromedriver are missing and this is not a Debian-like system: install them" \
            "(/usr/bin/chromium, /usr/bin/chromedriver) for the MLflow UI test" >&2
        return 1
    fi
    say "installing chromium and chromium-driver (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        chromium-driver >/dev/null
}

install_chromium
if [ -n "${KRONOS_TEST_POSTGRES_URL:-}" ]; then
    say "using KRONOS_TEST_POSTGRES_URL; PostgreSQL binaries not needed"
    exit 0
fi
if have_postgres_binaries; then
    say "PostgreSQL server binaries present (the tests start a throwaway cluster of their own)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "PostgreSQL's server binaries (initdb, pg_ctl) are missing and this is not a Debian-like system:" \
        "install PostgreSQL yourself, or set KRONOS_TEST_POSTGRES_URL to a role that may create databases" >&2
    exit 1
fi
say "installing PostgreSQL's server binaries (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# The package's post-install would create and start a system cluster `main`: policy-rc.d keeps
# services from starting during the install, and create_main_cluster=false skips the cluster.
policy=/usr/sbin/policy-rc.d
created_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created_policy=true
fi
cleanup() { if $created_policy; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT
as_root mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.d/kronos-tests.conf >/dev/null
as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
as_root rm -f /etc/postgresql-common/createcluster.d/kronos-tests.conf
if ! have_postgres_binaries; then
    say "apt-get installed postgresql, yet initdb/pg_ctl/postgres are not under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
say "PostgreSQL server binaries installed (no cluster created or started)"
