"""Talking to the registry: retry transient failures, say clearly what is missing.

MLflow's own HTTP layer already retries some failures (MLFLOW_HTTP_REQUEST_MAX_RETRIES);
`call` adds a short retry of our own (tenacity) around each registry call so that one
dropped request does not abort a promotion, and turns an exhausted retry into
`RegistryUnavailable` naming the server and what we were doing. The client is always
the tracking context's (tracking/context.py), passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import requests
import tenacity
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException, RestException

from kronos_rolling.errors import RegistryError, RegistryUnavailable
from kronos_rolling.settings import REGISTRY_RETRY, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


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


def retrying(policy: RetryPolicy, retry_if, before_sleep=None) -> tenacity.Retrying:
    """tenacity's loop for a RetryPolicy: exponential back-off, the last error re-raised."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=tenacity.wait_exponential(multiplier=policy.first_delay_s, exp_base=policy.factor,
                                       max=policy.max_delay_s),
        retry=retry_if, before_sleep=before_sleep, reraise=True,
    )


def call(what: str, fn: Callable[..., T], *args, retry: RetryPolicy = REGISTRY_RETRY,
         **kwargs) -> T:
    """Run one registry call, retrying transient failures with back-off.

    `what` completes "could not ..." in the message when every attempt failed.
    Non-transient MLflow errors (missing model, bad argument) propagate unchanged.
    """
    def note(state: tenacity.RetryCallState) -> None:
        log.warning("could not %s (attempt %d of %d, retrying in %.1fs): %s", what, state.attempt_number,
                    retry.attempts, state.next_action.sleep, _short(state.outcome.exception()))

    try:
        return retrying(retry, tenacity.retry_if_exception(is_transient), note)(fn, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - only an exhausted transient failure is ours to word
        if not is_transient(exc):
            raise
        raise RegistryUnavailable(
            f"could not {what}: the tracking server failed {retry.attempts} times "
            f"({_short(exc)}); check that it runs and retry"
        ) from exc


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
