"""A throwaway PostgreSQL cluster for one test session: initdb + pg_ctl under a temp folder.

    with throwaway_postgres() as url:   # postgresql://kronos:kronos@127.0.0.1:<free port>/kronos_test
        ...

The cluster listens on 127.0.0.1 on a free port (and on a socket inside its folder), runs
without fsync, and is stopped and deleted on exit: nothing system-wide is started or
configured. It needs PostgreSQL's server binaries (`bash scripts/test-services.sh` installs
them on Debian). PostgreSQL refuses to run as root; as root, the cluster runs as the
`postgres` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kronos_rolling.tracking.server import free_port

USER = "kronos"
PASSWORD = "kronos"
DATABASE = "kronos_test"
INSTALL_HINT = ("install PostgreSQL's server binaries (`bash scripts/test-services.sh` does it on Debian), "
                "or set KRONOS_TEST_POSTGRES_URL to a server whose role may create databases")


class PostgresUnavailable(RuntimeError):
    """No throwaway cluster can be started here; the message says why and what to do."""


def server_bindir() -> Path:
    """The folder of `initdb`, `pg_ctl` and `postgres`: pg_config's, else Debian's newest, else PATH."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           key=lambda p: int(Path(p).parent.name), reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: {INSTALL_HINT}")


def _run_as(user: str | None):
    if user is None:
        return []
    runuser = shutil.which("runuser")
    if not runuser:
        raise PostgresUnavailable(f"running as root without `runuser`: PostgreSQL refuses root; {INSTALL_HINT}")
    return [runuser, "-u", user, "--"]


@contextmanager
def throwaway_postgres(parent: str | os.PathLike | None = None) -> Iterator[str]:
    """Start a fresh cluster in a new temp folder; yield the URL of its test database; stop and delete it."""
    bindir = server_bindir()
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            raise PostgresUnavailable(f"running as root and there is no `postgres` user to run the cluster as: "
                                      f"{INSTALL_HINT}") from None
    prefix = _run_as(user)
    # A folder of its own directly under the temp root: pytest's folders are private to their user.
    folder = Path(tempfile.mkdtemp(prefix="kronos-postgres-", dir=parent))
    data, socket, log = folder / "data", folder / "socket", folder / "postgres.log"
    socket.mkdir()
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (folder, socket, password_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = free_port()
    started = False
    try:
        _check(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(password_file),
                         "--auth", "scram-sha-256", "--auth-local", "trust", "-E", "UTF8", "--locale", "C"],
               "initdb")
        options = (f"-p {port} -k {socket} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   f"-c full_page_writes=off -c max_connections=200")
        _check(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                         "start"], "pg_ctl start", log)
        started = True
        _check(prefix + [str(bindir / "createdb") if (bindir / "createdb").exists() else "createdb",
                         "-h", str(socket), "-p", str(port), "-U", USER, DATABASE], "createdb", log)
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _check(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        if log is not None and log.exists():
            tail += "\n" + log.read_text(errors="replace")[-2000:]
        raise PostgresUnavailable(f"{what} failed ({result.returncode}) for the throwaway test cluster:\n{tail}")
