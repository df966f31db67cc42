"""DataFrame-level forecasting: `Forecaster` turns bars into model inputs and forecasts back
into bars (timestamps, prices, volume), one series or many at once.

The token-level work is `model/generate.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from kronos_rolling.data.bars import MIN_BARS, clean_bars, read_bars_file
from kronos_rolling.data.calendars import future_bar_times
from kronos_rolling.data.features import (
    FEATURE_COLUMNS,
    denormalize,
    normalize_window,
    time_features,
)
from kronos_rolling.errors import ConfigError, DataError, ModelError
from kronos_rolling.model.config import default_max_context
from kronos_rolling.model.device import resolve_device
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.generate import _unwrap, check_pair, check_sampling, generate
from kronos_rolling.model.quantiles import path_quantiles, quantile_levels, quantile_name
from kronos_rolling.model.tokenizer import KronosTokenizer


PRECISIONS = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ForecastResult:
    """Forecast of one series, in price units.

    mean: `timestamp` + open..amount, the average over sample paths (the reference's output).
    point: the same columns, the median over sample paths, column by column: the point
    forecast the evaluation scores (docs/evaluation.md) and every entry point returns.
    paths: one such frame per sample path (when asked). quantiles: one frame per level asked
    (model/quantiles.py: `p10`, `p5`, ...) across the paths; close_paths: (K, H) the paths'
    closes, so a caller can apply a calibration to the close quantiles (when quantiles were asked).
    """

    mean: pd.DataFrame
    paths: list[pd.DataFrame] | None = None
    quantiles: dict[str, pd.DataFrame] | None = None
    point: pd.DataFrame | None = None
    close_paths: np.ndarray | None = None

    def to_frame(self) -> pd.DataFrame:
        """The point forecast, plus `<column>_<p10|p5|...>` columns when quantiles were computed."""
        frame = (self.point if self.point is not None else self.mean).copy()
        for name, band in (self.quantiles or {}).items():
            for column in FEATURE_COLUMNS:
                frame[f"{column}_{name}"] = band[column].to_numpy()
        return frame

    def set_close_quantiles(self, levels, values: np.ndarray) -> None:
        """Replace the close of each quantile frame (e.g. with calibrated values, (len(levels), H))."""
        for level, row in zip(levels, np.asarray(values)):
            self.quantiles[quantile_name(level)]["close"] = row


@dataclass
class PreparedSeries:
    """One series ready for the model: normalised lookback, calendar features, scaler."""

    x_norm: np.ndarray  # (L, 6)
    x_stamp: np.ndarray  # (L, 5)
    y_stamp: np.ndarray  # (H, 5)
    future: pd.Series  # H future timestamps
    mean: np.ndarray
    std: np.ndarray
    event_ids: np.ndarray | None = field(default=None)


def _utc_times(values, label: str) -> pd.Series:
    try:
        return pd.Series(pd.to_datetime(pd.Series(list(values)), utc=True), name="timestamp")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{label}: cannot read future_timestamps as dates ({exc})") from exc


def prepare_series(bars: pd.DataFrame, pred_len: int, *, lookback: int | None = None,
                   future_timestamps=None, event_ids=None, label: str = "bars",
                   asset_class: str | None = None) -> PreparedSeries:
    """Check one DataFrame of bars (`bars.clean_bars`) and turn it into model inputs (pure: no model needed).

    Future timestamps default to the series' own calendar (`calendars.future_bar_times`;
    `asset_class` adds its market's hours and holidays).
    """
    if lookback is not None and lookback < MIN_BARS:
        raise ConfigError(f"lookback must be >= {MIN_BARS}, got {lookback}")
    frame = clean_bars(bars, label)
    n_bars = len(frame)
    if lookback is not None and n_bars < lookback:
        raise DataError(f"{label}: {n_bars} bar(s) but {lookback} needed for a lookback of {lookback}; "
                        "pass more history or a shorter lookback")
    if lookback is not None:
        frame = frame.iloc[n_bars - lookback:].reset_index(drop=True)
    stamps = frame["timestamp"]

    if future_timestamps is None:
        future = pd.Series(future_bar_times(stamps, pred_len, asset_class), name="timestamp")
    else:
        future = _utc_times(future_timestamps, label)
        if len(future) != pred_len:
            raise DataError(f"{label}: {len(future)} future timestamps for a horizon of {pred_len}; pass exactly {pred_len}")
        steps = future.diff().iloc[1:]
        if future.isna().any() or (steps <= pd.Timedelta(0)).any():
            raise DataError(f"{label}: future timestamps must be distinct and ascending; got {list(future)}")
        if future.iloc[0] <= stamps.iloc[-1]:
            raise DataError(
                f"{label}: first future timestamp {future.iloc[0]} is not after the last bar {stamps.iloc[-1]}"
            )

    events = None
    if event_ids is not None:
        events = np.asarray(event_ids)
        if events.shape != (n_bars + pred_len,):
            raise DataError(
                f"{label}: event_ids has {events.shape} entries; need one per bar plus one per "
                f"forecast bar ({n_bars} + {pred_len} = {n_bars + pred_len})"
            )
        events = events[n_bars - len(frame):].astype(np.int64)

    values = frame[FEATURE_COLUMNS].to_numpy(dtype=np.float64)
    x_norm, mean, std = normalize_window(values, len(values))
    return PreparedSeries(
        x_norm=x_norm,
        x_stamp=time_features(stamps),
        y_stamp=time_features(future),
        future=future,
        mean=mean,
        std=std,
        event_ids=events,
    )


class Forecaster:
    """Forecast DataFrames of bars with a Kronos predictor (plain or peft-wrapped) and its tokenizer."""

    def __init__(self, model, tokenizer: KronosTokenizer, device: str = "auto", max_context: int | None = None,
                 event_embedding: EventEmbedding | None = None, precision: str = "float32"):
        kronos = _unwrap(model)
        check_pair(kronos, tokenizer)
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; use one of {sorted(PRECISIONS)}")
        self.device = resolve_device(device)
        if precision != "float32" and self.device.type != "cuda":
            raise ConfigError(f"precision {precision} needs a CUDA device; on CPU use float32")
        if event_embedding is not None and event_embedding.d_model != kronos.d_model:
            raise ModelError(
                f"event embedding width {event_embedding.d_model} does not fit the predictor's d_model "
                f"{kronos.d_model}; use the event embedding trained with this predictor"
            )
        self.model = model.to(self.device)
        self.tokenizer = tokenizer.to(self.device)
        self.event_embedding = event_embedding.to(self.device) if event_embedding is not None else None
        if max_context is not None and max_context < 1:
            raise ConfigError(f"max_context must be >= 1 bar, got {max_context}")
        self.max_context = default_max_context(kronos.config) if max_context is None else max_context
        self.autocast_dtype = PRECISIONS[precision]

    def forecast(self, bars, pred_len: int, future_timestamps=None, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 0.9, samples: int = 1, seed: int | None = None, event_ids=None,
                 quantiles=False, return_paths: bool = False, lookback: int | None = None,
                 asset_class=None):
        """Forecast `pred_len` bars after each series.

        bars: a DataFrame or the path of a CSV of bars (-> ForecastResult), or a list of
        them of any lengths (-> list of ForecastResult); every series passes the one bar
        validator (`bars.clean_bars`). future_timestamps / event_ids / asset_class: per
        series (a list for a list of series; one asset class may stand for all); future
        timestamps default to the series' own calendar and its asset class's market hours,
        event ids cover the bars plus the horizon. lookback: use only the last N bars
        (default: all). top_k=1 is greedy and deterministic; seed makes sampling
        reproducible. quantiles: levels (model/quantiles.py: a list such as [0.05, 0.5, 0.95],
        or True for p10/p50/p90) from the `samples` paths (the entry points ask for at least
        `quantiles.paths_for` of them).
        """
        if isinstance(bars, (str, os.PathLike)):
            bars = read_bars_file(bars)
        single = isinstance(bars, pd.DataFrame)
        series = [bars] if single else [read_bars_file(b) if isinstance(b, (str, os.PathLike)) else b for b in bars]
        if not series:
            raise DataError("no series to forecast: pass a DataFrame or a non-empty list of DataFrames")
        futures = [future_timestamps] if single else (future_timestamps or [None] * len(series))
        events = [event_ids] if single else (event_ids or [None] * len(series))
        classes = [asset_class] * len(series) if asset_class is None or isinstance(asset_class, str) else asset_class
        if len(futures) != len(series) or len(events) != len(series) or len(classes) != len(series):
            raise DataError(
                f"{len(series)} series but {len(futures)} future_timestamps / {len(events)} event_ids / "
                f"{len(classes)} asset_class lists; pass one per series"
            )
        if any(e is not None for e in events) and self.event_embedding is None:
            raise ConfigError("event_ids given but this Forecaster has no event_embedding")
        levels = quantile_levels(quantiles)
        check_sampling(temperature, top_k, top_p, samples)
        if pred_len < 1:
            raise ConfigError(f"pred_len must be >= 1 bar, got {pred_len}")
        prepared = [
            prepare_series(frame, pred_len, lookback=lookback, future_timestamps=future, event_ids=ev,
                           label="bars" if single else f"series {i}", asset_class=cls)
            for i, (frame, future, ev, cls) in enumerate(zip(series, futures, events, classes))
        ]
        if pred_len > self.max_context:
            raise ConfigError(
                f"horizon of {pred_len} bars exceeds the model's context of {self.max_context} bars; "
                f"forecast at most {self.max_context} bars"
            )

        longest = max(len(p.x_norm) for p in prepared)
        lengths = [len(p.x_norm) for p in prepared]

        def left_pad(array: np.ndarray, size: int) -> np.ndarray:
            pad = np.zeros((size - len(array), *array.shape[1:]), dtype=array.dtype)
            return np.concatenate([pad, array])

        x_norm = torch.from_numpy(np.stack([left_pad(p.x_norm, longest) for p in prepared]))
        x_stamp = torch.from_numpy(np.stack([left_pad(p.x_stamp, longest) for p in prepared]))
        y_stamp = torch.from_numpy(np.stack([p.y_stamp for p in prepared]))
        event_tensor = None
        if self.event_embedding is not None:
            event_tensor = torch.from_numpy(np.stack([
                left_pad(p.event_ids if p.event_ids is not None else np.zeros(len(p.x_norm) + pred_len, np.int64),
                         longest + pred_len)
                for p in prepared
            ]))
        paths = generate(
            self.model, self.tokenizer, x_norm, x_stamp, y_stamp, pred_len,
            temperature=temperature, top_k=top_k, top_p=top_p, samples=samples, generator=seed,
            max_context=self.max_context, event_ids=event_tensor,
            event_embedding=self.event_embedding if event_tensor is not None else None,
            lengths=None if min(lengths) == longest else lengths, autocast_dtype=self.autocast_dtype,
        ).numpy()

        results = [self._result(p, paths[i], levels, return_paths) for i, p in enumerate(prepared)]
        for i, result in enumerate(results):
            if not np.isfinite(result.mean[FEATURE_COLUMNS].to_numpy()).all():
                raise DataError(f"{'bars' if single else f'series {i}'}: the forecast is not finite; the bars' "
                                "values are too large or too spread to normalise (check the units)")
        return results[0] if single else results

    @staticmethod
    def _result(series: PreparedSeries, normalised_paths: np.ndarray, levels: tuple[float, ...],
                return_paths: bool):
        price_paths = denormalize(normalised_paths, series.mean, series.std)  # (S, H, 6)

        def frame(values: np.ndarray) -> pd.DataFrame:
            out = pd.DataFrame(values, columns=FEATURE_COLUMNS)
            out.insert(0, "timestamp", series.future.to_numpy())
            return out

        bands = path_quantiles(price_paths, levels) if levels else None  # (levels, H, 6)
        return ForecastResult(
            mean=frame(price_paths.mean(axis=0)),
            paths=[frame(path) for path in price_paths] if return_paths else None,
            quantiles={quantile_name(q): frame(band) for q, band in zip(levels, bands)} if levels else None,
            point=frame(np.median(price_paths, axis=0)),
            close_paths=price_paths[..., FEATURE_COLUMNS.index("close")] if levels else None,
        )
