"""May this registered version load or serve? One verification for every loader.

At registration every version records the sha256 of each file of its logged model as a
version tag, `sha256.<path in the model>`: its `MLmodel`, the code MLflow runs to rebuild it
(`pyfunc_model.py`), its environment files and input example, and every file of its adapter
bundle (`sha256.artifacts/adapter/adapter_model.safetensors`, ...). Tags live in the
registry's database, not in the artifact store that holds the files, so whoever can change
a stored file cannot change what it is checked against. `check_version` requires, of the
downloaded version:

- class: the version's `asset_class` tag, and the bundle's own metadata.json, name the
  registered model's class (an equity adapter registered under kronos-lora-crypto is refused);
- digests: the version holds exactly the recorded files, each with its recorded sha256
  (a same-size corrupted file, a missing one, a planted extra one, code injected into
  `pyfunc_model.py` are refused, the file named);
- formats: JSON files parse, safetensors files hold whole tensors;
- finite: every tensor of every safetensors file is finite (NaN or inf weights are refused);
- calibration: the bundle's calibration.json, when it has one, is a calibration every entry
  point can apply (finite, non-negative scales that never decrease, so quantiles keep their order).

Where it runs: the predictor (every version an alias points at, before it loads it),
`promote`, `rollback` and the guard (`verify_version`), the monthly job's warm start and
references (`fetch_verified`), `load_pyfunc` (a verified `mlflow.pyfunc.load_model`), and
the pyfunc model's own `load_context` (`verify_loaded_model`). All but the last check the
files before anything of the version is imported. `mlflow.pyfunc.load_model` called by
anyone else runs the version's `pyfunc_model.py` before `load_context` can look: a
tampered version is still refused there, naming the file, but code injected into that file
has run by then; and one whose `MLmodel` was changed to name other code never reaches our
`load_context` at all. Only a loader that verifies first (`load_pyfunc`, the predictor)
keeps such code from running.

A version without `sha256.*` tags (registered before they were recorded), or with tags for
its adapter files only (registered before whole versions were recorded), is refused: what
it would load cannot be told apart from a tampered copy. The fix is to register it again
(retrain the month) so all its files are recorded.

The digest code is files.py's (one sha256 of a file, one manifest digest).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import requests
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from safetensors import safe_open

from kronos_rolling.errors import ModelError, RegistryError, RegistryUnavailable
from kronos_rolling.evaluation.calibration import CALIBRATION_FILE, Calibration, CalibrationError
from kronos_rolling.names import MODEL_PREFIX
from kronos_rolling.files import (
    DIGEST_TAG_PREFIX,
    check_formats,
    file_manifest,
    file_sha256,
    recorded_files,
)
from kronos_rolling.tracking.adapters import METADATA_FILE, AdapterSource, bundle_in, fetch_adapter
from kronos_rolling.tracking.context import Tracking

MLMODEL = "MLmodel"
# MLflow writes this note (the registered name and version) into a folder it downloads by
# `models:/NAME/VERSION`, on the downloading side: it is never a stored file of the version.
DOWNLOAD_NOTE = "registered_model_meta"

# torch is imported only for a tensor dtype numpy lacks: `kronos-rolling promote` and `rollback`
# verify a version without loading it.

CLASS_TAG = "asset_class"


class IntegrityError(ModelError):
    """A version failed verification; the message says which check and how to fix it."""


def class_of(registered_model: str) -> str:
    return registered_model.removeprefix(MODEL_PREFIX)


def check_class(registered_model: str, version: str, tags: dict[str, str]) -> None:
    """The version's `asset_class` tag names the registered model's class."""
    expected, tagged = class_of(registered_model), (tags or {}).get(CLASS_TAG)
    if tagged != expected:
        raise IntegrityError(
            f"{registered_model} v{version} is tagged {CLASS_TAG}={tagged or '(none)'} but the model serves "
            f"{expected}: an adapter of another class is never served; register the {tagged or 'right'} "
            f"adapter under {MODEL_PREFIX}{tagged or '<its class>'} and choose another version here")


def check_version(model_dir: Path, registered_model: str, version: str, tags: dict[str, str]) -> Path:
    """Every check a version passes before it loads or serves (see the module docstring), on the
    folder of its logged model as downloaded; returns its adapter bundle folder. IntegrityError if not."""
    what = f"{registered_model} v{version}"
    model_dir = Path(model_dir)
    check_class(registered_model, version, tags)
    recorded = recorded_files(tags)
    if not recorded:
        raise IntegrityError(
            f"{what} records no per-file sha256 ({DIGEST_TAG_PREFIX}<file> tags); it was registered before "
            "they were recorded, so a corrupted copy cannot be told apart: re-register it (retrain the month) "
            "and choose another version meanwhile")
    actual = {name: entry for name, entry in file_manifest(model_dir).items() if name != DOWNLOAD_NOTE}
    if (model_dir / MLMODEL).is_file() and MLMODEL not in recorded:
        raise IntegrityError(
            f"{what} records the sha256 of its adapter files only (it was registered before whole versions were "
            f"recorded): its {MLMODEL} and the code MLflow runs to load it cannot be verified; re-register it "
            "(retrain the month) and choose another version meanwhile")
    missing, extra = sorted(set(recorded) - set(actual)), sorted(set(actual) - set(recorded))
    if missing or extra:
        raise IntegrityError(f"{what}: its files differ from those recorded at registration (missing "
                             f"{missing or 'none'}, unexpected {extra or 'none'}); it is corrupt or tampered with")
    for name in sorted(recorded):
        if actual[name]["sha256"] != recorded[name]:
            raise IntegrityError(
                f"{what}: {name} does not match the sha256 recorded at registration "
                f"({actual[name]['sha256'][:12]} != {recorded[name][:12]}); it is corrupt or tampered with")
    bundle = bundle_in(model_dir)  # its MLmodel is the registered one: safe to read
    check_formats(bundle, what)
    _check_finite(bundle, what)
    try:
        Calibration.read(bundle, f"{what}: {CALIBRATION_FILE}")
    except CalibrationError as exc:
        raise IntegrityError(str(exc)) from None
    metadata_path = bundle / METADATA_FILE
    if metadata_path.exists():
        label = json.loads(metadata_path.read_text()).get("label")
        if label is not None and label != class_of(registered_model):
            raise IntegrityError(f"{what}: its {METADATA_FILE} says it was trained for {label}, not "
                                 f"{class_of(registered_model)}; an adapter of another class is never served")
    return bundle


def _check_finite(bundle_dir: Path, what: str) -> None:
    """Read as numpy arrays (no torch); a dtype numpy lacks (bf16) is read with torch."""
    for path in sorted(Path(bundle_dir).rglob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as tensors:
            for key in tensors.keys():
                try:
                    array = tensors.get_tensor(key)
                    bad = int((~np.isfinite(array)).sum()) if array.dtype.kind in "fc" else 0
                except TypeError:  # "data type 'bfloat16' not understood"
                    bad = _non_finite_with_torch(path, key)
                if bad:
                    raise IntegrityError(f"{what}: tensor {key} of {path.name} holds {bad} non-finite value(s) "
                                         "(NaN or inf); it would forecast NaN, so it is never served")


def _non_finite_with_torch(path: Path, key: str) -> int:
    import torch

    with safe_open(str(path), framework="pt") as tensors:
        tensor = tensors.get_tensor(key)
    return int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0


def verify_version(client: MlflowClient, version: ModelVersion) -> None:
    """Download `version` and run `check_version` on it; IntegrityError when it may not serve."""
    name, number = version.name, str(version.version)
    check_class(name, number, version.tags)  # cheap, before any download
    with tempfile.TemporaryDirectory(prefix="kronos-verify-") as scratch:
        check_version(_download(client, version, Path(scratch)), name, number, version.tags)


def _download(client: MlflowClient, version: ModelVersion, dst: Path) -> Path:
    name, number = version.name, str(version.version)
    uri = client.get_model_version_download_uri(name, number)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                    tracking_uri=client.tracking_uri)
    except MlflowException as exc:
        raise RegistryUnavailable(f"cannot download {name} v{number} to verify it: {exc.message}") from exc
    except OSError as exc:
        raise RegistryError(f"cannot download {name} v{number} to verify it: {exc}") from exc
    return Path(local).resolve()


def fetch_verified(uri: str, tracking: Tracking, dst: Path) -> AdapterSource:
    """`fetch_adapter` for loaders (a warm start, a reference model): a registered version is
    checked whole before its adapter is read. Folders and run artifacts record no digests."""
    source = fetch_adapter(uri, tracking, dst)
    if source.registered_model is not None:
        check_version(source.model_dir, source.registered_model, source.version, source.tags)
    return source


def load_pyfunc(client: MlflowClient, model_uri: str):
    """`mlflow.pyfunc.load_model` of a registered version (`models:/NAME@ALIAS` or
    `models:/NAME/VERSION`) that imports nothing of it before every file is verified: code
    injected into a stored version never runs here."""
    version, _ = Tracking(client.tracking_uri, client).model_version(model_uri)
    check_class(version.name, str(version.version), version.tags)
    with tempfile.TemporaryDirectory(prefix="kronos-verify-") as scratch:
        local = _download(client, version, Path(scratch))
        check_version(local, version.name, str(version.version), version.tags)
        # load_context reads everything into memory (and verifies again, against this registry).
        return mlflow.pyfunc.load_model(str(local), model_config={"tracking_uri": client.tracking_uri})


def verify_loaded_model(model_dir: Path, tracking_uri: str) -> AdapterSource:
    """What a pyfunc model's `load_context` runs: find the registered version whose recorded
    MLmodel is this folder's, in the registry at `tracking_uri`, and `check_version` the folder
    against it. Returns its adapter, as that version (name, number, tags: whether its calibration
    is served); IntegrityError when the folder is no registered version or fails a check,
    RegistryUnavailable when the registry cannot be asked."""
    model_dir = Path(model_dir)
    if not (model_dir / MLMODEL).is_file():
        raise IntegrityError(f"{model_dir} holds no {MLMODEL}: it is not a logged model folder")
    digest = file_sha256(model_dir / MLMODEL)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        versions = client.search_model_versions(f"tags.`{DIGEST_TAG_PREFIX}{MLMODEL}` = '{digest}'")
    except (MlflowException, requests.RequestException, OSError) as exc:
        raise RegistryUnavailable(f"cannot ask the registry at {tracking_uri} which version {model_dir} is, so it "
                                  f"cannot be verified: {exc}; load it with the registry reachable "
                                  "(MLFLOW_TRACKING_URI)") from exc
    versions = [v for v in versions if v.name.startswith(MODEL_PREFIX)]
    if not versions:
        raise IntegrityError(
            f"the {MLMODEL} of {model_dir} is no registered version's in the registry at {tracking_uri} (its sha256 "
            f"{digest[:12]} is recorded by none): the {MLMODEL} was changed, or the model was never registered "
            "there; load a registered version (models:/kronos-lora-<class>@production) with its registry")
    version = versions[0]
    bundle = check_version(model_dir, version.name, str(version.version), version.tags)
    metadata_path = bundle / METADATA_FILE
    return AdapterSource(uri=f"models:/{version.name}/{version.version}", bundle_dir=bundle,
                         registered_model=version.name, version=str(version.version), run_id=version.run_id,
                         metadata=json.loads(metadata_path.read_text()) if metadata_path.exists() else {},
                         model_dir=model_dir, tags=dict(version.tags or {}))
