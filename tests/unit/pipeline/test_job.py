"""The monthly job against a real tracking server: what a run records, what a version is,
and how the steps refuse to leave half-done work behind."""

from __future__ import annotations

import pytest


def test_the_default_base_is_the_environment_then_this_machines_config(tmp_path, monkeypatch):
    from kronos_rolling.errors import ConfigError
    from kronos_rolling.model.base import (
        DEFAULT_BASE_MODEL,
        default_base_model,
        remember_base_model,
    )

    monkeypatch.setenv("KRONOS_HOME", str(tmp_path))
    monkeypatch.delenv("KRONOS_BASE_MODEL", raising=False)
    assert default_base_model() == DEFAULT_BASE_MODEL
    assert remember_base_model("/srv/bases/tiny") is True
    assert remember_base_model("/elsewhere") is False, "a recorded base is never replaced silently"
    assert default_base_model() == "/srv/bases/tiny"
    monkeypatch.setenv("KRONOS_BASE_MODEL", "NeoQuasar/Kronos-small")
    assert default_base_model() == "NeoQuasar/Kronos-small"
    monkeypatch.delenv("KRONOS_BASE_MODEL")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        default_base_model()
