"""May this registered version serve? One verification for the predictor, `promote` and `rollback`.

At registration every version records the sha256 of each file of its adapter bundle as a
version tag, `sha256.<file>` (`sha256.adapter_model.safetensors`, ...). Before a version
may serve, `check_bundle` requires, of the downloaded bundle:

- class: the version's `asset_class` tag, and the bundle's own metadata.json, name the
  registered model's class (an equity adapter registered under kronos-lora-crypto is refused);
- digests: the bundle holds exactly the recorded files, each with its recorded sha256
  (a same-size corrupted file, a missing one, a planted extra one are refused);
- formats: JSON files parse, safetensors files hold whole tensors;
- finite: every tensor of every safetensors file is finite (NaN or inf weights are refused);
- calibration: the bundle's calibration.json, when it has one, is a calibration every entry
  point can apply (finite, non-negative scales that never decrease, so quantiles keep their order).

A version without `sha256.*` tags (registered before they were recorded) is refused: what
it would serve cannot be told apart from a corrupted copy. The fix is to register it again
(retrain the month, or register its run's model anew) so its files are recorded.

The digest code is serve/integrity.py's (one sha256 of a file, one manifest digest).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from safetensors import safe_open

from kronos_rolling.errors import ModelError, RegistryError, RegistryUnavailable
from kronos_rolling.evaluation.calibration import CALIBRATION_FILE, Calibration, CalibrationError
from kronos_rolling.names import MODEL_PREFIX
from kronos_rolling.serve.integrity import (
    DIGEST_TAG_PREFIX,
    check_formats,
    file_manifest,
    recorded_files,
)
from kronos_rolling.tracking.adapters import METADATA_FILE, bundle_in

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


def check_bundle(bundle_dir: Path, registered_model: str, version: str, tags: dict[str, str]) -> None:
    """Every check a version passes before it serves (see the module docstring); IntegrityError if not."""
    what = f"{registered_model} v{version}"
    check_class(registered_model, version, tags)
    recorded = recorded_files(tags)
    if not recorded:
        raise IntegrityError(
            f"{what} records no per-file sha256 ({DIGEST_TAG_PREFIX}<file> tags); it was registered before "
            "they were recorded, so a corrupted copy cannot be told apart: re-register it (retrain the month) "
            "and choose another version meanwhile")
    actual = file_manifest(bundle_dir)
    missing, extra = sorted(set(recorded) - set(actual)), sorted(set(actual) - set(recorded))
    if missing or extra:
        raise IntegrityError(f"{what}: its adapter files differ from those recorded at registration (missing "
                             f"{missing or 'none'}, unexpected {extra or 'none'}); it is corrupt or tampered with")
    for name in sorted(recorded):
        if actual[name]["sha256"] != recorded[name]:
            raise IntegrityError(
                f"{what}: {name} does not match the sha256 recorded at registration "
                f"({actual[name]['sha256'][:12]} != {recorded[name][:12]}); it is corrupt or tampered with")
    check_formats(bundle_dir, what)
    _check_finite(bundle_dir, what)
    try:
        Calibration.read(bundle_dir, f"{what}: {CALIBRATION_FILE}")
    except CalibrationError as exc:
        raise IntegrityError(str(exc)) from None
    metadata_path = Path(bundle_dir) / METADATA_FILE
    if metadata_path.exists():
        label = json.loads(metadata_path.read_text()).get("label")
        if label is not None and label != class_of(registered_model):
            raise IntegrityError(f"{what}: its {METADATA_FILE} says it was trained for {label}, not "
                                 f"{class_of(registered_model)}; an adapter of another class is never served")


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
    """Download `version` and run `check_bundle` on it; IntegrityError when it may not serve."""
    name, number = version.name, str(version.version)
    check_class(name, number, version.tags)  # cheap, before any download
    uri = client.get_model_version_download_uri(name, number)
    with tempfile.TemporaryDirectory(prefix="kronos-verify-") as scratch:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch,
                                                             tracking_uri=client.tracking_uri))
        except MlflowException as exc:
            raise RegistryUnavailable(f"cannot download {name} v{number} to verify it: {exc.message}") from exc
        except OSError as exc:
            raise RegistryError(f"cannot download {name} v{number} to verify it: {exc}") from exc
        check_bundle(bundle_in(local.resolve()), name, number, version.tags)
