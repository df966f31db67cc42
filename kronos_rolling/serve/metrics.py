"""Prometheus metrics of the predictor service (`GET /metrics`).

Request counts, latencies and errors are recorded as requests finish; what the service
serves (version per label, stale registry, busy device, swaps, refusals) is read from
the service at scrape time, so it is never out of date. Each app has its own registry,
so two services in one process (tests) do not collide.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kronos_rolling.serve.selection import registry_freshness

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    def __init__(self, service):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("kronos_requests", "HTTP requests by route and status code",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("kronos_request_latency_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("kronos_request_errors", "Requests answered with an error, by kind",
                              ["route", "kind"], registry=self.registry)
        self.forecasts = Counter("kronos_forecasts", "Series forecast, by asset class and the model that answered",
                                 ["asset_class", "served_as", "registered_model", "version"], registry=self.registry)
        self.registry.register(_ServiceCollector(service))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, "client" if status < 500 else "server").inc()

    def count_forecast(self, model) -> None:
        self.forecasts.labels(model.asset_class, model.served_as, model.registered_model or "",
                              model.version or "").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ServiceCollector:
    def __init__(self, service):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        service = self.service
        if service.pool is None:
            return
        served = service.pool.served
        version = GaugeMetricFamily("kronos_served_version", "Version number served per label (absent: none)",
                                    labels=["label", "registered_model", "source"])
        for label, adapter in served.items():
            version.add_metric([label, adapter.registered_model, adapter.source], float(adapter.version))
        yield version
        freshness = registry_freshness(service.last_success, service.failing_since, datetime.now(timezone.utc),
                                       service.settings.poll_interval_s)
        yield GaugeMetricFamily("kronos_registry_stale", "1 while the registry cannot be read",
                                value=float(freshness.stale))
        yield GaugeMetricFamily("kronos_device_busy", "1 while a training job holds the device",
                                value=float(service.device_busy))
        queue = service.batcher.state()
        yield GaugeMetricFamily("kronos_queue_rows", "Rows (sample paths) waiting to be decoded", value=queue.rows)
        yield CounterMetricFamily("kronos_batches", "Batches decoded", value=queue.batches)
        yield CounterMetricFamily("kronos_shed_requests", "Requests refused with 503: the queue was full",
                                  value=queue.shed)
        swaps, refusals = service.counts()
        swap_family = CounterMetricFamily("kronos_model_swaps", "Versions swapped in or out, per label",
                                          labels=["label"])
        for label, count in sorted(swaps.items()):
            swap_family.add_metric([label], count)
        yield swap_family
        refusal_family = CounterMetricFamily("kronos_refused_versions", "Versions refused (corrupt, foreign base)",
                                             labels=["label"])
        for label, count in sorted(refusals.items()):
            refusal_family.add_metric([label], count)
        yield refusal_family
