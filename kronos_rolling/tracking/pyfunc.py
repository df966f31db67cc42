"""A registered version as an MLflow pyfunc model: `predict(bars_df) -> forecast_df`.

The model carries the adapter bundle (LoRA, event embedding and vocabulary,
`metadata.json`) as its `adapter` artifact and refers to the frozen base by hub id +
revision or folder + digest, so a version weighs a small fraction of the base. Loading
it (``mlflow.pyfunc.load_model("models:/kronos-lora-crypto@production")``) or serving it
(``mlflow models serve -m ... --env-manager local``) loads that base and puts the adapter
on top.

Input (the README's table): one row per bar, `timestamp, open, high, low, close`,
optional `volume` and `amount`, and an optional `symbol` to forecast several series in
one call; column names in any case, as every entry point reads them. Timestamps may be
tz-aware (converted to UTC), naive (read as UTC), ISO text or unix seconds/milliseconds.
The bars pass the one bar validator (`data.bars`); its errors name the symbol, the row
(counted from 0 within the symbol's bars) and the column, never the whole input. The
signature holds the params and the output, not the input columns: MLflow's own schema
check matches column names by case and answers a mismatch with a dump of the input.

Loading a version verifies it (`load_context` -> tracking/integrity.verify_loaded_model):
every file of the folder MLflow downloaded must be the registered version's, by the
sha256 its tags record, and its weights finite; otherwise the load fails naming the file.
What that check can and cannot promise when MLflow itself loads the model is said in
tracking/integrity.py; `tracking.integrity.load_pyfunc` verifies before MLflow imports
anything.

Output: one row per forecast bar, `timestamp, open, high, low, close, volume, amount`
(and `symbol` first when given): the point forecast, the median of the sample paths column
by column (what the evaluation scores). Quantiles: `quantile_levels=[0.05, 0.5, 0.95]` adds
`close_p5`, `close_p50`, `close_p95` (any levels in (0, 1)); `quantiles=true` is the old
form, `close_p10`, `close_p50`, `close_p90`. A quantile request draws at least 32 paths
(`samples` may ask for more). The close quantiles carry the version's calibration for the
series' class when it has one and serves it (evaluation/calibration.py); a `calibration`
column says, per row, whether it was applied and from which version, or why not. MLflow
gives every param one type, so the list form is `quantile_levels`, not `quantiles`.
Future timestamps follow each series' calendar (its symbol's asset class, else the
adapter's). They are UTC: naive when the input's were naive datetimes, tz-aware otherwise.
"""

from __future__ import annotations

import logging
import tempfile
from importlib import metadata as package_metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from kronos_rolling.data.assets import classify_asset
from kronos_rolling.data.bars import clean_bars
from kronos_rolling.data.parse import TIMESTAMP_NAMES, canonical_name
from kronos_rolling.errors import DataError, ModelError
from kronos_rolling.evaluation.calibration import apply_calibration
from kronos_rolling.files import digest_tags
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.model.quantiles import LEGACY_LEVELS, paths_for, quantile_levels, quantile_name
from kronos_rolling.tracking.adapters import ADAPTER_ARTIFACT, calibration_of, load_forecast_model
from kronos_rolling.tracking.runs import MODEL_NAME, TrackedRun

DEFAULT_PARAMS = {
    "pred_len": 16,
    "samples": 1,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 0.9,
    "seed": 0,  # -1: unseeded
    "quantiles": False,  # true: p10, p50, p90 (the old form)
    "quantile_levels": [],  # any levels in (0, 1), e.g. [0.05, 0.5, 0.95]
}
log = logging.getLogger(__name__)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # what MLflow runs to rebuild the model
EXAMPLE_BARS = 32


def model_signature() -> ModelSignature:
    """Columns out, which are optional, and the params with their defaults (the input columns
    are the README's table, checked by the bar validator in any case)."""
    values = ("open", "high", "low", "close")
    outputs = Schema([ColSpec("string", "symbol", required=False), ColSpec("datetime", "timestamp"),
                      *[ColSpec("double", c) for c in (*values, "volume", "amount")],
                      *[ColSpec("double", f"close_{quantile_name(q)}", required=False) for q in LEGACY_LEVELS],
                      ColSpec("string", "calibration", required=False)])
    params = ParamSchema([ParamSpec(name, _param_type(value), value, shape=(-1,) if isinstance(value, list) else None)
                          for name, value in DEFAULT_PARAMS.items()])
    return ModelSignature(inputs=None, outputs=outputs, params=params)


