"""The predictor's parts, each on its own (serve/service.py only starts and stops them together):
the watcher's refusals and freshness, forecasting on a pool with its own queue, the health
report over those parts, and the CPU share beside a training job. No registry is reachable
here: the watcher's registry is a closed port, as in a cold start during an outage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch
from support.serve import build_bundle, expected_forecast, sample_frame

from kronos_rolling.data.events import EventCalendar
from kronos_rolling.errors import DataError
from kronos_rolling.files import bundle_digest, digest_tags
from kronos_rolling.locks import training_lock
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.serve.batching import Batcher
from kronos_rolling.serve.cache import VersionCache
from kronos_rolling.serve.cpu import CpuShare
from kronos_rolling.serve.forecasting import ForecastOptions, Forecasting, ItemError, SeriesInput
from kronos_rolling.serve.health import health_report, routes
from kronos_rolling.serve.pool import AdapterPool
from kronos_rolling.serve.source import RegistrySource
from kronos_rolling.serve.watcher import RegistryWatcher
from kronos_rolling.settings import ServeSettings
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.server import free_port

torch.set_num_threads(1)

FRAME = sample_frame("BTCUSD", 40)
GREEDY = ForecastOptions(pred_len=4, top_k=1, seed=0)
SEED = 1  # of crypto v1's weights


@pytest.fixture
def parts(tiny_base, tmp_path, monkeypatch):
    """Every part of a service, wired by hand; crypto v1 loaded, nothing else."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = ServeSettings(base_model=str(tiny_base), tracking_uri=f"http://127.0.0.1:{free_port()}",
                             cache_dir=tmp_path / "cache", lock_dir=tmp_path / "locks", poll_interval_s=3600,
                             api_token=None)
    base = BaseModelRef.resolve(settings.base_model)
    pool = AdapterPool(base)
    bundle = build_bundle(tiny_base, tmp_path / "crypto-v1", seed=SEED)
    pool.install("crypto", "kronos-lora-crypto", "1", "production", bundle, metadata={},
                 digest=bundle_digest(bundle), source="registry", tags={"val_mae": "0.02"})
    watcher = RegistryWatcher(settings, base, RegistrySource(Tracking.connect(settings.tracking_uri, check=False)),
                              VersionCache(settings.cache_dir), pool)
    cpu = CpuShare(settings)
    holder = {}
    batcher = Batcher(lambda jobs: holder["forecasting"].run_batch(jobs), max_batch_size=8, max_batch_wait_s=0.0,
                      max_queue_wait_s=60.0)
    forecasting = Forecasting(settings, settings.limits, pool, watcher, cpu, batcher, overrides={},
                              calendar=EventCalendar())
    holder["forecasting"] = forecasting
    batcher.start()
    yield {"settings": settings, "base": base, "pool": pool, "watcher": watcher, "cpu": cpu, "batcher": batcher,
           "forecasting": forecasting, "bundle": bundle, "tiny_base": tiny_base}
    batcher.stop()


def test_forecasting_answers_each_series_with_its_classs_model_and_names_bad_bars_alone(parts, tmp_path):
    forecasting = parts["forecasting"]
    bad = FRAME.copy()
    bad.loc[5, "high"] = bad.loc[5, "low"] - 1.0  # high below low: that series alone fails
    now = datetime(2026, 12, 7, tzinfo=timezone.utc)
    crypto, equity, broken = forecasting.submit(
        [SeriesInput("BTCUSD", FRAME), SeriesInput("AAPL", sample_frame("AAPL", 40)), SeriesInput("ETHUSD", bad)],
        GREEDY, now=now).result()
    assert (crypto.model.served_as, crypto.model.version) == ("crypto", "1")
    np.testing.assert_allclose(
        crypto.result.mean["close"].to_numpy(),
        expected_forecast(parts["tiny_base"], SEED, FRAME, 4, symbol="BTCUSD", asset_class="crypto",
                          data_dir=tmp_path, top_k=1, seed=0)["close"].to_numpy(), rtol=1e-5)
    # Equity has no version loaded: the bare base answers, saying why; the registry was never read.
    assert equity.model.served_as == "base" and equity.model.registered_model is None
    assert any("bare base model" in w for w in equity.warnings)
    assert any("registry stale" in w for w in crypto.warnings)
    assert isinstance(broken, ItemError) and broken.field == "bars" and "row 5" in str(broken.error)


