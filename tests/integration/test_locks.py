"""The machine-wide training lock, held and contended by real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from kronos_rolling.errors import LockBusy
from kronos_rolling.locks import (
    device_busy,
    holder,
    training_lock,
)

# A job that takes the lock, says so, and holds it until told to go (a line on stdin).
HOLDER = textwrap.dedent("""
    import logging, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from kronos_rolling.locks import training_lock
    from kronos_rolling.settings import load_settings
    wait = sys.argv[1] == "wait"
    with training_lock(load_settings().lock_dir, wait=wait, poll_message_every=0.2, job=sys.argv[2]):
        print(f"locked {time.time()}", flush=True)
        sys.stdin.readline()
        print(f"released {time.time()}", flush=True)
""")


def start_holder(job, wait="wait"):
    return subprocess.Popen([sys.executable, "-c", HOLDER, wait, job], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process, prefix, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return float(line.split()[1])
        if not line and process.poll() is not None:
            raise AssertionError(f"process ended: {process.stderr.read()}")
    raise AssertionError(f"no {prefix!r} within {timeout}s")


def test_second_job_waits_with_a_message_then_runs(tmp_path, lock_dir):
    first = start_holder("monthly-crypto")
    try:
        wait_for_line(first, "locked")
        assert device_busy(lock_dir)
        assert holder(lock_dir)["job"] == "monthly-crypto" and holder(lock_dir)["pid"] == first.pid
        second = start_holder("monthly-equity")
        time.sleep(1.0)  # long enough for a few "waiting" messages
        assert second.poll() is None
        first.stdin.write("\n")
        first.stdin.flush()
        released = wait_for_line(first, "released")
        acquired = wait_for_line(second, "locked")
        assert acquired >= released
        second.stdin.write("\n")
        second.stdin.flush()
        assert second.wait(timeout=30) == 0 and first.wait(timeout=30) == 0
        messages = second.stderr.read()
        assert messages.count("waiting for the training lock") >= 2
        assert f"pid {first.pid}" in messages and "job monthly-crypto" in messages
    finally:
        for process in (first, locals().get("second")):
            if process and process.poll() is None:
                process.kill()
                process.wait()
    assert not device_busy(lock_dir)
    assert (tmp_path / "locks" / "training.lock").parent == lock_dir


def test_no_wait_raises_lock_busy_with_exit_code_75(lock_dir):
    first = start_holder("pooled")
    try:
        wait_for_line(first, "locked")
        started = time.monotonic()
        with pytest.raises(LockBusy, match=f"held by pid {first.pid}.*job pooled") as info:
            with training_lock(lock_dir, wait=False):
                pass
        assert time.monotonic() - started < 1.0
        assert info.value.exit_code == 75
        # and through a command line, as the training job reports it
        script = textwrap.dedent("""
            import click
            from kronos_rolling.cli.main import KronosGroup
            from kronos_rolling.locks import training_lock
            from kronos_rolling.settings import load_settings
            group = KronosGroup("k")
            @group.command()
            def train():
                with training_lock(load_settings().lock_dir, wait=False):
                    pass
            group()
        """)
        result = subprocess.run([sys.executable, "-c", script, "train"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 75, result.stderr
        assert "error: the training lock" in result.stderr and "Traceback" not in result.stderr
    finally:
        first.kill()
        first.wait()
