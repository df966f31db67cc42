"""Quantiles as the predictor serves them (issue 20): any levels, at least 32 paths, the median
as the forecast, the answering version's calibration applied and named, a calibration that
fails verification refused like a bad adapter file.

Real parts: a tracking server of the module's own with registered versions of the tiny base,
each carrying a calibration.json in its bundle, and the HTTP service on a thread.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from support.serve import (
    InProcessService,
    bars_json,
    build_bundle,
    make_data_dir,
    register_version,
    sample_frame,
    set_production,
)

from kronos_rolling.evaluation.calibration import GRID, Calibration, ClassCalibration, calibrated_quantiles
from kronos_rolling.names import CALIBRATION_SERVED_TAG
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

pytestmark = pytest.mark.slow

TOKEN = "quantile-token-51c2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BARS, PRED_LEN = 48, 4
FRAMES = {"BTCUSD": sample_frame("BTCUSD", BARS), "EURUSD": sample_frame("EURUSD", BARS),
          "AAPL": sample_frame("AAPL", BARS)}
CRYPTO_SEED = 41


def calibration_content(asset_class: str, widen: float) -> dict:
    """A calibration.json that serves `asset_class` with scales `widen` x the central level (two steps)."""
    scales = tuple(tuple(widen * level for level in GRID) for _ in range(2))
    return Calibration({asset_class: ClassCalibration(scales, 400)}, {}, ("2018-05-01", "2018-06-01"),
                       100).to_dict()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    config = ServerConfig.embedded(tmp_path_factory.mktemp("quantile-registry"), port=free_port())
    config.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server = TrackingServer(config).start()
    yield server, MlflowClient(server.url)
    server.stop()


@pytest.fixture(scope="module")
def service(registry, tiny_base, tmp_path_factory):
    """crypto v1 calibrated (served), forex_commodity v1 calibrated but withheld by its tags, no
    equity nor pooled version (the bare base answers AAPL)."""
    server, client = registry
    register_version(client, tiny_base, "crypto", CRYPTO_SEED, calibration=calibration_content("crypto", 3.0))
    register_version(client, tiny_base, "forex_commodity", 42, calibration=calibration_content("forex_commodity", 2.0),
                     tags={f"{CALIBRATION_SERVED_TAG}forex_commodity": "false"})
    for label in ("crypto", "forex_commodity"):
        set_production(client, label, "1")
    home = tmp_path_factory.mktemp("quantile-home")
    env = {"KRONOS_HOME": str(home), "KRONOS_LOCK_DIR": str(home / "locks"), "KRONOS_BASE_MODEL": str(tiny_base),
           "MLFLOW_TRACKING_URI": server.url, "KRONOS_DATA_DIR": str(make_data_dir(home / "data", [])),
           "KRONOS_API_TOKEN": TOKEN, "KRONOS_SERVE_POLL_INTERVAL_S": "1", "KRONOS_SERVE_MAX_QUEUE_WAIT_S": "300",
           "KRONOS_SERVE_INFERENCE_THREADS": "1"}
    with InProcessService(env) as running:
        yield running


def ask(service, symbol: str, **options) -> requests.Response:
    body = {"symbol": symbol, "bars": bars_json(FRAMES[symbol]), "pred_len": PRED_LEN, "seed": 3, **options}
    return requests.post(service.url + "/forecast", json=body, headers=AUTH, timeout=120)


def wait_for(predicate, timeout: float, what: str):
    """Ask `predicate` until it holds (the service's next poll of the registry); its value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return value


def column(rows: list[dict], name: str = "close") -> np.ndarray:
    return np.array([row[name] for row in rows])


def crypto_paths(tiny_base, samples: int) -> np.ndarray:
    """(samples, PRED_LEN) closes of crypto v1's sample paths for BTCUSD, seed 3, computed here."""
    from kronos_rolling.model.forecast import Forecaster
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.lora import load_adapter_bundle
    from kronos_rolling.model.tokenizer import KronosTokenizer

    tokenizer = KronosTokenizer.from_pretrained(Path(tiny_base) / "tokenizer")
    model = Kronos.from_pretrained(Path(tiny_base) / "predictor")
    with tempfile.TemporaryDirectory() as folder:
        peft_model, events, _ = load_adapter_bundle(model, build_bundle(tiny_base, Path(folder) / "b", CRYPTO_SEED))
    result = Forecaster(peft_model, tokenizer, device="cpu", event_embedding=events).forecast(
        FRAMES["BTCUSD"], PRED_LEN, samples=samples, seed=3, asset_class="crypto", quantiles=[0.5])
    return result.close_paths


def test_any_levels_come_from_32_paths_calibrated_by_the_answering_version_around_the_median(service, tiny_base):
    response = ask(service, "BTCUSD", quantiles=[0.95, 0.05, 0.5], samples=4)  # fewer than 32 asked: 32 drawn
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer["quantiles"]) == {"p5", "p50", "p95"}
    assert answer["calibration"] == {
        "applied": True, "registered_model": "kronos-lora-crypto", "version": "1",
        "detail": "applied: kronos-lora-crypto v1's crypto calibration, fitted on 2018-05-01..2018-06-01"}
    bands = np.stack([column(answer["quantiles"][name]) for name in ("p5", "p50", "p95")])
    assert (np.diff(bands, axis=0) >= 0).all(), "p5 <= p50 <= p95 at every step"
    # The point forecast is the median of the paths, and calibration keeps it where it is.
    np.testing.assert_allclose(column(answer["forecast"]), bands[1], rtol=1e-6)
    # What 32 paths of crypto v1 give, calibrated with its file, computed here.
    paths = crypto_paths(tiny_base, 32)
    entry = Calibration.from_dict(calibration_content("crypto", 3.0)).classes["crypto"]
    np.testing.assert_allclose(bands, calibrated_quantiles(paths, entry, (0.05, 0.5, 0.95)), rtol=1e-4)
    np.testing.assert_allclose(column(answer["forecast"]), np.median(paths, axis=0), rtol=1e-4)
    for band in answer["quantiles"].values():  # calibrated closes stay inside valid bars
        assert (column(band, "high") >= column(band, "close")).all()
        assert (column(band, "low") <= column(band, "close")).all()


