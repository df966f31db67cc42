"""Start, find and stop an MLflow tracking server.

The embedded default keeps everything under one data directory: a SQLite backend
(`mlflow.db`) and the artifact folder (`artifacts/`), served by the tracking server
itself so clients never need direct access to the artifact store. Production swaps in
PostgreSQL, an S3 bucket (proxied by the server), MLflow's basic-auth app and a list of
allowed Host headers through the same config (see `ServerConfig.from_options` and
`mlflow_server/README.md`).

Nothing the server keeps is for other users of the machine: its databases (the tracking
store, basic-auth's password hashes), its artifact folder and its log are created 0600
(files) and 0700 (folders) whatever the umask (the server and the schema upgrade run with
umask 077), and those that already exist are set so when it starts. The basic-auth config
and its secret key are written 0600 (`write_auth_config`).
"""

from __future__ import annotations

import configparser
import contextlib
import io
import logging
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import psutil
import requests
import tenacity

from kronos_rolling.errors import ConfigError, RegistryUnavailable
from kronos_rolling.files import write_atomic
from kronos_rolling.settings import DEFAULT_HOST, DEFAULT_PORT
from kronos_rolling.tracking.supervisor import terminate

log = logging.getLogger(__name__)


AUTH_CONFIG_FILE = "basic_auth.ini"  # written into the data dir, mode 0600
PRIVATE_UMASK = 0o077  # what the server process creates: 0600 files, 0700 folders
PRIVATE_FILE, PRIVATE_FOLDER = 0o600, 0o700
AUTH_DB_FILE = "basic_auth.db"  # users and permissions when the backend is SQLite
SECRET_KEY_FILE = "flask_secret_key"  # CSRF key of the auth app, kept across restarts
MIN_ADMIN_PASSWORD_LENGTH = 12  # MLflow refuses shorter passwords
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def sqlalchemy_uri(uri: str) -> str:
    """Name the PostgreSQL driver we ship (psycopg2) in a database URI.

    Hosting platforms hand out `postgres://` or `postgresql://` URLs; SQLAlchemy rejects the
    first and, from 2.1 on, maps the second to psycopg 3, which we do not install.
    """
    for scheme in ("postgres://", "postgresql://"):
        if uri.startswith(scheme):
            return "postgresql+psycopg2://" + uri[len(scheme):]
    return uri


def is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:")


@dataclass
class BasicAuth:
    """MLflow's basic-auth app (`--app-name basic-auth`).

    The admin user is created from these credentials the first time the server starts
    against an empty user store; users and permissions live in `database_uri`.
    """

    admin_username: str
    admin_password: str = field(repr=False)
    database_uri: str = field(repr=False)
    default_permission: str = "READ"  # what any signed-in user may do on others' experiments
    # A password check costs ~0.5 s of CPU (PBKDF2); cache a successful one per worker for
    # this long. A changed or deleted password then works on other workers for up to as long.
    credential_cache_seconds: int = 60

    def __post_init__(self) -> None:
        if not self.admin_username:
            raise ConfigError("MLFLOW_AUTH_ADMIN_USERNAME is empty; set it to the admin's user name")
        if len(self.admin_password or "") < MIN_ADMIN_PASSWORD_LENGTH:
            raise ConfigError(
                "basic auth is on but MLFLOW_AUTH_ADMIN_PASSWORD is "
                + ("not set" if not self.admin_password else "shorter than "
                   f"{MIN_ADMIN_PASSWORD_LENGTH} characters")
                + f"; set it to a secret of at least {MIN_ADMIN_PASSWORD_LENGTH} characters"
            )
        if self.default_permission not in PERMISSIONS:
            raise ConfigError(
                f"unknown default permission {self.default_permission!r}; use one of {', '.join(PERMISSIONS)}"
            )


