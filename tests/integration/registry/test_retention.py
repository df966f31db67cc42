"""Retention: the choice on tables of cases; deletion and real storage reclaim on a real server."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from support.registry import promote_decision, register_stand_in

from kronos_rolling.registry import history
from kronos_rolling.registry.cleanup import apply_retention
from kronos_rolling.registry.promotion import (
    alias_state,
    apply_guard_decision,
    mark_staging,
    promote,
)
from kronos_rolling.registry.retention import VersionInfo
from kronos_rolling.settings import ServerStores
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port


def versions(n, aliased=()):
    return [VersionInfo(v, ("production",) if v in aliased else ()) for v in range(1, n + 1)]


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_dry_run_and_aliased_versions_on_the_registry(clean_registry, cli, lock_dir):
    client = clean_registry
    numbers = [register_stand_in(client, "forex_commodity").version for _ in range(4)]
    name = "kronos-lora-forex_commodity"
    apply_guard_decision(client, name, numbers[0], promote_decision(), lock_dir=lock_dir)  # v1 @production
    mark_staging(client, name, numbers[3], lock_dir=lock_dir)

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


def test_ten_monthly_versions_keep_six_and_storage_stops_growing(tmp_path, monkeypatch, lock_dir):
    """Ten monthly retrains with retention after each: 6 versions stay, the bytes stop growing."""
    config = ServerConfig.embedded(tmp_path / "server", port=free_port())
    artifacts = Path(config.artifacts_destination)
    gc = ServerStores(config.backend_store_uri, config.artifacts_destination)
    with TrackingServer(config) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        client = MlflowClient(server.url)
        sizes, counts, deleted_runs = [], [], []
        try:
            for month in range(1, 11):
                version = register_stand_in(client, "crypto", adapter_bytes=64_000).version
                mark_staging(client, "kronos-lora-crypto", version, lock_dir=lock_dir)
                if month % 3:  # every third candidate is refused and keeps @staging
                    promote(client, "kronos-lora-crypto", version, f"month {month}", lock_dir=lock_dir)
                report = apply_retention(client, "crypto", keep=6, gc=gc, lock_dir=lock_dir)
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
