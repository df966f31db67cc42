"""Evaluate any adapter on a class's validation span and log the table as a run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import mlflow
import pandas as pd
from mlflow import MlflowClient

from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.compare import compare_on_span
from kronos_rolling.evaluation.samples import (
    EvalSettings,
)
from kronos_rolling.pipeline.steps import reference_models
from kronos_rolling.tracking.adapters import (
    fetch_adapter,
    load_forecast_model,
)
from kronos_rolling.tracking.runs import _log_evaluation, experiment_name

log = logging.getLogger(__name__)


def evaluate_adapter(model_uri: str, asset_class: str, as_of, *, data_dir=None, lookback: int | None = None,
                     horizon: int | None = None, samples: int = 4, hold: int = 1, max_origins: int | None = None,
                     cost: float = 0.0005, client: MlflowClient | None = None) -> tuple[pd.DataFrame, str]:
    """Score an adapter, the pooled production adapter, its bare base and persistence on the
    month before `as_of`; log the table as a run of `kronos-rolling/<class>`."""
    from kronos_rolling.data.windows import select_training_window
    from kronos_rolling.tracking.adapters import base_of

    client = client or MlflowClient()
    source = fetch_adapter(model_uri, client)
    lookback = lookback or int(source.metadata.get("lookback", 128))
    horizon = horizon or int(source.metadata.get("horizon", 16))
    settings = EvalSettings(lookback=lookback, horizon=horizon, hold=hold, samples=samples, cost=cost,
                            max_origins=max_origins)
    store = DataStore(data_dir)
    window = select_training_window(as_of)
    base = base_of(source)
    references, compared = reference_models(client, asset_class, base)
    references.pop("production", None)
    candidate = load_forecast_model(source, base)
    figures, _, eval_samples, closes = compare_on_span(store, [asset_class], window.val_span, candidate,
                                                       references, settings, candidate_name="adapter")
    table = pd.DataFrame([{"model": name + (f" v{compared[name]}" if name in compared else ""),
                           "val_mae": f.val_mae, "val_sharpe": f.val_sharpe, "origins": f.origins}
                          for name, f in figures.items()])
    mlflow.set_experiment(experiment_name(asset_class))
    with mlflow.start_run(run_name=f"evaluate-{asset_class}-{window.as_of:%Y-%m-%d}") as run:
        mlflow.set_tags({"kronos.evaluation_of": model_uri, "asset_class": asset_class})
        mlflow.log_params({"model": model_uri, "model_version": source.describe(), "asset_class": asset_class,
                           "val_start": window.val_start.isoformat(), "val_end": window.val_end.isoformat(),
                           **{f"eval_{k}": v for k, v in asdict(settings).items()}})
        _log_evaluation(figures, eval_samples, closes, candidate_name="adapter")
        mlflow.log_table(table, "evaluation/summary.json")
    return table, run.info.run_id
