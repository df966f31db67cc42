"""MLflow runs, written through the tracking context's client, and what a training run records.

`start_run` opens (or resumes) a run in an experiment and ends it FINISHED, or FAILED
when the block raises; `TrackedRun` logs params, metrics, tags, artifacts, tables,
figures and dataset inputs to it. No fluent API and no global tracking URI: every call
names the run and goes through `Tracking.client`.

A training run gets the `kronos.complete` tag last; only a complete run may be registered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from kronos_rolling import __version__
from kronos_rolling.data.store import DataStore
from kronos_rolling.tracking.context import NOTE_TAG, Tracking

log = logging.getLogger(__name__)

COMPLETE_TAG = "kronos.complete"  # set last: only a finished run may be registered
JOB_RUN_TAG = "kronos.job_run"  # on a launcher's run (`mlflow run`): where the job logged
MODEL_NAME = "model"  # the pyfunc model inside a training run's artifacts
_BATCH = 100  # MLflow accepts at most 100 params or tags per batch


# MLflow 3 records an experiment's kind; ours are classic model training, not GenAI.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# The UI opens in its GenAI view unless told otherwise (a per-browser choice): every link to it we
# print or write carries this, so the experiments open in the classic machine-learning view.
UI_VIEW = "workflowType=machine_learning"
EVALUATIONS = "evaluations"


def experiment_name(label: str) -> str:
    """A class's (or pooled's) retrains: one run per month."""
    return f"kronos-rolling/{label}"


def evaluations_experiment_name(label: str) -> str:
    """Evaluation-only runs of a class (the monthly incumbent check, `kronos-rolling evaluate`),
    apart from its retrains."""
    return f"kronos-rolling/{label}/{EVALUATIONS}"


def experiment_tags(name: str) -> dict[str, str]:
    """The kind and description of one of our experiments, from its name."""
    parts = name.split("/")
    if parts[-1] == EVALUATIONS:
        label = parts[-2]
        text = (f"Evaluation-only runs of kronos-lora-{label}, no training: the monthly incumbent check of "
                f"@production against pooled (tag kronos.run_kind=incumbent_check; a withdrawal shows in "
                f"incumbent_decision) and `kronos-rolling evaluate`. The retrains are in kronos-rolling/{label}.")
    elif name == "kronos-rolling/simulation":
        text = ("Replays of past months (`kronos-rolling simulate`): one run per replay with the table of "
                "every class and month, the checklist and a plot of what served.")
    elif name.startswith("kronos-rolling/"):
        label = parts[-1]
        what = "the pooled adapter (every class)" if label == "pooled" else f"the {label} adapter"
        text = (f"Retrains of {what}, one run per month: params, per-epoch loss, the training window as a "
                f"dataset input, val_mae / val_sharpe of the candidate and of pooled, production, base and "
                f"no change on the same held-out month, plots, and the guard's decision (tag guard_decision, "
                f"and the run's description). Versions: model kronos-lora-{label}. Incumbent checks: "
                f"kronos-rolling/{label}/{EVALUATIONS}.")
    else:
        text = "Runs logged by kronos-rolling."
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, NOTE_TAG: text}


def ui_link(tracking_uri: str, route: str = "") -> str:
    """A link into the MLflow UI (`route`: e.g. `experiments/1`, `models/NAME`) in its
    machine-learning view."""
    return f"{tracking_uri.rstrip('/')}/#/{route.strip('/')}?{UI_VIEW}"


@dataclass(frozen=True)
class TrackedRun:
    tracking: Tracking
    run_id: str

    @property
    def client(self):
        return self.tracking.client

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def params(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.params)

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(str(k), str(v)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + _BATCH])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[start:start + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def log_dict(self, data: dict, path: str) -> None:
        self.client.log_dict(self.run_id, data, path)

    def log_table(self, frame: pd.DataFrame, path: str) -> None:
        # MLflow scans object columns for images; pandas 3 text columns are `str`, which that scan
        # warns about (a deprecation) unless they are handed over as plain object columns.
        text = {name: object for name, dtype in frame.dtypes.items() if pd.api.types.is_string_dtype(dtype)}
        self.client.log_table(self.run_id, frame.astype(text), path)

    def log_figure(self, figure, path: str) -> None:
        """Log a matplotlib figure and close it."""
        try:
            self.client.log_figure(self.run_id, figure, path)
        finally:
            plt.close(figure)

    def log_artifacts(self, folder: Path, path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), path)

    def log_input(self, dataset, context: str) -> None:
        """A dataset (mlflow.data) as an input of the run, e.g. the training window."""
        entity = dataset._to_mlflow_entity()  # what mlflow.log_input sends; no client-level builder exists
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


@contextmanager
def start_run(tracking: Tracking, experiment: str, *, run_name: str | None = None, run_id: str | None = None,
              system_metrics: bool = False) -> Iterator[TrackedRun]:
    """A run of `experiment` (resumed when `run_id` is given), ended when the block ends."""
    client = tracking.client
    if run_id:  # made by `mlflow run` (in this experiment) or resumed: the experiment gets its kind too
        tracking.experiment_id(experiment, experiment_tags(experiment))
        client.update_run(run_id, status="RUNNING", name=run_name)
    else:  # with the tags MLflow's own runs carry: user, source name and type, git commit
        run_id = client.create_run(tracking.experiment_id(experiment, experiment_tags(experiment)),
                                   run_name=run_name, tags=resolve_tags()).info.run_id
    monitor = None
    if system_metrics:  # CPU, memory, GPU when present, sampled in a thread of this process
        monitor = SystemMetricsMonitor(run_id, resume_logging=False, tracking_uri=tracking.uri)
        monitor.start()
    status = "FAILED"
    try:
        yield TrackedRun(tracking, run_id)
        status = "FINISHED"
    finally:
        if monitor is not None:
            monitor.finish()
        client.set_terminated(run_id, status)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def window_frame(store: DataStore, symbols: list[str], start, end) -> pd.DataFrame:
    """The bars a span covers, all symbols stacked: logged as the run's dataset input."""
    parts = []
    for symbol in symbols:
        bars = store.load(symbol)
        inside = bars[(bars["timestamp"] >= start) & (bars["timestamp"] < end)]
        parts.append(inside.assign(symbol=symbol))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return frame[["symbol"] + [c for c in frame.columns if c != "symbol"]]


