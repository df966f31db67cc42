"""Every test runs beside whatever this machine runs (the demo's server on 127.0.0.1:5000, its
~/.kronos-rolling with a recorded default base): conftest gives each test its own KRONOS_HOME and a
default tracking address on a free port, so no test reads or writes the demo's state."""

from __future__ import annotations

from pathlib import Path

from kronos_rolling.settings import DEFAULT_PORT, load_settings
from kronos_rolling.tracking.server import is_healthy


def test_a_test_sees_its_own_home_and_no_tracking_server_by_default(tmp_path):
    settings = load_settings()
    assert settings.home.root == tmp_path / "kronos-home"
    assert Path.home() / ".kronos-rolling" not in (settings.home.root, *settings.home.root.parents)
    assert settings.tracking_uri != f"http://127.0.0.1:{DEFAULT_PORT}"
    assert not is_healthy(settings.tracking_uri, timeout=1.0), "nothing listens at a test's default address"
