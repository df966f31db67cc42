"""What the service reports about itself: `/health`, `/models` and the forecast queue.

Read-only views over the parts of a running service: the pool (what is loaded), the
watcher (registry freshness, refusals), the queue and the CPU share. `status` is
"degraded" whenever there is a warning: a class answered by a fallback, a refused
version, a stale registry.
"""

from __future__ import annotations

from datetime import datetime

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.serve.batching import Batcher
from kronos_rolling.serve.cpu import CpuShare
from kronos_rolling.serve.forecasting import route
from kronos_rolling.serve.pool import AdapterPool
from kronos_rolling.serve.selection import Choice
from kronos_rolling.serve.watcher import RegistryWatcher, iso
from kronos_rolling.settings import ServeSettings


def routes(pool: AdapterPool, watcher: RegistryWatcher, settings: ServeSettings) -> dict[str, Choice]:
    """Who answers each asset class now."""
    served, unavailable = pool.served, watcher.unavailable()
    return {c: route(c, served, settings, unavailable) for c in ASSET_CLASSES}


def models_report(pool: AdapterPool, settings: ServeSettings) -> dict:
    """Per label the version loaded (None: none), where it came from and its bundle's digest."""
    served = pool.served
    report = {}
    for label in settings.labels:
        adapter = served.get(label)
        report[label] = None if adapter is None else {
            "registered_model": adapter.registered_model, "version": adapter.version, "alias": adapter.alias,
            "loaded_at": iso(adapter.loaded_at), "source": adapter.source,
            "adapter": adapter.adapter_name, "bundle_sha256": adapter.digest,
            "val_mae": adapter.candidate().val_mae,
        }
    return report


def queue_report(batcher: Batcher) -> dict:
    """The forecast queue: what waits, the measured decode rate, its batching and shedding limits."""
    state = batcher.state()
    return {"waiting_requests": state.jobs, "waiting_rows": state.rows, "decoding_rows": state.running_rows,
            "work_per_s": None if state.rate is None else round(state.rate, 1), "batches": state.batches,
            "shed": state.shed, "wait_correction_s": round(state.correction, 2),
            "max_batch_size": batcher.max_batch_size,
            "max_batch_wait_ms": batcher.max_batch_wait_s * 1000,
            "max_queue_wait_s": batcher.max_queue_wait_s}


def health_report(now: datetime, *, settings: ServeSettings, base: BaseModelRef, started_at: datetime | None,
                  pool: AdapterPool, watcher: RegistryWatcher, batcher: Batcher, cpu: CpuShare) -> dict:
    served = pool.served
    freshness = watcher.freshness(now)
    warnings = []
    current = routes(pool, watcher, settings)
    for choice in current.values():
        if choice.warning:
            warnings.append(choice.warning)
    for label, refusal in sorted(watcher.refused.items()):
        still = served.get(label)
        warnings.append(f"{refusal.registered_model} v{refusal.version} refused: {refusal.reason}"
                        + (f"; still serving v{still.version}" if still else ""))
    if freshness.stale:
        warnings.append(f"registry stale: {freshness.reason}; serving the versions loaded")
    return {
        "status": "degraded" if warnings else "ok",
        "started_at": iso(started_at),
        "base": {"model": base.describe(), "max_context": pool.max_context},
        "registry": {
            "uri": watcher.source.describe(), "stale": freshness.stale, "reason": freshness.reason,
            "last_success_at": iso(watcher.last_success), "last_failure_at": iso(watcher.last_failure),
            "failing_since": iso(watcher.failing_since),
            "error": watcher.last_error, "poll_interval_s": settings.poll_interval_s,
        },
        "served": {label: (None if label not in served else
                           {"registered_model": served[label].registered_model,
                            "version": served[label].version, "source": served[label].source})
                   for label in settings.labels},
        "routes": {c: {"served_as": r.label, "registered_model": r.candidate and r.candidate.registered_model,
                       "version": r.candidate and r.candidate.version, "fallback": r.fallback}
                   for c, r in current.items()},
        "refused": watcher.refusals(),
        "queue": queue_report(batcher),
        "device": {"type": str(pool.forecaster.device), "training_busy": cpu.busy,
                   "inference_threads": cpu.threads(), "inference_nice": cpu.nice()},
        "warnings": warnings,
    }
