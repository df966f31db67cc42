"""The HTTP API of the predictor service (FastAPI; OpenAPI schema at /openapi.json, docs at /docs).

    POST /forecast          one symbol -> forecast rows (+ quantiles) and the model that answered
    POST /forecast/batch    several symbols, same options, grouped by model. A result per item, in
                            order: a forecast, or an error naming the item's fields
                            (items[1].bars[3].high). 200 when any item is answered, else 422.
    GET  /health            served versions, registry freshness, device, warnings (no auth)
    GET  /models            label -> registered model, version, alias, loaded_at, source; refused versions
    GET  /metrics           Prometheus text format
    POST /webhooks/mlflow   MLflow registry webhook: read the registry now
    POST /admin/refresh     read the registry now and wait for the result

With KRONOS_API_TOKEN set, every route but /health, /openapi.json and /docs needs
`Authorization: Bearer <token>`; the webhook route instead accepts a delivery signed
with KRONOS_WEBHOOK_SECRET. Input errors are 4xx with a message naming the field and
the fix: bad bars are a 422 whose `errors` list names each field (`bars[3].high`), found
by the same bar validator as every other entry point. Unexpected errors are a 500 with a
request id, the traceback stays in the log.

Forecasts are decoded in batches (serve/batching.py): concurrent requests wait together
for one generation. When the queue holds more work than can be answered within
`max_queue_wait_s`, a forecast is a 503 with `Retry-After`, at once.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from datetime import datetime, timezone

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from kronos_rolling import __version__
from kronos_rolling.errors import ConfigError, DataError, KronosError
from kronos_rolling.serve.batching import Overloaded
from kronos_rolling.serve.forecasting import ItemError
from kronos_rolling.serve.http import ARRIVED
from kronos_rolling.serve.metrics import ServiceMetrics
from kronos_rolling.serve.schemas import (
    BatchRequest,
    BatchResponse,
    ForecastRequest,
    ForecastResponse,
    InvalidItem,
    field_errors,
    invalid_item_errors,
    location,
    response_of,
    series_of,
)
from kronos_rolling.serve.service import PredictorService
from kronos_rolling.serve.webhooks import (
    WebhookRejected,
    check_signature,
    relevant_model,
)

log = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes; send fewer bars or split the batch")


class BodyLimit:
    """Refuse bodies over `limit` bytes: by Content-Length up front, else while they stream in."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                response = JSONResponse({"detail": BodyTooLarge(self.limit).detail}, status_code=413)
                return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited, send)


FORECAST_ROUTES = ("/forecast", "/forecast/batch")


