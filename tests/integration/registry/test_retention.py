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

    done = cli("retention", "--asset-class", "forex_commodity", "--keep", "1")
    assert done.exit_code == 0, done.output
    assert "deleted v2, v3" in done.output and "storage reclaimed" in done.output
    left = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    assert left == [1, 4]
    assert alias_state(client, name).production == "1"
    assert history.read_history(client, name)[-1].action == "retention"


def monthly_retention(client, lock_dir, months: int = 10):
    """`months` monthly retrains with retention (keep 6) after each; every third candidate is refused."""
    reports = []
    for month in range(1, months + 1):
        version = register_stand_in(client, "crypto", adapter_bytes=64_000).version
        mark_staging(client, "kronos-lora-crypto", version, lock_dir=lock_dir)
        if month % 3:
            promote(client, "kronos-lora-crypto", version, f"month {month}", lock_dir=lock_dir)
        reports.append(apply_retention(client, "crypto", keep=6, lock_dir=lock_dir))
        assert reports[-1].reclaimed == bool(reports[-1].deleted)
        yield reports[-1]


def assert_history_kept(client, run_ids):
    """Each run of a deleted version keeps its params, metrics, tags and plot; its adapter files are gone."""
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.lifecycle_stage == "active"
        assert run.data.params["lookback"] == "32" and run.data.metrics["val_mae"] > 0
        assert "adapter/ and the model files deleted with kronos-lora-crypto" in run.data.tags["kronos.retention"]
        left = {f.path for f in client.list_artifacts(run_id)}
        assert left == {"metadata.json", "plots"}, left
        assert mlflow.artifacts.load_text(f"runs:/{run_id}/plots/forecast.png") == "a forecast plot's bytes"


def test_ten_monthly_versions_keep_six_storage_stops_growing_and_every_run_stays(tmp_path, monkeypatch, lock_dir):
    """Ten monthly retrains with retention after each: 6 versions stay, the bytes stop growing, and all
    ten training runs keep their params, metrics, tags and plots (the UI compares every month)."""
    config = ServerConfig.embedded(tmp_path / "server", port=free_port())
    artifacts = Path(config.artifacts_destination)
    with TrackingServer(config) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        client = MlflowClient(server.url)
        sizes, counts, trimmed = [], [], []
        try:
            for report in monthly_retention(client, lock_dir):
                trimmed += report.runs_trimmed
                sizes.append(_bytes(artifacts))
                counts.append(len(client.search_model_versions("name = 'kronos-lora-crypto'")))
            assert_history_kept(client, trimmed)
        finally:
            mlflow.set_tracking_uri(None)

        assert counts == [1, 2, 3, 4, 5, 6, 6, 6, 6, 6]
        kept = sorted(int(v.version) for v in
                      client.search_model_versions("name = 'kronos-lora-crypto'"))
        assert kept == [5, 6, 7, 8, 9, 10]
        # two copies of a 64 KB adapter (the model's, the run's) + small files per month until six ...
        per_version = sizes[0]
        assert per_version > 2 * 64_000
        assert sizes[5] == pytest.approx(6 * per_version, rel=0.02)
        # ... then almost flat: a deleted month leaves only its run's small files (params are in the database)
        kept_history = sizes[9] - sizes[5]
        assert 0 < kept_history < 0.02 * sizes[5], sizes
        assert len(trimmed) == 4
        assert len(client.search_runs([client.get_experiment_by_name("registry-tests").experiment_id])) == 10
        files = [p for p in artifacts.rglob("*.safetensors")]
        assert len(files) == 2 * 6, "one model copy and one run copy per kept version"


def test_retention_reclaims_an_s3_artifact_store_and_keeps_the_runs(tmp_path, monkeypatch, lock_dir):
    """The same through an S3 store (moto's S3 server), which the tracking server proxies."""
    from support.production import S3_KEYS, moto_s3, s3_client

    with moto_s3(tmp_path / "moto") as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket="kronos-retention")
        config = ServerConfig.embedded(tmp_path / "server", port=free_port())
        config.artifacts_destination = "s3://kronos-retention/mlflow"
        config.env.update({"MLFLOW_S3_ENDPOINT_URL": endpoint, **S3_KEYS})

        def stored() -> dict[str, int]:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket="kronos-retention")
            return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

        with TrackingServer(config) as server:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
            client = MlflowClient(server.url)
            trimmed = []
            try:
                for report in monthly_retention(client, lock_dir, months=8):
                    trimmed += report.runs_trimmed
                assert_history_kept(client, trimmed)
            finally:
                mlflow.set_tracking_uri(None)
            keys = stored()
            assert len(trimmed) == 2
            assert len([k for k in keys if k.endswith(".safetensors")]) == 2 * 6
            for run_id in trimmed:
                assert not [k for k in keys if f"/{run_id}/artifacts/adapter/" in k]
                assert [k for k in keys if k.endswith(f"/{run_id}/artifacts/plots/forecast.png")]
