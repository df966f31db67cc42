#!/usr/bin/env bash
# Entry point of the tracking-server container (docker-compose, Railway): `kronos-rolling server`
# on all interfaces, configured from the environment only (names: mlflow_server/README.md).
#
#   PORT                 port to listen on (Railway sets it)           default 5000
#   KRONOS_MLFLOW_HOST   interface to bind                             default 0.0.0.0
#   KRONOS_HOME          data dir (SQLite db, artifacts, auth config)  default /data
#   PYTHON               interpreter with kronos-rolling installed     default python3
set -euo pipefail

export KRONOS_HOME="${KRONOS_HOME:-/data}"
export KRONOS_MLFLOW_HOST="${KRONOS_MLFLOW_HOST:-0.0.0.0}"
export KRONOS_MLFLOW_PORT="${PORT:-${KRONOS_MLFLOW_PORT:-5000}}"

# exec: the server becomes this process, so the container's SIGTERM reaches it and it stops
# mlflow and its workers before exiting.
exec "${PYTHON:-python3}" -m kronos_rolling.cli server "$@"
