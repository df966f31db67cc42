"""tracking/integrity.py on a real tracking server: what may serve, and what promote and rollback refuse."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import save_file
from support.registry import Receiver, promote_decision, register_stand_in

from kronos_rolling.registry import history
from kronos_rolling.tracking.integrity import IntegrityError
from kronos_rolling.registry.promotion import (
    alias_state,
    apply_guard_decision,
    promote,
    rollback,
    withdraw_production,
)

CRYPTO = "kronos-lora-crypto"


def stored_file(tracking_server, client, version, name: str) -> Path:
    """The file of a registered version in the server's artifact store (on this machine's disk)."""
    model_id = re.search(r"m-[0-9a-f]+", client.get_model_version_download_uri(CRYPTO, version)).group(0)
    [path] = [p for p in Path(tracking_server.config.artifacts_destination).rglob(name) if model_id in str(p)]
    return path


def nan_in_place(path: Path) -> None:
    """Overwrite a safetensors file with NaN weights of the same shape: same size, same format."""
    size = path.stat().st_size
    weights = torch.full((1024,), float("nan"))
    save_file({"lora_A": weights}, str(path))
    assert path.stat().st_size == size


def promoted(client, lock_dir, **kw) -> str:
    version = register_stand_in(client, "crypto", **kw).version
    apply_guard_decision(client, CRYPTO, version, promote_decision(), lock_dir=lock_dir)
    return version


def test_registration_records_every_files_sha256(clean_registry):
    version = register_stand_in(clean_registry, "crypto")
    digests = {k: v for k, v in version.tags.items() if k.startswith("sha256.")}
    assert set(digests) == {"sha256.adapter_model.safetensors", "sha256.metadata.json"}
    assert all(len(v) == 64 for v in digests.values())


def test_a_same_size_nan_corruption_is_refused_by_promote_and_rollback(clean_registry, tracking_server, lock_dir,
                                                                       cli):
    client = clean_registry
    v1 = promoted(client, lock_dir)
    v2 = promoted(client, lock_dir)
    v3 = promoted(client, lock_dir)
    nan_in_place(stored_file(tracking_server, client, v2, "adapter_model.safetensors"))
    audit_before = len(history.read_history(client, CRYPTO))

    with pytest.raises(IntegrityError, match="adapter_model.safetensors does not match the sha256 recorded"):
        promote(client, CRYPTO, v2, "operator", lock_dir=lock_dir)
    refused = cli("rollback", "--asset-class", "crypto", "--to-version", v2, "--reason", "try v2")
    assert refused.exit_code != 0 and "does not match the sha256 recorded" in refused.output
    assert alias_state(client, CRYPTO).production == v3, "nothing moved"
    assert len(history.read_history(client, CRYPTO)) == audit_before, "no audit entry for a refused move"

    with Receiver() as receiver:
        move = rollback(client, "crypto", reason="v3 is bad", lock_dir=lock_dir, webhook=receiver.url)
    assert (move.from_version, move.to_version) == (v3, v1), "the corrupt v2 is skipped"
    assert any(f"skipped v{v2}: it fails verification" in note for note in move.notes)
    [alert] = [b["kronos"] for b in receiver.bodies]
    assert alert["event"] == "rollback"
    assert alert["fields"]["from_version"] == v3 and alert["fields"]["to_version"] == v1
    assert f"skipped v{v2}" in alert["fields"]["skipped"]


def test_a_nan_adapter_whose_digests_match_is_refused_as_not_finite(clean_registry, lock_dir):
    client = clean_registry
    promoted(client, lock_dir)
    bad = register_stand_in(client, "crypto", nan=True).version
    with pytest.raises(IntegrityError, match="non-finite value"):
        promote(client, CRYPTO, bad, "operator", lock_dir=lock_dir)
    with pytest.raises(IntegrityError, match="non-finite value"):
        rollback(client, "crypto", bad, reason="try it", lock_dir=lock_dir)


def test_an_equity_adapter_registered_under_crypto_is_refused(clean_registry, lock_dir):
    client = clean_registry
    tagged_equity = register_stand_in(client, "crypto", label="equity", class_tag="equity").version
    with pytest.raises(IntegrityError, match="tagged asset_class=equity but the model serves crypto"):
        promote(client, CRYPTO, tagged_equity, "operator", lock_dir=lock_dir)
    trained_for_equity = register_stand_in(client, "crypto", label="equity").version
    with pytest.raises(IntegrityError, match="says it was trained for equity, not crypto"):
        promote(client, CRYPTO, trained_for_equity, "operator", lock_dir=lock_dir)
    assert alias_state(client, CRYPTO).production is None


def test_a_version_registered_without_file_digests_is_refused_with_the_fix(clean_registry, lock_dir):
    """Versions registered before the sha256.<file> tags existed: refused, the fix is to re-register."""
    client = clean_registry
    version = register_stand_in(client, "crypto")
    for key in [k for k in version.tags if k.startswith("sha256.")]:
        client.delete_model_version_tag(CRYPTO, version.version, key)
    with pytest.raises(IntegrityError, match="records no per-file sha256.*re-register it"):
        promote(client, CRYPTO, version.version, "operator", lock_dir=lock_dir)


def test_rollback_after_a_withdrawal_goes_to_the_newest_verified_guard_promotion_and_alerts(clean_registry,
                                                                                          lock_dir):
    client = clean_registry
    v1 = promoted(client, lock_dir)
    v2 = register_stand_in(client, "crypto").version
    promote(client, CRYPTO, v2, "by hand", lock_dir=lock_dir)  # hand-promoted: never a default target
    with Receiver() as receiver:
        withdrawn = withdraw_production(client, "crypto", "incumbent check: worse than pooled", lock_dir=lock_dir,
                                        webhook=receiver.url)
        assert alias_state(client, CRYPTO).production is None
        move = rollback(client, "crypto", reason="back after the withdrawal", lock_dir=lock_dir,
                        webhook=receiver.url)
    assert withdrawn.deliveries[0].delivered and move.deliveries[0].delivered
    assert (move.from_version, move.to_version) == (None, v1)
    assert any(f"skipped v{v2}: the guard never promoted it" in note for note in move.notes)
    events = [(b["kronos"]["event"], b["kronos"]["fields"]["to_version"]) for b in receiver.bodies]
    assert events == [("withdrawn", "none"), ("rollback", v1)]
    assert mlflow.get_tracking_uri()  # the fixtures' URI: the package itself set none


def calibration_file(**changes) -> dict:
    """calibration.json's content as training writes it (one class, two steps), with `changes`."""
    from kronos_rolling.evaluation.calibration import GRID, Calibration, ClassCalibration

    scales = tuple(tuple(1.6 * level for level in GRID) for _ in range(2))
    content = Calibration({"crypto": ClassCalibration(scales, 400)}, {}, ("2018-01-01", "2018-02-01"), 100).to_dict()
    content.update(changes)
    return content


