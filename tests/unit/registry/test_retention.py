"""Retention: the choice on tables of cases; deletion and real storage reclaim on a real server."""

from __future__ import annotations

import pytest

from kronos_rolling.registry.retention import VersionInfo, choose_versions_to_delete


def versions(n, aliased=()):
    return [VersionInfo(v, ("production",) if v in aliased else ()) for v in range(1, n + 1)]


# versions present, aliased ones, keep, expected deletions
CASES = [
    (0, (), 6, []),
    (5, (), 6, []),
    (6, (), 6, []),
    (7, (), 6, [1]),
    (10, (), 6, [1, 2, 3, 4]),
    (10, (10,), 6, [1, 2, 3, 4]),  # an alias among the newest changes nothing
    (10, (2,), 6, [1, 3, 4]),  # an old aliased version survives, 7 remain
    (10, (1, 2, 3, 4), 6, []),
    (10, (), 1, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (3, (), 1, [1, 2]),
]


@pytest.mark.parametrize("count, aliased, keep, expected", CASES)
def test_choose_versions_to_delete(count, aliased, keep, expected):
    assert choose_versions_to_delete(versions(count, aliased), keep) == expected


def test_choice_goes_by_version_number_not_input_order():
    shuffled = [VersionInfo(v) for v in (9, 3, 12, 1, 7, 10, 2, 11)]
    assert choose_versions_to_delete(shuffled, keep=6) == [1, 2]


@pytest.mark.parametrize("bad, match", [
    ((versions(3), 0), "at least 1"),
    (([VersionInfo(1), VersionInfo(1)], 6), "duplicate"),
])
def test_choice_refuses_nonsense(bad, match):
    with pytest.raises(ValueError, match=match):
        choose_versions_to_delete(*bad)


def test_gc_finds_the_server_stores_from_the_environment_or_the_local_default(tmp_path, monkeypatch):
    from kronos_rolling.registry.cleanup import gc_from_environment

    monkeypatch.setenv("KRONOS_HOME", str(tmp_path))
    env = {"KRONOS_MLFLOW_BACKEND_URI": "postgresql://u:p@db/mlflow", "KRONOS_MLFLOW_ARTIFACTS": "s3://b/m"}
    got = gc_from_environment("http://mlflow.internal:5000", env)
    assert (got.backend_store_uri, got.artifacts_destination) == ("postgresql://u:p@db/mlflow", "s3://b/m")
    # The local embedded server: its own database, but only once it exists.
    assert gc_from_environment("http://127.0.0.1:5000", {}) is None
    (tmp_path / "mlflow.db").write_bytes(b"")
    local = gc_from_environment("http://127.0.0.1:5000", {})
    assert local.backend_store_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert local.artifacts_destination == str(tmp_path / "artifacts")
    # Any other server: we cannot know its stores, so nothing is guessed.
    assert gc_from_environment("http://mlflow.internal:5000", {}) is None
