"""Dynamic batching: requests that arrive together are decoded together, and a queue that
says no at once when it is full.

Each request becomes one `BatchJob` per model group (the series of one asset class, with
the request's options). One worker thread decodes batch after batch: it takes the oldest
job, waits until that job is `max_batch_wait_s` old or enough jobs wait to fill a batch,
and decodes, together, every waiting job with the same `key` (jobs whose decode settings
differ cannot share a generation) in arrival order, up to the batch's rows (a row per
sample path). A job larger than a batch is decoded alone.

How large a batch may be: `max_batch_size` rows, and no more than a batch decodes in half
the queue's limit. What a batch takes depends on how much batching saves, which depends on
the model and the machine: little where the lookback pass dominates (CPUs, long lookbacks:
a batch of 32 takes about 32 single forecasts), much where the memory-bound steps do (long
horizons, GPUs). `BatchCost` learns it from the batches decoded (their seconds against
their work and rows), so batches size themselves to the machine; until batches of
different sizes have shown it, `max_batch_size` alone holds.

Load shedding. The queue's limit is a wait, `max_queue_wait_s`: a request whose answer
would come later is refused at once with `Overloaded`, which the HTTP API answers 503 with
`Retry-After`. The estimate is what the running batch has left, then the batches the queue
ahead will be cut into, the last one holding the request and, when it has to wait, the
rows that may still join it meanwhile (its answer comes when that batch ends), each costed
by `BatchCost` (by the measured rate of work units per second while it cannot tell; a
job's work is the tokens it feeds: each series' bars once plus pred_len per path), plus
the time the request took to be read and checked (`submit(waited_s=...)`). What the
predictions still miss (the machine's other load, reading and answering requests) is
corrected from how long admitted requests really took (`observe`). Until a batch has been
timed, at most one batch of rows (or one job) may wait.

Refusing costs next to nothing, or refused requests would take the CPU from the decode:
the HTTP API asks `overloaded()` before it reads a request (the queue plus a request of the
recent average size over the limit: a 503 with no parsing), and the service asks
`admits(work, rows)` of a parsed request before it checks its bars.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kronos_rolling.errors import KronosError

log = logging.getLogger(__name__)

RATE_SMOOTHING = 0.3  # weight of the newest value in the running averages (rate, work per row and request)
CORRECTION_QUANTILE = 0.995  # the share of requests the corrected prediction should cover
CORRECTION_STEP = 0.01  # how fast the correction follows, per request, as a share of the limit


class Overloaded(KronosError):
    """The queue holds more work than can be answered within the limit; try again after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class BatchJob:
    key: Hashable  # jobs decode together only when their keys are equal
    rows: int  # rows of the decode (sample paths)
    work: float  # work units: tokens fed
    payload: Any  # what the batch runner needs
    future: Future = field(default_factory=Future)
    enqueued_at: float = 0.0
    expected_s: float | None = None  # the wait predicted when it was admitted (before the correction)


@dataclass(frozen=True)
class QueueState:
    """What /health and /metrics report of the queue."""

    jobs: int
    rows: int
    work: float
    running_rows: int
    rate: float | None  # work units per second over the last batches; None until one is timed
    batches: int
    shed: int
    correction: float  # seconds added to predictions: a running 99.5th percentile of answered - predicted


