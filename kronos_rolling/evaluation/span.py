"""Every model on the very same origins of one held-out span, class by class.

`evaluate_span` builds each class's samples once, runs each distinct model on them
(K sampled paths and the teacher-forced NLL per origin), scores persistence beside them,
and keeps everything per origin, so any two models can then be compared pairwise
(`SpanEvaluation.difference`) on exactly the same origins. A symbol with no origin in the
span is left out with a note; so is a class with none at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.compare import (
    CalendarLayout,
    Difference,
    paired_difference,
    sharpe_difference,
    time_weights,
)
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.forecasts import ForecastModel, forecast_paths, token_nll
from kronos_rolling.evaluation.samples import EvaluationSamples, build_samples
from kronos_rolling.evaluation.score import (
    Scores,
    crps,
    cumulative_returns,
    origin_mae,
    position_returns,
    sharpe_of,
    skill,
)

log = logging.getLogger(__name__)

PERSISTENCE = "persistence"  # the no-change forecast: every return 0
BUY_AND_HOLD = "buyhold"  # the Sharpe baseline: long on every block


@dataclass
class SpanEvaluation:
    span: tuple
    settings: EvalSettings
    samples: dict[str, EvaluationSamples]  # per evaluated class
    per_class: dict[str, dict[str, Scores]]  # class -> model -> scores
    point_paths: dict[str, dict[str, np.ndarray]]  # class -> model -> (N, H) point forecasts (median) in prices
    notes: list[str] = field(default_factory=list)  # symbols and classes left out, and why

    @property
    def classes(self) -> list[str]:
        return list(self.per_class)

    @property
    def models(self) -> list[str]:
        """The evaluated models' names (persistence, always scored beside them, is not one)."""
        return [name for name in next(iter(self.per_class.values())) if name != PERSISTENCE]

    def scores(self, name: str) -> Scores:
        """`name`'s scores on every class's origins (in class order), weighted over all of them."""
        parts = [self.per_class[c][name] for c in self.classes]
        return Scores(
            mae=np.concatenate([p.mae for p in parts]), crps=np.concatenate([p.crps for p in parts]),
            nll=None if any(p.nll is None for p in parts) else np.concatenate([p.nll for p in parts]),
            block_returns={s: r for p in parts for s, r in p.block_returns.items()},
            blocks_per_year={s: v for p in parts for s, v in p.blocks_per_year.items()},
            weights=self.layout.weights,
        )

    @property
    def groups(self) -> np.ndarray:
        """The series of each origin (class/symbol), aligned with `scores(...)` arrays."""
        return np.concatenate([np.char.add(f"{c}/", self.samples[c].symbols.astype(str)) for c in self.classes])

    @property
    def origin_times(self) -> np.ndarray:
        """(N,) ns: each origin's first horizon bar, aligned with `scores(...)` arrays."""
        return np.concatenate([self.samples[c].origin for c in self.classes])

    @property
    def horizon_ends(self) -> np.ndarray:
        """(N,) ns: where each origin's horizon ends, aligned with `scores(...)` arrays."""
        return np.concatenate([self.samples[c].horizon_end for c in self.classes])

    @cached_property
    def layout(self) -> CalendarLayout:
        """Every origin on calendar time: the weights of every figure and the evidence of every interval."""
        return CalendarLayout.of(self.groups, self.origin_times, self.settings.horizon, self.horizon_ends)

    @property
    def horizons(self) -> float:
        """Non-overlapping horizons of calendar time that the origins span (the evidence behind an interval)."""
        return self.layout.horizons

    @property
    def origins(self) -> int:
        return sum(len(s) for s in self.samples.values())

    @property
    def candidates(self) -> int:
        """Origins in the span before any cap."""
        return sum(s.candidates for s in self.samples.values())

    def figures(self, name: str) -> dict[str, float]:
        """val_mae, val_nll, val_crps, val_mae_skill (vs persistence), val_sharpe and origins of `name`."""
        own, persistence = self.scores(name), self.scores(PERSISTENCE)
        return {"val_mae": own.val_mae, "val_nll": own.val_nll, "val_crps": own.val_crps,
                "val_mae_skill": skill(own.val_mae, persistence.val_mae), "val_sharpe": own.val_sharpe,
                "val_origins": float(own.origins)}

    def buyhold_returns(self, classes: list[str] | None = None) -> dict[str, np.ndarray]:
        """Per series, buy-and-hold's net returns on the sign rule's blocks (the Sharpe baseline)."""
        returns = {}
        for asset_class in classes or self.classes:
            samples = self.samples[asset_class]
            actual = samples.actual_returns[:, -1]
            for symbol, rows in samples.blocks().items():
                returns[symbol] = position_returns(np.ones(len(rows)), actual[rows], self.settings.cost)
        return returns

    def buyhold_sharpe(self) -> float:
        per_year = {s: v for samples in self.samples.values() for s, v in samples.blocks_per_year.items()}
        return sharpe_of(self.buyhold_returns(), per_year)

    def blocks(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per series, the sign rule's block starts (ns) and a block's length in time (ns)."""
        starts, lengths = {}, {}
        for samples in self.samples.values():
            for symbol, rows in samples.blocks().items():
                starts[symbol] = samples.origin[rows]
                lengths[symbol] = float(np.median(samples.horizon_end[rows] - samples.origin[rows]))
        return starts, lengths

    def difference(self, first: str, second: str, metric: str) -> Difference:
        """first - second on the same origins, for a loss (`val_mae`, `val_nll`, `val_crps`) or `val_sharpe`."""
        a, b = self.scores(first), self.scores(second)
        if metric == "val_sharpe":
            starts, lengths = self.blocks()
            return sharpe_difference(a.block_returns, b.block_returns, a.blocks_per_year, starts, lengths,
                                     confidence=self.settings.confidence,
                                     resamples=self.settings.bootstrap_resamples, seed=self.settings.seed)
        first_losses, second_losses = a.losses(metric), b.losses(metric)
        if first_losses is None or second_losses is None:
            return Difference(metric, float("nan"), float("nan"), float("nan"), a.origins, self.settings.confidence,
                              f"{first if first_losses is None else second} has no {metric}")
        return paired_difference(first_losses, second_losses, series=self.groups, times=self.origin_times,
                                 horizon=self.settings.horizon, ends=self.horizon_ends,
                                 confidence=self.settings.confidence, metric=metric)


def score_forecasts(samples: EvaluationSamples, paths: np.ndarray | None, nll: np.ndarray | None,
                    cost: float) -> Scores:
    """Scores of (N, K, H) sampled close paths; None scores persistence (every return 0).
    The point forecast is the median of the K paths at each step (what absolute error rewards)."""
    actual = samples.actual_returns
    if paths is None:
        point, ensemble = np.zeros_like(actual), np.zeros((len(actual), 1))
    else:
        returns = cumulative_returns(paths, samples.last_close)  # (N, K, H)
        point, ensemble = np.median(returns, axis=1), returns[:, :, -1]
    block_returns = {symbol: position_returns(np.sign(point[rows, -1]), actual[rows, -1], cost)
                     for symbol, rows in samples.blocks().items()}
    return Scores(origin_mae(point, actual), crps(ensemble, actual[:, -1]), nll, block_returns,
                  dict(samples.blocks_per_year), time_weights(samples.symbols, samples.origin))


def span_horizons(store: DataStore, classes: list[str], span: tuple, settings: EvalSettings, vocabulary) -> float:
    """Non-overlapping horizons of calendar time that the span's origins hold, over every class
    (the evidence an interval there would rest on); no model runs. 0 when there is no origin."""
    names, times, ends = [], [], []
    for asset_class in classes:
        symbols = store.symbols_for(asset_class)
        if not symbols:
            continue
        try:
            samples = build_samples(store, symbols, span, settings, vocabulary)
        except DataError:
            continue
        names.append(np.char.add(f"{asset_class}/", samples.symbols.astype(str)))
        times.append(samples.origin)
        ends.append(samples.horizon_end)
    if not names:
        return 0.0
    layout = CalendarLayout.of(np.concatenate(names), np.concatenate(times), settings.horizon, np.concatenate(ends))
    return 0.0 if layout.reason else layout.horizons


def evaluate_span(store: DataStore, classes: list[str], span: tuple, models: dict[str, ForecastModel],
                  settings: EvalSettings, vocabulary) -> SpanEvaluation:
    """Every model in `models`, and persistence, on the same origins of `span` in each class."""
    samples_of, per_class, point_paths, notes = {}, {}, {}, []
    for asset_class in classes:
        symbols = store.symbols_for(asset_class)
        try:
            samples = build_samples(store, symbols, span, settings, vocabulary)
        except DataError as exc:
            notes.append(f"{asset_class}: left out: {exc}")
            continue
        empty = [s for s, n in samples.dataset.samples_per_symbol.items() if n == 0]
        if empty:
            notes.append(f"{asset_class}: {', '.join(empty)} left out: no origin in [{span[0]}, {span[1]})")
        samples_of[asset_class], per_class[asset_class], point_paths[asset_class] = samples, {}, {}
        done: dict[int, str] = {}  # the same model under two names is run once
        for name, model in models.items():
            if id(model) in done:
                per_class[asset_class][name] = per_class[asset_class][done[id(model)]]
                point_paths[asset_class][name] = point_paths[asset_class][done[id(model)]]
                continue
            paths = forecast_paths(model, samples)
            per_class[asset_class][name] = score_forecasts(samples, paths, token_nll(model, samples), settings.cost)
            point_paths[asset_class][name] = np.median(paths, axis=1)
            done[id(model)] = name
        per_class[asset_class][PERSISTENCE] = score_forecasts(samples, None, None, settings.cost)
    for note in notes:
        log.warning("evaluation: %s", note)
    if not per_class:
        raise DataError(f"no data for {', '.join(classes)} in [{span[0]}, {span[1]}) to evaluate on: "
                        + "; ".join(notes))
    return SpanEvaluation(span, settings, samples_of, per_class, point_paths, notes)
