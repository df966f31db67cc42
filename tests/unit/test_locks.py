"""The machine-wide training lock, held and contended by real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kronos_rolling.errors import LockBusy
from kronos_rolling.locks import (
    device_busy,
    holder,
    registry_lock,
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


def test_no_wait_waits_out_a_momentary_holder_like_the_predictors_probe(lock_dir):
    import threading

    first = start_holder("probe")
    try:
        wait_for_line(first, "locked")
        release = threading.Timer(0.2, lambda: (first.stdin.write("go\n"), first.stdin.flush()))
        release.start()
        with training_lock(lock_dir, wait=False, job="cron") as path:  # taken once the holder lets go
            assert holder(lock_dir)["job"] == "cron" and path.exists()
        release.join()
    finally:
        first.kill()
        first.wait()


def test_waiting_with_a_timeout_gives_up(lock_dir):
    first = start_holder("pooled")
    try:
        wait_for_line(first, "locked")
        started = time.monotonic()
        with pytest.raises(LockBusy, match="after waiting"):
            with training_lock(lock_dir, wait=True, poll_message_every=0.1, timeout=0.5):
                pass
        assert 0.4 <= time.monotonic() - started < 3
    finally:
        first.kill()
        first.wait()


def test_a_crashed_holder_frees_the_lock(lock_dir):
    first = start_holder("doomed")
    wait_for_line(first, "locked")
    assert device_busy(lock_dir)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not device_busy(lock_dir)
    with training_lock(lock_dir, wait=False, job="next") as path:
        assert json.loads(path.with_name(path.name + ".holder.json").read_text())["job"] == "next"


def test_this_process_holding_the_lock_counts_as_busy(lock_dir):
    assert not device_busy(lock_dir)
    with training_lock(lock_dir, wait=False):
        assert device_busy(lock_dir)
        with pytest.raises(LockBusy):
            with training_lock(lock_dir, wait=False):
                pass
    assert not device_busy(lock_dir) and holder(lock_dir) is None


def test_registry_lock_times_out_with_a_clear_message(lock_dir):
    with registry_lock(lock_dir, "kronos-lora-crypto", timeout=5):
        with pytest.raises(LockBusy, match="registry lock of kronos-lora-crypto"):
            with registry_lock(lock_dir, "kronos-lora-crypto", timeout=0.2):
                pass
        with registry_lock(lock_dir, "kronos-lora-equity", timeout=0.2):  # other models are independent
            pass
