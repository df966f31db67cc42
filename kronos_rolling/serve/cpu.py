"""Sharing the CPU with a training job: fewer inference threads and a lower priority while one runs.

The predictor checks every `busy_check_s` whether a training job holds the device (the
training lock, locks.device_busy) and, while it does, runs inference on `busy_threads` CPU
threads at `busy_nice` lower priority, so the fine-tune keeps most of a shared CPU and
inference keeps answering.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import torch

from kronos_rolling.locks import device_busy
from kronos_rolling.settings import ServeSettings

log = logging.getLogger(__name__)


class CpuShare:
    """Whether a training job holds the device, and the threads and niceness inference uses."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.default_threads = settings.inference_threads or torch.get_num_threads()
        self.default_nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0
        self.busy = False

    def check(self) -> bool:
        """Look at the training lock; say so in the log when the answer changes."""
        busy = device_busy(self.settings.lock_dir) if self.settings.lock_dir else False
        changed, self.busy = busy != self.busy, busy
        if changed:
            log.info("training job %s the device: inference uses %d CPU thread(s)",
                     "holds" if busy else "released", self.threads())
        return busy

    def threads(self) -> int:
        return self.settings.busy_threads if self.busy else self.default_threads

    def nice(self) -> int:
        return min(19, self.default_nice + self.settings.busy_nice) if self.busy else self.default_nice

    def apply(self) -> None:
        """Set the calling thread's torch threads and niceness to what the device's state calls for."""
        share_cpu_with_training(self.threads(), self.nice())


def share_cpu_with_training(threads: int, nice: int) -> None:
    """Set this thread's torch CPU threads and, on Linux, its scheduling niceness.

    Both are per thread (OpenMP keeps the thread count per calling thread; Linux nices
    threads by id). Lowering a nice value needs privileges: without them a thread stays nice
    after training ends, which costs nothing once the CPU is free.
    """
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    thread_id = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread_id) != nice:
            os.setpriority(os.PRIO_PROCESS, thread_id, nice)
    except (PermissionError, OSError):
        pass
