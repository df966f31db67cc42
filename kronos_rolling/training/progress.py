"""Progress of a training loop: a live tqdm bar on a terminal, one line when done elsewhere.

A tqdm bar redrawn into a log file (cron, a container, CI) is a wall of carriage returns.
`progress_bar` draws the bar only when its stream is a terminal; anywhere else it prints
one line when the bar closes (one per epoch of the trainer, one per pre-training stage):

    rolling crypto epoch 2/5: 256/256 samples in 3.1s, loss=0.5123, bars_s=2,730

Every tqdm site of the package goes through here.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class LineProgress:
    """tqdm's update / set_postfix / close, printing one summary line on close (none if disabled)."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO, enabled: bool = True):
        self.total, self.desc, self.unit, self.stream, self.enabled = total, desc, unit, stream, enabled
        self.n = 0
        self.postfix: dict[str, object] = {}
        self.started = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def line(self) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        text = f"{self.desc}: {count} {self.unit}s in {time.monotonic() - self.started:.1f}s"
        return text + "".join(f", {k}={v}" for k, v in self.postfix.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.enabled:
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str, *, enabled: bool = True, stream: TextIO | None = None,
                 tty: bool | None = None):
    """A tqdm bar when `stream` (default stderr) is a terminal, else a `LineProgress`.

    `enabled=False` shows nothing either way; `tty` overrides the terminal check.
    """
    stream = sys.stderr if stream is None else stream
    if tty is None:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
    if not tty or not enabled:
        return LineProgress(total, desc, unit, stream, enabled=enabled)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=stream, mininterval=0.5, dynamic_ncols=True)
