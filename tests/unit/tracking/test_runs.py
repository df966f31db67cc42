"""What a training run records about its data: the window as an MLflow dataset, without a
deprecation warning from pandas, with the digest of the bars as stored."""

from __future__ import annotations

import warnings

import pandas as pd

from kronos_rolling.data.store import DataStore
from kronos_rolling.tracking.runs import training_dataset, window_frame


def test_the_training_window_is_logged_without_deprecation_warnings_and_digests_the_stored_bars():
    store = DataStore()
    start, end = pd.Timestamp("2017-10-01", tz="UTC"), pd.Timestamp("2017-12-01", tz="UTC")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        warnings.filterwarnings("error", category=getattr(pd.errors, "Pandas4Warning", DeprecationWarning))
        dataset = training_dataset(store, ["BTCUSD", "EURUSD"], start, end, name="crypto-window")
        entity = dataset._to_mlflow_entity()  # what the run logs, schema included
    assert '"timestamp"' in entity.schema and entity.digest == dataset.digest
    stored = window_frame(store, ["BTCUSD", "EURUSD"], start, end)
    assert stored["timestamp"].dt.tz is not None, "the store's bars are tz-aware; only MLflow's copy is not"
    again = training_dataset(store, ["BTCUSD", "EURUSD"], start, end, name="another name")
    assert again.digest == dataset.digest and len(dataset.df) == len(stored)
