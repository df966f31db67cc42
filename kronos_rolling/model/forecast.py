"""Forecasting with a KV cache: a tensor-level `generate` and a DataFrame-level `Forecaster`.

Semantics are those of the released Kronos predictor:
1. tokenise the clipped, normalised lookback (all of it);
2. for each future bar, take the last `max_context` tokens (rotary positions starting
   at 0 at the window's start), sample s1 from the last position's s1 logits and s2
   from the s2 logits conditioned on that s1;
3. decode the last min(total, max_context) tokens through the tokenizer and keep the
   horizon; average the sample paths.

While lookback + generated bars fit in `max_context`, each step feeds only the newest
bar and reuses cached keys/values (same tokens as recomputing the window). Once the
window slides, every position's rotary index and every hidden state changes, so each
step recomputes the window, exactly as the reference does.

Batches may mix series of different lengths: rows are left-padded and masked so that
each row computes what it would compute alone.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from kronos_rolling.errors import ConfigError, DataError, ModelError
from kronos_rolling.features import (
    CLIP,
    FEATURE_COLUMNS,
    PRICE_COLUMNS,
    denormalize,
    fill_volume_amount,
    normalize_window,
    time_features,
)
from kronos_rolling.model.config import default_max_context
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.layers import KVCache
from kronos_rolling.model.tokenizer import KronosTokenizer

MIN_BARS = 2  # a spread for the normaliser and a spacing for the future timestamps
QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
PRECISIONS = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- small decisions ----------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
    return resolved


def check_pair(model: Kronos, tokenizer: KronosTokenizer) -> None:
    """The tokenizer must produce the token vocabularies the predictor was trained on."""
    if (model.s1_bits, model.s2_bits) != (tokenizer.s1_bits, tokenizer.s2_bits):
        raise ModelError(
            f"tokenizer and predictor do not fit: tokenizer makes s1/s2 tokens of "
            f"{tokenizer.s1_bits}/{tokenizer.s2_bits} bits, predictor expects {model.s1_bits}/{model.s2_bits}; "
            f"use the tokenizer the predictor was trained with (e.g. Kronos-Tokenizer-base for "
            f"Kronos-small/base, Kronos-Tokenizer-2k for Kronos-mini)"
        )


def check_sampling(temperature: float, top_k: int, top_p: float, samples: int) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}; use --top-k 1 for a greedy forecast")
    if top_k < 0:
        raise ConfigError(f"top-k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top-p must be in (0, 1], got {top_p}")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one id per row of (N, V) logits, filtering as the released predictor does.

    top_k > 0 keeps the k largest logits (and ignores top_p); otherwise top_p < 1 keeps
    the smallest set of most likely tokens whose probability reaches top_p. top_k == 1
    is greedy: the argmax, deterministic and consuming no randomness.
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # keep the token that crosses top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def _make_generator(seed_or_generator, device: torch.device) -> torch.Generator | None:
    if seed_or_generator is None or isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed_or_generator))
    return generator


def _unwrap(model) -> Kronos:
    """The Kronos inside a peft wrapper (LoRA layers are injected in place, so they stay active)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, Kronos):
        raise ModelError(f"expected a Kronos predictor (or a peft model around one), got {type(base).__name__}")
    return base


@contextlib.contextmanager
def _intra_op_threads(count: int | None, device: torch.device):
    """Run a block with `count` CPU intra-op threads (None or a GPU device: unchanged).

    Why: a single-bar step is ~100 tiny operations; with several threads each one ends in
    a barrier, and when another process holds a core the spin-waiting threads make a step
    5-10x slower. One thread loses little on an idle machine (the step is memory-bound).
    """
    if count is None or device.type != "cpu" or count == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _eval_mode(*modules):
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)


# -- tensor level -------------------------------------------------------------------------


