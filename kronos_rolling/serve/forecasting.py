"""Answering forecasts: check a request, queue its series by asset class, decode in batches.

    submit(series, options)              the request's own checks, then one job per asset class
      -> Batcher (serve/batching.py)     the queue: sheds what cannot be answered within its limit,
                                         cuts batches of jobs that share their decode settings
      -> Forecasting.run_batch(jobs)     under the pool's gate: each job's model chosen (route),
                                         every series of the batch decoded together
      -> PendingForecast.result()        per series an Answer (the model that answered, warnings)
                                         or the ItemError that kept it from one

A request's bars are checked before they are queued (every bad bar named with its row), and
a series whose symbol cannot be classified fails alone. One job whose input breaks a shared
decode fails alone too: the batch is decoded again job by job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Mapping

import numpy as np
import pandas as pd

from kronos_rolling.data.bars import BarsError, clean_bars
from kronos_rolling.data.events import EventCalendar
from kronos_rolling.data.issues import Issue
from kronos_rolling.errors import DataError, KronosError
from kronos_rolling.evaluation.calibration import CalibrationNote, apply_calibration
from kronos_rolling.model.forecast import ForecastGroup, ForecastResult
from kronos_rolling.model.generate import check_sampling
from kronos_rolling.model.quantiles import paths_for, quantile_levels
from kronos_rolling.serve.batching import Batcher, BatchJob, Overloaded
from kronos_rolling.serve.cpu import CpuShare
from kronos_rolling.serve.pool import AdapterPool, LoadedAdapter
from kronos_rolling.serve.selection import BASE, Choice, asset_class_of, choose
from kronos_rolling.serve.watcher import RegistryWatcher, now_utc
from kronos_rolling.settings import RequestLimits, ServeSettings

BARS_HINT = "Rows are positions in the series' bars (0-based)."


@dataclass(frozen=True)
class ForecastOptions:
    """A request's decode settings, resolved: `samples` is the number of paths drawn (at least
    model/quantiles.MIN_QUANTILE_PATHS when quantiles are asked: `asked` resolves it) and
    `quantiles` the levels returned (() for none)."""

    pred_len: int = 16
    samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    seed: int | None = 0  # None: unseeded
    quantiles: tuple[float, ...] = ()

    @classmethod
    def asked(cls, *, quantiles=None, samples: int | None = None, **settings) -> "ForecastOptions":
        """The options a caller asked for: `quantiles` any levels in (0, 1) (a list, or True for
        the old p10/p50/p90), `samples` None for the default (1; 32 with quantiles)."""
        levels = quantile_levels(quantiles)
        return cls(samples=paths_for(samples, levels), quantiles=levels, **settings)


@dataclass(frozen=True)
class SeriesInput:
    symbol: str
    bars: pd.DataFrame  # timestamp + open, high, low, close (+ volume, amount)


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: always part of a response."""

    asset_class: str  # of the symbol
    served_as: str  # the asset class itself, "pooled" or "base"
    registered_model: str | None
    version: str | None
    alias: str | None
    source: str | None  # registry | cache; None for the base
    fallback: str | None  # why the class's own production version did not answer

    def describe(self) -> str:
        if self.registered_model is None:
            return f"bare base model ({self.asset_class})"
        return f"{self.registered_model} v{self.version} @{self.alias} ({self.asset_class})"

    @classmethod
    def of(cls, choice: Choice, adapter: LoadedAdapter | None) -> "ModelInfo":
        if adapter is None:
            return cls(choice.asset_class, BASE, None, None, None, None, choice.fallback)
        return cls(choice.asset_class, choice.label, adapter.registered_model, adapter.version, adapter.alias,
                   adapter.source, choice.fallback)


@dataclass
class Answer:
    """One series' forecast: `result.point` is the point forecast (the median of the paths, what
    the evaluation scores); `calibration` says whether the close quantiles carry the answering
    version's calibration (None when no quantiles were asked)."""

    symbol: str
    model: ModelInfo
    warnings: list[str]
    result: ForecastResult
    calibration: CalibrationNote | None = None


@dataclass
class ItemError:
    """Why one series of a request got no forecast: a DataError (a BarsError names rows and
    columns) about the series' `field` ("bars" or "symbol")."""

    symbol: str
    error: DataError
    field: str


def job_work(bars: int, options: ForecastOptions) -> float:
    """What decoding one series costs, in the batcher's work units: its bars fed once, pred_len per path."""
    return bars + options.samples * options.pred_len


def decode_key(options: ForecastOptions) -> tuple:
    """What jobs must share to be decoded together (seeds, paths and quantiles may differ)."""
    return options.pred_len, options.temperature, options.top_k, options.top_p


