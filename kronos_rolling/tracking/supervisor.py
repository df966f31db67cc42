"""Run a command so that its whole process tree ends with whoever started it, however that ends.

`python -m kronos_rolling.tracking.supervisor PARENT_PID -- COMMAND...` starts COMMAND (the
`mlflow server`, which starts its own workers) as its child and stays between it and the
process that started it (`kronos-rolling server`, a test, the demo):

- it makes itself the subreaper of its descendants (Linux `PR_SET_CHILD_SUBREAPER`), so a
  worker whose parent died is re-parented to it, not to init, and stays in view;
- it watches PARENT_PID: when that process is gone, whatever killed it (SIGKILL included:
  nothing runs in a killed process, so the watching happens here), it stops the tree;
- on SIGTERM, SIGINT or SIGHUP it stops the tree; when COMMAND exits on its own it stops
  what COMMAND left behind and exits with COMMAND's code.

Stopping the tree: SIGTERM to every descendant, SIGKILL to what is left after a grace
period (psutil walks the tree), so the port is free when the supervisor is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
PARENT_POLL_S = 0.2
GRACE_S = 10.0


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def terminate(processes: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM `processes`, then SIGKILL those still alive after `grace_s`, and wait for them."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def _become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def stop_descendants(grace_s: float = GRACE_S) -> None:
    """SIGTERM every descendant of this process, then SIGKILL those still alive after `grace_s`."""
    me = psutil.Process()
    for _ in range(3):  # a dying worker may still fork; look again until nothing is left
        tree = me.children(recursive=True)
        if not tree:
            return
        terminate(tree, grace_s)
        with contextlib.suppress(ChildProcessError):  # reap re-parented orphans
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def run(parent_pid: int, command: list[str]) -> int:
    _become_subreaper()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    code = 1
    try:
        if os.getppid() != parent_pid:  # the parent died before we got here
            return code
        child = subprocess.Popen(command)
        while True:
            returned = child.poll()
            if returned is not None:
                code = returned
                break
            if os.getppid() != parent_pid:  # re-parented: our parent is gone (any signal, SIGKILL too)
                break
            time.sleep(PARENT_POLL_S)
    except _Stop:
        pass
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # stopping is not interrupted by a second signal
        stop_descendants()
    return code


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m kronos_rolling.tracking.supervisor PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    return run(int(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
