"""Retention: the choice on tables of cases; deletion and real storage reclaim on a real server."""

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from test_registry_support import cli, lock_dir, promote_decision, register_stand_in  # noqa: F401 (fixtures)

from kronos_rolling.registry import history
from kronos_rolling.registry.cleanup import GarbageCollection, apply_retention
from kronos_rolling.registry.promotion import (
    alias_state,
    apply_guard_decision,
    mark_staging,
    promote,
)
from kronos_rolling.registry.retention import VersionInfo, choose_versions_to_delete
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port


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


def test_dry_run_and_aliased_versions_on_the_registry(clean_registry, cli):
    client = clean_registry
    numbers = [register_stand_in(client, "forex_commodity").version for _ in range(4)]
    name = "kronos-lora-forex_commodity"
    apply_guard_decision(client, name, numbers[0], promote_decision())  # v1 @production
    mark_staging(client, name, numbers[3])

    dry = cli("retention", "--asset-class", "forex_commodity", "--keep", "1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete v2, v3; kept v1, v4" in dry.output
    assert len(client.search_model_versions(f"name = '{name}'")) == 4

    no_gc = cli("retention", "--asset-class", "forex_commodity", "--keep", "1")
    assert no_gc.exit_code == 2 and "--backend-store-uri" in no_gc.output
    assert len(client.search_model_versions(f"name = '{name}'")) == 4  # nothing half-done

    soft = cli("retention", "--asset-class", "forex_commodity", "--keep", "1", "--skip-gc")
    assert soft.exit_code == 0, soft.output
    assert "deleted v2, v3" in soft.output and "NOT reclaimed" in soft.output
    left = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    assert left == [1, 4]
    assert alias_state(client, name).production == "1"
    assert history.read_history(client, name)[-1].action == "retention"


def test_ten_monthly_versions_keep_six_and_storage_stops_growing(tmp_path, monkeypatch):
    """Ten monthly retrains with retention after each: 6 versions stay, the bytes stop growing."""
    config = ServerConfig.embedded(tmp_path / "server", port=free_port())
    artifacts = Path(config.artifacts_destination)
    gc = GarbageCollection(config.backend_store_uri, config.artifacts_destination)
    with TrackingServer(config) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        client = MlflowClient(server.url)
        sizes, counts, deleted_runs = [], [], []
        try:
            for month in range(1, 11):
                version = register_stand_in(client, "crypto", adapter_bytes=64_000).version
                mark_staging(client, "kronos-lora-crypto", version)
                if month % 3:  # every third candidate is refused and keeps @staging
                    promote(client, "kronos-lora-crypto", version, f"month {month}")
                report = apply_retention(client, "crypto", keep=6, gc=gc)
                deleted_runs += report.runs_deleted
                assert report.reclaimed == bool(report.deleted)
                sizes.append(_bytes(artifacts))
                counts.append(len(client.search_model_versions("name = 'kronos-lora-crypto'")))
        finally:
            mlflow.set_tracking_uri(None)

        assert counts == [1, 2, 3, 4, 5, 6, 6, 6, 6, 6]
        kept = sorted(int(v.version) for v in
                      client.search_model_versions("name = 'kronos-lora-crypto'"))
        assert kept == [5, 6, 7, 8, 9, 10]
        # one version's worth of files (64 KB adapter + small files) per month until six ...
        per_version = sizes[0]
        assert per_version > 64_000
        assert sizes[5] == pytest.approx(6 * per_version, rel=0.02)
        # ... then flat: every new month's files replace the oldest month's
        assert max(sizes[5:]) - min(sizes[5:]) < 0.02 * sizes[5], sizes
        # the deleted runs are gone from the backend store and their folders from disk
        assert len(deleted_runs) == 4
        for run_id in deleted_runs:
            with pytest.raises(Exception, match="(?i)not found|does not exist"):
                client.get_run(run_id)
            assert not list(artifacts.glob(f"*/{run_id}"))
        folders = [p for p in artifacts.rglob("*") if p.is_dir() and p.name.startswith("m-")]
        assert len(folders) == 6  # one logged-model folder per kept version


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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
