"""DataFrame-level forecasting: `Forecaster` turns bars into model inputs and forecasts back
into bars (timestamps, prices, volume), one series or many at once.

`Forecaster.forecast_groups` decodes several requests in one generation: each
`ForecastGroup` brings its series, its number of sample paths, its own seed and (on a
peft model holding several adapters) its own adapter and event embedding, and gets back
exactly what it would get alone. `Forecaster.forecast` is one group.

Every forecast row is a valid bar (`valid_bars`): the model forecasts the six columns
independently, so raw outputs can have a high below the low or a negative volume.

The token-level work is `model/generate.py`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from kronos_rolling.data.bars import MIN_BARS, clean_bars, read_bars_file
from kronos_rolling.data.calendars import future_bar_times
from kronos_rolling.data.features import (
    FEATURE_COLUMNS,
    PRICE_COLUMNS,
    denormalize,
    normalize_window,
    time_features,
)
from kronos_rolling.errors import ConfigError, DataError, ModelError
from kronos_rolling.model.config import default_max_context
from kronos_rolling.model.device import resolve_device
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.generate import RowSeeds, check_pair, check_sampling, generate, unwrap
from kronos_rolling.model.lora import rows_by_adapter
from kronos_rolling.model.quantiles import path_quantiles, quantile_levels, quantile_name
from kronos_rolling.model.tokenizer import KronosTokenizer

PRICE_FLOOR = 1e-3
"""A forecast price never goes below this fraction of the lookback's lowest price (> 0)."""


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
    point: pd.DataFrame
    paths: list[pd.DataFrame] | None = None
    quantiles: dict[str, pd.DataFrame] | None = None
    close_paths: np.ndarray | None = None
    price_floor: float = 0.0  # the lowest price a bar of this forecast may hold (valid_bars)

    def to_frame(self) -> pd.DataFrame:
        """The point forecast, plus `<column>_<p10|p5|...>` columns when quantiles were computed."""
        frame = self.point.copy()
        for name, band in (self.quantiles or {}).items():
            for column in FEATURE_COLUMNS:
                frame[f"{column}_{name}"] = band[column].to_numpy()
        return frame

    def set_close_quantiles(self, levels, values: np.ndarray) -> None:
        """Replace the close of each quantile frame (e.g. with calibrated values, (len(levels), H)),
        each row kept a valid bar (valid_bars: the close raised to the price floor, the high and
        the low widened to hold it). Non-decreasing closes along the levels keep every column so."""
        for level, row in zip(levels, np.asarray(values, dtype=np.float64)):
            band = self.quantiles[quantile_name(level)]
            rows = np.array(band[FEATURE_COLUMNS].to_numpy(dtype=np.float64), copy=True)
            rows[:, FEATURE_COLUMNS.index("close")] = row
            band[FEATURE_COLUMNS] = valid_bars(rows, self.price_floor) if self.price_floor > 0 else rows


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
    price_floor: float = 0.0  # PRICE_FLOOR x the lookback's lowest price


def valid_bars(values: np.ndarray, price_floor: float) -> np.ndarray:
    """Forecast rows (..., 6: open, high, low, close, volume, amount in price units) as valid bars.

    The model forecasts each column on its own, so a raw row can have its high below its
    low or a negative volume. Here, in this order: every price is raised to `price_floor`
    (> 0); the high becomes max(open, high, close) and the low min(open, low, close); volume
    and amount are raised to 0. Rows already valid are returned unchanged. The mean and
    the quantiles of valid paths are valid bars too (each is monotone in every column);
    they are passed through here again all the same, against float rounding.
    """
    if not price_floor > 0:
        raise ModelError(f"price_floor must be > 0, got {price_floor!r}")
    out = np.array(values, dtype=np.float64, copy=True)
    prices = np.maximum(out[..., :4], price_floor)
    open_, high, low, close = (prices[..., i] for i in range(4))
    out[..., 0] = open_
    out[..., 1] = np.maximum.reduce([open_, high, close])
    out[..., 2] = np.minimum.reduce([open_, low, close])
    out[..., 3] = close
    out[..., 4:] = np.maximum(out[..., 4:], 0.0)
    return out


