"""Evaluate any adapter on a class's validation span and log the table as a run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import pandas as pd

from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import select_training_window
from kronos_rolling.evaluation.compare import compare_on_span
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.report import log_evaluation
from kronos_rolling.pipeline.steps import reference_models
from kronos_rolling.tracking.adapters import (
    base_of,
    fetch_adapter,
    load_forecast_model,
)
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.runs import experiment_name, start_run
from kronos_rolling.training.config import TrainConfig

log = logging.getLogger(__name__)


def evaluate_adapter(model_uri: str, asset_class: str, as_of, tracking: Tracking, store: DataStore, *,
                     lookback: int | None = None, horizon: int | None = None, samples: int = 4, hold: int = 1,
                     max_origins: int | None = None, cost: float = 0.0005) -> tuple[pd.DataFrame, str]:
    """Score an adapter, the pooled production adapter, its bare base and persistence on the
    month before `as_of`; log the table as a run of `kronos-rolling/<class>`."""
    source = fetch_adapter(model_uri, tracking)
    lookback = lookback or int(source.metadata.get("lookback", TrainConfig.lookback))
    horizon = horizon or int(source.metadata.get("horizon", TrainConfig.horizon))
    settings = EvalSettings(lookback=lookback, horizon=horizon, hold=hold, samples=samples, cost=cost,
                            max_origins=max_origins)
    window = select_training_window(as_of)
    base = base_of(source)
    references, compared = reference_models(tracking, asset_class, base)
    references.pop("production", None)
    candidate = load_forecast_model(source, base)
    figures, _, eval_samples, closes = compare_on_span(store, [asset_class], window.val_span, candidate,
                                                       references, settings, candidate_name="adapter")
    table = pd.DataFrame([{"model": name + (f" v{compared[name]}" if name in compared else ""),
                           "val_mae": f.val_mae, "val_sharpe": f.val_sharpe, "origins": f.origins}
                          for name, f in figures.items()])
    with start_run(tracking, experiment_name(asset_class),
                   run_name=f"evaluate-{asset_class}-{window.as_of:%Y-%m-%d}") as run:
        run.set_tags({"kronos.evaluation_of": model_uri, "asset_class": asset_class})
        run.log_params({"model": model_uri, "model_version": source.describe(), "asset_class": asset_class,
                        "val_start": window.val_start.isoformat(), "val_end": window.val_end.isoformat(),
                        **{f"eval_{k}": v for k, v in asdict(settings).items()}})
        log_evaluation(run, figures, eval_samples, closes, candidate_name="adapter")
        run.log_table(table, "evaluation/summary.json")
    return table, run.run_id