def route(asset_class: str, served: Mapping[str, LoadedAdapter], settings: ServeSettings,
          unavailable: Mapping[str, str]) -> Choice:
    """Who answers `asset_class` among the loaded versions (serve/selection.py decides)."""
    candidates = {label: adapter.candidate() for label, adapter in served.items()}
    guard_ratio = settings.guard_ratio if settings.inference_guard else None
    return choose(asset_class, candidates, guard_ratio=guard_ratio, unavailable=unavailable)


@dataclass
class ClassJob:
    """The series of one request that one asset class's model answers (a batch job's payload)."""

    asset_class: str
    indices: list[int]  # their positions in the request
    items: list[SeriesInput]  # with checked bars
    options: ForecastOptions
    unavailable: dict[str, str]  # why labels were refused, when the request came


class PendingForecast:
    """A request whose series are queued for decoding: `result()` waits (a thread), `wait()` awaits."""

    def __init__(self, watcher: RegistryWatcher, series: list[SeriesInput], outcomes: list, jobs: list[BatchJob],
                 predicted_s: float | None = None):
        self.watcher = watcher
        self.series = series
        self.outcomes = outcomes
        self.jobs = jobs
        self.predicted_s = predicted_s  # since it arrived, as the queue predicted it (uncorrected)

    def result(self) -> list[Answer | ItemError]:
        decoded = []
        for job in self.jobs:
            try:
                decoded.append(job.future.result())
            except KronosError as exc:
                decoded.append(_job_failure(exc))
        return self._answers(decoded)

    async def wait(self) -> list[Answer | ItemError]:
        decoded = []
        for job in self.jobs:
            try:
                decoded.append(await asyncio.wrap_future(job.future))
            except KronosError as exc:
                decoded.append(_job_failure(exc))
        return self._answers(decoded)

    def _answers(self, decoded: list) -> list[Answer | ItemError]:
        outcomes = list(self.outcomes)
        stale = self.watcher.freshness(now_utc())
        for job, done in zip(self.jobs, decoded):
            payload = job.payload
            if isinstance(done, KronosError):  # the job could not be decoded (its own input)
                done = (None, None, done if isinstance(done, DataError) else DataError(str(done)), None)
            choice, adapter, results, notes = done
            for position, i in enumerate(payload.indices):
                if isinstance(results, DataError):  # the forecast of this class failed as a whole (not finite)
                    outcomes[i] = ItemError(self.series[i].symbol, results, "bars")
                    continue
                warnings = [choice.warning] if choice.warning else []
                if stale.stale:
                    warnings.append(f"registry stale: {stale.reason}; answered with the versions loaded")
                outcomes[i] = Answer(self.series[i].symbol, ModelInfo.of(choice, adapter), warnings,
                                     results[position], notes[position] if notes else None)
        return outcomes


def _job_failure(exc: KronosError) -> KronosError:
    """A job that failed on its own input fails its own series; a full or stopping queue fails the request."""
    if isinstance(exc, Overloaded):
        raise exc
    return exc


def _checked_bars(item: SeriesInput, too_few: DataError | None, now: pd.Timestamp) -> pd.DataFrame:
    """The series' bars, cleaned (timestamps no later than a year after `now`); a history too
    short and every bad bar are refused together."""
    try:
        bars = clean_bars(item.bars, item.symbol, hint=BARS_HINT, now=now)
    except BarsError as exc:
        if too_few is None:
            raise
        raise BarsError(f"{too_few}; {exc}", [Issue(item.symbol, None, None, str(too_few)), *exc.issues]) from exc
    if too_few is not None:
        raise too_few
    return bars