@dataclass
class ForecastGroup:
    """Series decoded together with other groups, each as it would be alone.

    bars: the series (DataFrames or CSV paths). samples: sample paths per series. seed:
    one generator over the group's paths (None: unseeded). adapter: on a peft model with
    several adapters, the one this group runs (lora.BASE_ROWS: the bare base; None: the
    model as it is set). event_embedding: the group's own (None: the Forecaster's).
    future_timestamps / event_ids / asset_class: per series, as `Forecaster.forecast` takes them.
    """

    bars: list
    samples: int = 1
    seed: int | None = None
    adapter: str | None = None
    event_embedding: EventEmbedding | None = None
    event_ids: list | None = None
    future_timestamps: list | None = None
    asset_class: str | list | None = None
    checked: bool = False  # the bars are clean_bars' output already: not checked again
    quantiles: object = None  # this group's levels (model/quantiles.py); None: forecast_groups' `quantiles`


def _utc_times(values, label: str) -> pd.Series:
    try:
        return pd.Series(pd.to_datetime(pd.Series(list(values)), utc=True), name="timestamp")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{label}: cannot read future_timestamps as dates ({exc})") from exc


def prepare_series(bars: pd.DataFrame, pred_len: int, *, lookback: int | None = None,
                   future_timestamps=None, event_ids=None, label: str = "bars",
                   asset_class: str | None = None, checked: bool = False) -> PreparedSeries:
    """Check one DataFrame of bars (`bars.clean_bars`) and turn it into model inputs (pure: no model needed).

    Future timestamps default to the series' own calendar (`calendars.future_bar_times`;
    `asset_class` adds its market's hours and holidays). checked: the bars are what
    `clean_bars` returned already (the service checks a request's bars as it arrives).
    """
    if lookback is not None and lookback < MIN_BARS:
        raise ConfigError(f"lookback must be >= {MIN_BARS}, got {lookback}")
    frame = bars if checked else clean_bars(bars, label)
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
        price_floor=PRICE_FLOOR * float(frame[PRICE_COLUMNS].to_numpy().min()),
    )


