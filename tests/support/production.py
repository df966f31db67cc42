"""A production-shaped tracking stack for tests: PostgreSQL + S3 + basic auth + allowed hosts.

    from support.production import production_stack

    with production_stack(tmp_path, postgres_url) as stack:
        subprocess.run([...], env={**os.environ, **stack.client_env()})

What runs, all real:
- a fresh PostgreSQL database in the session's throwaway cluster (the `postgres_url` fixture:
  tests/support/postgres.py, or KRONOS_TEST_POSTGRES_URL), dropped afterwards;
- moto's S3 server (`python -m moto.server`) on a free port with one bucket;
- the MLflow server, started the way the container starts it: `mlflow_server/start.sh`,
  configured only through environment variables, artifacts proxied to the bucket,
  basic auth on, allowed hosts set;
- a non-admin user for clients (what the monthly job would use), created through the
  auth REST API by the admin.
Everything is stopped on exit, and leftover processes fail the caller.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import requests

from kronos_rolling.tracking.server import free_port, is_healthy
from support import REPO

START_SCRIPT = REPO / "mlflow_server" / "start.sh"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


def _connect(url: str):
    import psycopg2

    try:
        return psycopg2.connect(url, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
    pytest.fail(
        f"PostgreSQL is not reachable at {url.split('@')[-1]} ({reason}). "
        "The tests start a throwaway cluster of their own (tests/support/postgres.py; "
        "`bash scripts/test-services.sh` installs PostgreSQL), unless KRONOS_TEST_POSTGRES_URL "
        "names a server whose role may create databases: check that server.",
        pytrace=False,
    )


@contextmanager
def postgres_database(admin_url: str, prefix: str = "kronos_stack") -> Iterator[str]:
    """A new, empty database on the server of `admin_url`, for one test; dropped afterwards. Yields its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    conn = _connect(admin_url)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@contextmanager
def moto_s3(log_dir: Path) -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "moto.log", "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}; see {log_dir / 'moto.log'}")
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer at {endpoint} within 60s")
                time.sleep(0.2)
        yield endpoint
    finally:
        _stop_group(process)


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name=S3_KEYS["AWS_DEFAULT_REGION"],
    )


def _stop_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@dataclass
class ProductionStack:
    url: str  # what clients use as MLFLOW_TRACKING_URI
    username: str  # a non-admin user, as the monthly job would run
    password: str = field(repr=False)
    admin_username: str
    admin_password: str = field(repr=False)
    bucket: str
    artifacts_destination: str  # s3://bucket/prefix the server writes to
    s3_endpoint: str
    database_url: str = field(repr=False)
    data_dir: Path
    log_file: Path
    process: subprocess.Popen = field(repr=False)  # start.sh, exec'd into `kronos-rolling server`
    started: list[psutil.Process] = field(default_factory=list, repr=False)  # seen once serving

    def client_env(self) -> dict[str, str]:
        """Environment for an MLflow client (this process via monkeypatch, or a subprocess)."""
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    def s3(self):
        return s3_client(self.s3_endpoint)

    def bucket_keys(self) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def server_processes(self) -> list[psutil.Process]:
        """The launcher and every process below it (mlflow server, uvicorn workers)."""
        try:
            leader = psutil.Process(self.process.pid)
            return [leader] + leader.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the launcher, as a container runtime does; it must stop all it started."""
        family = {p.pid: p for p in self.started + self.server_processes()}.values()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(list(family), timeout=timeout)
        self.process.wait()
        for proc in alive:
            proc.kill()
        if alive:
            raise AssertionError(
                f"processes left behind after SIGTERM: {[(p.pid, p.name()) for p in alive]}; see {self.log_file}")


def _wait_until_serving(stack: ProductionStack, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_healthy(stack.url, timeout=1.0):
        if stack.process.poll() is not None:
            tail = stack.log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the tracking server exited with {stack.process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tracking server did not answer at {stack.url} within {timeout:.0f}s")
        time.sleep(0.3)


def _create_user(stack: ProductionStack) -> None:
    response = requests.post(
        f"{stack.url}/api/2.0/mlflow/users/create",
        json={"username": stack.username, "password": stack.password},
        auth=(stack.admin_username, stack.admin_password), timeout=30,
    )
    response.raise_for_status()


@contextmanager
def production_stack(tmp_path: Path, postgres_url: str, workers: int = 1) -> Iterator[ProductionStack]:
    """Start PostgreSQL database + moto S3 + `mlflow_server/start.sh` (basic auth, allowed
    hosts); yield a `ProductionStack`; stop and remove everything afterwards."""
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(postgres_database(postgres_url))
        s3_endpoint = cleanup.enter_context(moto_s3(tmp_path / "moto"))
        bucket = "kronos-artifacts"
        s3_client(s3_endpoint).create_bucket(Bucket=bucket)

        port = free_port()
        data_dir = tmp_path / "server"
        log_file = tmp_path / "server.log"
        env = {
            **os.environ,
            "PYTHON": sys.executable,
            "KRONOS_HOME": str(data_dir),
            "PORT": str(port),
            "KRONOS_MLFLOW_HOST": "127.0.0.1",
            "KRONOS_MLFLOW_WORKERS": str(workers),
            "KRONOS_MLFLOW_BACKEND_URI": database_url,
            "KRONOS_MLFLOW_ARTIFACTS": f"s3://{bucket}/mlflow",
            "KRONOS_MLFLOW_BASIC_AUTH": "true",
            "KRONOS_MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
            "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
            "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-" + secrets.token_hex(12),
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
            **S3_KEYS,
        }
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)  # the server is not a client of anything
        with open(log_file, "wb") as out:
            process = subprocess.Popen(
                ["bash", str(START_SCRIPT)], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        stack = ProductionStack(
            url=f"http://127.0.0.1:{port}", username="kronos-job", password="job-" + secrets.token_hex(12),
            admin_username=env["MLFLOW_AUTH_ADMIN_USERNAME"], admin_password=env["MLFLOW_AUTH_ADMIN_PASSWORD"],
            bucket=bucket, artifacts_destination=env["KRONOS_MLFLOW_ARTIFACTS"], s3_endpoint=s3_endpoint,
            database_url=database_url, data_dir=data_dir, log_file=log_file, process=process,
        )
        cleanup.callback(stack.stop)
        _wait_until_serving(stack)
        stack.started = stack.server_processes()
        _create_user(stack)
        yield stack
