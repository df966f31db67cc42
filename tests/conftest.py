"""Shared fixtures: a real MLflow tracking server on 127.0.0.1, started once per session.

Tests that need a registry of their own (sizes of artifact folders, server restarts)
start a `TrackingServer` themselves; everything else shares this one and gets a clean
model registry through `clean_registry`.

Layout: tests/unit/<package>/ holds tests of pure code and small real parts; tests/integration/
<package>/ holds every test that starts a server or a process, or trains: those are marked
`slow` here (`make test-fast` leaves them out). Helpers shared by several tests live in
tests/support/ (importable as `support`).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

# Keep tests quiet and small: no telemetry, no background server jobs.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# Under pytest-xdist (`make test`: one worker per core) a worker and the processes it starts compute
# on one thread each, so the workers do not oversubscribe the cores (set before torch is imported).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ is slow: it needs a server, a process or a training run.

    `make test` spreads the tests over the cores (pytest-xdist, `--dist loadgroup`), one test at a
    time, except that the tests of a module sharing a module-scoped fixture (a trained job, a
    running service) form one group on one worker, so that fixture is built once."""
    tests = Path(__file__).parent
    for item in items:
        path = Path(str(item.path))
        if tests / "integration" in path.parents:
            item.add_marker(pytest.mark.slow)
        if _uses_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(str(path.relative_to(tests))))
    # Largest units first, the many short tests last, so the two workers end together: the longest
    # modules, then the groups (a module's tests held together on one worker), then the rest.
    items.sort(key=lambda item: _largest_first(item, Path(str(item.path)).relative_to(tests).as_posix()))


# Modules whose tests take minutes (`make test --durations`), longest first.
LONGEST = ("integration/test_readme.py", "integration/test_project.py", "integration/pipeline/test_replay.py",
           "integration/pipeline/test_job_race.py", "integration/tracking/test_server_cli.py")


def _largest_first(item, module: str) -> tuple[int, int]:
    if module in LONGEST:
        return 0, LONGEST.index(module)
    return (1 if item.get_closest_marker("xdist_group") else 2), 0


def _uses_a_module_fixture(item) -> bool:
    """Whether the test, or a fixture it uses, needs a module- or class-scoped fixture."""
    info = getattr(item, "_fixtureinfo", None)  # pytest's resolved fixture closure of the test
    if info is None:
        return True  # cannot tell: keep the module together, which is always correct
    return any(definitions[-1].scope in ("module", "class", "package")
               for definitions in info.name2fixturedefs.values())


@pytest.fixture(autouse=True)
def isolated_from_this_machine(tmp_path, monkeypatch):
    """Never this machine's ~/.kronos-rolling nor a tracking server already running here (the demo's
    holds 127.0.0.1:5000 and its config names a default base): each test gets its own KRONOS_HOME,
    and the default tracking address is a free port nothing listens on. Tests that need a server
    start one on a free port and point MLFLOW_TRACKING_URI at it (`tracking_uri`)."""
    monkeypatch.setenv("KRONOS_HOME", str(tmp_path / "kronos-home"))
    monkeypatch.setenv("KRONOS_MLFLOW_PORT", str(free_port()))
    for name in ("MLFLOW_TRACKING_URI", "KRONOS_BASE_MODEL", "KRONOS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    """Locks of each test in its own folder (children inherit it through the environment)."""
    path = tmp_path / "locks"
    monkeypatch.setenv("KRONOS_LOCK_DIR", str(path))
    return path


@pytest.fixture
def cli():
    """Invoke the registry commands through the same group class as `kronos-rolling`."""
    from kronos_rolling.cli.main import KronosGroup
    from kronos_rolling.cli.registry import COMMANDS

    group = KronosGroup("kronos-rolling", commands=COMMANDS)
    runner = CliRunner()
    return lambda *args: runner.invoke(group, [str(a) for a in args])


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mlflow-server")
    server = TrackingServer(ServerConfig.embedded(data_dir, port=free_port()))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tracking_uri(tracking_server, monkeypatch):
    """Point both this process and any child process at the session's tracking server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    mlflow.set_tracking_uri(tracking_server.url)
    yield tracking_server.url
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def clean_registry(tracking_uri):
    """An empty model registry (experiments and runs are kept; names stay unique per test)."""
    client = MlflowClient(tracking_uri)
    for model in client.search_registered_models(max_results=1000):
        client.delete_registered_model(model.name)
    yield client


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server whose role may create databases: KRONOS_TEST_POSTGRES_URL when set, else a
    throwaway cluster under a temp folder on a free port, started on first use and stopped (and
    deleted) when the session ends. Nothing system-wide is started or configured."""
    given = os.environ.get("KRONOS_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    from support.postgres import PostgresUnavailable, throwaway_postgres

    with ExitStack() as cleanup:
        try:
            url = cleanup.enter_context(throwaway_postgres())
        except PostgresUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A randomly initialised tiny base (tokenizer + predictor) in the hub folder format."""
    import torch

    from kronos_rolling.model.config import MODEL_SIZES
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.tokenizer import KronosTokenizer

    folder = tmp_path_factory.mktemp("tiny-base")
    spec = MODEL_SIZES["tiny"]
    torch.manual_seed(0)
    KronosTokenizer.from_config(spec.tokenizer).save_pretrained(folder / "tokenizer")
    Kronos.from_config(spec.predictor).save_pretrained(folder / "predictor")
    return folder


@pytest.fixture
def kronos_home(tmp_path, monkeypatch):
    """Locks, checkpoints and caches of this test only (the home `isolated_from_this_machine` set)."""
    home = tmp_path / "kronos-home"
    monkeypatch.setenv("KRONOS_HOME", str(home))
    monkeypatch.delenv("KRONOS_LOCK_DIR", raising=False)
    return home


@pytest.fixture(scope="session")
def pretrained_base(tmp_path_factory, worker_id):
    """A tiny base pre-trained (briefly) on the bundled history before 2017-01-01, built once per
    run: pytest-xdist's workers share it through the run's common temp folder (the first to need
    it builds it, under a file lock)."""
    from support.pretrained import pretrained_tiny_base

    folder = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # getbasetemp() is the worker's own folder inside the run's
        folder = folder.parent
    return pretrained_tiny_base(folder / "pretrained-tiny-base")
