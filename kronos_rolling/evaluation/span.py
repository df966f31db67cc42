"""Every model on the very same origins of one held-out span, class by class.

`evaluate_span` builds each class's samples once, runs each distinct model on them
(K sampled paths and the teacher-forced NLL per origin), scores the two baselines beside
them, and keeps everything per origin, so any two models can then be compared pairwise
(`SpanEvaluation.difference`) on exactly the same origins. A symbol with no origin in the
span is left out with a note; so is a class with none at all.

The baselines need no model: `persistence` (no change: a point forecast) and `naive`, a
random walk in log prices whose spread is the lookback's own: K paths per origin with
log(close[t+h-1] / close[t-1]) = sigma * (e_1 + ... + e_h), e ~ N(0, 1) seeded, and sigma the
standard deviation of the lookback's one-bar log returns (volatility scaled by sqrt(h)).
Its median is the last close, so its point forecast is persistence's up to sampling noise;
it is the distribution to beat (`val_crps_skill`).

A model that carries a calibration (evaluation/calibration.py; `calibrations`, set by the
caller for registered versions) is also scored with it: `calibrated_val_coverage_*`, and,
when the calibration was fitted before the span begins (out of sample), `served_val_coverage_*`:
its intervals as the version serves them (calibrated, unless the calibration is withheld).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

import pandas as pd

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.calibration import (
    LEVELS,
    Calibration,
    calibrated_inside,
    coverage_key,
    fit_class,
    inside,
    pit_values,
    spread_scores,
)
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
NAIVE = "naive"  # the random walk with the lookback's volatility: K paths, no model
BASELINES = (PERSISTENCE, NAIVE)  # scored beside every evaluated model
BUY_AND_HOLD = "buyhold"  # the Sharpe baseline: long on every block


@dataclass
class SpanEvaluation:
    span: tuple
    settings: EvalSettings
    samples: dict[str, EvaluationSamples]  # per evaluated class
    per_class: dict[str, dict[str, Scores]]  # class -> model -> scores
    point_paths: dict[str, dict[str, np.ndarray]]  # class -> model -> (N, H) point forecasts (median) in prices
    notes: list[str] = field(default_factory=list)  # symbols and classes left out, and why
    calibrations: dict[str, Calibration] = field(default_factory=dict)  # model -> the calibration it carries

    @property
    def classes(self) -> list[str]:
        return list(self.per_class)

    @property
    def models(self) -> list[str]:
        """The evaluated models' names (the baselines, always scored beside them, are not)."""
        return [name for name in next(iter(self.per_class.values())) if name not in BASELINES]

    def scores(self, name: str) -> Scores:
        """`name`'s scores on every class's origins (in class order), weighted over all of them."""
        parts = [self.per_class[c][name] for c in self.classes]
        paths = all(p.z is not None for p in parts)
        return Scores(
            mae=np.concatenate([p.mae for p in parts]), crps=np.concatenate([p.crps for p in parts]),
            nll=None if any(p.nll is None for p in parts) else np.concatenate([p.nll for p in parts]),
            block_returns={s: r for p in parts for s, r in p.block_returns.items()},
            blocks_per_year={s: v for p in parts for s, v in p.blocks_per_year.items()},
            weights=self.layout.weights,
            inside={level: np.concatenate([p.inside[level] for p in parts]) for level in LEVELS} if paths else None,
            pit=np.concatenate([p.pit for p in parts]) if paths else None,
            z=np.concatenate([p.z for p in parts]) if paths else None,
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
        """val_mae, val_nll, val_crps, val_mae_skill (vs persistence), val_crps_skill (vs naive),
        val_sharpe, origins, and the coverage of the central 50/80/90% intervals
        (`val_coverage_80` at the horizon's end, `val_coverage_80_steps` over its steps; NaN for
        persistence) of `name`; with the calibration it carries, calibrated and served coverage."""
        own, persistence, naive = self.scores(name), self.scores(PERSISTENCE), self.scores(NAIVE)
        figures = {"val_mae": own.val_mae, "val_nll": own.val_nll, "val_crps": own.val_crps,
                   "val_mae_skill": skill(own.val_mae, persistence.val_mae),
                   "val_crps_skill": skill(own.val_crps, naive.val_crps), "val_sharpe": own.val_sharpe,
                   "val_origins": float(own.origins)}
        figures.update(_coverage_figures(own, "val_coverage"))
        calibration = self.calibrations.get(name)
        if calibration is not None and any(c in calibration.classes for c in self.classes):
            figures.update(_coverage_figures(own, "calibrated_val_coverage", self.calibrated(name, calibration)))
            if self.out_of_sample(calibration):
                figures.update(_coverage_figures(own, "served_val_coverage",
                                                 self.calibrated(name, calibration, served=True)))
        return figures

    def out_of_sample(self, calibration: Calibration) -> bool:
        """The calibration was fitted on data that ends before this span begins."""
        return pd.Timestamp(calibration.fitted_on[1], tz="UTC") <= pd.Timestamp(self.span[0])

    def calibrated(self, name: str, calibration: Calibration, *, served: bool = False,
                   classes: list[str] | None = None) -> dict[float, np.ndarray]:
        """level -> (N, H) inside `name`'s calibrated central intervals, over `classes` (default:
        all, aligned with `scores(...)`); a class without a calibration entry (or, `served`, whose
        entry is withheld) keeps its uncalibrated intervals."""
        found = {level: [] for level in LEVELS}
        for asset_class in classes or self.classes:
            own = self.per_class[asset_class][name]
            entry = calibration.entry(asset_class) if served else calibration.classes.get(asset_class)
            for level in LEVELS:
                found[level].append(own.inside[level] if entry is None else calibrated_inside(own.z, entry, level))
        return {level: np.concatenate(parts) for level, parts in found.items()}

    def class_coverage(self, name: str, asset_class: str, calibration: Calibration | None = None
                       ) -> dict[float, float]:
        """level -> `name`'s coverage at the horizon's end on `asset_class`'s origins, uncalibrated
        or with `calibration`'s entry for the class."""
        own = self.per_class[asset_class][name]
        entry = calibration.classes.get(asset_class) if calibration is not None else None
        return {level: own.coverage(level, None if entry is None else calibrated_inside(own.z, entry, level))[0]
                for level in LEVELS}

    def fit_calibration(self, name: str, min_outcomes: int) -> Calibration:
        """A calibration of `name`'s spread per class on this span (or, per class, why none)."""
        classes, not_fitted = {}, {}
        for asset_class in self.classes:
            own = self.per_class[asset_class][name]
            fitted = fit_class(own.z, own.weights, min_outcomes)
            if isinstance(fitted, str):
                not_fitted[asset_class] = f"{fitted}, on {self.span[0]:%Y-%m-%d}..{self.span[1]:%Y-%m-%d}"
                continue
            coverage = {coverage_key(level): own.coverage(level)[0] for level in LEVELS}
            coverage.update({coverage_key(level, "calibrated_val_coverage"):
                             own.coverage(level, calibrated_inside(own.z, fitted, level))[0] for level in LEVELS})
            classes[asset_class] = dataclasses.replace(fitted, coverage=coverage)
        return Calibration(classes, not_fitted, (f"{self.span[0]:%Y-%m-%d}", f"{self.span[1]:%Y-%m-%d}"),
                           min_outcomes)

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

    def per_origin(self, name: str, metric: str) -> np.ndarray | None:
        """`name`'s per-origin values whose weighted mean is its `metric` (`val_mae`, `val_nll`,
        `val_crps`, or `val_crps_skill`: 1 - crps_i / naive_val_crps); None where it has none."""
        own = self.scores(name)
        if metric == "val_crps_skill":
            naive = self.scores(NAIVE).val_crps
            return 1.0 - own.crps / naive if naive > 0 else np.full(own.origins, np.nan)
        return own.losses(metric)

    def difference(self, first: str, second: str, metric: str) -> Difference:
        """first - second on the same origins, for a loss (`val_mae`, `val_nll`, `val_crps`), the
        skill `val_crps_skill` (positive: the first is better; both against the same naive
        baseline on the same origins) or `val_sharpe`."""
        a, b = self.scores(first), self.scores(second)
        if metric == "val_sharpe":
            starts, lengths = self.blocks()
            return sharpe_difference(a.block_returns, b.block_returns, a.blocks_per_year, starts, lengths,
                                     confidence=self.settings.confidence,
                                     resamples=self.settings.bootstrap_resamples, seed=self.settings.seed)
        first_losses, second_losses = self.per_origin(first, metric), self.per_origin(second, metric)
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
    weights = time_weights(samples.symbols, samples.origin)
    if paths is None:
        point, ensemble = np.zeros_like(actual), np.zeros((len(actual), 1))
    else:
        returns = cumulative_returns(paths, samples.last_close)  # (N, K, H)
        point, ensemble = np.median(returns, axis=1), returns[:, :, -1]
    block_returns = {symbol: position_returns(np.sign(point[rows, -1]), actual[rows, -1], cost)
                     for symbol, rows in samples.blocks().items()}
    scores = Scores(origin_mae(point, actual), crps(ensemble, actual[:, -1]), nll, block_returns,
                    dict(samples.blocks_per_year), weights)
    if paths is not None:
        scores.inside = {level: inside(returns, actual, level) for level in LEVELS}
        scores.pit = pit_values(ensemble, actual[:, -1])
        scores.z = spread_scores(returns, actual)
    return scores


def naive_paths(samples: EvaluationSamples) -> np.ndarray:
    """(N, K, H) close paths of the naive random walk (module docstring): seeded, no model."""
    settings = samples.settings
    steps = np.diff(np.log(samples.lookback_close), axis=1)
    sigma = steps.std(axis=1, ddof=1) if steps.shape[1] > 1 else np.zeros(len(steps))
    shocks = np.random.default_rng(settings.seed).standard_normal((len(samples), settings.samples, settings.horizon))
    return samples.last_close[:, None, None] * np.exp(sigma[:, None, None] * np.cumsum(shocks, axis=2))


def _coverage_figures(scores: Scores, prefix: str, inside: dict[float, np.ndarray] | None = None
                      ) -> dict[str, float]:
    figures = {}
    for level in LEVELS:
        end, steps = scores.coverage(level, None if inside is None else inside[level])
        figures[coverage_key(level, prefix)] = end
        figures[coverage_key(level, prefix) + "_steps"] = steps
    return figures


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
                  settings: EvalSettings, vocabulary, calibrations: dict[str, Calibration] | None = None
                  ) -> SpanEvaluation:
    """Every model in `models`, and the baselines, on the same origins of `span` in each class;
    `calibrations`: the calibration each registered model carries (by name)."""
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
        per_class[asset_class][NAIVE] = score_forecasts(samples, naive_paths(samples), None, settings.cost)
    for note in notes:
        log.warning("evaluation: %s", note)
    if not per_class:
        raise DataError(f"no data for {', '.join(classes)} in [{span[0]}, {span[1]}) to evaluate on: "
                        + "; ".join(notes))
    return SpanEvaluation(span, settings, samples_of, per_class, point_paths, notes,
                          {name: c for name, c in (calibrations or {}).items() if name in models})
