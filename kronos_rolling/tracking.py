"""Start, find and stop an MLflow tracking server.

The embedded default keeps everything under one data directory: a SQLite backend
(`mlflow.db`) and the artifact folder (`artifacts/`), served by the tracking server
itself so clients never need direct access to the artifact store. Production swaps in
PostgreSQL and S3 through the same options (see `mlflow_server/`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from kronos_rolling.errors import ConfigError, RegistryUnavailable

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


def default_data_dir() -> Path:
    return Path(os.environ.get("KRONOS_HOME", Path.home() / ".kronos-rolling")).expanduser()


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerConfig:
    """Everything `mlflow server` needs; `embedded()` gives the local default."""

    backend_store_uri: str
    artifacts_destination: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    app_name: str | None = None  # "basic-auth" in production
    allowed_hosts: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None

    @classmethod
    def embedded(cls, data_dir: Path | str | None = None, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT) -> "ServerConfig":
        data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            backend_store_uri=f"sqlite:///{data_dir / 'mlflow.db'}",
            artifacts_destination=str(data_dir / "artifacts"),
            host=host,
            port=port,
            log_file=data_dir / "server.log",
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--serve-artifacts",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The server's background job workers (seven by default) only serve GenAI
        # features we do not use; on a small machine they cost more than they give.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        env.update(self.env)
        return env


def upgrade_schema(backend_store_uri: str, env: dict[str, str] | None = None) -> None:
    """Bring an existing database to this MLflow's schema before serving it.

    A brand-new database is created at the current schema by the server itself.
    """
    if backend_store_uri.startswith("sqlite:///"):
        if not Path(backend_store_uri[len("sqlite:///"):]).exists():
            return
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", backend_store_uri],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise ConfigError(
            f"could not upgrade the tracking database {redact(backend_store_uri)}: "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'unknown error'}"
        )


def redact(uri: str) -> str:
    """Hide a password in a database URI for messages."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return requests.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


class TrackingServer:
    """A `mlflow server` child process, in its own process group so stop() ends all of it."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.config.url

    def start(self, timeout: float = 120.0) -> "TrackingServer":
        if is_healthy(self.url):
            raise ConfigError(
                f"something already answers at {self.url}; use it (MLFLOW_TRACKING_URI={self.url}) "
                "or choose another --port"
            )
        env = self.config.environment()
        upgrade_schema(self.config.backend_store_uri, env)
        if self.config.log_file:
            self.config.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.config.log_file, "ab")
        else:
            out = subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.config.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                where = f"; see {self.config.log_file}" if self.config.log_file else ""
                raise RegistryUnavailable(
                    f"mlflow server exited with code {self.process.returncode} while starting{where}"
                )
            if is_healthy(self.url):
                log.info("tracking server ready at %s", self.url)
                return self
            time.sleep(0.3)
        self.stop()
        raise RegistryUnavailable(f"mlflow server did not answer at {self.url} within {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and every process it started (uvicorn workers included)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # children may outlive the leader; the group id still names them
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None

    def __enter__(self) -> "TrackingServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
