"""Real processes that hold or queue on the machine's locks, and the events that say they do.

- `start_holder`: a job that takes the training lock, prints `locked <time>`, holds it until a
  line arrives on its stdin, then prints `released <time>`.
- `queued_on`: the line a process logs each time it finds a lock file taken. filelock logs it
  (logger `filelock`, level DEBUG) on every failed attempt, so it is the event "this process now
  waits for that lock", in our code's processes as in any other; `FILELOCK_DEBUG` is the line a
  child's script starts with to make it say so.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

from support.processes import Child

# Log filelock's attempts (DEBUG) on stderr, whatever the rest of the process logs.
FILELOCK_DEBUG = ("import logging, sys; _filelock = logging.getLogger('filelock'); "
                  "_filelock.setLevel(logging.DEBUG); _filelock.addHandler(logging.StreamHandler(sys.stderr)); "
                  "_filelock.propagate = False\n")

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


def start_holder(job: str, wait: str = "wait") -> Child:
    """A job named `job` taking the training lock of this test's KRONOS_LOCK_DIR (see the module doc)."""
    return Child([sys.executable, "-c", HOLDER, wait, job], name=f"holder {job}")


def stamp(line: str) -> float:
    """The time on a holder's `locked <time>` / `released <time>` line."""
    return float(line.split()[1])


def queued_on(lock_file: Path) -> str:
    """A regex for filelock's line on a failed attempt to take `lock_file` (see the module doc)."""
    return rf"Lock \d+ not acquired on {re.escape(str(lock_file))}"
