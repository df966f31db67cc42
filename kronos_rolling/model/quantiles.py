"""Quantiles of sample paths: which levels a caller may ask for, how they are named and computed.

One convention for every entry point (the predictor, the pyfunc model, the command line) and
for the evaluation that measures their coverage (evaluation/calibration.py):

- levels: any numbers strictly between 0 and 1 (`quantiles: [0.05, 0.5, 0.95]`); `true` is the
  old form, p10/p50/p90;
- names: "p" + the level in percent: 0.05 -> `p5`, 0.1 -> `p10`, 0.025 -> `p2.5` (columns
  `close_p5`, ...), so the old form keeps its names;
- paths: a quantile request is answered from at least MIN_QUANTILE_PATHS sample paths (fewer
  paths make the tails a coin toss: with one path p10 = p50 = p90);
- computation: the Weibull plotting position (numpy's `method="weibull"`, order statistic
  p(K+1)): with K exchangeable draws of the truth, the interval between the (1-c)/2 and (1+c)/2
  quantiles covers a share c of outcomes on average, whatever K. Levels outside
  [1/(K+1), K/(K+1)] are the smallest or largest path.

Pure numpy; no model needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kronos_rolling.errors import ConfigError

LEGACY_LEVELS = (0.1, 0.5, 0.9)  # `quantiles: true`: p10, p50, p90
MIN_QUANTILE_PATHS = 32  # sample paths behind a quantile request, at least (the caller may ask for more)


def level_name(level: float) -> str:
    """0.8 -> "80", 0.05 -> "5", 0.025 -> "2.5"."""
    return f"{level * 100:.10g}"


def quantile_name(level: float) -> str:
    """0.05 -> "p5": the key of a quantile in an answer (`close_p5`)."""
    return f"p{level_name(level)}"


def quantile_levels(spec) -> tuple[float, ...]:
    """The levels a request asks for: () for none (False, None, an empty list), LEGACY_LEVELS for
    True, else the given numbers (a list, or text "0.05,0.5,0.95"), sorted and unique. A level
    outside (0, 1) is a ConfigError naming it."""
    if spec is None or spec is False or (isinstance(spec, Sequence) and not isinstance(spec, str) and not spec):
        return ()
    if spec is True:
        return LEGACY_LEVELS
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("true", "false", ""):
            return LEGACY_LEVELS if text == "true" else ()
        spec = [part for part in text.replace(" ", ",").split(",") if part]
    values = spec if isinstance(spec, (Sequence, np.ndarray)) else [spec]
    try:
        levels = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"quantiles {spec!r}: give levels between 0 and 1, e.g. [0.05, 0.5, 0.95], or true "
                          "for p10/p50/p90") from None
    bad = [v for v in levels if not (math.isfinite(v) and 0 < v < 1)]
    if bad:
        raise ConfigError(f"quantile level(s) {', '.join(f'{v:g}' for v in bad)} are not strictly between 0 and 1; "
                          "give e.g. [0.05, 0.5, 0.95]")
    return tuple(sorted(set(levels)))


def paths_for(samples: int | None, levels) -> int:
    """Sample paths to draw: what the caller asked for (default 1), and at least
    MIN_QUANTILE_PATHS when it asks for quantiles."""
    asked = 1 if samples is None else int(samples)
    return max(asked, MIN_QUANTILE_PATHS) if levels else asked


def path_quantiles(paths: np.ndarray, levels, axis: int = 0) -> np.ndarray:
    """Quantiles of sample paths along `axis` (the paths' axis) at `levels` (Weibull plotting
    positions); the levels' axis replaces the paths' axis."""
    paths = np.asarray(paths, dtype=np.float64)
    values = np.quantile(paths, np.asarray(levels, dtype=np.float64), axis=axis, method="weibull")
    return np.moveaxis(values, 0, axis % paths.ndim)