@dataclass
class ServerConfig:
    """Everything `mlflow server` needs; `embedded()` gives the local default,
    `from_options()` the production variants."""

    backend_store_uri: str
    artifacts_destination: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    app_name: str | None = None  # set by basic_auth; other MLflow apps by name
    allowed_hosts: str | None = None  # comma-separated Host headers; MLflow's default: localhost + private IPs
    env: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    basic_auth: BasicAuth | None = None
    data_dir: Path | None = None  # where the auth config and its secret key are written
    console_output: bool = False  # server log to our stdout/stderr instead of log_file

    @classmethod
    def embedded(cls, data_dir: Path | str, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT) -> "ServerConfig":
        data_dir = Path(data_dir).expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            backend_store_uri=f"sqlite:///{data_dir / 'mlflow.db'}",
            artifacts_destination=str(data_dir / "artifacts"),
            host=host,
            port=port,
            log_file=data_dir / "server.log",
            data_dir=data_dir,
        )

    @classmethod
    def from_options(
        cls,
        data_dir: Path | str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        workers: int = 1,
        backend_store_uri: str | None = None,
        artifacts_destination: str | None = None,
        basic_auth: bool = False,
        auth_db_uri: str | None = None,
        allowed_hosts: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "ServerConfig":
        """The embedded default with any production option swapped in.

        Basic-auth credentials come from `environ` (the command passes its environment; MLflow's own names,
        MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD). Users and permissions are
        kept in `auth_db_uri`, by default the tracking database itself when that is a
        database server (its tables and migration history are separate from the tracking
        schema), else a SQLite file beside the tracking data.
        """
        environ = environ or {}
        config = cls.embedded(data_dir, host=host, port=port)
        config.workers = workers
        if backend_store_uri:
            config.backend_store_uri = sqlalchemy_uri(backend_store_uri)
        if artifacts_destination:
            config.artifacts_destination = artifacts_destination
        config.allowed_hosts = allowed_hosts or None
        if basic_auth:
            if not auth_db_uri:
                auth_db_uri = (f"sqlite:///{config.data_dir / AUTH_DB_FILE}"
                               if is_sqlite(config.backend_store_uri) else config.backend_store_uri)
            config.basic_auth = BasicAuth(
                admin_username=environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
                admin_password=environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", ""),
                database_uri=sqlalchemy_uri(auth_db_uri),
            )
        return config

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def auth_config_path(self) -> Path | None:
        return self.data_dir / AUTH_CONFIG_FILE if self.basic_auth and self.data_dir else None

    def command(self) -> list[str]:
        # The backend URI travels in the environment (MLFLOW_BACKEND_STORE_URI): it may hold
        # a password, and command lines are readable by every user of the machine.
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--artifacts-destination", self.artifacts_destination,
            "--serve-artifacts",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]
        app_name = "basic-auth" if self.basic_auth else self.app_name
        if app_name:
            cmd += ["--app-name", app_name]
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        return cmd

    def private_paths(self) -> list[Path]:
        """What the server keeps on this machine: SQLite databases, a local artifact folder, its log."""
        paths = [Path(uri[len("sqlite:///"):]) for uri in
                 (self.backend_store_uri, self.basic_auth.database_uri if self.basic_auth else "")
                 if uri.startswith("sqlite:///")]
        if "://" not in self.artifacts_destination:
            paths.append(Path(self.artifacts_destination))
        if self.log_file is not None:
            paths.append(self.log_file)
        return paths

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The server's background job workers (seven by default) only serve GenAI
        # features we do not use; on a small machine they cost more than they give.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri
        if self.basic_auth:
            if self.auth_config_path is None:
                raise ConfigError("basic auth needs a data directory for its config file; set data_dir")
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config_path)
            # MLflow reads these before the ini; keep both in step with this config.
            env["MLFLOW_AUTH_ADMIN_USERNAME"] = self.basic_auth.admin_username
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.basic_auth.admin_password
        env.update(self.env)
        return env


