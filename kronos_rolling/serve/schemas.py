"""Request and response bodies of the HTTP API (they are also its OpenAPI schema).

Bars are checked in two steps: their shape and types here (pydantic), then by the one bar
validator every entry point shares (`data.bars`), in the service. Either way an error
names the field: `bars[3].high`, and in a batch `items[1].bars[3].high`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator

from kronos_rolling.data.bars import BarsError
from kronos_rolling.model.config import MAX_TEMPERATURE, MAX_TOP_K, MIN_TEMPERATURE
from kronos_rolling.serve.forecasting import Answer, ForecastOptions, ItemError, SeriesInput
from kronos_rolling.settings import RequestLimits

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
QuantileLevel = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class Bar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: datetime = Field(description="Bar start; ISO 8601 (any UTC offset, converted to UTC; none: UTC), "
                                            "or unix seconds or milliseconds")
    open: FiniteFloat
    high: FiniteFloat
    low: FiniteFloat
    close: FiniteFloat
    volume: FiniteFloat | None = None
    amount: FiniteFloat | None = None


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pred_len: int = Field(16, ge=1, description="Bars to forecast (the service's limit is in /health)")
    samples: int | None = Field(None, ge=1, description="Sample paths whose median is the forecast (default 1; "
                                                           "a quantile request draws at least 32)")
    temperature: float = Field(1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False,
                               description="Sharpness of the sampling (lower: closer to greedy)")
    top_k: int = Field(0, ge=0, le=MAX_TOP_K, description="Keep the k most likely tokens (0: off, 1: greedy)")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass (when top_k is 0)")
    seed: int | None = Field(0, ge=0, le=2**63 - 1, description="Seed of the sampling; null: unseeded")
    quantiles: bool | Annotated[list[QuantileLevel], Field(max_length=99)] = Field(
        False, examples=[[0.05, 0.5, 0.95]],
        description="Quantiles of the close across the sample paths: any levels in (0, 1), e.g. [0.05, 0.5, 0.95] "
                    "(keys p5, p50, p95), or true for p10/p50/p90; calibrated with the answering version's "
                    "calibration when it serves one (see `calibration` in the answer)")

    def to_options(self) -> ForecastOptions:
        return ForecastOptions.asked(pred_len=self.pred_len, samples=self.samples, temperature=self.temperature,
                                     top_k=self.top_k, top_p=self.top_p, seed=self.seed, quantiles=self.quantiles)


BARS_DESCRIPTION = (f"History, oldest first: at least {RequestLimits.min_bars} bars (the service's min_bars, "
                    f"KRONOS_SERVE_MIN_BARS), at most {RequestLimits.max_bars} (max_bars, further capped by the "
                    "model's context). A request with too few bars and bad bars gets every error at once.")


class ForecastRequest(Options):
    symbol: str = Field(min_length=1, max_length=64, examples=["BTCUSDT"])
    bars: list[Bar] = Field(min_length=1, description=BARS_DESCRIPTION)


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=64)
    bars: list[Bar] = Field(min_length=1, description=BARS_DESCRIPTION)


@dataclass
class InvalidItem:
    """A batch item whose shape or types are wrong: pydantic's errors, kept to answer that item alone."""

    symbol: str | None
    errors: list[dict]


def _item_or_errors(value: Any, handler) -> BatchItem | InvalidItem:
    try:
        return handler(value)
    except ValidationError as exc:
        symbol = value.get("symbol") if isinstance(value, dict) else None
        return InvalidItem(symbol if isinstance(symbol, str) else None, exc.errors())


class BatchRequest(Options):
    items: list[Annotated[BatchItem, WrapValidator(_item_or_errors)]] = Field(
        min_length=1, description="Series forecast with the same options; each is answered on its own")


class ForecastRow(BaseModel):
    timestamp: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    amount: float


class ModelBlock(BaseModel):
    registered_model: str | None = Field(description="e.g. kronos-lora-crypto; null: the bare base answered")
    version: str | None
    alias: str | None
    asset_class: str = Field(description="The asset class of the symbol")
    served_as: str = Field(description="Whose adapter answered: the asset class, 'pooled' or 'base'")
    source: str | None = Field(description="registry: resolved live; cache: the registry was down at start-up")
    fallback: str | None = Field(description="Why the class's own production version did not answer")


