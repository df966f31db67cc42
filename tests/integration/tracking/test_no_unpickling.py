"""Nothing a loader reads is a pickle: malicious pickles planted wherever one might look never run.

The payload writes a marker file when unpickled (checked: it does, under plain pickle and
torch.load(weights_only=False)). It is planted in a registered version's model folder
(python_model.pkl, the pyfunc's classic pickle), in its adapter bundle (adapter_model.bin and
pytorch_model.bin, which peft and transformers fall back to; checkpoint.pt) and in a training
checkpoint folder. Then the version is loaded every way the package loads one: the pyfunc model
(mlflow.pyfunc.load_model), the adapter on its base (fetch_adapter + load_forecast_model, what
evaluation, warm starts and the predictor use), the verification before serving, and a training
checkpoint's resume. The marker never appears.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import mlflow
import torch
from support.serve import build_bundle, sample_frame

from kronos_rolling.tracking.integrity import verify_version
from kronos_rolling.tracking.adapters import ADAPTER_ARTIFACT, fetch_adapter, load_forecast_model
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.pyfunc import register_adapter_model, save_adapter_model
from kronos_rolling.tracking.runs import start_run
from kronos_rolling.training.checkpoint import Checkpoint


class Payload:
    """Unpickling runs open(marker, "w")."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(folder: Path, marker: Path, names) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pkl":
            path.write_bytes(pickle.dumps(Payload(marker)))
        else:
            torch.save({"state": Payload(marker)}, path)


def test_the_payload_runs_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    plant(tmp_path, marker, ["p.pkl", "p.pt"])
    pickle.loads((tmp_path / "p.pkl").read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(tmp_path / "p.pt", weights_only=False)
    assert marker.exists()


def test_no_planted_pickle_runs_in_any_loader(clean_registry, tiny_base, tmp_path):
    client = clean_registry
    marker = tmp_path / "marker"
    tracking = Tracking.connect(client.tracking_uri, check=False)
    bundle = build_bundle(tiny_base, tmp_path / "bundle" / ADAPTER_ARTIFACT, seed=3)
    plant(bundle, marker, ["adapter_model.bin", "pytorch_model.bin", "checkpoint.pt"])
    model_dir = save_adapter_model(bundle, sample_frame("BTCUSD", 48), tmp_path / "model")
    plant(model_dir, marker, ["python_model.pkl", "artifacts/python_model.pkl"])
    with start_run(tracking, "no-unpickling") as run:
        logged = client.create_logged_model(client.get_run(run.run_id).info.experiment_id, name="adapter",
                                            source_run_id=run.run_id, model_type="pyfunc")
        client.log_model_artifacts(logged.model_id, str(model_dir))
        client.finalize_logged_model(logged.model_id, "READY")
    version = register_adapter_model(client, "kronos-lora-crypto", f"models:/{logged.model_id}", run.run_id,
                                     tags={"asset_class": "crypto"}, description="planted pickles", await_s=60)
    assert "sha256.artifacts/adapter/adapter_model.bin" in version.tags, "the planted files are part of the version"

    model = mlflow.pyfunc.load_model(f"models:/kronos-lora-crypto/{version.version}")
    assert len(model.predict(sample_frame("BTCUSD", 48), params={"pred_len": 2})) == 2
    with tempfile.TemporaryDirectory() as scratch:
        source = fetch_adapter(f"models:/kronos-lora-crypto/{version.version}", tracking, Path(scratch))
        assert (source.bundle_dir / "adapter_model.bin").exists()
        load_forecast_model(source)
    verify_version(client, client.get_model_version("kronos-lora-crypto", version.version))

    checkpoint_dir = tmp_path / "checkpoint"
    plant(checkpoint_dir, marker, ["checkpoint.pt", "checkpoint.json", "tensors-0.safetensors"])
    assert Checkpoint(checkpoint_dir, "fingerprint").load() is None
    assert not marker.exists(), "a planted pickle ran"
