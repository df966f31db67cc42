"""Bar features shared by training, evaluation and forecasting.

Kronos sees six columns per bar (prices, volume, amount), z-scored over the lookback
only and clipped, plus five calendar features. Keeping both here means the data set a
model is trained on and the input it forecasts from can never drift apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PRICE_COLUMNS = ["open", "high", "low", "close"]
FEATURE_COLUMNS = PRICE_COLUMNS + ["volume", "amount"]
TIME_FEATURE_COLUMNS = ["minute", "hour", "weekday", "day", "month"]
CLIP = 5.0
STD_EPS = 1e-5


def fill_volume_amount(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill the optional columns as the reference predictor does.

    No volume: volume and amount are 0. Volume but no amount: amount = volume x mean price.
    """
    frame = frame.copy()
    if "volume" not in frame.columns:
        frame["volume"] = 0.0
        frame["amount"] = 0.0
    elif "amount" not in frame.columns:
        frame["amount"] = frame["volume"] * frame[PRICE_COLUMNS].mean(axis=1)
    return frame


def time_features(timestamps) -> np.ndarray:
    """(n, 5) float32 array of minute, hour, weekday, day, month for each timestamp."""
    ts = pd.DatetimeIndex(pd.to_datetime(timestamps))
    return np.stack(
        [ts.minute, ts.hour, ts.day_of_week, ts.day, ts.month], axis=1
    ).astype(np.float32)


def normalize_window(values: np.ndarray, lookback: int, clip: float = CLIP):
    """Z-score a (T, F) window with statistics of its first `lookback` rows only.

    Rows after the lookback (the forecast horizon) are scaled with the same statistics,
    so nothing from the future reaches the normaliser. Returns (normalised, mean, std).
    """
    values = np.asarray(values, dtype=np.float32)
    past = values[:lookback]
    mean = past.mean(axis=0)
    std = past.std(axis=0)
    normalised = np.clip((values - mean) / (std + STD_EPS), -clip, clip)
    return normalised.astype(np.float32), mean, std


def denormalize(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return values * (std + STD_EPS) + mean
