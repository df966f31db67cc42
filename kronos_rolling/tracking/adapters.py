"""Where an adapter comes from: a folder, a run artifact, or a registered version.

An adapter bundle is a folder with peft's `adapter_config.json` +
`adapter_model.safetensors`, the event embedding (`event_embedding.safetensors`), the
event vocabulary (`event_vocab.json`) and `metadata.json` (the base it belongs to, the
training window and its figures). A registered version is an MLflow pyfunc model whose
`adapter` artifact is such a bundle.

Finding and downloading a bundle needs no torch (the registry commands verify versions with
it); the model code is imported by the functions that load one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from kronos_rolling.errors import ModelError, RegistryError
from kronos_rolling.evaluation.calibration import CALIBRATION_FILE, Calibration
from kronos_rolling.names import POOLED, PRODUCTION, registered_model_name, withheld_calibrations
from kronos_rolling.tracking.context import Tracking

if TYPE_CHECKING:
    from kronos_rolling.evaluation.forecasts import ForecastModel
    from kronos_rolling.model.base import BaseModelRef

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
ADAPTER_ARTIFACT = "adapter"  # the pyfunc artifact key and folder name of the bundle


@dataclass
class AdapterSource:
    """A bundle on local disk plus where it came from (for run parameters and lineage)."""

    uri: str
    bundle_dir: Path
    registered_model: str | None = None
    version: str | None = None
    run_id: str | None = None
    metadata: dict = field(default_factory=dict)
    model_dir: Path | None = None  # the downloaded logged model around the bundle (a registered version)
    tags: dict = field(default_factory=dict)  # the registered version's tags (its recorded file digests)

    def describe(self) -> str:
        if self.registered_model:
            return f"{self.registered_model} v{self.version}"
        return self.uri


def bundle_in(local: Path) -> Path:
    """The bundle folder inside a downloaded pyfunc model, or the folder itself."""
    if (local / "MLmodel").exists():
        artifacts = Model.load(str(local)).flavors.get("python_function", {}).get("artifacts", {})
        entry = artifacts.get(ADAPTER_ARTIFACT)
        if entry is None:
            raise ModelError(f"the model at {local} has no '{ADAPTER_ARTIFACT}' artifact; it is not a kronos-rolling adapter")
        return local / entry["path"]
    return local


def fetch_adapter(uri: str, tracking: Tracking | None, dst: Path | None = None) -> AdapterSource:
    """Download (if needed) and identify the adapter at a folder, `runs:/` or `models:/` URI.

    A folder needs no tracking context (None) nor `dst`; an MLflow URI is resolved through
    the context and downloaded into `dst`, a folder the caller removes when done (a job's
    temporary folder). Loaders of registered versions use tracking/integrity.fetch_verified,
    which checks every file first."""
    source = AdapterSource(uri=uri, bundle_dir=Path(uri))
    folder = Path(uri).expanduser()
    if folder.is_dir():
        source.bundle_dir = bundle_in(folder.resolve())
    else:
        if tracking is None:
            raise ModelError(f"adapter {uri!r} is not a folder here; an MLflow URI needs a tracking server")
        if uri.startswith("models:/"):
            version, _ = tracking.model_version(uri)
            source.registered_model, source.version, source.run_id = version.name, version.version, version.run_id
            source.tags = dict(version.tags or {})
            uri = f"models:/{source.registered_model}/{source.version}"  # pin: an alias may move meanwhile
        elif uri.startswith("runs:/"):
            source.run_id = uri[len("runs:/"):].split("/", 1)[0]
        elif "://" not in uri:
            raise ModelError(
                f"adapter {uri!r} is not a folder here nor an MLflow URI; pass a bundle folder, "
                "runs:/<run_id>/adapter or models:/kronos-lora-<class>@production"
            )
        if dst is None:
            raise ModelError(f"adapter {uri}: a download needs a folder to go to (dst); pass a temporary "
                             "folder the job removes")
        Path(dst).mkdir(parents=True, exist_ok=True)
        try:
            local = tracking.download(uri, Path(dst))
        except MlflowException as exc:
            raise RegistryError(f"cannot download adapter {uri}: {exc.message}") from exc
        source.model_dir = local.resolve()
        source.bundle_dir = bundle_in(source.model_dir)
    missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if not (source.bundle_dir / n).exists()]
    if missing:
        raise ModelError(f"adapter at {source.uri} lacks {', '.join(missing)}; it is incomplete or not an adapter")
    metadata_path = source.bundle_dir / METADATA_FILE
    if metadata_path.exists():
        source.metadata = json.loads(metadata_path.read_text())
    return source


def calibration_of(source: AdapterSource) -> Calibration | None:
    """The calibration the adapter carries (its bundle's calibration.json, checked), with the
    classes its version's tags withhold; None when it carries none."""
    calibration = Calibration.read(source.bundle_dir, f"{source.describe()}: {CALIBRATION_FILE}")
    return None if calibration is None else calibration.with_withheld(withheld_calibrations(source.tags))


def alias_exists(client: MlflowClient, name: str, alias: str) -> bool:
    try:
        client.get_model_version_by_alias(name, alias)
        return True
    except MlflowException:
        return False


def default_warm_start(asset_class: str, client: MlflowClient) -> str | None:
    """The class's production adapter, else the pooled production adapter, else None."""
    for label in (asset_class, POOLED):
        if alias_exists(client, registered_model_name(label), PRODUCTION):
            return f"models:/{registered_model_name(label)}@{PRODUCTION}"
    return None


def base_of(source: AdapterSource) -> BaseModelRef:
    from kronos_rolling.model.base import BaseModelRef

    if "base" not in source.metadata:
        raise ModelError(f"adapter {source.describe()} has no base model reference in {METADATA_FILE}")
    return BaseModelRef.from_dict(source.metadata["base"])


def load_forecast_model(source: AdapterSource, base: BaseModelRef | None = None) -> ForecastModel:
    """The adapter on a fresh copy of its base, ready for evaluation or forecasting."""
    from kronos_rolling.data.events import EventVocabulary
    from kronos_rolling.evaluation.forecasts import ForecastModel
    from kronos_rolling.model.lora import load_adapter_bundle

    base = base or base_of(source)
    model, tokenizer = base.load()
    peft_model, event_embedding, vocab = load_adapter_bundle(model, source.bundle_dir)
    peft_model.eval()
    return ForecastModel(peft_model, tokenizer, event_embedding, EventVocabulary.from_dict(vocab), base.max_context)


def load_base_forecast_model(base: BaseModelRef) -> ForecastModel:
    """The bare base (zero-shot): no adapter, no events."""
    from kronos_rolling.evaluation.forecasts import ForecastModel

    model, tokenizer = base.load()
    return ForecastModel(model, tokenizer, None, None, base.max_context)