@torch.no_grad()
def generate(model, tokenizer: KronosTokenizer, x_norm: torch.Tensor, x_stamp: torch.Tensor,
             y_stamp: torch.Tensor, pred_len: int, *, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 0.9, samples: int = 1, generator=None, max_context: int = 512,
             event_ids: torch.Tensor | None = None, event_embedding: EventEmbedding | None = None,
             lengths: Sequence[int] | torch.Tensor | None = None, clip: float = CLIP,
             use_cache: bool = True, autocast_dtype: torch.dtype | None = None,
             step_threads: int | None = 1) -> torch.Tensor:
    """Sample forecasts: (B, samples, pred_len, d_in) normalised bars.

    x_norm (B, L, 6) normalised lookback; x_stamp (B, L, 5) and y_stamp (B, pred_len, 5)
    calendar features of the lookback and the horizon. lengths: real bars per row when
    rows are left-padded to L (None: all L). generator: a torch.Generator or an int seed
    (None: torch's global RNG). event_ids: (B, L + pred_len) event ids for
    `event_embedding`. use_cache=False recomputes the window at every step (reference
    behaviour, for checks). autocast_dtype: run under CUDA autocast in this precision.
    step_threads: CPU threads for the cached single-bar steps (None: torch's setting);
    window passes always use torch's setting.
    """
    kronos = _unwrap(model)
    check_pair(kronos, tokenizer)
    check_sampling(temperature, top_k, top_p, samples)
    batch, lookback, _ = x_norm.shape
    if pred_len < 1:
        raise ConfigError(f"pred_len must be >= 1, got {pred_len}")
    if pred_len > max_context:
        raise ConfigError(
            f"horizon of {pred_len} bars exceeds the model's context of {max_context} bars: the final "
            f"decode sees only the last {max_context} tokens; forecast at most {max_context} bars "
            f"(or forecast in several steps)"
        )
    if x_stamp.shape[:2] != (batch, lookback) or y_stamp.shape[:2] != (batch, pred_len):
        raise DataError(
            f"stamps do not match the bars: x_stamp {tuple(x_stamp.shape)} for x {tuple(x_norm.shape)}, "
            f"y_stamp {tuple(y_stamp.shape)} for pred_len {pred_len}"
        )
    if (event_ids is None) != (event_embedding is None):
        raise ConfigError("event_ids and event_embedding go together: pass both or neither")
    if event_ids is not None and tuple(event_ids.shape) != (batch, lookback + pred_len):
        raise DataError(f"event_ids must have shape {(batch, lookback + pred_len)}, got {tuple(event_ids.shape)}")

    device = next(kronos.parameters()).device
    out_device = x_norm.device
    generator = _make_generator(generator, device)
    total = lookback + pred_len

    padding = None
    if lengths is not None:
        lengths_t = torch.as_tensor(lengths, device=device).long()
        if int(lengths_t.min()) < 1 or int(lengths_t.max()) > lookback:
            raise DataError(f"lengths must lie in [1, {lookback}], got {lengths_t.tolist()}")
        if int(lengths_t.min()) < lookback:
            padding = torch.arange(lookback, device=device)[None, :] < (lookback - lengths_t)[:, None]

    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None else contextlib.nullcontext()
    )
    with _eval_mode(kronos, tokenizer), autocast:
        x = x_norm.to(device=device, dtype=torch.float32).clamp(-clip, clip)
        s1_lookback, s2_lookback = tokenizer.encode(x, half=True, padding_mask=padding)

        # Sample paths are rows: series b's paths are rows b*samples .. b*samples + samples - 1.
        rows = batch * samples
        s1 = torch.zeros(rows, total, dtype=torch.long, device=device)
        s2 = torch.zeros_like(s1)
        s1[:, :lookback] = s1_lookback.repeat_interleave(samples, dim=0)
        s2[:, :lookback] = s2_lookback.repeat_interleave(samples, dim=0)
        stamps = torch.cat([x_stamp, y_stamp], dim=1).to(device=device, dtype=torch.float32)
        stamps = stamps.repeat_interleave(samples, dim=0)
        pad_mask = None
        if padding is not None:
            pad_mask = torch.zeros(rows, total, dtype=torch.bool, device=device)
            pad_mask[:, :lookback] = padding.repeat_interleave(samples, dim=0)
            stamps = stamps.masked_fill(pad_mask[..., None], 0.0)
        extra = None
        if event_embedding is not None:
            ids = event_ids.to(device).long()
            if padding is not None:
                ids = ids.masked_fill(torch.cat([padding, padding.new_zeros(batch, pred_len)], dim=1), 0)
            extra = event_embedding.to(device)(ids).repeat_interleave(samples, dim=0)

        cache = KVCache(capacity=max_context)
        for step in range(pred_len):
            known = lookback + step  # tokens so far; the next bar is position `known`
            start = max(0, known - max_context)
            single_bar = use_cache and step > 0 and known <= max_context
            if single_bar:
                window = slice(known - 1, known)  # only the newest bar; the rest is cached
            else:
                cache.reset()
                window = slice(start, known)
            with _intra_op_threads(step_threads if single_bar else None, device):
                context = kronos.context(
                    s1[:, window], s2[:, window], stamps[:, window],
                    padding_mask=None if pad_mask is None else pad_mask[:, window],
                    extra_embedding=None if extra is None else extra[:, window],
                    cache=cache,
                )
                last = context[:, -1]
                next_s1 = sample_tokens(kronos.head(last), temperature, top_k, top_p, generator)
                next_s2 = sample_tokens(kronos.next_s2_logits(next_s1, last, cache), temperature, top_k, top_p,
                                        generator)
            s1[:, known] = next_s1
            s2[:, known] = next_s2

        start = max(0, total - max_context)
        decoded = tokenizer.decode(
            [s1[:, start:], s2[:, start:]], half=True,
            padding_mask=None if pad_mask is None else pad_mask[:, start:],
        )
    forecast = decoded[:, -pred_len:].float()
    return forecast.reshape(batch, samples, pred_len, -1).to(out_device)


