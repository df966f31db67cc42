"""The models a candidate (or the serving version) is judged against, loaded from the registry.

    pooled      kronos-lora-pooled@production
    production  kronos-lora-<label>@production (for the pooled label: the same adapter)
    base        the bare base (zero-shot)
    warm_start  what the candidate started from, when it is none of the above (e.g. a folder)

A model that stands under two names is loaded once and evaluated once. `fallback_name`
says what the predictor would serve for a class without @production: pooled, else base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException

from kronos_rolling.evaluation.calibration import Calibration
from kronos_rolling.evaluation.forecasts import ForecastModel
from kronos_rolling.evaluation.span import PERSISTENCE, SpanEvaluation
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.registry.guard import EvalFigures
from kronos_rolling.tracking.integrity import fetch_verified
from kronos_rolling.names import POOLED, PRODUCTION, registered_model_name
from kronos_rolling.tracking.adapters import (
    AdapterSource,
    calibration_of,
    load_base_forecast_model,
    load_forecast_model,
)
from kronos_rolling.tracking.context import Tracking


@dataclass
class References:
    models: dict[str, ForecastModel] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # name -> registry version evaluated
    calibrations: dict[str, Calibration] = field(default_factory=dict)  # name -> the calibration it carries


def production_source(tracking: Tracking, label: str, scratch: Path) -> AdapterSource | None:
    """The label's @production adapter, downloaded under `scratch` (the caller's temporary
    folder) and verified; None when it has none."""
    name = registered_model_name(label)
    try:
        tracking.client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException:
        return None
    return fetch_verified(f"models:/{name}@{PRODUCTION}", tracking, scratch / label)


def reference_models(tracking: Tracking, label: str, base: BaseModelRef, scratch: Path,
                     warm_start: AdapterSource | None = None) -> References:
    refs = References()
    sources = {"pooled": production_source(tracking, POOLED, scratch)}
    sources["production"] = sources["pooled"] if label == POOLED else production_source(tracking, label, scratch)
    sources["warm_start"] = warm_start
    loaded: dict[tuple, ForecastModel] = {}
    for name, source in sources.items():
        if source is None:
            continue
        key = (source.registered_model, source.version) if source.registered_model else (source.uri,)
        if key not in loaded:
            loaded[key] = load_forecast_model(source)
        refs.models[name] = loaded[key]
        if source.version:
            refs.versions[name] = source.version
        calibration = calibration_of(source)
        if calibration is not None:
            refs.calibrations[name] = calibration
    refs.models["base"] = load_base_forecast_model(base)
    return refs


def fallback_name(evaluation: SpanEvaluation) -> str | None:
    """What the predictor serves for a class without @production: pooled, else the base."""
    return next((name for name in ("pooled", "base") if name in evaluation.models), None)


def figures_of(evaluation: SpanEvaluation, name: str, version: str | None = None) -> EvalFigures | None:
    """`name`'s figures as the guard reads them (None when it was not evaluated), with its
    val_mae difference against no change (its skill, measured)."""
    if name not in evaluation.models:
        return None
    f = evaluation.figures(name)
    start, end = evaluation.span
    # As it would serve: out of sample with the calibration it carries, else with the one just
    # fitted on this span (a candidate's), else uncalibrated.
    coverage = f.get("served_val_coverage_80", f.get("calibrated_val_coverage_80", f["val_coverage_80"]))
    return EvalFigures(f["val_mae"], f["val_sharpe"], f["val_nll"], f["val_crps"], f["val_mae_skill"],
                       int(f["val_origins"]), start.date(), end.date(), version,
                       evaluation.difference(name, PERSISTENCE, "val_mae"), val_crps_skill=f["val_crps_skill"],
                       coverage_80=coverage)
