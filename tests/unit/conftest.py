"""tests/unit starts no processes: a unit test that does fails, naming what it started.

The rule (tests/conftest.py, docs/architecture.md): tests of pure code and small real parts live
in tests/unit and run in `make test-fast`; anything that needs a server, a child process or a
training run lives in tests/integration/<package>, where it is marked slow. Python reports every
process a program starts as an audit event (`subprocess.Popen`, `os.fork`, `os.posix_spawn`,
`os.system`, `os.exec`; https://docs.python.org/3/library/audit_events.html), so the check sees a
child started through any library, not only the tests' own `subprocess` calls.
"""

from __future__ import annotations

import sys
import threading

import pytest

# The audit events of starting a process (multiprocessing's fork and spawn go through these too).
PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp",
                            "os.system", "os.exec", "os.spawn", "pty.spawn"})


MAIN = threading.main_thread()  # pytest runs every test in it


class _Started:
    """The processes the running unit test started; `None` outside a unit test (an audit hook
    cannot be removed, so it stays installed and only records while a unit test runs)."""

    commands: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    # The test's own thread only: a thread left running by an earlier (integration) test in the same
    # worker is not this test's doing.
    if _Started.commands is not None and event in PROCESS_EVENTS and threading.current_thread() is MAIN:
        _Started.commands.append(f"{event} {args[:2]!r}")


sys.addaudithook(_audit)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Record from before the test's fixtures are set up (module and session ones included)."""
    _Started.commands = []


@pytest.fixture(autouse=True)
def starts_no_process():
    """Fail the unit test that started a process, naming it and where such a test belongs."""
    try:
        yield
        started = list(_Started.commands or [])
    finally:
        _Started.commands = None
    if started:
        pytest.fail("a unit test starts no process, yet this one started: " + "; ".join(started)
                    + ". Move it (or the part that needs the process) to tests/integration/<package>.",
                    pytrace=False)
