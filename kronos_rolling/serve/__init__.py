"""Predictor service: per-symbol adapter selection by alias, one base in memory.

    selection.py   who answers a symbol (class @production, else pooled, else the base): pure decisions
    settings.py    every setting (environment names) and the request limits
    source.py      reading @production aliases and downloading a pinned version, verified
    integrity.py   sizes, sha256 digests and file formats of a bundle
    cache.py       the verified local copies of resolved versions, for starts without a registry
    pool.py        one base + one peft adapter and event embedding per label; atomic swaps
    service.py     PredictorService: follows the registry, answers forecasts, reports health
    webhooks.py    MLflow webhook signatures and which events matter
    metrics.py     Prometheus metrics
    schemas.py     HTTP request/response bodies
    app.py         the FastAPI app
    cli.py         `kronos-rolling serve` and `kronos-rolling predict`
"""