def test_forecasting_refuses_a_request_over_the_limits_before_queueing_it(parts):
    with pytest.raises(DataError, match="no series"):
        parts["forecasting"].submit([], GREEDY, now=datetime.now(timezone.utc))
    assert parts["batcher"].state().jobs == 0


def test_the_watcher_refuses_a_cached_version_on_another_base_and_reports_it(parts, other_base_bundle):
    watcher, pool = parts["watcher"], parts["pool"]
    pool.remove("crypto")
    watcher.cache.store("kronos-lora-crypto", "5", other_base_bundle,
                        tags={"asset_class": "crypto", **digest_tags(other_base_bundle)})
    watcher.cache.record_resolved("crypto", "kronos-lora-crypto", "5", "production", datetime.now(timezone.utc))
    assert watcher.refresh(cold=True) == {}  # the registry cannot be read: the cache is tried
    assert "crypto" not in pool.served
    [refusal] = watcher.refusals()
    assert (refusal["label"], refusal["version"]) == ("crypto", "5") and "was trained on" in refusal["reason"]
    assert watcher.unavailable() == {"crypto": f"kronos-lora-crypto v5 was refused ({refusal['reason']})"}
    assert watcher.counts() == ({}, {"crypto": 1})
    # The outage's start stays put while failures go on.
    first = watcher.failing_since
    watcher.refresh()
    assert watcher.failing_since == first and watcher.last_failure >= first
    assert watcher.freshness(first + timedelta(minutes=5)).stale


def test_health_reports_what_the_parts_hold(parts):
    p = parts
    report = health_report(datetime.now(timezone.utc), settings=p["settings"], base=p["base"], started_at=None,
                           pool=p["pool"], watcher=p["watcher"], batcher=p["batcher"], cpu=p["cpu"])
    assert report["status"] == "degraded"  # equity and forex answered by the base
    assert report["served"]["crypto"]["version"] == "1" and report["served"]["equity"] is None
    assert report["routes"]["crypto"]["served_as"] == "crypto" and report["routes"]["equity"]["served_as"] == "base"
    assert report["device"]["training_busy"] is False and report["queue"]["max_batch_size"] == 8
    assert {c: r.label for c, r in routes(p["pool"], p["watcher"], p["settings"]).items()}["crypto"] == "crypto"


def test_the_cpu_share_follows_the_training_lock(parts):
    cpu, settings = parts["cpu"], parts["settings"]
    assert cpu.check() is False and cpu.threads() == settings.inference_threads
    with training_lock(settings.lock_dir, job="a test fine-tune"):
        assert cpu.check() is True
        assert cpu.threads() == settings.busy_threads and cpu.nice() >= settings.busy_nice
    assert cpu.check() is False


@pytest.fixture
def other_base_bundle(tmp_path):
    """An adapter trained on a base of another width."""
    import dataclasses

    from kronos_rolling.model.config import MODEL_SIZES
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.tokenizer import KronosTokenizer

    folder = tmp_path / "other-base"
    spec = MODEL_SIZES["tiny"]
    torch.manual_seed(1)
    KronosTokenizer.from_config(spec.tokenizer).save_pretrained(folder / "tokenizer")
    Kronos.from_config(dataclasses.replace(spec.predictor, d_model=32, ff_dim=64)).save_pretrained(folder / "predictor")
    return build_bundle(folder, tmp_path / "foreign", seed=9)
