"""The machine-wide training lock, held and contended by real processes.

Every wait here is on an event: the holder's `locked` line, the waiter's "waiting for the
training lock" messages, filelock's line on a failed attempt (support/locks.py); never a sleep.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from support.locks import queued_on, stamp, start_holder

from kronos_rolling.errors import LockBusy
from kronos_rolling.locks import (
    TRAINING_LOCK,
    device_busy,
    holder,
    lock_path,
    training_lock,
)


def test_second_job_waits_with_a_message_then_runs(tmp_path, lock_dir):
    with start_holder("monthly-crypto") as first:
        first.stdout.wait_for("^locked")
        assert device_busy(lock_dir)
        assert holder(lock_dir)["job"] == "monthly-crypto" and holder(lock_dir)["pid"] == first.pid
        with start_holder("monthly-equity") as second:
            second.stderr.wait_for("waiting for the training lock", count=2)  # a few messages, every 0.2 s
            assert second.poll() is None and not second.stdout.tail()
            first.say()
            released = stamp(first.stdout.wait_for("^released")[0])
            acquired = stamp(second.stdout.wait_for("^locked")[0])
            assert acquired >= released
            second.say()
            assert second.wait(timeout=30) == 0 and first.wait(timeout=30) == 0
            messages = second.stderr.text()
            assert messages.count("waiting for the training lock") >= 2
            assert f"pid {first.pid}" in messages and "job monthly-crypto" in messages
    assert not device_busy(lock_dir)
    assert (tmp_path / "locks" / "training.lock").parent == lock_dir


def test_no_wait_raises_lock_busy_with_exit_code_75(lock_dir):
    with start_holder("pooled") as first:
        first.stdout.wait_for("^locked")
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


class _OnFirstRefusal(logging.Handler):
    """Calls `then` once, when filelock logs that this process found `lock_file` taken."""

    def __init__(self, lock_file, then):
        super().__init__(logging.DEBUG)
        self.pattern, self.then, self.seen = re.compile(queued_on(lock_file)), then, 0

    def emit(self, record):
        if self.pattern.search(record.getMessage()):
            self.seen += 1
            if self.seen == 1:
                self.then()


def test_no_wait_waits_out_a_momentary_holder_like_the_predictors_probe(lock_dir):
    """The holder lets go only once our first attempt has found the lock taken: the no-wait grace
    (locks.NO_WAIT_GRACE_S), not luck, is what lets the job through."""
    filelock_log = logging.getLogger("filelock")
    with start_holder("probe") as first:
        first.stdout.wait_for("^locked")
        refused = _OnFirstRefusal(lock_path(lock_dir, TRAINING_LOCK), then=first.say)
        level = filelock_log.level
        filelock_log.addHandler(refused)
        filelock_log.setLevel(logging.DEBUG)
        try:
            with training_lock(lock_dir, wait=False, job="cron") as path:  # taken once the holder lets go
                assert holder(lock_dir)["job"] == "cron" and path.exists()
        finally:
            filelock_log.removeHandler(refused)
            filelock_log.setLevel(level)
        assert refused.seen >= 1, "the lock was free at the first attempt: the grace was not exercised"
        first.stdout.wait_for("^released")


def test_waiting_with_a_timeout_gives_up(lock_dir):
    with start_holder("pooled") as first:
        first.stdout.wait_for("^locked")
        started = time.monotonic()
        with pytest.raises(LockBusy, match="after waiting"):
            with training_lock(lock_dir, wait=True, poll_message_every=0.1, timeout=0.5):
                pass
        assert 0.4 <= time.monotonic() - started < 3


def test_a_crashed_holder_frees_the_lock(lock_dir):
    with start_holder("doomed") as first:
        first.stdout.wait_for("^locked")
        assert device_busy(lock_dir)
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait()
    assert not device_busy(lock_dir)
    with training_lock(lock_dir, wait=False, job="next") as path:
        assert json.loads(path.with_name(path.name + ".holder.json").read_text())["job"] == "next"