def test_the_old_form_and_a_plain_request_still_work(service, tiny_base):
    old = ask(service, "BTCUSD", quantiles=True)
    assert old.status_code == 200, old.text
    assert set(old.json()["quantiles"]) == {"p10", "p50", "p90"} and old.json()["calibration"]["applied"]
    more = ask(service, "BTCUSD", quantiles=[0.5], samples=32)
    np.testing.assert_allclose(column(more.json()["forecast"]), column(old.json()["forecast"]), rtol=1e-6)
    plain = ask(service, "BTCUSD").json()  # no quantiles: one path, no calibration block
    assert plain["quantiles"] is None and plain["calibration"] is None
    np.testing.assert_allclose(column(plain["forecast"]), crypto_paths(tiny_base, 1)[0], rtol=1e-4)


def test_a_withheld_calibration_and_the_bare_base_answer_uncalibrated_and_say_why(service, registry):
    forex = ask(service, "EURUSD", quantiles=[0.1, 0.9]).json()
    assert forex["calibration"]["applied"] is False and forex["calibration"]["version"] == "1"
    assert "forex_commodity calibration made coverage worse out of sample and is withheld" in \
        forex["calibration"]["detail"]
    base = ask(service, "AAPL", quantiles=[0.1, 0.9]).json()
    assert base["model"]["served_as"] == "base"
    assert base["calibration"] == {"applied": False, "registered_model": None, "version": None,
                                   "detail": "not applied: the bare base carries no calibration"}
    # Withheld later (the monthly out-of-sample check): the next poll reads the version's tags again.
    _, client = registry
    client.set_model_version_tag("kronos-lora-crypto", "1", f"{CALIBRATION_SERVED_TAG}crypto", "false")
    try:
        answer = wait_for(lambda: (a := ask(service, "BTCUSD", quantiles=[0.5]).json())["calibration"]["applied"]
                          is False and a, 30, "the service to read the withheld tag")
        assert "crypto calibration made coverage worse out of sample and is withheld" in \
            answer["calibration"]["detail"]
    finally:
        client.delete_model_version_tag("kronos-lora-crypto", "1", f"{CALIBRATION_SERVED_TAG}crypto")
        wait_for(lambda: ask(service, "BTCUSD", quantiles=[0.5]).json()["calibration"]["applied"], 30,
                 "the service to serve the calibration again (no tag: served)")


