"""Talking to the registry: connect, retry transient failures, say clearly what is missing.

MLflow's own HTTP layer already retries some failures (MLFLOW_HTTP_REQUEST_MAX_RETRIES);
`call` adds a short retry of our own around each registry write so that one dropped
request does not abort a promotion, and turns an exhausted retry into
`RegistryUnavailable` naming the server and what we were doing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import is_tracking_uri_set

from kronos_rolling.errors import RegistryError, RegistryUnavailable
from kronos_rolling.registry.settings import REGISTRY_RETRY, RetryPolicy
from kronos_rolling.tracking.server import DEFAULT_HOST, DEFAULT_PORT, is_healthy

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """A client for the tracking server, checked to answer before we rely on it.

    Without an explicit URI (argument, MLFLOW_TRACKING_URI or mlflow.set_tracking_uri) we
    use the local server that `kronos-rolling server` starts, never MLflow's fallback of a
    fresh ./mlflow.db, which would look like an empty registry.
    """
    if tracking_uri:
        uri = tracking_uri
    elif is_tracking_uri_set():
        uri = mlflow.get_tracking_uri()
    else:
        uri = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
    if uri.startswith(("http://", "https://")) and not is_healthy(uri):
        raise RegistryUnavailable(
            f"the MLflow tracking server at {uri} does not answer; start it "
            "(kronos-rolling server) or point MLFLOW_TRACKING_URI at a running one"
        )
    return MlflowClient(uri)


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the server or the network, not our request."""
    if isinstance(exc, requests.RequestException):
        return True
    if isinstance(exc, RestException):
        return exc.error_code in _TRANSIENT_CODES
    if isinstance(exc, MlflowException):
        # The HTTP layer reports connection failures and exhausted retries this way.
        return exc.error_code in _TRANSIENT_CODES and "API request to" in exc.message
    return False


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code in _MISSING_CODES


def call(what: str, fn: Callable[..., T], *args, retry: RetryPolicy = REGISTRY_RETRY,
         **kwargs) -> T:
    """Run one registry call, retrying transient failures with back-off.

    `what` completes "could not ..." in the message when every attempt failed.
    Non-transient MLflow errors (missing model, bad argument) propagate unchanged.
    """
    delays = retry.delays()
    for attempt in range(retry.attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified right below
            if not is_transient(exc):
                raise
            if attempt == retry.attempts - 1:
                raise RegistryUnavailable(
                    f"could not {what}: the tracking server failed {retry.attempts} times "
                    f"({_short(exc)}); check that it runs and retry"
                ) from exc
            log.warning("could not %s (attempt %d of %d, retrying in %.1fs): %s",
                        what, attempt + 1, retry.attempts, delays[attempt], _short(exc))
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def _short(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, MlflowException) else str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def get_registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    """The registered model, or a RegistryError saying it does not exist and why that may be."""
    try:
        return call(f"read registered model {name}", client.get_registered_model, name)
    except MlflowException as exc:
        if is_missing(exc):
            raise RegistryError(
                f"registered model {name!r} does not exist at {client.tracking_uri}; it is "
                "created by the first training run of that class (check MLFLOW_TRACKING_URI "
                "points at the right server)"
            ) from None
        raise RegistryError(f"could not read registered model {name!r}: {_short(exc)}") from exc


def find_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion | None:
    """The model version, or None when it does not exist (never created, or deleted)."""
    try:
        return call(f"read {name} v{version}", client.get_model_version, name, str(version))
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise RegistryError(f"could not read {name} v{version}: {_short(exc)}") from exc


def list_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """All live versions of a registered model, newest first."""
    versions = call(f"list versions of {name}", client.search_model_versions,
                    f"name = '{name}'", max_results=10_000)
    return sorted(versions, key=lambda v: int(v.version), reverse=True)