def _param_type(value) -> str:
    return {bool: "boolean", int: "long", float: "double", list: "double"}[type(value)]


def input_example(bars: pd.DataFrame) -> pd.DataFrame:
    """The last bars of a series as a caller sends them: ISO timestamps with their UTC offset."""
    example = bars.tail(EXAMPLE_BARS).reset_index(drop=True)
    stamps = pd.to_datetime(example["timestamp"], utc=True)
    return example.assign(timestamp=[t.isoformat() for t in stamps])


class KronosAdapterModel(mlflow.pyfunc.PythonModel):
    """Kronos base + one LoRA adapter and event embedding, forecasting DataFrames of bars."""

    def load_context(self, context):
        """Verify the whole version against its registry, then load its base and adapter.

        The registry is the one `model_config={"tracking_uri": ...}` names, else MLflow's
        (MLFLOW_TRACKING_URI, or `mlflow.set_tracking_uri`): the pyfunc interface hands a
        model nothing else."""
        from kronos_rolling.tracking.integrity import verify_loaded_model

        config = context.model_config or {}
        tracking_uri = config.get("tracking_uri") or mlflow.get_tracking_uri()
        source = verify_loaded_model(model_folder(Path(context.artifacts[ADAPTER_ARTIFACT])), tracking_uri)
        loaded = load_forecast_model(source)
        self.metadata = source.metadata
        self.calibration = calibration_of(source)  # withheld classes from the version's tags
        self.source = source.describe()
        self.forecaster = Forecaster(loaded.model, loaded.tokenizer, device="auto",
                                     max_context=loaded.max_context, event_embedding=loaded.event_embedding)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        settings = {**DEFAULT_PARAMS, **(params or {})}
        try:
            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        except (ValueError, TypeError) as exc:
            raise DataError(f"the input is no table of bars ({type(model_input).__name__}: {exc}); send rows of "
                            "timestamp, open, high, low, close") from None
        if len(frame) == 0:
            raise DataError("no bars to forecast: send rows of timestamp, open, high, low, close")
        now = pd.Timestamp.now(tz="UTC")
        groups = _by_symbol(frame)
        bars = [clean_bars(part, "bars" if symbol is None else f"symbol {symbol}", now=now) for symbol, part in groups]
        seed = int(settings["seed"])
        levels = quantile_levels(list(settings["quantile_levels"]) or bool(settings["quantiles"]))
        classes = [self._asset_class(symbol) for symbol, _ in groups]
        results = self.forecaster.forecast(
            bars, int(settings["pred_len"]), temperature=float(settings["temperature"]), top_k=int(settings["top_k"]),
            top_p=float(settings["top_p"]), samples=paths_for(int(settings["samples"]), levels),
            seed=None if seed < 0 else seed, quantiles=levels, asset_class=classes,
        )
        stamps = frame[_column(frame, TIMESTAMP_NAMES)]
        naive = pd.api.types.is_datetime64_any_dtype(stamps) and stamps.dt.tz is None
        frames = []
        for (symbol, _), result, asset_class in zip(groups, results, classes):
            out = result.point.copy()
            if naive:
                out["timestamp"] = out["timestamp"].dt.tz_localize(None)
            if levels:
                note = apply_calibration(result, levels, self.calibration, asset_class, self.source)
                for level in levels:
                    out[f"close_{quantile_name(level)}"] = result.quantiles[quantile_name(level)]["close"].to_numpy()
                out["calibration"] = str(note)
            if symbol is not None:
                out.insert(0, "symbol", symbol)
            frames.append(out)
        return pd.concat(frames, ignore_index=True)

    def _asset_class(self, symbol: str | None) -> str | None:
        """The symbol's asset class for its market calendar; else the adapter's own (None for pooled)."""
        try:
            return classify_asset(symbol) if symbol is not None else self.metadata.get("asset_class")
        except DataError:
            return self.metadata.get("asset_class")