def test_a_tampered_calibration_is_refused_as_a_bad_adapter_file(clean_registry, tracking_server, lock_dir):
    client = clean_registry
    good = promoted(client, lock_dir, calibration=calibration_file())
    assert "sha256.calibration.json" in client.get_model_version(CRYPTO, good).tags
    other = register_stand_in(client, "crypto", calibration=calibration_file()).version
    stored = stored_file(tracking_server, client, other, "calibration.json")
    stored.write_text(stored.read_text().replace('"outcomes": 400', '"outcomes": 900'))  # same size, new figure
    with pytest.raises(IntegrityError, match="calibration.json does not match the sha256 recorded"):
        promote(client, CRYPTO, other, "operator", lock_dir=lock_dir)
    assert alias_state(client, CRYPTO).production == good, "nothing moved"


def test_a_calibration_that_would_reorder_quantiles_is_refused_even_with_matching_digests(clean_registry,
                                                                                        lock_dir):
    client = clean_registry
    content = calibration_file()
    content["classes"]["crypto"]["scales"][1][40] = 0.0  # a scale that decreases along the levels
    bad = register_stand_in(client, "crypto", calibration=content).version
    with pytest.raises(IntegrityError, match=rf"kronos-lora-crypto v{bad}: calibration.json: "
                                             r"classes\.crypto\.scales must start at 0 and never decrease"):
        promote(client, CRYPTO, bad, "operator", lock_dir=lock_dir)
    assert alias_state(client, CRYPTO).production is None


