"""The predictor service without HTTP: its parts, started and stopped together.

`PredictorService.start()` loads the base once (the pool), makes the first pass over the
registry (serve/watcher.py: every `@production` alias resolved, those versions loaded and
verified, or, when the registry cannot be reached, the last resolved versions from the
verified local cache), starts the forecast queue (serve/batching.py, decoded by
serve/forecasting.py) and a background thread that
- polls the registry every `poll_interval_s` (or at once after `trigger_refresh()`, which
  the webhook endpoint calls) and swaps in any version an alias moved to;
- checks every `busy_check_s` whether a training job holds the device (serve/cpu.py).

    PredictorService
      pool         AdapterPool       the base and one adapter per label (serve/pool.py)
      watcher      RegistryWatcher   follows the aliases, refuses bad versions (serve/watcher.py)
      forecasting  Forecasting       checks, queues and decodes requests (serve/forecasting.py)
      batcher      Batcher           the queue: batching and load shedding (serve/batching.py)
      cpu          CpuShare          threads and niceness beside a training job (serve/cpu.py)
      health(), models()             the reports (serve/health.py)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import datetime

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import ConfigError
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.serve import health
from kronos_rolling.serve.batching import Batcher
from kronos_rolling.serve.cache import VersionCache
from kronos_rolling.serve.cpu import CpuShare
from kronos_rolling.serve.forecasting import (
    Answer,
    ForecastOptions,
    Forecasting,
    ItemError,
    PendingForecast,
    SeriesInput,
)
from kronos_rolling.serve.pool import AdapterPool
from kronos_rolling.serve.source import RegistrySource
from kronos_rolling.serve.watcher import RegistryWatcher, now_utc
from kronos_rolling.settings import ServeSettings
from kronos_rolling.tracking.context import Tracking

log = logging.getLogger(__name__)


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
        self.limits = settings.limits
        self.cpu = CpuShare(settings)
        # The queue exists before start (the HTTP app's shedding middleware holds it); its
        # batches are decoded by `forecasting`, which start() builds on the loaded pool.
        self.batcher = Batcher(lambda jobs: self.forecasting.run_batch(jobs), max_batch_size=settings.max_batch_size,
                               max_batch_wait_s=settings.max_batch_wait_ms / 1000,
                               max_queue_wait_s=settings.max_queue_wait_s)
        self.pool: AdapterPool | None = None
        self.watcher: RegistryWatcher | None = None
        self.forecasting: Forecasting | None = None
        self.started_at: datetime | None = None
        self._wake = threading.Event()
        self._triggered = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> "PredictorService":
        self.pool = AdapterPool(self.base, self.settings.device)
        self.limits = replace(self.settings.limits,
                              max_bars=min(self.settings.limits.max_bars, self.pool.max_context),
                              max_pred_len=min(self.settings.limits.max_pred_len, self.pool.max_context))
        self.cache.root.mkdir(parents=True, exist_ok=True)
        self.cpu.check()
        self.watcher = RegistryWatcher(self.settings, self.base, self.source, self.cache, self.pool)
        store = DataStore(self.settings.data_dir)
        self.forecasting = Forecasting(self.settings, self.limits, self.pool, self.watcher, self.cpu, self.batcher,
                                       overrides=store.overrides(), calendar=store.events())
        self.watcher.refresh(cold=True)
        self.started_at = now_utc()
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
            self.cpu.check()
            if self._triggered or time.monotonic() >= next_poll:
                pushed, self._triggered = self._triggered, False
                try:
                    self.watcher.refresh(retry_refused=pushed)
                except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                    log.exception("reading the registry failed unexpectedly; trying again at the next poll")
                next_poll = time.monotonic() + self.settings.poll_interval_s
            self._wake.wait(max(0.0, min(next_poll - time.monotonic(), self.settings.busy_check_s)))
            self._wake.clear()

    # -- the registry, as followed ---------------------------------------------------------

    def refresh(self, *, retry_refused: bool = False) -> dict[str, str]:
        """One pass over the registry now: {label: what happened} (empty when it was unreachable)."""
        return self.watcher.refresh(retry_refused=retry_refused)

    @property
    def last_success(self) -> datetime | None:
        return None if self.watcher is None else self.watcher.last_success

    @property
    def failing_since(self) -> datetime | None:
        return None if self.watcher is None else self.watcher.failing_since

    @property
    def device_busy(self) -> bool:
        return self.cpu.busy

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(swaps, refusals) per label since start."""
        return ({}, {}) if self.watcher is None else self.watcher.counts()

    def refusals(self) -> list[dict]:
        return [] if self.watcher is None else self.watcher.refusals()

    # -- answering --------------------------------------------------------------------------

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
        return self.submit(series, options, now=now or now_utc()).result()

    def submit(self, series: list[SeriesInput], options: ForecastOptions, *, now: datetime,
               arrived: float | None = None) -> PendingForecast:
        """Check the request and queue its decoding (serve/forecasting.py); the answers come from the result."""
        return self.forecasting.submit(series, options, now=now, arrived=arrived)

    # -- reports ----------------------------------------------------------------------------

    def models(self) -> dict:
        return health.models_report(self.pool, self.settings)

    def health(self, now: datetime) -> dict:
        return health.health_report(now, settings=self.settings, base=self.base, started_at=self.started_at,
                                    pool=self.pool, watcher=self.watcher, batcher=self.batcher, cpu=self.cpu)