def test_a_version_whose_calibration_fails_verification_is_refused_and_the_previous_keeps_serving(
        service, registry, tiny_base):
    """Its digests match (the file was registered so), but the file would reorder quantiles: the
    alias set by hand, as the MLflow UI does, around `promote`'s own check."""
    _, client = registry
    content = calibration_content("crypto", 3.0)
    content["classes"]["crypto"]["scales"][1][40] = 0.0  # a scale that decreases along the levels
    bad = register_version(client, tiny_base, "crypto", 43, calibration=content)
    client.set_registered_model_alias("kronos-lora-crypto", "production", bad)
    try:
        [refusal] = wait_for(lambda: [r for r in requests.get(service.url + "/health", timeout=10).json()["refused"]
                                      if r["version"] == bad], 30, f"v{bad} to be refused")
        assert "calibration.json: classes.crypto.scales must start at 0 and never decrease" in refusal["reason"]
        answer = ask(service, "BTCUSD", quantiles=[0.5]).json()
        assert answer["model"]["version"] == "1" and answer["calibration"]["applied"]
    finally:
        client.set_registered_model_alias("kronos-lora-crypto", "production", "1")


def test_quantile_levels_outside_0_1_are_a_422_naming_the_field(service):
    response = ask(service, "BTCUSD", quantiles=[0.5, 1.0])
    assert response.status_code == 422
    assert any(error["field"].startswith("quantiles") for error in response.json()["errors"]), response.text


def test_predict_on_the_command_line_answers_any_levels_and_says_whose_calibration(service, registry, tiny_base,
                                                                                 tmp_path, monkeypatch):
    import io

    import pandas as pd
    from click.testing import CliRunner

    from kronos_rolling.cli.main import KronosGroup
    from kronos_rolling.cli.serve import COMMANDS

    server, _ = registry
    csv = tmp_path / "bars.csv"
    FRAMES["BTCUSD"].to_csv(csv, index=False)
    for name, value in {"KRONOS_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": server.url,
                        "KRONOS_BASE_MODEL": str(tiny_base), "KRONOS_DATA_DIR": str(make_data_dir(tmp_path / "d", [])),
                        "KRONOS_LOCK_DIR": str(tmp_path / "locks"), "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}.items():
        monkeypatch.setenv(name, value)  # predict sets the MLFLOW_HTTP_* for its process: undone here
    group = KronosGroup("kronos-rolling", commands={c.name: c for c in COMMANDS})
    result = CliRunner().invoke(group, ["predict", "--symbol", "BTCUSD", "--csv", str(csv), "--pred-len",
                                        str(PRED_LEN), "--seed", "3", "--quantiles", "0.05,0.5,0.95"])
    assert result.exit_code == 0, result.output
    assert ("calibration: applied: kronos-lora-crypto v1's crypto calibration, fitted on 2018-05-01..2018-06-01"
            in result.stderr)
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame.columns[-3:]) == ["close_p5", "close_p50", "close_p95"]
    answer = ask(service, "BTCUSD", quantiles=[0.05, 0.5, 0.95]).json()  # the same answer as over HTTP
    np.testing.assert_allclose(frame["close_p95"], column(answer["quantiles"]["p95"]), rtol=1e-5)
    np.testing.assert_allclose(frame["close"], column(answer["forecast"]), rtol=1e-5)