class Forecaster:
    """Forecast DataFrames of bars with a Kronos predictor (plain or peft-wrapped) and its tokenizer."""

    def __init__(self, model, tokenizer: KronosTokenizer, device: str = "auto", max_context: int | None = None,
                 event_embedding: EventEmbedding | None = None, precision: str = "float32"):
        kronos = unwrap(model)
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
        series = [bars] if single else list(bars)
        if not series:
            raise DataError("no series to forecast: pass a DataFrame or a non-empty list of DataFrames")
        group = ForecastGroup(series, samples, seed, event_ids=[event_ids] if single else event_ids,
                              future_timestamps=[future_timestamps] if single else future_timestamps,
                              asset_class=asset_class)
        [outcome] = self.forecast_groups([group], pred_len, temperature=temperature, top_k=top_k, top_p=top_p,
                                         quantiles=quantiles, return_paths=return_paths, lookback=lookback,
                                         labels=["bars"] if single else None)
        if isinstance(outcome, DataError):
            raise outcome
        return outcome[0] if single else outcome

    def forecast_groups(self, groups: list[ForecastGroup], pred_len: int, *, temperature: float = 1.0,
                        top_k: int = 0, top_p: float = 0.9, quantiles=False, return_paths: bool = False,
                        lookback: int | None = None, labels: list[str] | None = None
                        ) -> list[list[ForecastResult] | DataError]:
        """Forecast every group's series in one generation; per group its results (one per
        series), or the DataError that kept that group from a forecast (its forecast was not
        finite). Bad input raises before anything is decoded. labels: how errors name the
        series (default "series 0", "series 1", ... over all groups). quantiles: the levels of
        every group that names none of its own (`ForecastGroup.quantiles`).
        """
        levels = [quantile_levels(quantiles if g.quantiles is None else g.quantiles) for g in groups]
        check_sampling(temperature, top_k, top_p, [g.samples for g in groups] or [1])
        if pred_len < 1:
            raise ConfigError(f"pred_len must be >= 1 bar, got {pred_len}")
        routed = [g.adapter is not None for g in groups]
        if any(routed) and not (all(routed) and hasattr(self.model, "peft_config")):
            raise ConfigError("an adapter per group needs a peft model and an adapter (or lora.BASE_ROWS) "
                              "for every group")
        prepared, owners, embeddings, counts = [], [], [], []
        for index, group in enumerate(groups):
            series = [read_bars_file(b) if isinstance(b, (str, os.PathLike)) else b for b in group.bars]
            n = len(series)
            futures = group.future_timestamps or [None] * n
            events = group.event_ids or [None] * n
            classes = ([group.asset_class] * n if group.asset_class is None or isinstance(group.asset_class, str)
                       else group.asset_class)
            if not n or len(futures) != n or len(events) != n or len(classes) != n:
                raise DataError(
                    f"{n} series but {len(futures)} future_timestamps / {len(events)} event_ids / "
                    f"{len(classes)} asset_class lists; pass one per series"
                )
            embedding = group.event_embedding if group.event_embedding is not None else self.event_embedding
            if any(e is not None for e in events) and embedding is None:
                raise ConfigError("event_ids given but this Forecaster has no event_embedding")
            for frame, future, ev, cls in zip(series, futures, events, classes):
                label = labels[len(prepared)] if labels else f"series {len(prepared)}"
                prepared.append(prepare_series(frame, pred_len, lookback=lookback, future_timestamps=future,
                                               event_ids=ev, label=label, asset_class=cls, checked=group.checked))
                owners.append(index)
                embeddings.append(embedding)
                counts.append(group.samples)
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
        extra = self._extra_embedding(prepared, embeddings, longest, pred_len)
        seeds = RowSeeds(tuple((sum(counts[i] for i, o in enumerate(owners) if o == index), group.seed)
                               for index, group in enumerate(groups)))
        routing = (rows_by_adapter(self.model, [groups[o].adapter for o in owners], counts) if any(routed)
                   else contextlib.nullcontext())
        with routing:
            paths = generate(
                self.model, self.tokenizer, x_norm, x_stamp, y_stamp, pred_len,
                temperature=temperature, top_k=top_k, top_p=top_p, samples=counts, generator=seeds,
                max_context=self.max_context, extra_embedding=extra,
                lengths=None if min(lengths) == longest else lengths, autocast_dtype=self.autocast_dtype,
            )

        outcomes: list[list[ForecastResult] | DataError] = [[] for _ in groups]
        for i, (series, owner) in enumerate(zip(prepared, owners)):
            if isinstance(outcomes[owner], DataError):
                continue
            result = self._result(series, paths[i].numpy(), levels[owner], return_paths)
            if not np.isfinite(result.mean[FEATURE_COLUMNS].to_numpy()).all():
                label = labels[i] if labels else f"series {i}"
                outcomes[owner] = DataError(f"{label}: the forecast is not finite; the bars' values are too "
                                            "large or too spread to normalise (check the units)")
                continue
            outcomes[owner].append(result)
        return outcomes

    def _extra_embedding(self, prepared: list[PreparedSeries], embeddings: list, longest: int,
                         pred_len: int) -> torch.Tensor | None:
        """(B, longest + pred_len, d_model) event vectors of each series by its own embedding (None: none has one)."""
        if all(e is None for e in embeddings):
            return None
        width = next(e for e in embeddings if e is not None).d_model
        rows = []
        with torch.no_grad():
            for series, embedding in zip(prepared, embeddings):
                if embedding is None:
                    rows.append(torch.zeros(longest + pred_len, width))
                    continue
                ids = series.event_ids if series.event_ids is not None else np.zeros(len(series.x_norm) + pred_len,
                                                                                     np.int64)
                padded = np.concatenate([np.zeros(longest - len(series.x_norm), np.int64), ids])
                rows.append(embedding.to(self.device)(torch.from_numpy(padded).to(self.device)).float().cpu())
        return torch.stack(rows)

    @staticmethod
    def _result(series: PreparedSeries, normalised_paths: np.ndarray, levels: tuple[float, ...],
                return_paths: bool):
        price_paths = valid_bars(denormalize(normalised_paths, series.mean, series.std), series.price_floor)

        def frame(values: np.ndarray) -> pd.DataFrame:
            out = pd.DataFrame(valid_bars(values, series.price_floor), columns=FEATURE_COLUMNS)
            out.insert(0, "timestamp", series.future.to_numpy())
            return out

        bands = path_quantiles(price_paths, levels) if levels else None  # (levels, H, 6)
        return ForecastResult(
            mean=frame(price_paths.mean(axis=0)),
            paths=[frame(path) for path in price_paths] if return_paths else None,
            quantiles={quantile_name(q): frame(band) for q, band in zip(levels, bands)} if levels else None,
            point=frame(np.median(price_paths, axis=0)),
            close_paths=price_paths[..., FEATURE_COLUMNS.index("close")] if levels else None,
            price_floor=series.price_floor,
        )
