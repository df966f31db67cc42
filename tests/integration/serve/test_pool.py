"""One base, many adapters: exact forecasts per adapter, one copy of the base, atomic swaps
under concurrent forecasts, refusals that keep the previous version; and the service's
cold start without a registry (bare base with a warning, foreign-base versions refused)
through the real FastAPI app in-process."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from support.serve import (
    build_bundle,
    expected_forecast,
    make_data_dir,
    sample_frame,
)

from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.model.forecast import ForecastGroup
from kronos_rolling.model.lora import BASE_ROWS
from kronos_rolling.files import bundle_digest
from kronos_rolling.serve.pool import AdapterPool

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


def install(pool: AdapterPool, label: str, version: str, bundle) -> None:
    pool.install(label, f"kronos-lora-{label}", version, "production", bundle, metadata={},
                 digest=bundle_digest(bundle), source="registry")


def forecast(pool: AdapterPool, label: str | None, event_ids=None) -> tuple[str | None, np.ndarray]:
    def work(adapters, names, forecaster):
        adapter = adapters[0]
        group = ForecastGroup([FRAME], seed=GREEDY["seed"], adapter=names[0],
                              event_embedding=adapter.event_embedding if adapter else None,
                              event_ids=None if event_ids is None else [event_ids])
        [[result]] = forecaster.forecast_groups([group], PRED_LEN, top_k=GREEDY["top_k"])
        return (adapter.version if adapter else None), result.mean["close"].to_numpy()

    return pool.run(lambda served: [served[label] if label else None], work)


def alone(tiny_base, data_dir, seed):
    return expected_forecast(tiny_base, seed, FRAME, PRED_LEN, symbol="BTCUSD", asset_class="crypto",
                             data_dir=data_dir, **GREEDY)["close"].to_numpy()


def event_ids(pool_label_vocab, data_dir):

    from kronos_rolling.data.store import DataStore

    return DataStore(data_dir).events().forecast_event_ids("BTCUSD", "crypto", FRAME["timestamp"], PRED_LEN,
                                                           pool_label_vocab)


def test_forecasts_run_one_at_a_time_each_with_the_adapters_it_picked(tiny_base, bundles):
    """The batcher decodes one batch after another; the pool holds any other caller until one ends."""
    pool = AdapterPool(BaseModelRef.resolve(str(tiny_base)), "cpu")
    install(pool, "crypto", "1", bundles[1])
    install(pool, "pooled", "1", bundles[4])
    spans: dict[str, tuple[float, float, list]] = {}
    picks = {"a1": ["crypto"], "a2": ["crypto", "pooled"], "b": ["pooled"], "base": [None, "crypto"]}

    def job(name: str):
        def work(adapters, names, forecaster):
            started = time.perf_counter()
            time.sleep(0.2)
            spans[name] = (started, time.perf_counter(), names)

        pool.run(lambda served: [served[label] if label else None for label in picks[name]], work)

    threads = [threading.Thread(target=job, args=(name,)) for name in picks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(spans.values())
    assert all(earlier[1] <= later[0] for earlier, later in zip(ordered, ordered[1:]))  # never two at once
    assert {name: spans[name][2] for name in picks} == {
        "a1": ["crypto-v1"], "a2": ["crypto-v1", "pooled-v1"], "b": ["pooled-v1"], "base": [BASE_ROWS, "crypto-v1"]}


def test_swaps_during_concurrent_forecasts_never_fail_or_mix_versions(tiny_base, bundles, data_dir):
    pool = AdapterPool(BaseModelRef.resolve(str(tiny_base)), "cpu")
    install(pool, "crypto", "1", bundles[1])
    install(pool, "pooled", "4", bundles[4])
    ids = event_ids(pool.served["crypto"].vocabulary, data_dir)
    want = {str(seed): alone(tiny_base, data_dir, seed) for seed in (1, 2, 3)}
    want_pooled, want_bare = alone(tiny_base, data_dir, 4), alone(tiny_base, data_dir, None)
    seen, others, errors, stop = [], [], [], threading.Event()

    def hammer(label):
        try:
            while not stop.is_set():
                result = forecast(pool, label, ids if label else None)
                (seen if label == "crypto" else others).append((label, *result))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(label,)) for label in ("crypto", "crypto", "pooled", None)]
    for thread in threads:
        thread.start()
    for version in ("2", "3", "1", "3", "2", "1"):
        mark = len(seen)
        install(pool, "crypto", version, bundles[int(version)])
        while len(seen) < mark + 2 and not errors:
            stop.wait(0.005)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:1]
    assert len({version for version, _ in [(v, c) for _, v, c in seen]}) == 3
    for _, version, got in seen:
        np.testing.assert_allclose(got, want[version], rtol=1e-6)
    assert {label for label, _, _ in others} == {"pooled", None}
    for label, _, got in others:  # the bare base and pooled, switched in and out all along
        np.testing.assert_allclose(got, want_pooled if label else want_bare, rtol=1e-6)
    assert sorted(pool.peft.peft_config) == ["crypto-v1", "pooled-v4"]  # swapped-out adapters are deleted
    # Aliases removed: the last adapter goes, the base still answers, a new one can come.
    pool.remove("crypto")
    pool.remove("pooled")
    assert not pool.served and pool.peft is None
    np.testing.assert_allclose(forecast(pool, None)[1], want_bare, rtol=1e-6)
    install(pool, "pooled", "4", bundles[4])
    np.testing.assert_allclose(forecast(pool, "pooled", ids)[1], want_pooled, rtol=1e-6)
