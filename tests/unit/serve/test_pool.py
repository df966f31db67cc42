"""One base, many adapters: exact forecasts per adapter, one copy of the base, atomic swaps
under concurrent forecasts, refusals that keep the previous version; and the service's
cold start without a registry (bare base with a warning, foreign-base versions refused)
through the real FastAPI app in-process."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from support.serve import (
    bars_json,
    build_bundle,
    expected_forecast,
    make_data_dir,
    sample_frame,
)

from kronos_rolling.errors import ModelError
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.forecast import ForecastGroup
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.serve.app import create_app
from kronos_rolling.files import bundle_digest
from kronos_rolling.serve.pool import AdapterPool
from kronos_rolling.serve.service import PredictorService
from kronos_rolling.settings import ServeSettings
from kronos_rolling.tracking.server import free_port

torch.set_num_threads(1)


FRAME = sample_frame("BTCUSD", 40)


PRED_LEN = 4


GREEDY = {"top_k": 1, "seed": 0}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("pool-data"), [FRAME["timestamp"].iloc[-2]])


@pytest.fixture(scope="module")
def bundles(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("pool-bundles")
    return {seed: build_bundle(tiny_base, root / f"b{seed}", seed) for seed in (1, 2, 3, 4)}


@pytest.fixture(scope="module")
def other_base(tmp_path_factory):
    """A base of another width: nothing trained on it fits the tiny base."""
    folder = tmp_path_factory.mktemp("other-base")
    spec = MODEL_SIZES["tiny"]
    torch.manual_seed(1)
    KronosTokenizer.from_config(spec.tokenizer).save_pretrained(folder / "tokenizer")
    Kronos.from_config(dataclasses.replace(spec.predictor, d_model=32, ff_dim=64)).save_pretrained(folder / "predictor")
    return folder


def install(pool: AdapterPool, label: str, version: str, bundle) -> None:
    pool.install(label, f"kronos-lora-{label}", version, "production", bundle, metadata={},
                 digest=bundle_digest(bundle), source="registry")


def group(adapter, name, event_ids=None) -> ForecastGroup:
    return ForecastGroup([FRAME], seed=GREEDY["seed"], adapter=name,
                         event_embedding=adapter.event_embedding if adapter else None,
                         event_ids=None if event_ids is None else [event_ids])


def forecast(pool: AdapterPool, label: str | None, event_ids=None) -> tuple[str | None, np.ndarray]:
    def work(adapters, names, forecaster):
        [[result]] = forecaster.forecast_groups([group(adapters[0], names[0], event_ids)], PRED_LEN, top_k=1)
        return (adapters[0].version if adapters[0] else None), result.mean["close"].to_numpy()

    return pool.run(lambda served: [served[label] if label else None], work)


def alone(tiny_base, data_dir, seed):
    return expected_forecast(tiny_base, seed, FRAME, PRED_LEN, symbol="BTCUSD", asset_class="crypto",
                             data_dir=data_dir, **GREEDY)["close"].to_numpy()


def event_ids(pool_label_vocab, data_dir):

    from kronos_rolling.data.store import DataStore

    return DataStore(data_dir).events().forecast_event_ids("BTCUSD", "crypto", FRAME["timestamp"], PRED_LEN,
                                                           pool_label_vocab)


def storage_bytes(pool: AdapterPool) -> tuple[int, int]:
    """(bytes of distinct parameter storages, bytes of LoRA + event-embedding parameters)."""
    seen, total, adapters = set(), 0, 0
    modules = [pool.peft] + [a.event_embedding for a in pool.served.values()]
    for module in modules:
        for name, p in module.named_parameters():
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            size = p.numel() * p.element_size()
            total += size
            if "lora_" in name or isinstance(module, EventEmbedding):
                adapters += size
    return total, adapters


def test_every_adapter_beside_the_one_base_forecasts_exactly_as_it_does_alone(tiny_base, bundles, data_dir):
    pool = AdapterPool(BaseModelRef.resolve(str(tiny_base)), "cpu")
    _, bare_before = forecast(pool, None)
    for label, seed in zip(("crypto", "forex_commodity", "equity", "pooled"), (1, 2, 3, 4)):
        install(pool, label, "1", bundles[seed])
    for label, seed in zip(("crypto", "forex_commodity", "equity", "pooled"), (1, 2, 3, 4)):
        ids = event_ids(pool.served[label].vocabulary, data_dir)
        assert ids.any()  # the event embedding takes part
        _, got = forecast(pool, label, ids)
        np.testing.assert_allclose(got, alone(tiny_base, data_dir, seed), rtol=1e-6)
    _, bare_after = forecast(pool, None)
    np.testing.assert_array_equal(bare_after, bare_before)  # the base is untouched by the adapters beside it
    np.testing.assert_allclose(bare_after, alone(tiny_base, data_dir, None), rtol=1e-6)


def test_more_adapters_add_only_their_own_weights_never_another_base(tiny_base, bundles):
    pool = AdapterPool(BaseModelRef.resolve(str(tiny_base)), "cpu")
    install(pool, "crypto", "1", bundles[1])
    one, one_adapter = storage_bytes(pool)
    for label, seed in (("forex_commodity", 2), ("equity", 3), ("pooled", 4)):
        install(pool, label, "1", bundles[seed])
    four, four_adapters = storage_bytes(pool)
    assert four_adapters == 4 * one_adapter
    assert four - one == 3 * one_adapter  # the base is counted once
    base = sum(p.numel() * p.element_size() for p in Kronos.from_pretrained(tiny_base / "predictor").parameters())
    assert one - one_adapter == base


def test_a_swap_waits_for_the_running_forecast_and_forecasts_after_it_get_the_new_version(tiny_base, bundles):
    """A forecast decodes wholly before or wholly after a swap; none is stuck at the gate."""
    pool = AdapterPool(BaseModelRef.resolve(str(tiny_base)), "cpu")
    install(pool, "crypto", "1", bundles[1])
    release, started, versions = threading.Event(), threading.Event(), []

    def slow(adapters, names, forecaster):
        started.set()
        release.wait(10)
        return adapters[0].version

    first = threading.Thread(target=lambda: versions.append(pool.run(lambda served: [served["crypto"]], slow)))
    first.start()
    assert started.wait(10)
    swap = threading.Thread(target=install, args=(pool, "crypto", "2", bundles[2]))
    swap.start()
    while not pool._swaps_waiting:  # the swap waits for the forecast that runs
        time.sleep(0.01)
    assert pool.served["crypto"].version == "1"
    # Started while the swap waits: they wait for it too, then run on v2.
    waiters = [threading.Thread(target=lambda: versions.append(forecast(pool, "crypto")[0])) for _ in range(2)]
    for thread in waiters:
        thread.start()
    release.set()
    for thread in (first, swap, *waiters):
        thread.join(timeout=30)
        assert not thread.is_alive(), "a forecast or the swap is stuck at the gate"
    assert sorted(versions) == ["1", "2", "2"]
    assert not pool._running and not pool._swaps_waiting


def test_one_forecast_serves_groups_of_different_adapters_and_the_bare_base(tiny_base, bundles, data_dir):
    """Requests for different classes share one decode: each group as its own adapter answers it alone."""
    pool = AdapterPool(BaseModelRef.resolve(str(tiny_base)), "cpu")
    for label, seed in (("crypto", 1), ("equity", 3)):
        install(pool, label, "1", bundles[seed])
    ids = {label: event_ids(pool.served[label].vocabulary, data_dir) for label in ("crypto", "equity")}

    def work(adapters, names, forecaster):
        groups = [group(adapter, name, None if adapter is None else ids[adapter.label])
                  for adapter, name in zip(adapters, names)]
        return forecaster.forecast_groups(groups, PRED_LEN, top_k=1)

    together = pool.run(lambda served: [served["crypto"], None, served["equity"]], work)
    got = [outcome[0].mean["close"].to_numpy() for outcome in together]
    np.testing.assert_allclose(got[0], alone(tiny_base, data_dir, 1), rtol=1e-5)
    np.testing.assert_allclose(got[1], alone(tiny_base, data_dir, None), rtol=1e-5)
    np.testing.assert_allclose(got[2], alone(tiny_base, data_dir, 3), rtol=1e-5)


def test_a_bundle_that_does_not_fit_the_base_is_refused_and_the_previous_version_kept(
        tiny_base, other_base, bundles, tmp_path):
    foreign = build_bundle(other_base, tmp_path / "foreign", seed=9)
    # Same event-embedding width as the tiny base, so only peft's own load can notice.
    disguised = build_bundle(other_base, tmp_path / "disguised", seed=9)
    (disguised / "event_embedding.safetensors").write_bytes((bundles[1] / "event_embedding.safetensors").read_bytes())

    pool = AdapterPool(BaseModelRef.resolve(str(tiny_base)), "cpu")
    _, bare = forecast(pool, None)
    with pytest.raises(ModelError):  # first adapter: peft injects into the base itself
        install(pool, "crypto", "7", disguised)
    assert pool.peft is None and not pool.served
    np.testing.assert_array_equal(forecast(pool, None)[1], bare)  # the base was restored

    install(pool, "crypto", "1", bundles[1])
    _, before = forecast(pool, "crypto")
    with pytest.raises(ModelError, match="event embedding has width 32"):
        install(pool, "crypto", "8", foreign)
    with pytest.raises(ModelError, match="cannot load the LoRA adapter"):
        install(pool, "crypto", "9", disguised)
    assert sorted(pool.peft.peft_config) == ["crypto-v1"]
    version, after = forecast(pool, "crypto")
    assert version == "1"
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(forecast(pool, None)[1], bare)


def test_cold_start_without_registry_or_cache_serves_the_bare_base_with_a_warning_and_refuses_a_foreign_base(
        tiny_base, other_base, bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("KRONOS_LOCK_DIR", str(tmp_path / "locks"))
    settings = ServeSettings(base_model=str(tiny_base), tracking_uri=f"http://127.0.0.1:{free_port()}",
                             cache_dir=tmp_path / "cache", poll_interval_s=3600, api_token=None)
    service = PredictorService(settings)
    # The last resolved crypto version in the cache was trained on another base.
    foreign = build_bundle(other_base, tmp_path / "foreign", seed=9)
    from kronos_rolling.files import digest_tags

    service.cache.store("kronos-lora-crypto", "5", foreign, tags={"asset_class": "crypto", **digest_tags(foreign)})
    service.cache.record_resolved("crypto", "kronos-lora-crypto", "5", "production",
                                  __import__("datetime").datetime.now(__import__("datetime").timezone.utc))
    with TestClient(create_app(service)) as client:
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["registry"]["stale"]
        assert all(v is None for v in health["served"].values())
        [refusal] = health["refused"]
        assert refusal["version"] == "5" and "was trained on" in refusal["reason"]
        assert "refusing to serve it on the wrong base" in refusal["reason"]
        assert any("bare base model" in w for w in health["warnings"])
        response = client.post("/forecast", json={"symbol": "BTCUSD", "bars": bars_json(FRAME),
                                                  "pred_len": PRED_LEN, **GREEDY})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["served_as"] == "base" and body["model"]["registered_model"] is None
        assert "kronos-lora-crypto v5 was refused" in body["model"]["fallback"]
        assert any("answered by the bare base model" in w for w in body["warnings"])
        assert any("registry stale" in w for w in body["warnings"])
        got = np.array([row["close"] for row in body["forecast"]])
        np.testing.assert_allclose(got, expected_forecast(tiny_base, None, FRAME, PRED_LEN, symbol="BTCUSD",
                                                          asset_class="crypto", data_dir=tmp_path, **GREEDY)[
            "close"].to_numpy(), rtol=1e-5)
