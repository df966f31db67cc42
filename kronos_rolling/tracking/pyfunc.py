"""A registered version as an MLflow pyfunc model: `predict(bars_df) -> forecast_df`.

The model carries the adapter bundle (LoRA, event embedding and vocabulary,
`metadata.json`) as its `adapter` artifact and refers to the frozen base by hub id +
revision or folder + digest, so a version weighs a small fraction of the base. Loading
it (``mlflow.pyfunc.load_model("models:/kronos-lora-crypto@production")``) or serving it
(``mlflow models serve -m ... --env-manager local``) loads that base and puts the adapter
on top.

Input: one row per bar, columns `timestamp, open, high, low, close` (optional `volume`,
`amount`, and `symbol` to forecast several series in one call). Output: one row per
forecast bar with the same columns (and `symbol` when given); with `quantiles=true`,
`close_p10`, `close_p50` and `close_p90` as well. Timestamps are UTC; MLflow schemas only
carry naive datetimes, so they travel without a time zone.
"""

from __future__ import annotations

import json
import tempfile
from importlib import metadata as package_metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from kronos_rolling.errors import DataError
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.tracking.adapters import (
    ADAPTER_ARTIFACT,
    METADATA_FILE,
    AdapterSource,
    load_forecast_model,
)
from kronos_rolling.tracking.runs import MODEL_NAME, TrackedRun

DEFAULT_PARAMS = {
    "pred_len": 16,
    "samples": 1,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 0.9,
    "seed": 0,  # -1: unseeded
    "quantiles": False,
}
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # what MLflow runs to rebuild the model
QUANTILE_COLUMNS = {"p10": "close_p10", "p50": "close_p50", "p90": "close_p90"}


class KronosAdapterModel(mlflow.pyfunc.PythonModel):
    """Kronos base + one LoRA adapter and event embedding, forecasting DataFrames of bars."""

    def load_context(self, context):
        bundle_dir = Path(context.artifacts[ADAPTER_ARTIFACT])
        metadata = json.loads((bundle_dir / METADATA_FILE).read_text())
        loaded = load_forecast_model(AdapterSource(uri=str(bundle_dir), bundle_dir=bundle_dir, metadata=metadata))
        self.metadata = metadata
        self.forecaster = Forecaster(loaded.model, loaded.tokenizer, device="auto",
                                     max_context=loaded.max_context, event_embedding=loaded.event_embedding)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        settings = {**DEFAULT_PARAMS, **(params or {})}
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if "symbol" in model_input.columns:
            groups = [(symbol, frame.drop(columns="symbol")) for symbol, frame in model_input.groupby("symbol", sort=False)]
        else:
            groups = [(None, model_input)]
        if not groups or any(len(frame) == 0 for _, frame in groups):
            raise DataError("no bars to forecast: send rows of timestamp, open, high, low, close")
        seed = int(settings["seed"])
        results = self.forecaster.forecast(
            [frame.reset_index(drop=True) for _, frame in groups], int(settings["pred_len"]),
            temperature=float(settings["temperature"]), top_k=int(settings["top_k"]),
            top_p=float(settings["top_p"]), samples=int(settings["samples"]),
            seed=None if seed < 0 else seed, quantiles=bool(settings["quantiles"]),
        )
        frames = []
        for (symbol, _), result in zip(groups, results):
            frame = result.mean.copy()
            frame["timestamp"] = naive_utc(frame["timestamp"])
            if result.quantiles:
                for name, column in QUANTILE_COLUMNS.items():
                    frame[column] = result.quantiles[name]["close"].to_numpy()
            if symbol is not None:
                frame.insert(0, "symbol", symbol)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)


def naive_utc(timestamps: pd.Series) -> pd.Series:
    return pd.to_datetime(timestamps, utc=True).dt.tz_localize(None)


def pip_requirements() -> list[str]:
    """What a serving environment needs; `kronos-rolling` itself is installed from this repository."""
    pins = []
    for package in ("torch", "peft", "pandas", "numpy", "safetensors", "huggingface_hub", "mlflow"):
        try:
            pins.append(f"{package}=={package_metadata.version(package)}")
        except package_metadata.PackageNotFoundError:
            pins.append(package)
    return pins + [f"kronos-rolling=={package_metadata.version('kronos-rolling')}"]


def save_adapter_model(bundle_dir: Path, input_example: pd.DataFrame, out_dir: Path) -> Path:
    """Write the bundle as a pyfunc model folder (models from code: no pickle) at `out_dir`.

    The signature's output schema comes from a real forecast of `input_example`.
    """
    input_example = input_example.assign(timestamp=naive_utc(input_example["timestamp"]))
    model = KronosAdapterModel()
    model.load_context(_LocalContext({ADAPTER_ARTIFACT: str(bundle_dir)}))
    example_params = {**DEFAULT_PARAMS, "pred_len": 4}
    output_example = model.predict(None, input_example, example_params)
    signature = infer_signature(input_example, output_example, params=DEFAULT_PARAMS)
    mlflow.pyfunc.save_model(
        path=str(out_dir),
        python_model=str(MODEL_CODE),
        artifacts={ADAPTER_ARTIFACT: str(bundle_dir)},
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements(),
    )
    return out_dir


def log_adapter_model(run: TrackedRun, bundle_dir: Path, input_example: pd.DataFrame, name: str = MODEL_NAME) -> str:
    """Log the bundle as a pyfunc model of the run (an MLflow logged model, the run's output);
    returns its `models:/<model_id>` URI. A model whose files did not all arrive is FAILED."""
    client = run.client
    experiment_id = client.get_run(run.run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run.run_id, model_type="pyfunc")
    try:
        client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="kronos-model-") as tmp:
            folder = save_adapter_model(bundle_dir, input_example, Path(tmp) / name)
            client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return f"models:/{model.model_id}"


def register_adapter_model(client: MlflowClient, name: str, model_uri: str, run_id: str, *, tags: dict[str, str],
                           description: str, await_s: int = 120) -> ModelVersion:
    """A new version of the registered model `name` (created when missing) from a logged adapter model."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="LoRA adapter + event embedding of Kronos, retrained "
                                                          "by kronos-rolling")
    return client.create_model_version(name, model_uri, run_id=run_id, model_id=model_uri.removeprefix("models:/"),
                                       tags=tags, description=description, await_creation_for=await_s)


class _LocalContext:
    """The one part of mlflow's PythonModelContext that load_context reads."""

    def __init__(self, artifacts: dict[str, str]):
        self.artifacts = artifacts