class Batcher:
    """One worker thread that decodes queued jobs in batches with `run_batch`.

    run_batch(jobs) returns one outcome per job, in order: a value or an exception, set on
    that job's future. An exception raised by run_batch itself fails every job of the batch.
    """

    def __init__(self, run_batch: Callable[[list[BatchJob]], list[Any]], *, max_batch_size: int,
                 max_batch_wait_s: float, max_queue_wait_s: float, clock: Callable[[], float] = time.monotonic):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.max_queue_wait_s = max_queue_wait_s
        self.clock = clock
        self._ready = threading.Condition()
        self._queue: list[BatchJob] = []
        self._running: list[BatchJob] = []
        self._running_since = 0.0
        self._rate: float | None = None
        self._job_work: float | None = None  # recent average work of a request
        self._correction = 0.0  # seconds added to predictions, see `observe`
        self._work_per_row: float | None = None
        self.cost = BatchCost()
        self._batches = 0
        self._shed = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self, on_thread_start: Callable[[], None] | None = None) -> "Batcher":
        self._stopping = False
        self._thread = threading.Thread(target=self._work, args=(on_thread_start,), name="kronos-batcher",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the batch that runs; jobs still queued fail with Overloaded."""
        with self._ready:
            self._stopping = True
            left, self._queue = self._queue, []
            self._ready.notify_all()
        for job in left:
            job.future.set_exception(Overloaded("the service is stopping; send the request again", 1))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- admission ----------------------------------------------------------------------

    def submit(self, jobs: Sequence[BatchJob], waited_s: float = 0.0) -> list[Future]:
        """Queue the jobs of one request, all or none: Overloaded at once when they would wait too long.

        waited_s: how long the request has taken already (reading and checking it): the limit
        is on the whole of its wait."""
        with self._ready:
            if self._stopping or self._thread is None:
                raise Overloaded("the service is not answering forecasts (starting or stopping); try again", 1)
            wait = self._expected_wait(sum(job.work for job in jobs), sum(job.rows for job in jobs))
            if wait is not None and waited_s + wait > self.max_queue_wait_s:
                raise self._refusal(waited_s + wait)
            now = self.clock()
            work = sum(job.work for job in jobs)
            self._job_work = _smoothed(self._job_work, work)
            for job in jobs:
                job.enqueued_at, job.expected_s = now, None if wait is None else wait - self._correction
                self._queue.append(job)
            self._ready.notify_all()
        return [job.future for job in jobs]

    def overloaded(self) -> Overloaded | None:
        """The refusal a request of the recent average size gets now (None: it may come in)."""
        with self._ready:
            wait = self._expected_wait(self._job_work or 0.0, 0)
            return self._refusal(wait) if wait is not None and wait > self.max_queue_wait_s else None

    def admits(self, work: float, rows: int, waited_s: float = 0.0) -> None:
        """Overloaded now if a request of this size would not be admitted (before its bars are checked)."""
        with self._ready:
            wait = self._expected_wait(work, rows)
            if wait is not None and waited_s + wait > self.max_queue_wait_s:
                raise self._refusal(waited_s + wait)

    def _refusal(self, wait: float) -> Overloaded:
        self._shed += 1
        retry = max(1, math.ceil(wait - self.max_queue_wait_s)) if math.isfinite(wait) else 1
        about = f"in about {wait:.0f}s" if math.isfinite(wait) else "later than the queue allows"
        return Overloaded(f"the forecast queue is full: this request would be answered {about}, over the "
                          f"{self.max_queue_wait_s:g}s limit; try again in {retry}s", retry)

    def _expected_wait(self, work: float, rows: int) -> float | None:
        """Seconds until work queued now would be answered (None: admit, the limit cannot be judged).

        The queue is cut into batches in order, as the worker will cut it, the new work in the
        last one, filled up with the rows that may still join while it waits; each batch's
        seconds come from `BatchCost` (from the rate while it cannot tell yet).
        """
        queued_rows = sum(job.rows for job in self._queue)
        if self._rate is None:  # no rate yet: one batch of rows at most, or one job of any size alone
            waiting = queued_rows + sum(job.rows for job in self._running)
            return math.inf if waiting and waiting + rows > self.max_batch_size else None
        batch_rows = self._batch_rows()
        seconds = 0.0
        if self._running:
            ran = self.clock() - self._running_since
            seconds = max(0.0, self._batch_seconds(sum(j.work for j in self._running),
                                                   sum(j.rows for j in self._running)) - ran)
        batches: list[list[float]] = []  # [work, rows] of the batches the queue will be cut into
        for job_work, job_rows in [*((job.work, job.rows) for job in self._queue), (work, rows)]:
            if batches and batches[-1][1] + job_rows <= batch_rows:
                batches[-1][0] += job_work
                batches[-1][1] += job_rows
            else:
                batches.append([job_work, job_rows])
        waits = seconds > 0 or len(batches) > 1
        if waits and self.cost.fit() is not None:  # rows arriving meanwhile may fill up the batch it ends in
            fill = max(0, batch_rows - int(batches[-1][1]))
            batches[-1] = [batches[-1][0] + fill * (self._work_per_row or 0.0), batches[-1][1] + fill]
        predicted = seconds + sum(self._batch_seconds(w, max(1, int(r))) for w, r in batches)
        if not waits:  # it starts a batch: that batch waits for others to join first
            predicted += self.max_batch_wait_s
        return predicted + self._correction

    def _batch_rows(self) -> int:
        """Rows a batch may hold: max_batch_size, and no more than decode in half the queue's limit."""
        if self._work_per_row is None:
            return self.max_batch_size
        fits = self.cost.rows_within(self.max_queue_wait_s / 2, self._work_per_row)
        return self.max_batch_size if fits is None else max(1, min(self.max_batch_size, fits))

    def _batch_seconds(self, work: float, rows: int) -> float:
        predicted = self.cost.seconds(work, rows)
        return predicted if predicted is not None else work / self._rate

    def observe(self, predicted_s: float | None, answered_s: float) -> None:
        """A request predicted to be answered in `predicted_s` (uncorrected) took `answered_s` in all:
        what the predictions miss (other load on the machine, reading and answering requests) is
        learned from it."""
        if predicted_s is None:
            return
        with self._ready:
            # A running quantile of answered - predicted: the correction settles where that share
            # of requests took no longer than predicted plus it (the limit is on the slow ones).
            above = answered_s - predicted_s > self._correction
            step = CORRECTION_STEP * self.max_queue_wait_s * (CORRECTION_QUANTILE if above else CORRECTION_QUANTILE - 1)
            self._correction = min(self.max_queue_wait_s, max(-self.max_queue_wait_s / 2, self._correction + step))

    def state(self) -> QueueState:
        with self._ready:
            return QueueState(len(self._queue), sum(j.rows for j in self._queue), sum(j.work for j in self._queue),
                              sum(j.rows for j in self._running), self._rate, self._batches, self._shed,
                              self._correction)

    # -- the worker ---------------------------------------------------------------------

    def _work(self, on_thread_start: Callable[[], None] | None) -> None:
        if on_thread_start is not None:
            on_thread_start()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = self.clock()
            try:
                outcomes = self.run_batch(batch)
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"run_batch answered {len(outcomes)} of {len(batch)} jobs")
            except BaseException as exc:  # noqa: BLE001 - every job of the batch gets the error
                log.exception("a batch of %d job(s) failed", len(batch))
                outcomes = [exc] * len(batch)
            seconds = max(self.clock() - started, 1e-6)
            with self._ready:
                work, rows = sum(job.work for job in batch), max(1, sum(job.rows for job in batch))
                self._rate = _smoothed(self._rate, work / seconds)
                self._work_per_row = _smoothed(self._work_per_row, work / rows)
                self.cost.add(work, rows, seconds)
                self._batches += 1
                self._running = []
            for job, outcome in zip(batch, outcomes):
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _next_batch(self) -> list[BatchJob] | None:
        """The next batch, once its oldest job has waited long enough or it is full; None: stopping."""
        with self._ready:
            while True:
                if self._stopping:
                    return None
                if not self._queue:
                    self._ready.wait()
                    continue
                key = self._queue[0].key
                compatible = [job for job in self._queue if job.key == key]
                rows, limit = sum(job.rows for job in compatible), self._batch_rows()
                waited = self.clock() - self._queue[0].enqueued_at
                if rows < limit and waited < self.max_batch_wait_s:
                    self._ready.wait(self.max_batch_wait_s - waited)
                    continue
                batch, taken = [], 0
                for job in compatible:
                    if batch and taken + job.rows > limit:
                        break
                    batch.append(job)
                    taken += job.rows
                chosen = {id(job) for job in batch}
                self._queue = [job for job in self._queue if id(job) not in chosen]
                self._running, self._running_since = batch, self.clock()
                return batch