# ---- whole versions: the logged model's every file, code and MLmodel included ------------------------


def stored_model_folder(tracking_server, client, version) -> Path:
    """The folder of a registered version's logged model in the server's artifact store."""
    model_id = re.search(r"m-[0-9a-f]+", client.get_model_version_download_uri(CRYPTO, version)).group(0)
    [mlmodel] = [p for p in Path(tracking_server.config.artifacts_destination).rglob("MLmodel")
                 if model_id in str(p)]
    return mlmodel.parent


@pytest.fixture
def pyfunc_version(clean_registry, tiny_base):
    from support.serve import register_version

    return register_version(clean_registry, tiny_base, "crypto", seed=1)


def test_registration_records_every_file_of_the_logged_model(clean_registry, pyfunc_version):
    tags = clean_registry.get_model_version(CRYPTO, pyfunc_version).tags
    recorded = {k.removeprefix("sha256.") for k in tags if k.startswith("sha256.")}
    assert {"MLmodel", "pyfunc_model.py", "conda.yaml", "requirements.txt", "input_example.json",
            "artifacts/adapter/adapter_model.safetensors", "artifacts/adapter/metadata.json"} <= recorded


def test_code_injected_into_a_stored_version_never_runs_in_our_loaders_and_every_loader_refuses_it(
        clean_registry, tracking_server, pyfunc_version, tmp_path, lock_dir):
    from kronos_rolling.tracking.integrity import load_pyfunc, verify_version

    client = clean_registry
    code = stored_model_folder(tracking_server, client, pyfunc_version) / "pyfunc_model.py"
    marker = tmp_path / "injected-code-ran"
    code.write_text(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n" + code.read_text())
    refused = "pyfunc_model.py does not match the sha256 recorded at registration"
    with pytest.raises(IntegrityError, match=refused):
        verify_version(client, client.get_model_version(CRYPTO, pyfunc_version))
    with pytest.raises(IntegrityError, match=refused):
        load_pyfunc(client, f"models:/{CRYPTO}/{pyfunc_version}")
    with pytest.raises(IntegrityError, match=refused):
        promote(client, CRYPTO, pyfunc_version, "operator", lock_dir=lock_dir)
    assert not marker.exists(), "a loader of ours ran the injected code"
    # MLflow's own loader runs the file before the model's load_context can look (docs/operations.md):
    # the load is still refused, naming the file.
    with pytest.raises(IntegrityError, match=refused):
        mlflow.pyfunc.load_model(f"models:/{CRYPTO}/{pyfunc_version}")
    assert marker.exists()


def test_mlflow_pyfunc_load_model_refuses_a_changed_file_or_mlmodel_naming_it(clean_registry, tracking_server,
                                                                            pyfunc_version):
    from kronos_rolling.tracking.integrity import load_pyfunc

    folder = stored_model_folder(tracking_server, clean_registry, pyfunc_version)
    uri = f"models:/{CRYPTO}/{pyfunc_version}"
    assert len(mlflow.pyfunc.load_model(uri).predict(sample_bars(), params={"pred_len": 2})) == 2
    verified = load_pyfunc(clean_registry, uri)  # its download is gone once loaded: all of it is in memory
    assert len(verified.predict(sample_bars(), params={"pred_len": 2})) == 2
    weights = folder / "artifacts" / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="artifacts/adapter/adapter_model.safetensors does not match the sha256"):
        mlflow.pyfunc.load_model(uri)
    example = folder / "input_example.json"
    example.write_text(example.read_text().replace("timestamp", "TIMESTAMP"))
    (folder / "MLmodel").write_text((folder / "MLmodel").read_text() + "# changed\n")
    with pytest.raises(IntegrityError, match="the MLmodel of .* is no registered version's"):
        mlflow.pyfunc.load_model(uri)


def test_a_nan_version_is_refused_at_load_not_at_predict(clean_registry, tiny_base):
    from support.serve import register_version

    version = register_version(clean_registry, tiny_base, "crypto", seed=2, scale=float("nan"))
    with pytest.raises(IntegrityError, match="non-finite value"):
        mlflow.pyfunc.load_model(f"models:/{CRYPTO}/{version}")


def sample_bars():
    from support.serve import sample_frame

    return sample_frame("BTCUSD", 48)