class Shedding:
    """A forecast arriving while the queue alone is over its limit gets 503 before its body is read."""

    def __init__(self, app, batcher, max_body: int):
        self.app = app
        self.batcher = batcher
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in FORECAST_ROUTES:
            scope.setdefault(ARRIVED, time.monotonic())  # the protocol's first byte, else now
            refusal = self.batcher.overloaded()
            if refusal is not None:
                scope["kronos.route"] = scope["path"]  # for the metrics: no route was matched
                # Read (up to the body limit), not parsed: a connection closed on an unread body
                # is reset before the 503 reaches the client.
                received, message = 0, {"more_body": True}
                while message.get("more_body") and received <= self.max_body:
                    message = await receive()
                    received += len(message.get("body", b""))
                response = JSONResponse({"detail": str(refusal)}, status_code=503,
                                        headers={"Retry-After": str(refusal.retry_after_s)})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class RequestMetrics:
    """Count and time every request by its route template (pure ASGI: no per-request task)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or scope.get("kronos.route", "unmatched")
            self.metrics.observe(route, scope.get("method", ""), status, time.perf_counter() - started)


def create_app(service: PredictorService) -> FastAPI:
    """The API around `service`; the service is started with the app and stopped with it."""
    settings = service.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if service.pool is None:
            await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(
        title="kronos-rolling predictor", version=__version__, lifespan=lifespan,
        description="Kronos forecasts with the production LoRA adapter of each symbol's asset class, "
                    "followed live from the MLflow registry.",
    )
    metrics = ServiceMetrics(service)
    app.state.service = service
    app.state.metrics = metrics
    bearer = HTTPBearer(auto_error=False, description="KRONOS_API_TOKEN (only when the service sets one)")

    def authorised(credentials: HTTPAuthorizationCredentials | None) -> bool:
        if settings.api_token is None:
            return True
        return (credentials is not None and credentials.scheme.lower() == "bearer"
                and hmac.compare_digest(credentials.credentials.encode(), settings.api_token.encode()))

    def require_token(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if not authorised(credentials):
            raise HTTPException(401, "missing or wrong bearer token: send `Authorization: Bearer <token>` "
                                     "with the token the service was started with (KRONOS_API_TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    protected = [Depends(require_token)]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = [{"field": "body" if e.get("type") == "json_invalid" else location(e.get("loc", ())),
                   "message": e.get("msg", "invalid"),
                   **({"input": _short(e["input"])} if "input" in e and not isinstance(e["input"], (dict, list))
                      else {})}
                  for e in exc.errors()]
        summary = "; ".join(f"{e['field']}: {e['message']}" + (f" (got {e['input']})" if "input" in e else "")
                            for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return JSONResponse({"detail": f"invalid request: {summary}{more}", "errors": errors[:50]}, status_code=422)

    @app.exception_handler(KronosError)
    async def kronos_error(request: Request, exc: KronosError):
        if isinstance(exc, (DataError, ConfigError)):
            return JSONResponse({"detail": str(exc)}, status_code=422)
        if isinstance(exc, Overloaded):
            return JSONResponse({"detail": str(exc)}, status_code=503,
                                headers={"Retry-After": str(exc.retry_after_s)})
        log.error("cannot answer %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"the service cannot answer right now: {exc}"}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        request_id = uuid.uuid4().hex[:12]
        log.exception("request %s (%s %s) failed", request_id, request.method, request.url.path)
        return JSONResponse({"detail": f"internal error (request id {request_id}); the service log has the "
                                       "details"}, status_code=500)

    async def answer(raw: Request, items, options):
        """Check the bars off the event loop, then wait for the batch that decodes them (no thread waits)."""
        now, arrived = datetime.now(timezone.utc), raw.scope.get(ARRIVED)

        def submit():
            return service.submit([series_of(item.symbol, item.bars) for item in items], options, now=now,
                                  arrived=arrived)

        pending = await run_in_threadpool(submit)
        outcomes = await pending.wait()
        if arrived is not None:  # how long it took in all, against the queue's prediction
            service.batcher.observe(pending.predicted_s, time.monotonic() - arrived)
        return outcomes

    @app.post("/forecast", response_model=ForecastResponse, dependencies=protected,
              responses={422: {"description": "Invalid request or bars: `detail`, and `errors` naming each field"},
                         503: {"description": "The forecast queue is full: try again after `Retry-After` seconds"}},
              summary="Forecast one symbol with its asset class's production adapter")
    async def forecast(request: ForecastRequest, raw: Request):
        (outcome,) = await answer(raw, [request], request.to_options())
        if isinstance(outcome, ItemError):
            return JSONResponse(field_errors(outcome), status_code=422)
        metrics.count_forecast(outcome.model)
        return response_of(outcome)

    @app.post("/forecast/batch", response_model=BatchResponse, dependencies=protected,
              responses={422: {"description": "No item could be answered (each result says why), or the "
                                              "request as a whole is invalid"},
                         503: {"description": "The forecast queue is full: try again after `Retry-After` seconds"}},
              summary="Forecast several symbols with the same options; a result per item")
    async def forecast_batch(request: BatchRequest, raw: Request):
        """Each item is answered on its own: its result holds a forecast, or an error naming the item's
        fields (`items[1].bars[3].high`). The answer is 200 when any item succeeds, else 422."""
        service.limits.check_batch(len(request.items))
        valid = [i for i, item in enumerate(request.items) if not isinstance(item, InvalidItem)]
        outcomes = dict(zip(valid, await answer(raw, [request.items[i] for i in valid], request.to_options())
                                 if valid else []))
        results = []
        for index, item in enumerate(request.items):
            prefix = f"items[{index}]."
            outcome = outcomes.get(index)
            if isinstance(item, InvalidItem):
                results.append({"index": index, "symbol": item.symbol, "error": invalid_item_errors(item, prefix)})
            elif isinstance(outcome, ItemError):
                results.append({"index": index, "symbol": outcome.symbol, "error": field_errors(outcome, prefix)})
            else:
                metrics.count_forecast(outcome.model)
                results.append({"index": index, **response_of(outcome), "error": None})
        answered = any(r["error"] is None for r in results)
        body = BatchResponse.model_validate({"results": results}).model_dump(mode="json")
        return JSONResponse(body, status_code=200 if answered else 422)

    @app.get("/health", summary="Served versions, registry freshness, device and warnings")
    def health():
        report = service.health(datetime.now(timezone.utc))
        report["limits"] = service.limits.__dict__
        return report

    @app.get("/models", dependencies=protected, summary="Per label: the version served and where it came from")
    def models():
        return {"base": service.base.to_dict(), "models": service.models(), "refused": service.refusals()}

    @app.get("/metrics", dependencies=protected, summary="Prometheus metrics")
    def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/webhooks/mlflow", status_code=202, summary="MLflow registry webhook: read the registry now")
    async def mlflow_webhook(request: Request,
                             credentials: HTTPAuthorizationCredentials | None = Security(bearer)):
        body = await request.body()
        if settings.webhook_secret is not None:
            try:
                check_signature(settings.webhook_secret, request.headers, body, time.time(),
                                settings.webhook_tolerance_s)
            except WebhookRejected as exc:
                if settings.api_token is None or not authorised(credentials):
                    raise HTTPException(401, f"webhook refused: {exc}") from None
        elif not authorised(credentials):
            raise HTTPException(401, "webhook refused: send the bearer token, or set KRONOS_WEBHOOK_SECRET "
                                     "to the webhook's secret")
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise HTTPException(422, "webhook body is not JSON; expected MLflow's {entity, action, data}") from None
        model = relevant_model(payload)
        if model is None:
            return JSONResponse({"accepted": False, "reason": "event does not concern a kronos-lora-* model"},
                                status_code=200)
        service.trigger_refresh()
        return {"accepted": True, "registered_model": model, "refresh": "scheduled"}

    @app.post("/admin/refresh", dependencies=protected, summary="Read the registry now and wait for the result")
    def admin_refresh():
        changes = service.refresh(retry_refused=True)
        return {"changes": changes, "health": service.health(datetime.now(timezone.utc))}

    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes)
    app.add_middleware(Shedding, batcher=service.batcher, max_body=settings.limits.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
