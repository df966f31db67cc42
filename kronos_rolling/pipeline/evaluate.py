"""Evaluate any adapter on a class's validation span, beside the registry's models, and log it as a run."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import select_training_window
from kronos_rolling.evaluation.config import EvalSettings, settings_for
from kronos_rolling.evaluation.report import log_evaluation
from kronos_rolling.evaluation.span import SpanEvaluation, evaluate_span
from kronos_rolling.pipeline.references import reference_models
from kronos_rolling.tracking.integrity import fetch_verified
from kronos_rolling.settings import Thresholds
from kronos_rolling.tracking.adapters import base_of, load_forecast_model
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.runs import evaluations_experiment_name, start_run


def evaluate_adapter(model_uri: str, asset_class: str, as_of: date, tracking: Tracking, store: DataStore,
                     choices: EvalSettings, thresholds: Thresholds, *, lookback: int | None = None,
                     horizon: int | None = None) -> tuple[SpanEvaluation, dict[str, str], str]:
    """Score an adapter, the pooled and production adapters, its bare base and persistence on the
    month before `as_of` (the same origins); log it as a run of `kronos-rolling/<class>/evaluations`.
    Returns the evaluation, the registry versions compared, and the run id."""
    with tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:  # removed however this ends
        source = fetch_verified(model_uri, tracking, Path(scratch) / "adapter")
        settings = settings_for(lookback or int(source.metadata.get("lookback", choices.lookback)),
                                horizon or int(source.metadata.get("horizon", choices.horizon)), choices, thresholds)
        window = select_training_window(as_of)
        base = base_of(source)
        refs = reference_models(tracking, asset_class, base, Path(scratch))
        adapter = load_forecast_model(source, base)
        evaluation = evaluate_span(store, [asset_class], window.val_span, {"adapter": adapter, **refs.models},
                                   settings, adapter.vocabulary)
    with start_run(tracking, evaluations_experiment_name(asset_class),
                   run_name=f"evaluate-{asset_class}-{window.as_of:%Y-%m-%d}") as run:
        run.set_tags({"kronos.evaluation_of": model_uri, "kronos.run_kind": "evaluation", "asset_class": asset_class})
        run.log_params({"model": model_uri, "model_version": source.describe(), "asset_class": asset_class,
                        "val_start": window.val_start.isoformat(), "val_end": window.val_end.isoformat()})
        log_evaluation(run, evaluation, name="adapter")
    return evaluation, refs.versions, run.run_id