class CalibrationBlock(BaseModel):
    applied: bool = Field(description="Whether the close quantiles carry a calibration")
    registered_model: str | None = Field(description="The version whose calibration it is (the one that "
                                                     "answered); null: the bare base answered")
    version: str | None
    detail: str = Field(description="e.g. \"applied: kronos-lora-crypto v3's crypto calibration, fitted on "
                                    "2018-05-01..2018-06-01\", or \"not applied: <why>\"")


class ForecastResponse(BaseModel):
    symbol: str
    model: ModelBlock
    warnings: list[str]
    forecast: list[ForecastRow] = Field(description="The point forecast: the median of the sample paths")
    quantiles: dict[str, list[ForecastRow]] | None = None
    calibration: CalibrationBlock | None = Field(None, description="With quantiles: whether they are calibrated")


class FieldError(BaseModel):
    field: str = Field(description="e.g. bars[3].high, or items[1].bars[3].high in a batch")
    message: str


class ItemErrorBody(BaseModel):
    detail: str
    errors: list[FieldError]


class BatchResult(BaseModel):
    """One item's answer: a forecast (error null) or an error (model and forecast null)."""

    index: int = Field(description="The item's position in `items`")
    symbol: str | None
    model: ModelBlock | None = None
    warnings: list[str] = []
    forecast: list[ForecastRow] | None = None
    quantiles: dict[str, list[ForecastRow]] | None = None
    calibration: CalibrationBlock | None = None
    error: ItemErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult]


def series_of(symbol: str, bars: list[Bar]) -> SeriesInput:
    """The request's bars as the DataFrame the forecaster reads (timestamps in UTC)."""
    stamps = [b.timestamp if b.timestamp.tzinfo else b.timestamp.replace(tzinfo=timezone.utc) for b in bars]
    columns = {"timestamp": pd.to_datetime(stamps, utc=True)}
    for name in ("open", "high", "low", "close"):
        columns[name] = [getattr(b, name) for b in bars]
    for name in ("volume", "amount"):
        values = [getattr(b, name) for b in bars]
        if any(v is not None for v in values):
            columns[name] = [float("nan") if v is None else v for v in values]
    return SeriesInput(symbol.strip(), pd.DataFrame(columns))


def field_errors(error: ItemError, prefix: str = "") -> dict:
    """{detail, errors: [{field, message}]} for a series the service refused; `prefix`: `items[i].`."""
    if isinstance(error.error, BarsError):
        errors = [{"field": prefix + _bar_field(issue.row, issue.column), "message": issue.problem + issue.detail}
                  for issue in error.error.issues]
    else:
        errors = [{"field": prefix + error.field, "message": str(error.error)}]
    return {"detail": str(error.error), "errors": errors}


def invalid_item_errors(item: InvalidItem, prefix: str) -> dict:
    errors = [{"field": prefix + location(e.get("loc", ())), "message": e.get("msg", "invalid")}
              for e in item.errors]
    return {"detail": "invalid item: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]),
            "errors": errors}


def _bar_field(row: int | None, column: str | None) -> str:
    return "bars" + (f"[{row}]" if row is not None else "") + (f".{column}" if column and row is not None else "")


def location(loc) -> str:
    """pydantic's error location as a field path: ("bars", 3, "close") -> bars[3].close."""
    text = ""
    for part in (p for p in loc if p != "body"):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def response_of(answer: Answer) -> dict:
    result = answer.result
    return {
        "symbol": answer.symbol,
        "model": answer.model.__dict__,
        "warnings": answer.warnings,
        "forecast": _rows(result.point),
        "quantiles": {name: _rows(frame) for name, frame in result.quantiles.items()} if result.quantiles else None,
        "calibration": None if answer.calibration is None else {
            "applied": answer.calibration.applied, "registered_model": answer.model.registered_model,
            "version": answer.model.version, "detail": answer.calibration.detail},
    }


def _rows(frame: pd.DataFrame) -> list[dict]:
    out = frame.copy()
    out["timestamp"] = [ts.isoformat() for ts in pd.to_datetime(out["timestamp"], utc=True)]
    return out.to_dict("records")