def _smoothed(average: float | None, value: float) -> float:
    return value if average is None else RATE_SMOOTHING * value + (1 - RATE_SMOOTHING) * average


class BatchCost:
    """What one more row adds to a batch, from the batches decoded: seconds T of a batch of W work
    units in R rows fitted as T = a * W / R + b * W by least squares, recent batches weighing more.

    `a` is what a batch costs whatever its rows (per unit of work of one row: the memory-bound
    steps that batching shares), `b` what each row costs on its own (the lookback pass). One
    more row of w units adds b * w seconds. Until batches of different sizes have been timed
    the two cannot be told apart, and a row is taken to add nothing.
    """

    DECAY = 0.9  # weight of a batch after each newer one

    def __init__(self):
        self.uu = self.uv = self.vv = self.uy = self.vy = 0.0

    def add(self, work: float, rows: int, seconds: float) -> None:
        u, v = work / rows, work
        d = self.DECAY
        self.uu, self.uv, self.vv = d * self.uu + u * u, d * self.uv + u * v, d * self.vv + v * v
        self.uy, self.vy = d * self.uy + u * seconds, d * self.vy + v * seconds

    def fit(self) -> tuple[float, float] | None:
        """(a, b), or None while batches of one size only have been timed."""
        det = self.uu * self.vv - self.uv ** 2
        if det <= 1e-6 * self.uu * self.vv:
            return None
        a = (self.uy * self.vv - self.uv * self.vy) / det
        b = (self.uu * self.vy - self.uv * self.uy) / det
        if a < 0:  # no shared part at all: every row costs its own
            a, b = 0.0, self.vy / self.vv
        elif b < 0:  # the rows cost nothing of their own: the batch's shared part is all
            a, b = self.uy / self.uu, 0.0
        return a, b

    def seconds(self, work: float, rows: int) -> float | None:
        """Predicted seconds of a batch of `work` units in `rows` rows (None: no telling yet)."""
        fitted = self.fit()
        return None if fitted is None else fitted[0] * work / rows + fitted[1] * work

    def row_seconds(self, work_per_row: float) -> float:
        """What one more row of `work_per_row` units adds to a batch (0 while there is no telling)."""
        fitted = self.fit()
        return 0.0 if fitted is None else fitted[1] * work_per_row

    def rows_within(self, seconds: float, work_per_row: float) -> int | None:
        """The most rows of `work_per_row` units a batch can hold and decode within `seconds`
        (None: no telling yet, or no limit: rows cost nothing of their own)."""
        fitted = self.fit()
        if fitted is None or fitted[1] <= 0 or work_per_row <= 0:
            return None
        a, b = fitted
        return int((seconds - a * work_per_row) // (b * work_per_row))
