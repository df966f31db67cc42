"""Child processes whose output a test waits on, line by line: never a sleep.

    with Child([sys.executable, "-c", SCRIPT]) as child:
        child.stdout.wait_for("^locked")          # the event itself, or a loud failure at the timeout
        child.say("go")                            # a line on its stdin
        assert child.wait(timeout=60) == 0
        messages = child.stderr.text()

Each stream is read by a thread of its own as the child writes it, so a chatty child never blocks
on a full pipe, a test can wait for a line on stderr while stdout fills, and everything written
stays readable afterwards. A wait ends at the line, at the child's end (the stream closes), or at
its timeout; the last two fail, quoting what the child said.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Sequence

TAIL_CHARS = 3000


class Output:
    """Every line one stream of a child writes, in order, as it comes."""

    def __init__(self, stream, name: str):
        self.name = name
        self._lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        self.partner: Output | None = None  # the child's other stream, quoted when a wait fails
        self._reader = threading.Thread(target=self._read, args=(stream,), name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        try:
            for line in stream:
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """The first `count` lines matching `pattern` (a regex, searched), once they are written.

        Fails when the stream closes (the child ended) or `timeout` seconds pass first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self._lines if regex.search(line)]
                if len(found) >= count:
                    return found[:count]
                if self._closed:
                    raise AssertionError(f"{self.name} closed (the process ended) after {len(found)} of {count} "
                                         f"line(s) matching {pattern!r}; {self._said()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(found)} of {count} line(s) matching {pattern!r} on {self.name} "
                                         f"within {timeout:.0f}s; {self._said()}")
                self._changed.wait(remaining)

    def _said(self) -> str:
        said = f"{self.name} said:\n{self.tail()}"
        if self.partner is not None:
            said += f"\n{self.partner.name} said:\n{self.partner.tail()}"
        return said

    def text(self, timeout: float = 30.0) -> str:
        """Everything written, once the stream has closed (call after the child ended)."""
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"{self.name} still open {timeout:.0f}s after the process ended"
        return self.tail(None)

    def tail(self, chars: int | None = TAIL_CHARS) -> str:
        with self._changed:
            text = "".join(self._lines)
        return text if chars is None else text[-chars:]


class Child:
    """A child process with its stdin writable and its stdout and stderr read as `Output`s."""

    def __init__(self, command: Sequence[str], *, env: dict[str, str] | None = None, name: str | None = None):
        self.process = subprocess.Popen(list(command), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        name = name or f"pid {self.process.pid}"
        self.stdout = Output(self.process.stdout, f"stdout of {name}")
        self.stderr = Output(self.process.stderr, f"stderr of {name}")
        self.stdout.partner, self.stderr.partner = self.stderr, self.stdout

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def say(self, line: str = "") -> None:
        """Write one line to the child's stdin."""
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float) -> int:
        """The child's exit code, once it ended and both streams were read to their end."""
        code = self.process.wait(timeout=timeout)
        self.stdout.text(), self.stderr.text()
        return code

    def stop(self) -> None:
        """Kill the child if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        try:
            self.process.stdin.close()
        except OSError:  # the child is gone before reading what was written
            pass

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
