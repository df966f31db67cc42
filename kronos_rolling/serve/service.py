"""The predictor service without HTTP: follow the registry, keep adapters loaded, answer.

`PredictorService.start()` loads the base once, resolves every `@production` alias and
loads those versions (from the registry, or, when it cannot be reached, from the verified
local cache of the last resolved versions), then starts a background thread that
- polls the registry every `poll_interval_s` (or at once after `trigger_refresh()`, which
  the webhook endpoint calls) and swaps in any version an alias moved to;
- checks every `busy_check_s` whether a training job holds the device (the training
  lock) and, while it does, runs inference on `busy_threads` CPU threads at `busy_nice`
  lower priority, so the fine-tune keeps most of a shared CPU and inference keeps answering.

A version that fails verification (registry/integrity.py: the sha256 of every file recorded
at registration, finite tensors, the registered model's asset class), names another base,
or cannot be loaded is refused: the previous version keeps serving, `/health` and
`/models` list it as refused with the reason, and a `version_refused` alert goes out. The registry being down only
makes the state stale; nothing is unloaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.data.bars import BarsError, clean_bars
from kronos_rolling.data.issues import Issue
from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import (
    ConfigError,
    DataError,
    KronosError,
    ModelError,
    RegistryUnavailable,
)
from kronos_rolling.locks import device_busy
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.model.forecast import ForecastGroup, ForecastResult
from kronos_rolling.model.generate import check_sampling
from kronos_rolling.registry import alerts
from kronos_rolling.names import POOLED, PRODUCTION
from kronos_rolling.registry.integrity import check_class, check_version
from kronos_rolling.serve.batching import Batcher, BatchJob, Overloaded
from kronos_rolling.serve.cache import CachedVersion, VersionCache
from kronos_rolling.serve.pool import AdapterPool, LoadedAdapter
from kronos_rolling.serve.selection import (
    BASE,
    Candidate,
    Choice,
    asset_class_of,
    choose,
    registry_freshness,
    same_base,
)
from kronos_rolling.serve.source import RegistrySource, VersionRef
from kronos_rolling.settings import ServeSettings
from kronos_rolling.tracking.adapters import METADATA_FILE
from kronos_rolling.tracking.context import Tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForecastOptions:
    pred_len: int = 16
    samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    seed: int | None = 0  # None: unseeded
    quantiles: bool = False


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


@dataclass
class Answer:
    symbol: str
    model: ModelInfo
    warnings: list[str]
    result: ForecastResult


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


@dataclass
class ItemError:
    """Why one series of a request got no forecast: a DataError (a BarsError names rows and
    columns) about the series' `field` ("bars" or "symbol")."""

    symbol: str
    error: DataError
    field: str


BARS_HINT = "Rows are positions in the series' bars (0-based)."


def job_work(bars: int, options: ForecastOptions) -> float:
    """What decoding one series costs, in the batcher's work units: its bars fed once, pred_len per path."""
    return bars + options.samples * options.pred_len


def decode_key(options: ForecastOptions) -> tuple:
    """What jobs must share to be decoded together (seeds, paths and quantiles may differ)."""
    return options.pred_len, options.temperature, options.top_k, options.top_p


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

    def __init__(self, service: "PredictorService", series: list[SeriesInput], outcomes: list, jobs: list[BatchJob],
                 predicted_s: float | None = None):
        self.service = service
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
        stale = registry_freshness(self.service.last_success, self.service.failing_since, _now(),
                                   self.service.settings.poll_interval_s)
        for job, done in zip(self.jobs, decoded):
            payload = job.payload
            if isinstance(done, KronosError):  # the job could not be decoded (its own input)
                done = (None, None, done if isinstance(done, DataError) else DataError(str(done)))
            choice, adapter, results = done
            for position, i in enumerate(payload.indices):
                if isinstance(results, DataError):  # the forecast of this class failed as a whole (not finite)
                    outcomes[i] = ItemError(self.series[i].symbol, results, "bars")
                    continue
                warnings = [choice.warning] if choice.warning else []
                if stale.stale:
                    warnings.append(f"registry stale: {stale.reason}; answered with the versions loaded")
                outcomes[i] = Answer(self.series[i].symbol, _model_info(choice, adapter), warnings, results[position])
        return outcomes


