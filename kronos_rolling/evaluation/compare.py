"""Every model on the very same samples of a span, class by class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.forecasts import ForecastModel, forecast_closes
from kronos_rolling.evaluation.samples import EvaluationSamples, build_samples
from kronos_rolling.evaluation.score import (
    annualized_sharpe,
    cumulative_returns,
    mean_absolute_return_error,
    strategy_returns,
)


@dataclass
class SeriesFigures:
    symbol: str
    origins: int
    val_mae: float
    val_sharpe: float


@dataclass
class EvalResult:
    val_mae: float
    val_sharpe: float
    origins: int
    series: list[SeriesFigures] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def score(samples: EvaluationSamples, closes: np.ndarray | None) -> EvalResult:
    """Figures of forecast closes (N, horizon); None scores the no-change (persistence) forecast."""
    settings = samples.settings
    actual = cumulative_returns(samples.actual_close, samples.last_close)
    forecast = np.zeros_like(actual) if closes is None else cumulative_returns(closes, samples.last_close)
    symbols = np.asarray(samples.symbols)
    series = []
    for symbol in dict.fromkeys(samples.symbols):  # first-seen order
        rows = np.flatnonzero(symbols == symbol)
        rows = rows[np.argsort(samples.origin[rows], kind="stable")]
        held = strategy_returns(forecast[rows, settings.hold - 1], actual[rows, settings.hold - 1], settings.cost)
        series.append(SeriesFigures(
            symbol, len(rows), mean_absolute_return_error(forecast[rows], actual[rows]),
            annualized_sharpe(held, samples.periods_per_year[symbol]),
        ))
    return EvalResult(
        val_mae=mean_absolute_return_error(forecast, actual),
        val_sharpe=float(np.mean([s.val_sharpe for s in series])),
        origins=len(samples),
        series=series,
    )


def compare_on_span(store: DataStore, classes: list[str], span: tuple, candidate: ForecastModel,
                    references: dict[str, ForecastModel], settings: EvalSettings,
                    candidate_name: str = "candidate"):
    """Every model on the very same samples of `span`, class by class.

    Returns the figures (for several classes, the mean over classes, each weighted
    equally), the per-class figures, and the first class's samples and forecast closes
    for the plots.
    """
    per_class: dict[str, dict[str, EvalResult]] = {}
    first_samples, first_closes = None, {}
    for asset_class in classes:
        samples = build_samples(store, store.symbols_for(asset_class), span, settings, candidate.vocabulary)
        closes = {candidate_name: forecast_closes(candidate, samples)}
        for name, model in references.items():
            same = next((other for other, m in references.items() if m is model and other in closes), None)
            closes[name] = closes[same] if same else forecast_closes(model, samples)
        results = {name: score(samples, c) for name, c in closes.items()}
        results["persistence"] = score(samples, None)
        per_class[asset_class] = results
        if first_samples is None:
            first_samples, first_closes = samples, closes
    if not per_class:
        raise DataError(f"no data for {', '.join(classes)} in {store.root} to evaluate on")
    if len(per_class) == 1:
        figures = next(iter(per_class.values()))
    else:
        figures = {}
        for name in next(iter(per_class.values())):
            parts = [per_class[c][name] for c in per_class]
            figures[name] = EvalResult(
                float(np.mean([p.val_mae for p in parts])), float(np.mean([p.val_sharpe for p in parts])),
                sum(p.origins for p in parts), [s for p in parts for s in p.series])
    return figures, per_class, first_samples, first_closes