# -- DataFrame level ----------------------------------------------------------------------


@dataclass
class ForecastResult:
    """Forecast of one series, in price units.

    mean: `timestamp` + open..amount, the average over sample paths (the reference's output).
    paths: one such frame per sample path (when asked). quantiles: p10/p50/p90 frames
    across the paths (when asked).
    """

    mean: pd.DataFrame
    paths: list[pd.DataFrame] | None = None
    quantiles: dict[str, pd.DataFrame] | None = None

    def to_frame(self) -> pd.DataFrame:
        """The mean frame, plus `<column>_p10/_p50/_p90` columns when quantiles were computed."""
        frame = self.mean.copy()
        for name, band in (self.quantiles or {}).items():
            for column in FEATURE_COLUMNS:
                frame[f"{column}_{name}"] = band[column].to_numpy()
        return frame


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


def infer_future_timestamps(timestamps: pd.Series, pred_len: int) -> pd.Series:
    """The next `pred_len` timestamps at the series' most common bar spacing."""
    spacing = timestamps.diff().dropna().mode().iloc[0]
    last = timestamps.iloc[-1]
    return pd.Series([last + spacing * (i + 1) for i in range(pred_len)], name="timestamp")


def _check_timestamps(stamps: pd.Series, label: str, what: str) -> None:
    steps = stamps.diff().iloc[1:]
    bad = steps[steps <= pd.Timedelta(0)]
    if len(bad):
        row = bad.index[0]
        position = stamps.index.get_loc(row)
        problem = "duplicates" if steps.loc[row] == pd.Timedelta(0) else "comes before"
        raise DataError(
            f"{label}: {what} timestamp at row {position} ({stamps.loc[row]}) {problem} the previous one "
            f"({stamps.iloc[position - 1]}); sort the bars by timestamp and drop duplicate bars"
        )


def read_bars_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV of bars (timestamp, open, high, low, close[, volume, amount]) as a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file of bars")
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from exc