def _job_failure(exc: KronosError) -> KronosError:
    """A job that failed on its own input fails its own series; a full or stopping queue fails the request."""
    if isinstance(exc, Overloaded):
        raise exc
    return exc


@dataclass(frozen=True)
class Refusal:
    registered_model: str
    version: str
    reason: str
    at: datetime


def _now() -> datetime:
    return datetime.now(timezone.utc)


def share_cpu_with_training(threads: int, nice: int) -> None:
    """Set this thread's torch CPU threads and, on Linux, its scheduling niceness.

    While a training job holds the device the service passes fewer threads and a positive
    nice value, so on a shared CPU the scheduler prefers the trainer and inference runs on
    what is left. Both are per thread (OpenMP keeps the thread count per calling thread;
    Linux nices threads by id). Lowering a nice value needs privileges: without them a
    thread stays nice after training ends, which costs nothing once the CPU is free.
    """
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    thread_id = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread_id) != nice:
            os.setpriority(os.PRIO_PROCESS, thread_id, nice)
    except (PermissionError, OSError):
        pass


class PredictorService:
    def __init__(self, settings: ServeSettings, *, watch: bool = True):
        self.settings = settings
        self.watch = watch
        if settings.base_model is None or settings.cache_dir is None:
            raise ConfigError("the predictor needs a base model and a cache folder (ServeSettings.base_model, "
                              ".cache_dir; `kronos-rolling serve` resolves both from the settings)")
        self.base = BaseModelRef.resolve(settings.base_model)
        self.source = RegistrySource(Tracking.connect(settings.tracking_uri, check=False))
        self.cache = VersionCache(settings.cache_dir, keep=settings.cache_keep)
        store = DataStore(settings.data_dir)
        self.overrides = store.overrides()
        self.calendar = store.events()
        self.limits = settings.limits
        self.pool: AdapterPool | None = None
        self.default_threads = settings.inference_threads or torch.get_num_threads()
        self.default_nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0
        self.device_busy = False
        self.started_at: datetime | None = None
        # Registry following; written by refresh (one at a time), read by reports.
        self._refresh_lock = threading.Lock()
        self.last_success: datetime | None = None
        self.last_failure: datetime | None = None
        self.failing_since: datetime | None = None  # the first failed read of the current outage
        self.last_error: str | None = None
        self.refused: dict[str, Refusal] = {}  # replaced, never edited: readers need no lock
        self._counts_lock = threading.Lock()
        self._swaps: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._wake = threading.Event()
        self._triggered = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batcher = Batcher(self._run_batch, max_batch_size=settings.max_batch_size,
                               max_batch_wait_s=settings.max_batch_wait_ms / 1000,
                               max_queue_wait_s=settings.max_queue_wait_s)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> "PredictorService":
        self.pool = AdapterPool(self.base, self.settings.device)
        self.limits = replace(self.settings.limits,
                              max_bars=min(self.settings.limits.max_bars, self.pool.max_context),
                              max_pred_len=min(self.settings.limits.max_pred_len, self.pool.max_context))
        self.cache.root.mkdir(parents=True, exist_ok=True)
        self.check_device()
        self.refresh(cold=True)
        self.started_at = _now()
        self.batcher.start()
        if self.watch:
            self._thread = threading.Thread(target=self._watch, name="kronos-registry-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self.batcher.stop()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def trigger_refresh(self) -> None:
        """Ask the watcher to read the registry now (a webhook arrived)."""
        self._triggered = True
        self._wake.set()

    def _watch(self) -> None:
        next_poll = time.monotonic() + self.settings.poll_interval_s
        while not self._stopping:
            self.check_device()
            if self._triggered or time.monotonic() >= next_poll:
                pushed, self._triggered = self._triggered, False
                try:
                    self.refresh(retry_refused=pushed)
                except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                    log.exception("reading the registry failed unexpectedly; trying again at the next poll")
                next_poll = time.monotonic() + self.settings.poll_interval_s
            self._wake.wait(max(0.0, min(next_poll - time.monotonic(), self.settings.busy_check_s)))
            self._wake.clear()

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(swaps, refusals) per label since start."""
        with self._counts_lock:
            return dict(self._swaps), dict(self._refusals)

    def _count(self, counter: Counter, label: str) -> None:
        with self._counts_lock:
            counter[label] += 1

    def _clear_refusal(self, label: str) -> None:
        if label in self.refused:
            self.refused = {k: v for k, v in self.refused.items() if k != label}

    def inference_threads(self) -> int:
        return self.settings.busy_threads if self.device_busy else self.default_threads

    def inference_nice(self) -> int:
        return min(19, self.default_nice + self.settings.busy_nice) if self.device_busy else self.default_nice

    def check_device(self) -> bool:
        busy = device_busy(self.settings.lock_dir) if self.settings.lock_dir else False
        changed = busy != self.device_busy
        self.device_busy = busy
        if changed:
            log.info("training job %s the device: inference uses %d CPU thread(s)",
                     "holds" if busy else "released", self.inference_threads())
        return busy

    # -- following the registry -----------------------------------------------------------

    def refresh(self, *, cold: bool = False, retry_refused: bool = False) -> dict[str, str]:
        """One pass over the registry: {label: what happened} (empty when it was unreachable)."""
        with self._refresh_lock:
            now = _now()
            try:
                refs = self.source.resolve(self.settings.labels)
            except RegistryUnavailable as exc:
                self._registry_failed(now, exc)
                if cold:
                    self._load_cached_resolved()
                return {}
            outcome = {}
            try:
                for label in self.settings.labels:
                    outcome[label] = self._follow(label, refs[label], now, retry_refused)
            except RegistryUnavailable as exc:  # went away in the middle: keep what is loaded
                self._registry_failed(_now(), exc)
                if cold:
                    self._load_cached_resolved()
                return outcome
            self.last_success, self.last_error, self.failing_since = now, None, None
            return outcome

    def _registry_failed(self, now: datetime, exc: Exception) -> None:
        self.last_failure, self.last_error = now, str(exc)
        if self.failing_since is None:
            self.failing_since = now
        log.warning("registry unreachable, serving what is loaded: %s", exc)

    def _follow(self, label: str, ref: VersionRef | None, now: datetime, retry_refused: bool) -> str:
        loaded = self.pool.served.get(label)
        if ref is None:
            self._clear_refusal(label)
            if loaded is None:
                return "none"
            self.pool.remove(label)
            self.cache.forget_resolved(label)
            self._count(self._swaps, label)
            return f"removed {loaded.describe()}: no @{PRODUCTION} alias any more"
        if loaded is not None and (loaded.registered_model, loaded.version) == (ref.registered_model, ref.version):
            self._clear_refusal(label)
            if loaded.source != "registry":
                self.pool.mark_source(label, "registry")
                self.cache.record_resolved(label, ref.registered_model, ref.version, ref.alias, now)
            return "unchanged"
        prior = self.refused.get(label)
        if prior is not None and prior.version == ref.version:
            # A refused version is fetched again after refused_retry_s, or sooner when pushed
            # (but at most once per poll interval, so a burst of pushes cannot loop downloads).
            wait = self.settings.poll_interval_s if retry_refused else self.settings.refused_retry_s
            if (now - prior.at).total_seconds() < wait:
                return f"still refusing {ref.describe()}"
        try:
            check_class(ref.registered_model, ref.version, ref.tags)  # before any download
            cached = self._obtain(ref)
            check_version(cached.model_dir, ref.registered_model, ref.version, ref.tags)
            installed = self._install(label, ref.registered_model, ref.version, ref.alias, cached, "registry",
                                      tags=ref.tags)
        except (ModelError, DataError) as exc:
            self._refuse(label, ref.registered_model, ref.version, str(exc), now)
            if self.pool.served.get(label) is None:
                self._load_cached_resolved(only=label)
            return f"refused {ref.describe()}"
        self._clear_refusal(label)
        self._count(self._swaps, label)
        self.cache.record_resolved(label, ref.registered_model, ref.version, ref.alias, now)
        self.cache.prune(ref.registered_model, {ref.version})
        return f"loaded {installed.describe()}"

    def _obtain(self, ref: VersionRef) -> CachedVersion:
        """The verified version `ref`: from the cache when it holds it intact, else downloaded and checked."""
        expected = self.source.recorded_digest(ref)
        if self.cache.has(ref.registered_model, ref.version):
            try:
                return self.cache.load(ref.registered_model, ref.version, expected_digest=expected)
            except ModelError as exc:
                log.warning("%s; downloading it again", exc)
        scratch_root = self.cache.root / ".downloads"
        scratch_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
            model_dir = self.source.download(ref, Path(scratch))
            check_version(model_dir, ref.registered_model, ref.version, ref.tags)  # names the file that differs
            return self.cache.store(ref.registered_model, ref.version, model_dir, tags=ref.tags, run_id=ref.run_id,
                                    expected_digest=expected)

    def _install(self, label: str, registered_model: str, version: str, alias: str, cached: CachedVersion,
                 source: str, tags: dict | None = None) -> LoadedAdapter:
        """Check the bundle's base and load it; `tags`: the version's tags now (default: as cached)."""
        metadata_path = cached.bundle_dir / METADATA_FILE
        metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        if "base" not in metadata:
            raise ModelError(f"{registered_model} v{version} names no base model in its {METADATA_FILE}; "
                             "refusing to guess which base it belongs on")
        adapter_base = BaseModelRef.from_dict(metadata["base"])
        if not same_base(self.base, adapter_base):
            raise ModelError(f"{registered_model} v{version} was trained on {adapter_base.describe()} but this "
                             f"service runs {self.base.describe()}; refusing to serve it on the wrong base "
                             "(start the service with KRONOS_BASE_MODEL set to the adapter's base)")
        tags = cached.manifest.get("tags") if tags is None else tags
        return self.pool.install(label, registered_model, version, alias, cached.bundle_dir, metadata=metadata,
                                 digest=cached.digest, source=source, tags=tags)

    def _refuse(self, label: str, registered_model: str, version: str, reason: str, now: datetime) -> None:
        prior = self.refused.get(label)
        self.refused = {**self.refused, label: Refusal(registered_model, version, reason, now)}
        self._count(self._refusals, label)
        still = self.pool.served.get(label)
        serving = f"v{still.version} keeps serving" if still else "nothing of it serves (the fallback answers)"
        log.error("refused %s v%s: %s; %s", registered_model, version, reason, serving)
        if prior is None or (prior.registered_model, prior.version) != (registered_model, version):
            alerts.send_alert(alerts.VERSION_REFUSED,
                              f":no_entry: predictor refused {registered_model} v{version}: {reason}; {serving}",
                              {"registered_model": registered_model, "version": version, "reason": reason,
                               "still_serving": still.version if still else "none"}, self.settings.alert_webhook)

    def _load_cached_resolved(self, only: str | None = None) -> None:
        """Serve the last resolved versions from the local cache (the registry cannot tell us)."""
        try:
            resolved = self.cache.resolved()
        except ModelError as exc:
            log.error("%s", exc)
            return
        for label in self.settings.labels:
            entry = resolved.get(label)
            if entry is None or (only is not None and label != only) or label in self.pool.served:
                continue
            name, version = entry["registered_model"], entry["version"]
            if only is not None and self.refused.get(label) and self.refused[label].version == version:
                continue  # the refused version is the cached one: nothing older to fall back to
            try:
                cached = self.cache.load(name, version)
                check_version(cached.model_dir, name, version, cached.manifest.get("tags") or {})
                self._install(label, name, version, entry.get("alias", PRODUCTION), cached, "cache")
                self._count(self._swaps, label)
            except (ModelError, DataError) as exc:
                self._refuse(label, name, version, str(exc), _now())

    # -- answering --------------------------------------------------------------------------

    def candidates(self, served) -> dict[str, Candidate]:
        return {label: _candidate(adapter) for label, adapter in served.items()}

    def unavailable(self) -> dict[str, str]:
        return {label: f"{r.registered_model} v{r.version} was refused ({r.reason})" for label, r in
                self.refused.items()}

    def guard_ratio(self) -> float | None:
        return self.settings.guard_ratio if self.settings.inference_guard else None

    def forecast(self, series: list[SeriesInput], options: ForecastOptions, *,
                 now: datetime | None = None) -> list[Answer]:
        """Answer every series, or raise the first item's error (for one-series callers)."""
        outcomes = self.forecast_each(series, options, now=now)
        for outcome in outcomes:
            if isinstance(outcome, ItemError):
                raise outcome.error
        return outcomes

    def forecast_each(self, series: list[SeriesInput], options: ForecastOptions, *,
                      now: datetime | None = None) -> list[Answer | ItemError]:
        """Per series an Answer, or the ItemError that kept it from one (bad bars, unknown symbol).

        `now`: the moment the bars' timestamps are judged against (default: the clock). Each
        series is answered by the model that serves its symbol's class (one model per class).
        Errors of the whole request (options over the limits, too many series) raise, and so
        does Overloaded when the queue is full.
        """
        return self.submit(series, options, now=now or _now()).result()

    def submit(self, series: list[SeriesInput], options: ForecastOptions, *, now: datetime,
               arrived: float | None = None) -> "PendingForecast":
        """Check the request and queue its decoding (serve/batching.py); the answers come from the result.

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
        unavailable = self.unavailable()
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
        return PendingForecast(self, series, outcomes, jobs, predicted)

    def _run_batch(self, jobs: list[BatchJob]) -> list:
        """Decode the jobs of one batch together: per job (choice, adapter, results or DataError)."""
        share_cpu_with_training(self.inference_threads(), self.inference_nice())
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

    def _decode(self, payloads: list["ClassJob"]) -> list:
        chosen: list[Choice] = []
        options = payloads[0].options  # the batch key: every job's decode settings are these

        def pick(served):  # called by the pool under its gate, against the table as it is then
            chosen[:] = [choose(p.asset_class, self.candidates(served), guard_ratio=self.guard_ratio(),
                                unavailable=p.unavailable) for p in payloads]
            return [None if choice.label == BASE else served[choice.label] for choice in chosen]

        def work(adapters, names, forecaster):
            groups = [
                ForecastGroup([item.bars for item in p.items], p.options.samples, p.options.seed, adapter=name,
                              event_embedding=None if adapter is None else adapter.event_embedding,
                              event_ids=[self._event_ids(item, p.asset_class, options.pred_len, adapter)
                                         for item in p.items],
                              asset_class=p.asset_class, checked=True)
                for p, adapter, name in zip(payloads, adapters, names)]
            return adapters, forecaster.forecast_groups(
                groups, options.pred_len, temperature=options.temperature, top_k=options.top_k,
                top_p=options.top_p, quantiles=any(p.options.quantiles for p in payloads),
                labels=[item.symbol for p in payloads for item in p.items])

        adapters, outcomes = self.pool.run(pick, work)
        answered = []
        for payload, choice, adapter, outcome in zip(payloads, chosen, adapters, outcomes):
            if not isinstance(outcome, DataError) and not payload.options.quantiles:
                for result in outcome:
                    result.quantiles = None
            answered.append((choice, adapter, outcome))
        return answered

    def _event_ids(self, item: SeriesInput, asset_class: str, pred_len: int,
                   adapter: LoadedAdapter | None) -> np.ndarray | None:
        """Event ids of the bars and the horizon from the data folder's events (None: no events)."""
        if adapter is None or len(self.calendar) == 0:
            return None
        return self.calendar.forecast_event_ids(item.symbol, asset_class, item.bars["timestamp"], pred_len,
                                                adapter.vocabulary)

    # -- reports ----------------------------------------------------------------------------

    def routes(self) -> dict[str, Choice]:
        served = self.pool.served
        available = self.candidates(served)
        unavailable = self.unavailable()
        return {c: choose(c, available, guard_ratio=self.guard_ratio(), unavailable=unavailable)
                for c in ASSET_CLASSES}

    def models(self) -> dict:
        served = self.pool.served
        report = {}
        for label in self.settings.labels:
            adapter = served.get(label)
            report[label] = None if adapter is None else {
                "registered_model": adapter.registered_model, "version": adapter.version, "alias": adapter.alias,
                "loaded_at": adapter.loaded_at.isoformat(timespec="seconds"), "source": adapter.source,
                "adapter": adapter.adapter_name, "bundle_sha256": adapter.digest,
                "val_mae": _candidate(adapter).val_mae,
            }
        return report

    def queue_report(self) -> dict:
        """The forecast queue: what waits, the measured decode rate, the batching and shedding limits."""
        state = self.batcher.state()
        return {"waiting_requests": state.jobs, "waiting_rows": state.rows, "decoding_rows": state.running_rows,
                "work_per_s": None if state.rate is None else round(state.rate, 1), "batches": state.batches,
                "shed": state.shed, "wait_correction_s": round(state.correction, 2),
                "max_batch_size": self.settings.max_batch_size,
                "max_batch_wait_ms": self.settings.max_batch_wait_ms,
                "max_queue_wait_s": self.settings.max_queue_wait_s}

    def refusals(self) -> list[dict]:
        """The versions refused (for /health and /models): label, version, reason, when."""
        return [{"label": label, "registered_model": r.registered_model, "version": r.version,
                 "reason": r.reason, "at": _iso(r.at)} for label, r in sorted(self.refused.items())]

    def health(self, now: datetime) -> dict:
        served = self.pool.served
        freshness = registry_freshness(self.last_success, self.failing_since, now, self.settings.poll_interval_s)
        warnings = []
        routes = self.routes()
        for asset_class, choice in routes.items():
            if choice.warning:
                warnings.append(choice.warning)
        for label, refusal in sorted(self.refused.items()):
            still = served.get(label)
            warnings.append(f"{refusal.registered_model} v{refusal.version} refused: {refusal.reason}"
                            + (f"; still serving v{still.version}" if still else ""))
        if freshness.stale:
            warnings.append(f"registry stale: {freshness.reason}; serving the versions loaded")
        return {
            "status": "degraded" if warnings else "ok",
            "started_at": self.started_at.isoformat(timespec="seconds") if self.started_at else None,
            "base": {"model": self.base.describe(), "max_context": self.pool.max_context},
            "registry": {
                "uri": self.source.describe(), "stale": freshness.stale, "reason": freshness.reason,
                "last_success_at": _iso(self.last_success), "last_failure_at": _iso(self.last_failure),
                "failing_since": _iso(self.failing_since),
                "error": self.last_error, "poll_interval_s": self.settings.poll_interval_s,
            },
            "served": {label: (None if label not in served else
                               {"registered_model": served[label].registered_model,
                                "version": served[label].version, "source": served[label].source})
                       for label in self.settings.labels},
            "routes": {c: {"served_as": r.label, "registered_model": r.candidate and r.candidate.registered_model,
                           "version": r.candidate and r.candidate.version, "fallback": r.fallback}
                       for c, r in routes.items()},
            "refused": self.refusals(),
            "queue": self.queue_report(),
            "device": {"type": str(self.pool.forecaster.device), "training_busy": self.device_busy,
                       "inference_threads": self.inference_threads(),
                       "inference_nice": self.inference_nice()},
            "warnings": warnings,
        }


def registry_choice(symbol: str, source: RegistrySource, overrides: dict | None = None,
                    guard_ratio: float | None = None) -> Choice:
    """Who answers `symbol` according to the registry now (nothing is loaded).

    The val_mae of each version comes from its `val_mae` tag, as the training job wrote it.
    RegistryUnavailable when the registry cannot be read.
    """
    asset_class = asset_class_of(symbol, overrides)
    refs = source.resolve((asset_class, POOLED))
    available = {label: Candidate(label, ref.registered_model, ref.version, _float(ref.tags.get("val_mae")))
                 for label, ref in refs.items() if ref is not None}
    return choose(asset_class, available, guard_ratio=guard_ratio)


def _candidate(adapter: LoadedAdapter) -> Candidate:
    """The adapter as the guard sees it: val_mae from its version tag, else its metadata."""
    metadata = adapter.metadata
    figures = metadata.get("figures") or {}
    compared = metadata.get("compared_versions") or {}
    pooled = figures.get(POOLED) or {}
    return Candidate(
        label=adapter.label, registered_model=adapter.registered_model, version=adapter.version,
        val_mae=_float(adapter.tags.get("val_mae", metadata.get("val_mae"))), pooled_version=compared.get(POOLED),
        pooled_val_mae=_float(pooled.get("val_mae")),
    )


def _model_info(choice: Choice, adapter: LoadedAdapter | None) -> ModelInfo:
    if adapter is None:
        return ModelInfo(choice.asset_class, BASE, None, None, None, None, choice.fallback)
    return ModelInfo(choice.asset_class, choice.label, adapter.registered_model, adapter.version, adapter.alias,
                     adapter.source, choice.fallback)


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


