"""Intervals from sample paths, their coverage, and a per-class recalibration of their spread.

Pure numpy: what the evaluation measures, what a version carries in `calibration.json`,
and what every entry point that returns quantiles applies (docs/evaluation.md has the
formulas and the reasons for each choice).

Quantiles of K sample paths: the Weibull plotting position (model/quantiles.py, the one
convention of every entry point): order statistic p(K+1), linear between order statistics.
For K exchangeable draws of the true distribution F, E[F(X_(r))] = r/(K+1), so the interval
between the (1-c)/2 and (1+c)/2 quantiles covers a share c of outcomes on average, whatever K;
numpy's default (p(K-1)+1) would cover 71% at c = 80% with K = 16. Levels outside
[1/(K+1), K/(K+1)] are the smallest or largest path: with K = 8 the 80% and the 90%
intervals are both [min, max].

Coverage of a central c interval (c in LEVELS): the share of outcomes inside it, at the
horizon's end (`val_coverage_80`) and over every step of the horizon (`val_coverage_80_steps`),
weighted as every other figure (every origin time counts once).

PIT: the rank r of the outcome among the K paths (r paths below it), shown as (r + 0.5)/(K+1):
K+1 equally likely values when the paths and the outcome are exchangeable, so a calibrated
model's histogram is flat; a U shape says too narrow, a hump too wide.

Calibration: split-conformal, normalised by the ensemble's own spread (Lei et al. 2018,
"Distribution-free predictive inference for regression", locally weighted scores). Per
origin and step h, from the K paths' returns x and the outcome y:

    m = median_k x_k          the point forecast the evaluation scores
    s = mean_k |x_k - m|      the ensemble's spread around it
    z = |y - m| / s           how many spreads away the outcome fell

Fitted on a class's validation month: for every c of a grid (0, 0.01, ..., 0.99) and step
h, scale_h(c) = the weighted quantile of z at level min(1, c (n + 1) / n) (the conformal
correction for n outcomes). Served: the level-p quantile is

    m + sign(p - 0.5) * s * scale_h(|2p - 1|)      (linear between grid levels; scale_h(0) = 0)

Each scale_h is a quantile function, so it never decreases: calibrated quantiles keep the
order of their levels (p05 <= p50 <= p95) and the median stays the point forecast. Only the
spread is recalibrated, never the location. Steps beyond the fitted horizon use its last
step's scales; levels beyond 0.99 its 0.99 scale. Paths with no spread (s = 0) stay a point.
Returns are affine in prices (r = close / last close - 1), so the same formula applies to
close prices directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kronos_rolling.errors import ModelError
from kronos_rolling.model.quantiles import level_name, path_quantiles

LEVELS = (0.5, 0.8, 0.9)  # the central intervals whose coverage is measured
GRID = tuple(round(i / 100, 2) for i in range(100))  # central levels a calibration is fitted at
CALIBRATION_FILE = "calibration.json"  # in an adapter bundle, covered by the version's sha256 tags
FORMAT = 1
METHOD = "conformal-spread"


class CalibrationError(ModelError):
    """A calibration file is unusable; the message names the file and the field."""


def coverage_key(level: float, prefix: str = "val_coverage") -> str:
    """0.8 -> "val_coverage_80"."""
    return f"{prefix}_{level_name(level)}"


def center_and_spread(paths: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """m = the paths' median and s = their mean absolute deviation from it, along the paths' `axis`
    (the module docstring's m and s: what a calibration is fitted on and applied to)."""
    center = np.median(paths, axis=axis)
    spread = np.abs(paths - np.expand_dims(center, axis)).mean(axis=axis)
    return center, spread


def spread_scores(returns: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """(N, K, H) paths' returns and (N, H) outcomes -> (N, H) z = |y - m| / s (see the module
    docstring); 0 where a pathless spread meets its outcome exactly, inf where it misses it."""
    returns, actual = np.asarray(returns, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    center, spread = center_and_spread(returns, axis=1)
    miss = np.abs(actual - center)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, miss / np.where(spread > 0, spread, 1.0), np.where(miss > 0, np.inf, 0.0))
    return z


def inside(returns: np.ndarray, actual: np.ndarray, level: float) -> np.ndarray:
    """(N, K, H), (N, H) -> (N, H) bool: the outcome lies inside the paths' central `level` interval."""
    lo, hi = np.moveaxis(path_quantiles(returns, [(1 - level) / 2, (1 + level) / 2], axis=1), 1, 0)
    return (actual >= lo) & (actual <= hi)


def pit_values(ensemble: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """(N, K) paths and (N,) outcomes -> (N,) (r + 0.5) / (K + 1), r = paths below the outcome
    (ties count half)."""
    ensemble, actual = np.asarray(ensemble, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    below = (ensemble < actual[:, None]).sum(axis=1) + 0.5 * (ensemble == actual[:, None]).sum(axis=1)
    return (below + 0.5) / (ensemble.shape[1] + 1)


@dataclass(frozen=True)
class ClassCalibration:
    """One class's fitted spread scales: scales[h][i] is scale_{h+1}(GRID[i])."""

    scales: tuple[tuple[float, ...], ...]
    outcomes: int  # origins fitted on (each with H steps)
    levels: tuple[float, ...] = GRID
    coverage: dict[str, float] = field(default_factory=dict)  # in-sample: uncalibrated and calibrated

    def scale(self, step: int, level) -> np.ndarray:
        """scale_step(level) for 0-based `step` (past the fitted horizon: its last step)."""
        row = np.asarray(self.scales[min(step, len(self.scales) - 1)])
        return np.interp(np.clip(level, 0.0, self.levels[-1]), self.levels, row)

    def table(self, levels, steps: int) -> np.ndarray:
        """(steps, len(levels)) scales for central `levels` at steps 0..steps-1."""
        return np.stack([self.scale(h, np.asarray(levels, dtype=np.float64)) for h in range(steps)])


@dataclass(frozen=True)
class Calibration:
    """What a version carries: per class, its scales, or why it has none.

    `withheld`: classes whose calibration is not served (the version's registry tags say so,
    after it made coverage worse out of sample); set by whoever reads the tags, never stored
    in the file.
    """

    classes: dict[str, ClassCalibration]
    not_fitted: dict[str, str]  # class -> why it serves uncalibrated
    fitted_on: tuple[str, str]  # [start, end) of the validation span, ISO dates
    min_outcomes: int
    withheld: frozenset[str] = frozenset()

    def entry(self, asset_class: str | None) -> ClassCalibration | None:
        """The calibration served for `asset_class`: None when it has none or it is withheld."""
        if asset_class is None or asset_class in self.withheld:
            return None
        return self.classes.get(asset_class)

    def why_not(self, asset_class: str | None) -> str:
        """Why `asset_class` is served uncalibrated by this calibration."""
        if asset_class is None:
            return "no asset class to pick a calibration for"
        if asset_class in self.withheld:
            return f"its {asset_class} calibration made coverage worse out of sample and is withheld"
        return self.not_fitted.get(asset_class, f"no calibration fitted for {asset_class}")

    def describe(self) -> str:
        """One line per version: e.g. "crypto: fitted on 825 outcomes of 2018-01-01..2018-02-01 (80%
        intervals covered 48.2%, calibrated 80.1%); equity: not fitted (32 outcomes, ...)"."""
        parts = []
        for name, entry in sorted(self.classes.items()):
            before, after = entry.coverage.get("val_coverage_80"), entry.coverage.get("calibrated_val_coverage_80")
            shown = (f" (80% intervals covered {before:.1%}, calibrated {after:.1%})"
                     if before is not None and after is not None else "")
            parts.append(f"{name}: fitted on {entry.outcomes} outcomes of {self.fitted_on[0]}..{self.fitted_on[1]}"
                         f"{shown}")
        parts += [f"{name}: not fitted, serves uncalibrated ({why})" for name, why in sorted(self.not_fitted.items())]
        return "; ".join(parts) or "no class evaluated"

    def with_withheld(self, classes) -> Calibration:
        return replace(self, withheld=frozenset(classes))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "method": METHOD, "fitted_on": {"start": self.fitted_on[0], "end": self.fitted_on[1]},
            "min_outcomes": self.min_outcomes, "levels": list(GRID),
            "classes": {c: {"outcomes": e.outcomes, "coverage": e.coverage,
                            "scales": [[float(f"{v:.6g}") for v in row] for row in e.scales]}
                        for c, e in self.classes.items()},
            "not_fitted": dict(self.not_fitted),
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")  # 100 numbers a step: compact
        return path

    @classmethod
    def from_dict(cls, raw, what: str = CALIBRATION_FILE) -> Calibration:
        """Checked: every number finite, every scale non-negative and non-decreasing from 0."""
        def fail(field_name: str, problem: str) -> CalibrationError:
            return CalibrationError(f"{what}: {field_name} {problem}; the calibration is unusable (a version "
                                    "carrying it is refused); register the month again to refit it")

        if not isinstance(raw, dict):
            raise fail("the file", "is not a JSON object")
        if raw.get("format") != FORMAT or raw.get("method") != METHOD:
            raise fail("format/method", f"are {raw.get('format')!r}/{raw.get('method')!r}, expected "
                                        f"{FORMAT}/{METHOD!r}")
        levels = raw.get("levels")
        if not isinstance(levels, list) or tuple(levels) != GRID:
            raise fail("levels", f"must be the grid 0, 0.01, ..., 0.99 ({len(GRID)} values)")
        span = raw.get("fitted_on") or {}
        if not (isinstance(span, dict) and isinstance(span.get("start"), str) and isinstance(span.get("end"), str)):
            raise fail("fitted_on", "must hold start and end dates")
        minimum = raw.get("min_outcomes")
        if not isinstance(minimum, int) or minimum < 1:
            raise fail("min_outcomes", f"is {minimum!r}, not a whole number >= 1")
        classes = {}
        for name, entry in (raw.get("classes") or {}).items():
            where = f"classes.{name}"
            if not isinstance(entry, dict):
                raise fail(where, "is not an object")
            outcomes, scales = entry.get("outcomes"), entry.get("scales")
            if not isinstance(outcomes, int) or outcomes < minimum:
                raise fail(f"{where}.outcomes", f"is {outcomes!r}, fewer than min_outcomes {minimum}")
            try:
                table = np.asarray(scales, dtype=np.float64)
            except (TypeError, ValueError):
                raise fail(f"{where}.scales", "is not a table of numbers") from None
            if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] != len(GRID):
                raise fail(f"{where}.scales", f"has shape {table.shape}, expected (steps, {len(GRID)})")
            if not np.isfinite(table).all() or (table < 0).any():
                raise fail(f"{where}.scales", "holds a value that is negative, NaN or infinite")
            if (table[:, 0] != 0).any() or (np.diff(table, axis=1) < 0).any():
                raise fail(f"{where}.scales", "must start at 0 and never decrease along the levels "
                                              "(it would reorder quantiles)")
            coverage = entry.get("coverage") or {}
            classes[name] = ClassCalibration(tuple(map(tuple, table.tolist())), outcomes,
                                             coverage={k: float(v) for k, v in coverage.items()})
        not_fitted = raw.get("not_fitted") or {}
        if not isinstance(not_fitted, dict) or not all(isinstance(v, str) for v in not_fitted.values()):
            raise fail("not_fitted", "must map classes to reasons")
        return cls(classes, dict(not_fitted), (span["start"], span["end"]), minimum)

    @classmethod
    def read(cls, folder: Path, what: str | None = None) -> Calibration | None:
        """The bundle's calibration, checked; None when the bundle carries none (older versions)."""
        path = Path(folder) / CALIBRATION_FILE
        if not path.is_file():
            return None
        label = what or str(path)
        try:
            raw = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{label}: not valid JSON ({exc}); the calibration is unusable") from None
        return cls.from_dict(raw, label)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, levels) -> np.ndarray:
    """The smallest value whose weighted share at or below it reaches each level (inverted CDF)."""
    return np.quantile(values, np.asarray(levels, dtype=np.float64), weights=weights, method="inverted_cdf")


def fit_class(z: np.ndarray, weights: np.ndarray, min_outcomes: int) -> ClassCalibration | str:
    """Scales from (N, H) scores z and (N,) weights, or why none were fitted (fewer than
    `min_outcomes` origins with a spread and a finite score at every step)."""
    z = np.asarray(z, dtype=np.float64)
    usable = np.isfinite(z).all(axis=1) & (z >= 0).all(axis=1)
    n = int(usable.sum())
    if n < min_outcomes:
        left = len(z) - n
        return (f"{n} outcomes, fewer than the minimum {min_outcomes}"
                + (f" ({left} origin(s) whose paths had no spread left out)" if left else ""))
    w = np.asarray(weights, dtype=np.float64)[usable]
    levels = np.minimum(1.0, np.asarray(GRID) * (n + 1) / n)
    scales = np.stack([weighted_quantile(z[usable, h], w, levels) for h in range(z.shape[1])])
    scales[:, 0] = 0.0
    scales = np.maximum.accumulate(scales, axis=1)  # already non-decreasing; float-safe
    return ClassCalibration(tuple(map(tuple, scales.tolist())), n)


def calibrated_inside(z: np.ndarray, entry: ClassCalibration, level: float) -> np.ndarray:
    """(N, H) scores -> (N, H) bool: inside the calibrated central `level` interval."""
    return z <= entry.table([level], z.shape[1])[:, 0][None, :]


def calibrated_quantiles(paths: np.ndarray, entry: ClassCalibration, levels) -> np.ndarray:
    """(K, H) paths (returns or close prices) -> (len(levels), H) calibrated quantiles at `levels`
    (any in (0, 1)); non-decreasing along the levels at every step."""
    paths = np.asarray(paths, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    center, spread = center_and_spread(paths, axis=0)
    scale = entry.table(np.abs(2 * levels - 1), paths.shape[1]).T  # (levels, H)
    return center[None, :] + np.sign(levels - 0.5)[:, None] * spread[None, :] * scale


@dataclass(frozen=True)
class CalibrationNote:
    """What an answer says about its quantiles' calibration: whether it was applied, from
    which version (`source`, e.g. "kronos-lora-crypto v3"), and the sentence a person reads
    ("applied: kronos-lora-crypto v3's crypto calibration, fitted on ..." or "not applied: why")."""

    applied: bool
    source: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def apply_calibration(result, levels, calibration: Calibration | None, asset_class: str | None,
                      source: str) -> CalibrationNote:
    """Calibrate the close quantiles of a model.forecast.ForecastResult computed at `levels`, with
    `calibration`'s entry for `asset_class` when it serves one (`source`: the version carrying
    it); returns what the answer says about it."""
    entry = calibration.entry(asset_class) if calibration is not None else None
    if entry is None:
        why = (f"{source} carries no calibration" if calibration is None
               else f"{source}: {calibration.why_not(asset_class)}")
        return CalibrationNote(False, source, f"not applied: {why}")
    prices = calibrated_quantiles(result.close_paths, entry, levels)
    result.set_close_quantiles(levels, prices)  # a wide lower tail stops at the price floor (order kept)
    return CalibrationNote(True, source, f"applied: {source}'s {asset_class} calibration, fitted on "
                                         f"{calibration.fitted_on[0]}..{calibration.fitted_on[1]}")