class Forecasting:
    """Checks requests, queues their series on `batcher` and decodes its batches on `pool`."""

    def __init__(self, settings: ServeSettings, limits: RequestLimits, pool: AdapterPool, watcher: RegistryWatcher,
                 cpu: CpuShare, batcher: Batcher, overrides: Mapping[str, str], calendar: EventCalendar):
        self.settings = settings
        self.limits = limits
        self.pool = pool
        self.watcher = watcher
        self.cpu = cpu
        self.batcher = batcher
        self.overrides = overrides
        self.calendar = calendar

    def submit(self, series: list[SeriesInput], options: ForecastOptions, *, now: datetime,
               arrived: float | None = None) -> PendingForecast:
        """Check the request and queue its decoding; the answers come from the result.

        arrived: when the request came in (time.monotonic()), for the queue's limit on its whole wait."""
        if not series:
            raise DataError("no series to forecast: send at least one symbol with its bars")
        self.limits.check_options(options.pred_len, options.samples)
        check_sampling(options.temperature, options.top_k, options.top_p, options.samples)
        self.limits.check_batch(len(series))
        # Refused before its bars are checked when the queue cannot take it (the check costs the CPU).
        waited = (lambda: 0.0) if arrived is None else (lambda: time.monotonic() - arrived)
        self.batcher.admits(sum(job_work(len(item.bars), options) for item in series), len(series) * options.samples,
                            waited_s=waited())
        outcomes: list[Answer | ItemError | None] = [None] * len(series)
        groups: dict[str, list[int]] = {}
        clean: dict[int, SeriesInput] = {}
        for index, item in enumerate(series):
            field = "bars"
            try:
                too_few = None
                try:
                    self.limits.check_bars(item.symbol, len(item.bars))
                except DataError as exc:
                    if len(item.bars) > self.limits.max_bars:
                        raise  # too many: refused before reading them
                    too_few = exc  # reported with every bad bar, not instead of them
                clean[index] = replace(item, bars=_checked_bars(item, too_few, pd.Timestamp(now)))
                field = "symbol"
                groups.setdefault(asset_class_of(item.symbol, self.overrides), []).append(index)
            except DataError as exc:
                outcomes[index] = ItemError(item.symbol, exc, field)
        unavailable = self.watcher.unavailable()
        jobs = []
        for asset_class, indices in groups.items():
            items = [clean[i] for i in indices]
            work = sum(job_work(len(item.bars), options) for item in items)
            jobs.append(BatchJob(key=decode_key(options), rows=len(items) * options.samples, work=work,
                                 payload=ClassJob(asset_class, indices, items, options, unavailable)))
        predicted = None
        if jobs:
            already = waited()
            self.batcher.submit(jobs, waited_s=already)
            if jobs[0].expected_s is not None:
                predicted = already + jobs[0].expected_s
        return PendingForecast(self.watcher, series, outcomes, jobs, predicted)

    def run_batch(self, jobs: list[BatchJob]) -> list:
        """Decode the jobs of one batch together: per job (choice, adapter, results or DataError,
        calibration notes or None)."""
        self.cpu.apply()
        try:
            return self._decode([job.payload for job in jobs])
        except KronosError:
            if len(jobs) == 1:
                raise
            # One job's input broke the shared decode: decode each alone so only that job fails.
            outcomes = []
            for job in jobs:
                try:
                    outcomes.extend(self._decode([job.payload]))
                except KronosError as exc:
                    outcomes.append(exc)
            return outcomes

    def _decode(self, payloads: list[ClassJob]) -> list:
        chosen: list[Choice] = []
        options = payloads[0].options  # the batch key: every job's decode settings are these

        def pick(served):  # called by the pool under its gate, against the table as it is then
            chosen[:] = [route(p.asset_class, served, self.settings, p.unavailable) for p in payloads]
            return [None if choice.label == BASE else served[choice.label] for choice in chosen]

        def work(adapters, names, forecaster):
            groups = [
                ForecastGroup([item.bars for item in p.items], p.options.samples, p.options.seed, adapter=name,
                              event_embedding=None if adapter is None else adapter.event_embedding,
                              event_ids=[self._event_ids(item, p.asset_class, options.pred_len, adapter)
                                         for item in p.items],
                              asset_class=p.asset_class, checked=True, quantiles=p.options.quantiles)
                for p, adapter, name in zip(payloads, adapters, names)]
            return adapters, forecaster.forecast_groups(
                groups, options.pred_len, temperature=options.temperature, top_k=options.top_k,
                top_p=options.top_p, labels=[item.symbol for p in payloads for item in p.items])

        adapters, outcomes = self.pool.run(pick, work)
        answered = []
        for payload, choice, adapter, outcome in zip(payloads, chosen, adapters, outcomes):
            notes = None
            if not isinstance(outcome, DataError) and payload.options.quantiles:
                notes = [calibrate(result, payload.options.quantiles, payload.asset_class, adapter)
                         for result in outcome]
            answered.append((choice, adapter, outcome, notes))
        return answered

    def _event_ids(self, item: SeriesInput, asset_class: str, pred_len: int,
                   adapter: LoadedAdapter | None) -> np.ndarray | None:
        """Event ids of the bars and the horizon from the data folder's events (None: no events)."""
        if adapter is None or len(self.calendar) == 0:
            return None
        return self.calendar.forecast_event_ids(item.symbol, asset_class, item.bars["timestamp"], pred_len,
                                                adapter.vocabulary)


def calibrate(result: ForecastResult, levels: tuple[float, ...], asset_class: str,
              adapter: LoadedAdapter | None) -> CalibrationNote:
    """The close quantiles of `result` with the answering version's calibration for `asset_class`
    (none for the bare base; a class its tags withhold is not applied), and what the answer says."""
    if adapter is None:
        return apply_calibration(result, levels, None, asset_class, "the bare base")
    return apply_calibration(result, levels, adapter.served_calibration(), asset_class, adapter.describe())