def training_dataset(store: DataStore, symbols: list[str], start, end, name: str):
    """The training window as an mlflow dataset (its digest lets the UI compare months)."""
    frame = window_frame(store, symbols, start, end)
    # The source named explicitly (a bare path matches two of MLflow's source types and warns), and
    # the digest ours: MLflow's hashes object columns with pandas calls that pandas 3 deprecates or
    # breaks on empty frames. Same bars, same digest, across months and machines.
    source = get_dataset_source_from_json(json.dumps({"uri": str(store.root)}), source_type="local")
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:8]
    # MLflow infers the schema through Series.values, which pandas deprecates for tz-aware columns:
    # it gets the timestamps as naive UTC (the digest above is of the bars as stored).
    if len(frame) and isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype):
        frame = frame.assign(timestamp=frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None))
    return mlflow.data.from_pandas(frame, name=name, source=source, digest=digest)


def log_training_inputs(run: TrackedRun, config, base, window, symbols, warm_source, dataset, train_set,
                        inner_set, eval_settings=None) -> None:
    params = {
        "mode": config.mode, "asset_class": config.label, "as_of": config.as_of,
        "train_start": window.train_start.isoformat(), "train_end": window.train_end.isoformat(),
        "inner_val_start": window.inner_val_start.isoformat(),
        "val_start": window.val_start.isoformat(), "val_end": window.val_end.isoformat(),
        "symbols": ",".join(symbols), "base_model": base.predictor, "base_tokenizer": base.tokenizer,
        "base_revision": base.revision or "", "base_digest": base.predictor_digest or "",
        "warm_start": warm_source.uri if warm_source else "none",
        "warm_start_version": (warm_source.version or "") if warm_source else "",
        "lr": config.lr, "epochs": config.epochs, "batch_size": config.batch_size,
        "lookback": config.lookback, "horizon": config.horizon, "stride": config.stride,
        "max_samples_per_epoch": config.max_samples_per_epoch or "all",
        "lora_rank": config.lora.rank, "lora_alpha": config.lora.alpha, "lora_dropout": config.lora.dropout,
        "lora_targets": ",".join(config.lora.target_modules), "seed": config.seed,
        "weight_decay": config.weight_decay, "warmup_fraction": config.warmup_fraction,
        "grad_clip": config.grad_clip, "patience": config.patience, "precision": config.precision,
        "train_samples": len(train_set), "inner_val_samples": len(inner_set),
        "code_version": git_commit(), "kronos_rolling_version": __version__,
    }
    # A run made by `mlflow run` already holds the -P values as typed (lr 5e-5, as_of '', a base
    # folder); MLflow never changes a logged param, so a resolved value that differs goes beside it.
    launched = run.params()
    run.log_params({(f"resolved.{key}" if key in launched and launched[key] != str(value) else key): value
                    for key, value in params.items()})
    run.set_tags({"asset_class": config.label, "as_of": str(config.as_of), "mode": config.mode,
                  **config.departure_tags(eval_settings)})
    run.log_input(dataset, context="training")


UNFINISHED_REASON = "the launch failed before the job ended this run (see the monthly job's log)"


def fail_unfinished_launches(client, experiment_name: str, since_ms: int) -> list[str]:
    """End as FAILED every MLflow Project run of `experiment_name` started at or after `since_ms`
    that is still RUNNING; returns their ids. Meant for after `mlflow run` has returned."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id],
                              "attributes.status = 'RUNNING' and tags.`mlflow.source.type` = 'PROJECT'",
                              max_results=1000)
    ended = []
    for run in runs:
        if run.info.start_time >= since_ms:
            client.set_tag(run.info.run_id, "kronos.failed_reason", UNFINISHED_REASON)
            client.set_terminated(run.info.run_id, "FAILED")
            ended.append(run.info.run_id)
    return ended
