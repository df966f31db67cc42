"""Predictor service: per-symbol adapter selection by alias, one base in memory.

    selection.py    who answers a symbol (class @production, else pooled, else the base): pure decisions
    source.py       reading @production aliases and downloading a pinned version, verified
    cache.py        the verified local copies of resolved versions, for starts without a registry
    pool.py         one base + one peft adapter and event embedding per label; atomic swaps
    watcher.py      RegistryWatcher: follows the aliases, refuses versions that fail verification
    batching.py     the forecast queue: batches across requests, load shedding
    forecasting.py  checks a request, queues it by asset class, decodes batches on the pool
    cpu.py          fewer threads and a lower priority while a training job holds the device
    health.py       the /health, /models and queue reports
    service.py      PredictorService: the parts above, started and stopped together
    webhooks.py     MLflow webhook signatures and which events matter
    metrics.py      Prometheus metrics
    schemas.py      HTTP request/response bodies
    http.py         uvicorn's time and concurrency limits
    app.py          the FastAPI app

`kronos-rolling serve` and `kronos-rolling predict` live in cli/serve.py.
"""
