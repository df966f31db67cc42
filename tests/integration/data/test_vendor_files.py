"""What an import killed half-way leaves, and how the next import clears it (a real killed process;
the vendor files themselves are in tests/unit/data/test_vendor_files.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from click.testing import CliRunner

from kronos_rolling.cli.main import main


def test_the_next_import_removes_what_a_killed_import_left(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from pathlib import Path; from kronos_rolling.data.store import _temp_path; "
        f"_temp_path(Path({str(store)!r}), 'AAPL.parquet'); os.kill(os.getpid(), signal.SIGKILL)")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -signal.SIGKILL
    (left,) = [p for p in store.iterdir() if p.name.startswith(".AAPL.parquet.pid")]
    own = store / f".MSFT.parquet.pid{os.getpid()}.x.tmp"  # a live import's file is not touched
    own.write_bytes(b"")
    src = tmp_path / "in.csv"
    src.write_text("date,open,high,low,close\n2021-01-04,1,2,0.5,1.5\n2021-01-05,1,2,0.5,1.5\n")
    result = CliRunner().invoke(main, ["data", "import", str(src), "--symbol", "AAPL", "--data", str(store)])
    assert result.exit_code == 0, result.output
    assert f"removed {left.name}, left by an import that was stopped" in result.stderr
    assert not left.exists() and own.exists()
