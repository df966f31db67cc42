"""`kronos-rolling server`: run the MLflow tracking server in the foreground.

Embedded by default (SQLite + artifact folder under the data directory, 127.0.0.1:5000);
every production option can also come from the environment (`ServerSettings` in
settings.py), so a container needs no command line (see mlflow_server/README.md).

`python -m kronos_rolling.cli server [OPTIONS]` is the same command, for images and
scripts that start it before the main CLI is on PATH.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import click

from kronos_rolling.cli.options import settings_of
from kronos_rolling.settings import ServerSettings

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Stop(Exception):
    """SIGTERM arrived: leave the wait loop and stop the server."""


def _raise_stop(signum, frame):
    raise Stop()


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Holds the SQLite database, the artifact folder, the server log and the auth config "
                   "[env KRONOS_HOME; default ~/.kronos-rolling].")
@click.option("--host", default=None, help=f"Interface to bind; 0.0.0.0 in a container "
                                           f"[env KRONOS_MLFLOW_HOST; default {ServerSettings.host}].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"[env KRONOS_MLFLOW_PORT; default {ServerSettings.port}]")
@click.option("--workers", type=click.IntRange(1), default=None,
              help=f"Server worker processes [env KRONOS_MLFLOW_WORKERS; default {ServerSettings.workers}].")
@click.option("--backend-store-uri", default=None,
              help="Tracking database, e.g. postgresql://user:pass@host:5432/mlflow "
                   "[env KRONOS_MLFLOW_BACKEND_URI; default: sqlite:///DATA_DIR/mlflow.db].")
@click.option("--artifacts-destination", default=None,
              help="Where the server stores artifacts, e.g. s3://bucket/mlflow (S3-compatible stores: "
                   "MLFLOW_S3_ENDPOINT_URL) [env KRONOS_MLFLOW_ARTIFACTS; default: DATA_DIR/artifacts].")
@click.option("--basic-auth/--no-basic-auth", default=None,
              help="Require a user name and password (admin from MLFLOW_AUTH_ADMIN_USERNAME / "
                   "MLFLOW_AUTH_ADMIN_PASSWORD) [env KRONOS_MLFLOW_BASIC_AUTH; default off].")
@click.option("--auth-db-uri", default=None,
              help="Where basic-auth keeps users [env KRONOS_MLFLOW_AUTH_DB_URI; default: the tracking "
                   "database, or sqlite:///DATA_DIR/basic_auth.db with a SQLite backend].")
@click.option("--allowed-hosts", default=None,
              help="Comma-separated Host headers to accept, e.g. 'mlflow.example.com,localhost:*' "
                   "[env KRONOS_MLFLOW_ALLOWED_HOSTS; default: MLflow's, localhost and private IPs].")
def server(data_dir: Path | None, host: str | None, port: int | None, workers: int | None,
           backend_store_uri: str | None, artifacts_destination: str | None, basic_auth: bool | None,
           auth_db_uri: str | None, allowed_hosts: str | None) -> None:
    """Run the MLflow tracking server until Ctrl-C or SIGTERM.

    Upgrades the database schema once, then serves the UI, the REST API and the
    artifacts (proxied, so clients never need storage credentials).
    """
    from kronos_rolling.tracking.server import ServerConfig, TrackingServer, redact

    settings = settings_of()
    flags = {"host": host, "port": port, "workers": workers, "backend_uri": backend_store_uri,
             "artifacts": artifacts_destination, "basic_auth": basic_auth, "auth_db_uri": auth_db_uri,
             "allowed_hosts": allowed_hosts}
    options = replace(settings.server, **{k: v for k, v in flags.items() if v is not None})
    config = ServerConfig.from_options(
        data_dir or settings.home.server_data, host=options.host, port=options.port, workers=options.workers,
        backend_store_uri=options.backend_uri, artifacts_destination=options.artifacts,
        basic_auth=options.basic_auth, auth_db_uri=options.auth_db_uri, allowed_hosts=options.allowed_hosts,
        environ=os.environ,  # MLflow's own MLFLOW_AUTH_ADMIN_* credentials, read at the command line
    )
    config.console_output = True
    if options.host not in LOOPBACK and not options.basic_auth:
        log.warning("serving on %s without --basic-auth: anyone who reaches this port can change "
                    "the registry", options.host)

    tracking_server = TrackingServer(config)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        tracking_server.start()
        click.echo(
            f"MLflow tracking server at {config.url} (bound to {config.host})\n"
            f"  backend:   {redact(config.backend_store_uri)}\n"
            f"  artifacts: {config.artifacts_destination}\n"
            f"  auth:      {'basic-auth, admin ' + config.basic_auth.admin_username if config.basic_auth else 'off'}\n"
            f"Clients: export MLFLOW_TRACKING_URI={config.url}"
            + (" MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=..." if config.basic_auth else "")
            + "\nCtrl-C stops it.",
            err=True,
        )
        code = tracking_server.process.wait()
        click.echo(f"error: mlflow server exited with code {code}; see its output above", err=True)
        sys.exit(3)
    except (KeyboardInterrupt, Stop):
        click.echo("stopping the tracking server", err=True)
    finally:
        tracking_server.stop()
        signal.signal(signal.SIGTERM, previous)