def write_auth_config(config: ServerConfig, env: Mapping[str, str]) -> dict[str, str]:
    """Write the basic-auth ini that MLflow reads (MLFLOW_AUTH_CONFIG_PATH) and return what
    the server's environment needs besides: a CSRF secret key that every worker and every
    restart shares (MLFLOW_FLASK_SERVER_SECRET_KEY, else one kept in the data dir)."""
    auth, path = config.basic_auth, config.auth_config_path
    if auth is None or path is None:
        return {}
    ini = configparser.ConfigParser()
    ini["mlflow"] = {  # MLflow reads it with %-interpolation, so a literal % is written %%
        key: value.replace("%", "%%") for key, value in {
            "default_permission": auth.default_permission,
            "database_uri": auth.database_uri,
            "admin_username": auth.admin_username,
            "admin_password": auth.admin_password,
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
            "auth_cache_ttl_seconds": str(auth.credential_cache_seconds),
        }.items()
    }
    text = io.StringIO()
    text.write("# Written by kronos-rolling server from its options and environment; edits are lost.\n")
    ini.write(text)
    write_atomic(path, text.getvalue(), mode=0o600)

    secret = env.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
    if not secret:
        key_file = path.parent / SECRET_KEY_FILE
        if not key_file.exists():
            write_atomic(key_file, secrets.token_hex(32), mode=0o600)
        secret = key_file.read_text().strip()
    return {"MLFLOW_FLASK_SERVER_SECRET_KEY": secret}


def check_basic_auth_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise ConfigError("basic auth needs MLflow's auth extra (Flask-WTF); install it with "
                          "pip install 'mlflow[auth]', or run without --basic-auth")


def check_database(uri: str, wait: float = 30.0) -> None:
    """Fail fast, naming the database, when it cannot be reached (MLflow itself would retry
    for about 100 s and then print a traceback)."""
    if is_sqlite(uri):
        return
    import sqlalchemy

    timeout = {"connect_timeout": 5} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool)
    except ImportError as exc:
        raise ConfigError(
            f"the driver for {redact(uri)} is not installed ({exc}); for PostgreSQL: "
            "pip install 'kronos-rolling[postgres]'"
        ) from None
    def connect() -> None:
        with engine.connect():
            pass

    attempts = tenacity.Retrying(stop=tenacity.stop_after_delay(wait), wait=tenacity.wait_fixed(1.0),
                                 retry=tenacity.retry_if_exception_type(sqlalchemy.exc.SQLAlchemyError),
                                 reraise=True)
    try:
        attempts(connect)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ConfigError(
            f"cannot connect to the tracking database {redact(uri)}: {reason}; start it or fix "
            "--backend-store-uri / KRONOS_MLFLOW_BACKEND_URI (tests: bash scripts/test-services.sh)"
        ) from None
    finally:
        engine.dispose()


def check_artifacts_destination(destination: str, env: Mapping[str, str]) -> None:
    """An s3:// destination must name a bucket the server can reach with its credentials;
    otherwise uploads would fail later, one run at a time."""
    if not destination.startswith("s3://"):
        return
    import boto3
    import botocore.exceptions

    bucket = destination[len("s3://"):].split("/", 1)[0]
    endpoint = env.get("MLFLOW_S3_ENDPOINT_URL") or None
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
    )
    try:
        s3.head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        where = f" at {endpoint}" if endpoint else ""
        raise ConfigError(
            f"artifact bucket {bucket!r}{where} is not usable: {exc}; create the bucket, or fix "
            "--artifacts-destination / KRONOS_MLFLOW_ARTIFACTS, MLFLOW_S3_ENDPOINT_URL and "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        ) from None


def upgrade_schema(backend_store_uri: str, env: dict[str, str] | None = None) -> None:
    """Bring an existing database to this MLflow's schema before serving it.

    A brand-new database is created at the current schema by the server itself.
    """
    if backend_store_uri.startswith("sqlite:///"):
        if not Path(backend_store_uri[len("sqlite:///"):]).exists():
            return
    # `mlflow db upgrade URL`, with the URL taken from the environment rather than the
    # command line (it may hold a password). On an empty database it creates the schema.
    env = dict(os.environ if env is None else env)
    env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri
    result = subprocess.run(
        [sys.executable, "-c",
         "import os; from mlflow.db import upgrade; "
         "upgrade.main([os.environ['MLFLOW_BACKEND_STORE_URI']], prog_name='mlflow db upgrade')"],
        env=env, capture_output=True, text=True, umask=PRIVATE_UMASK,
    )
    if result.returncode != 0:
        raise ConfigError(
            f"could not upgrade the tracking database {redact(backend_store_uri)}: "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'unknown error'}"
        )