def prepare_series(bars: pd.DataFrame, pred_len: int, *, lookback: int | None = None,
                   future_timestamps=None, event_ids=None, label: str = "bars") -> PreparedSeries:
    """Validate one DataFrame of bars and turn it into model inputs (pure: no model needed)."""
    if not isinstance(bars, pd.DataFrame):
        raise DataError(f"{label}: expected a pandas DataFrame of bars, got {type(bars).__name__}")
    missing = [c for c in ["timestamp", *PRICE_COLUMNS] if c not in bars.columns]
    if missing:
        hint = " (if timestamps are the index, call reset_index() first)" if "timestamp" in missing else ""
        raise DataError(
            f"{label}: missing column(s) {missing}; bars need timestamp, open, high, low, close "
            f"(volume and amount optional){hint}"
        )
    n_bars = len(bars)
    needed = max(MIN_BARS, lookback or 0)
    if n_bars < needed:
        raise DataError(
            f"{label}: {n_bars} bar(s) but {needed} needed"
            + (f" for a lookback of {lookback}" if lookback else "")
            + "; pass more history" + (" or a shorter lookback" if lookback else "")
        )
    if lookback is not None and lookback < MIN_BARS:
        raise ConfigError(f"lookback must be >= {MIN_BARS}, got {lookback}")
    frame = bars.reset_index(drop=True)
    if lookback is not None:
        frame = frame.iloc[n_bars - lookback:].reset_index(drop=True)

    try:
        stamps = pd.Series(pd.to_datetime(frame["timestamp"]), name="timestamp")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{label}: cannot read the timestamp column as dates ({exc}); use ISO dates like 2024-01-31 15:30") from exc
    if stamps.isna().any():
        row = int(stamps.isna().to_numpy().argmax())
        raise DataError(f"{label}: timestamp missing at row {row}; drop or fill that bar")
    _check_timestamps(stamps, label, "bar")

    frame = frame.copy()
    for column in [c for c in FEATURE_COLUMNS if c in frame.columns]:
        try:
            frame[column] = pd.to_numeric(frame[column]).astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{label}: column {column!r} is not numeric ({exc}); fix or drop those rows") from exc
    values = fill_volume_amount(frame)[FEATURE_COLUMNS].to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        value = values[row, col]
        kind = "NaN" if np.isnan(value) else "infinite"
        raise DataError(
            f"{label}: {kind} value in column {FEATURE_COLUMNS[col]!r} at row {row} "
            f"({stamps.iloc[row]}); drop or fill such bars before forecasting"
        )

    if future_timestamps is None:
        future = infer_future_timestamps(stamps, pred_len)
    else:
        try:
            future = pd.Series(pd.to_datetime(pd.Series(list(future_timestamps))), name="timestamp")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{label}: cannot read future_timestamps as dates ({exc})") from exc
        if len(future) != pred_len:
            raise DataError(f"{label}: {len(future)} future timestamps for a horizon of {pred_len}; pass exactly {pred_len}")
        _check_timestamps(future, label, "future")
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
        self.max_context = max_context or default_max_context(kronos.config)
        if self.max_context < 1:
            raise ConfigError(f"max_context must be >= 1, got {max_context}")
        self.autocast_dtype = PRECISIONS[precision]

    def forecast(self, bars, pred_len: int, future_timestamps=None, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 0.9, samples: int = 1, seed: int | None = None, event_ids=None,
                 quantiles: bool = False, return_paths: bool = False, lookback: int | None = None):
        """Forecast `pred_len` bars after each series.

        bars: a DataFrame or the path of a CSV of bars (-> ForecastResult), or a list of
        them of any lengths (-> list of ForecastResult). future_timestamps / event_ids: per
        series (a list for a list of series); future timestamps default to the bars' usual spacing,
        event ids cover the bars plus the horizon. lookback: use only the last N bars
        (default: all). top_k=1 is greedy and deterministic; seed makes sampling
        reproducible.
        """
        if isinstance(bars, (str, os.PathLike)):
            bars = read_bars_csv(bars)
        single = isinstance(bars, pd.DataFrame)
        series = [bars] if single else [read_bars_csv(b) if isinstance(b, (str, os.PathLike)) else b for b in bars]
        if not series:
            raise DataError("no series to forecast: pass a DataFrame or a non-empty list of DataFrames")
        futures = [future_timestamps] if single else (future_timestamps or [None] * len(series))
        events = [event_ids] if single else (event_ids or [None] * len(series))
        if len(futures) != len(series) or len(events) != len(series):
            raise DataError(
                f"{len(series)} series but {len(futures)} future_timestamps / {len(events)} event_ids lists; "
                f"pass one per series"
            )
        if any(e is not None for e in events) and self.event_embedding is None:
            raise ConfigError("event_ids given but this Forecaster has no event_embedding")
        check_sampling(temperature, top_k, top_p, samples)
        prepared = [
            prepare_series(frame, pred_len, lookback=lookback, future_timestamps=future, event_ids=ev,
                           label="bars" if single else f"series {i}")
            for i, (frame, future, ev) in enumerate(zip(series, futures, events))
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

        results = [self._result(p, paths[i], quantiles, return_paths) for i, p in enumerate(prepared)]
        return results[0] if single else results

    @staticmethod
    def _result(series: PreparedSeries, normalised_paths: np.ndarray, quantiles: bool, return_paths: bool):
        price_paths = denormalize(normalised_paths, series.mean, series.std)  # (S, H, 6)

        def frame(values: np.ndarray) -> pd.DataFrame:
            out = pd.DataFrame(values, columns=FEATURE_COLUMNS)
            out.insert(0, "timestamp", series.future.to_numpy())
            return out

        return ForecastResult(
            mean=frame(price_paths.mean(axis=0)),
            paths=[frame(path) for path in price_paths] if return_paths else None,
            quantiles=(
                {name: frame(np.quantile(price_paths, q, axis=0)) for name, q in QUANTILES.items()}
                if quantiles else None
            ),
        )