def _column(frame: pd.DataFrame, names) -> str | None:
    """The first column whose name, in any case, is one of `names` (as the bar parser matches them)."""
    found = {canonical_name(c): c for c in reversed(list(frame.columns))}
    return next((found[name] for name in names if name in found), None)


def _by_symbol(frame: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """(symbol, its bars) in order of first appearance; one unnamed series without a `symbol` column."""
    column = _column(frame, ("symbol",))
    if column is None:
        return [(None, frame.reset_index(drop=True))]
    missing = frame[column].isna().to_numpy().nonzero()[0]
    if len(missing):
        raise DataError(f"symbol missing at row(s) {', '.join(map(str, missing[:10]))}; give every row its "
                        "symbol, or leave the column out for a single series")
    return [(str(symbol), part.drop(columns=column).reset_index(drop=True))
            for symbol, part in frame.groupby(column, sort=False)]


def model_folder(bundle_dir: Path) -> Path:
    """The logged model folder (the one holding MLmodel) around an adapter bundle it carries."""
    for folder in (bundle_dir, *bundle_dir.parents[:3]):
        if (folder / "MLmodel").is_file():
            return folder
    raise ModelError(f"{bundle_dir} is inside no logged model folder (no MLmodel above it)")


def pip_requirements() -> list[str]:
    """What a serving environment needs; `kronos-rolling` itself is installed from this repository."""
    pins = []
    for package in ("torch", "peft", "pandas", "numpy", "safetensors", "huggingface_hub", "mlflow"):
        try:
            pins.append(f"{package}=={package_metadata.version(package)}")
        except package_metadata.PackageNotFoundError:
            pins.append(package)
    return pins + [f"kronos-rolling=={package_metadata.version('kronos-rolling')}"]


def save_adapter_model(bundle_dir: Path, bars: pd.DataFrame, out_dir: Path) -> Path:
    """Write the bundle as a pyfunc model folder at `out_dir`, as "models from code": loading it runs
    pyfunc_model.py and unpickles nothing. `bars`: a series whose last bars become the input example."""
    mlflow.pyfunc.save_model(
        path=str(out_dir),
        python_model=str(MODEL_CODE),
        artifacts={ADAPTER_ARTIFACT: str(bundle_dir)},
        signature=model_signature(),
        input_example=input_example(bars),
        pip_requirements=pip_requirements(),
    )
    return out_dir


def log_adapter_model(run: TrackedRun, bundle_dir: Path, bars: pd.DataFrame, name: str = MODEL_NAME) -> str:
    """Log the bundle as a pyfunc model of the run (an MLflow logged model, the run's output);
    returns its `models:/<model_id>` URI. A model whose files did not all arrive is FAILED."""
    client = run.client
    experiment_id = client.get_run(run.run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run.run_id, model_type="pyfunc")
    try:
        client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="kronos-model-") as tmp:
            folder = save_adapter_model(bundle_dir, bars, Path(tmp) / name)
            client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return f"models:/{model.model_id}"


def register_adapter_model(client: MlflowClient, name: str, model_uri: str, run_id: str, *, tags: dict[str, str],
                           description: str, await_s: int = 120) -> ModelVersion:
    """A new version of the registered model `name` (created when missing) from a logged adapter model.

    The version records the sha256 of every file of its logged model, as stored (MLmodel,
    code, environment, example, the adapter bundle), in `sha256.<path>` tags
    (files.digest_tags): what tracking/integrity.py checks before the version may
    load or serve."""
    model_id = model_uri.removeprefix("models:/")
    with tempfile.TemporaryDirectory(prefix="kronos-register-") as scratch:
        location = client.get_logged_model(model_id).artifact_location
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=scratch,
                                                         tracking_uri=client.tracking_uri))
        tags = {**tags, **digest_tags(local.resolve())}
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="LoRA adapter + event embedding of Kronos, retrained "
                                                          "by kronos-rolling")
    return client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                       tags=tags, description=description, await_creation_for=await_s)
