"""Machine-wide locks: one training job on the device at a time, one registry writer per model.

Locks are files in one folder, `Settings.lock_dir` (KRONOS_LOCK_DIR, default
`$KRONOS_HOME/locks`), which every caller passes in. Training holds the training lock for the whole
fine-tune; the predictor asks `device_busy()` to know a fine-tune shares the device.
The registry lock serialises alias moves, audit entries and deletions on one
registered model, so two jobs on this machine never interleave them. Jobs on
different machines need a shared lock directory (a network file system that honours
flock) to get the same guarantee.

A lock held by a process that dies is released by the operating system, so a crashed
job never blocks the next one. The holder writes who it is beside the lock, so a
waiting job can say whom it waits for.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from kronos_rolling.errors import LockBusy

log = logging.getLogger(__name__)

TRAINING_LOCK = "training"


def lock_path(lock_dir: Path, name: str) -> Path:
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    return Path(lock_dir) / f"{name}.lock"


def holder(lock_dir: Path, name: str = TRAINING_LOCK) -> dict | None:
    """Who holds (or last held, if it died) the named lock, as the holder wrote it."""
    try:
        return json.loads(_holder_path(lock_path(lock_dir, name)).read_text())
    except (OSError, ValueError):
        return None


NO_WAIT_GRACE_S = 0.5


@contextmanager
def training_lock(lock_dir: Path, wait: bool = True, poll_message_every: float = 30.0,
                  timeout: float | None = None, job: str | None = None) -> Iterator[Path]:
    """Hold the machine's training lock for the duration of the block.

    wait=True: wait (forever, or up to `timeout` seconds), logging whom we wait for
    every `poll_message_every` seconds. wait=False: raise LockBusy when it is still taken
    after NO_WAIT_GRACE_S (a momentary holder, such as the predictor's probe, is waited out).
    """
    with _hold(lock_dir, TRAINING_LOCK, "the training lock", wait=wait,
               poll_message_every=poll_message_every, timeout=timeout, job=job) as path:
        yield path


@contextmanager
def class_lock(lock_dir: Path, label: str, wait: bool = True, poll_message_every: float = 30.0,
               job: str | None = None) -> Iterator[Path]:
    """Hold one class's job lock (`class-<label>`): one monthly job per class at a time on this machine.

    The holder re-checks, once it has the lock, whether its work is still to do (pipeline/job.py)."""
    with _hold(lock_dir, f"class-{label}", f"the job lock of {label}", wait=wait,
               poll_message_every=poll_message_every, timeout=None, job=job) as path:
        yield path


def device_busy(lock_dir: Path) -> bool:
    """True while any process (this one included) holds the training lock."""
    lock = FileLock(lock_path(lock_dir, TRAINING_LOCK))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return True
    lock.release()
    return False


@contextmanager
def registry_lock(lock_dir: Path, model_name: str, timeout: float) -> Iterator[Path]:
    """Serialise writers of one registered model on this machine (wait up to `timeout` s)."""
    with _hold(lock_dir, f"registry-{model_name}", f"the registry lock of {model_name}", wait=True,
               poll_message_every=min(timeout, 10.0), timeout=timeout, job=None) as path:
        yield path


@contextmanager
def _hold(lock_dir: Path, name: str, what: str, *, wait: bool, poll_message_every: float,
          timeout: float | None, job: str | None) -> Iterator[Path]:
    path = lock_path(lock_dir, name)
    lock = FileLock(path)
    started = time.monotonic()
    while True:
        remaining = None if timeout is None else timeout - (time.monotonic() - started)
        try:
            if not wait:
                # A short grace: the predictor probes the training lock (device_busy) by taking
                # it for a few microseconds, which must not make a --no-wait job fail.
                lock.acquire(timeout=NO_WAIT_GRACE_S)
            else:
                step = poll_message_every if remaining is None else max(
                    0.0, min(poll_message_every, remaining))
                lock.acquire(timeout=step)
            break
        except Timeout:
            who = _describe(holder(lock_dir, name))
            if not wait or (remaining is not None and remaining <= poll_message_every):
                waited = "" if not wait else f" after waiting {time.monotonic() - started:.0f}s"
                raise LockBusy(f"{what} ({path}) is held by {who}{waited}; wait for that job to "
                               "finish, or run again later") from None
            log.warning("waiting for %s (%s), held by %s", what, path, who)
    holder_file = _holder_path(path)
    try:
        holder_file.write_text(json.dumps({
            "pid": os.getpid(), "user": current_user(), "host": socket.gethostname(),
            "job": job or "",
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }))
        yield path
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def _holder_path(path: Path) -> Path:
    return path.with_name(path.name + ".holder.json")


def _describe(info: dict | None) -> str:
    if not info:
        return "another process"
    job = f", job {info['job']}" if info.get("job") else ""
    return f"pid {info.get('pid')} ({info.get('user')}@{info.get('host')}{job}, since {info.get('since')})"


def current_user() -> str:
    """The OS user name, also where the container has no passwd entry for it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return str(os.getuid())