def redact(uri: str) -> str:
    """Hide a password in a database URI for messages."""
    if "@" in uri and "://" in uri and ":" in uri.split("://", 1)[1].rsplit("@", 1)[0]:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri


def keep_private(paths: list[Path]) -> None:
    """Set what already exists of `paths` to 0600 (files) or 0700 (folders: nothing inside can be
    reached through them); what does not exist yet the server creates so itself."""
    for path in paths:
        if path.exists():
            os.chmod(path, PRIVATE_FOLDER if path.is_dir() else PRIVATE_FILE)


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return requests.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def wait_until_healthy(process: subprocess.Popen, url: str, timeout: float, where: str) -> None:
    """Poll `url` until the server answers; RegistryUnavailable when it exits or takes too long."""
    def answers() -> bool:
        if process.poll() is not None:
            raise RegistryUnavailable(f"mlflow server exited with code {process.returncode} while starting; {where}")
        return is_healthy(url)

    polling = tenacity.Retrying(stop=tenacity.stop_after_delay(timeout), wait=tenacity.wait_fixed(0.3),
                                retry=tenacity.retry_if_result(lambda ok: not ok))
    try:
        polling(answers)
    except tenacity.RetryError:
        raise RegistryUnavailable(f"mlflow server did not answer at {url} within {timeout:.0f}s; {where}") from None


def stop_process_tree(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM a process, its descendants and the rest of the process group it leads, then SIGKILL
    what is left after `timeout`; False when none of them was running.

    The group catches workers whose parent already died (they are no longer its children)."""
    tree = []
    with contextlib.suppress(psutil.NoSuchProcess):
        leader = psutil.Process(pid)
        tree = [leader, *leader.children(recursive=True)]
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(process.pid) == pid and process not in tree:
                tree.append(process)
    if not tree:
        return False
    terminate(tree, timeout)
    return True


class TrackingServer:
    """A `mlflow server` child process under a supervisor (tracking/supervisor.py), in its own process
    group: stop() ends all of it, and so does the end of this process, even by SIGKILL."""

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
        if self.config.basic_auth:
            check_basic_auth_installed()
            env.update(write_auth_config(self.config, env))
        check_database(self.config.backend_store_uri)
        check_artifacts_destination(self.config.artifacts_destination, env)
        keep_private(self.config.private_paths())
        upgrade_schema(self.config.backend_store_uri, env)
        if self.config.console_output:
            out = None
        elif self.config.log_file:
            self.config.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = os.fdopen(os.open(self.config.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE),
                            "ab")
        else:
            out = subprocess.DEVNULL
        # The supervisor (tracking/supervisor.py) runs `mlflow server` and takes it and its workers
        # down when this process ends, whatever ends it (kill -9 included).
        supervised = [sys.executable, "-m", "kronos_rolling.tracking.supervisor", str(os.getpid()), "--",
                      *self.config.command()]
        self.process = subprocess.Popen(
            supervised, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, umask=PRIVATE_UMASK,
        )
        where = ("see its output above" if self.config.console_output
                 else f"see {self.config.log_file}" if self.config.log_file else "its output was discarded")
        try:
            wait_until_healthy(self.process, self.url, timeout, where)
        except RegistryUnavailable:
            self.stop()
            raise
        log.info("tracking server ready at %s", self.url)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and every process it started (uvicorn workers included)."""
        if self.process is None:
            return
        stop_process_tree(self.process.pid, timeout)
        self.process.wait()  # reap it
        self.process = None

    def __enter__(self) -> "TrackingServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
