"""Real parts for the predictor-service tests and benchmark.

- `register_version`: a real registered version of `kronos-lora-<label>` made without
  training: a LoRA bundle on a given base whose B weights (and event embedding) are drawn
  from `seed`, so every version forecasts differently and a test can tell which answered.
  It is logged with the pyfunc flavour inside an MLflow run, registered, and tagged with
  its bundle digest and val_mae, exactly the way a trained version carries them.
- `ServiceProcess`: the real HTTP service (`python -m kronos_rolling.cli serve`) as a
  child process on a free port; `stop()` ends it and its children.
- `sample_bars`: a window of the bundled real sample data as request rows.
- `mlflow_model_server`: `mlflow models serve` as a child process, waited for and stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import requests
import torch
from mlflow import MlflowClient

from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.model.config import LoraSettings
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.lora import attach_lora, save_adapter_bundle
from kronos_rolling.names import registered_model_name
from kronos_rolling.settings import load_settings
from kronos_rolling.tracking.adapters import ADAPTER_ARTIFACT, METADATA_FILE
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.runs import start_run
from kronos_rolling.tracking.server import free_port
from support import REPO as REPO_ROOT

EVENT_VOCAB = {"fomc_decision": 1, "halving": 2}


def build_bundle(base_dir: Path, out_dir: Path, seed: int, *, val_mae: float = 0.02,
                 val_sharpe: float = 0.5, label: str = "crypto", scale: float = 0.5,
                 lora: LoraSettings | None = None) -> Path:
    """An adapter bundle on `base_dir` whose LoRA weights and event vectors all come from `seed`."""
    model = Kronos.from_pretrained(Path(base_dir) / "predictor")
    peft_model = attach_lora(model, lora or LoraSettings(rank=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:  # A too: peft draws it from the global RNG
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    events = EventEmbedding(len(EVENT_VOCAB) + 1, model.d_model)
    with torch.no_grad():
        events.table.weight[1:] = torch.randn(events.table.weight[1:].shape, generator=generator)
    save_adapter_bundle(peft_model, events, EVENT_VOCAB, out_dir)
    metadata = {"label": label, "asset_class": None if label == "pooled" else label,
                "base": BaseModelRef.resolve(str(base_dir)).to_dict(),
                "val_mae": val_mae, "val_sharpe": val_sharpe, "seed": seed,
                "train_start": "2016-06-01", "train_end": "2018-06-01"}
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out_dir


def register_version(client: MlflowClient, base_dir: Path, label: str, seed: int, *,
                     val_mae: float = 0.02, example: pd.DataFrame | None = None,
                     lora: LoraSettings | None = None, experiment: str = "serve-tests",
                     registered_as: str | None = None, scale: float = 0.5, calibration: dict | None = None,
                     tags: dict[str, str] | None = None) -> str:
    """Register a new version of kronos-lora-<registered_as> (default: the bundle's `label`), tagged with
    its asset class (and `tags`); returns its version number. `scale`: of the LoRA weights (NaN: a NaN
    adapter). `calibration`: a calibration.json's content, in the bundle as training writes it."""
    from kronos_rolling.tracking.pyfunc import log_adapter_model, register_adapter_model

    name = registered_model_name(registered_as or label)
    tracking = Tracking.connect(client.tracking_uri, check=False)
    with tempfile.TemporaryDirectory(prefix="serve-bundle-") as folder:
        bundle = build_bundle(base_dir, Path(folder) / ADAPTER_ARTIFACT, seed, val_mae=val_mae, label=label,
                              lora=lora, scale=scale)
        if calibration is not None:
            (bundle / "calibration.json").write_text(json.dumps(calibration))
        tags = {"asset_class": label, "val_mae": f"{val_mae:.6g}", **(tags or {})}
        with start_run(tracking, experiment) as run:
            model_uri = log_adapter_model(run, bundle, example if example is not None else sample_frame("BTCUSD", 48))
    return register_adapter_model(client, name, model_uri, run.run_id, tags=tags, description="a serve test's",
                                  await_s=60).version


def set_production(client: MlflowClient, label: str, version: str) -> None:
    from kronos_rolling.registry.promotion import promote

    promote(client, registered_model_name(label), version, reason="serve test", lock_dir=load_settings().lock_dir)


def sample_frame(symbol: str, bars: int, end: int | None = None) -> pd.DataFrame:
    frame = DataStore(BUNDLED_DATA_DIR).load(symbol)
    end = len(frame) if end is None else end
    return frame.iloc[end - bars:end].reset_index(drop=True)


def bars_json(frame: pd.DataFrame) -> list[dict]:
    rows = []
    for row in frame.itertuples(index=False):
        rows.append({"timestamp": pd.Timestamp(row.timestamp).isoformat(), "open": row.open, "high": row.high,
                     "low": row.low, "close": row.close, "volume": row.volume, "amount": row.amount})
    return rows


class ServiceProcess:
    """`python -m kronos_rolling.cli serve ...` on a free port of 127.0.0.1."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, log_path: Path | None = None,
                 cwd: Path | None = None):
        self.port = free_port()
        self.cwd = cwd or REPO_ROOT
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "kronos_rolling.cli", "serve", "--host", "127.0.0.1",
                     "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="kronos-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "ServiceProcess":
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=self.cwd, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service did not answer /health within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: it and its children
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()
        self.process = None

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- what a version should answer --------------------------------------------------------


def make_data_dir(folder: Path, event_at: list[pd.Timestamp]) -> Path:
    """A data folder with an asset-class override and global events at `event_at`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "asset_classes.csv").write_text("symbol,asset_class\nMYCOIN,crypto\n")
    lines = ["timestamp,event_type,symbol,asset_class"]
    for i, stamp in enumerate(event_at):
        lines.append(f"{pd.Timestamp(stamp).isoformat()},{list(EVENT_VOCAB)[i % len(EVENT_VOCAB)]},,")
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    return folder


def expected_forecast(base_dir: Path, version_seed: int | None, frame: pd.DataFrame, pred_len: int, *, symbol: str,
                      asset_class: str, data_dir: Path, label: str = "crypto", **sampling) -> pd.DataFrame:
    """The forecast the version built from `version_seed` (None: the bare base) gives, computed here."""
    from kronos_rolling.data.events import EventVocabulary
    from kronos_rolling.model.forecast import Forecaster
    from kronos_rolling.model.lora import load_adapter_bundle
    from kronos_rolling.model.tokenizer import KronosTokenizer

    tokenizer = KronosTokenizer.from_pretrained(Path(base_dir) / "tokenizer")
    model = Kronos.from_pretrained(Path(base_dir) / "predictor")
    if version_seed is None:
        return Forecaster(model, tokenizer, device="cpu").forecast(frame, pred_len, asset_class=asset_class,
                                                                   **sampling).mean
    with tempfile.TemporaryDirectory() as folder:
        bundle = build_bundle(base_dir, Path(folder) / "bundle", version_seed, label=label)
        peft_model, events, vocab = load_adapter_bundle(model, bundle)
    ids = DataStore(data_dir).events().forecast_event_ids(symbol, asset_class, frame["timestamp"], pred_len,
                                                          EventVocabulary.from_dict(vocab))
    forecaster = Forecaster(peft_model, tokenizer, device="cpu", event_embedding=events)
    return forecaster.forecast(frame, pred_len, event_ids=ids, asset_class=asset_class, **sampling).mean


class InProcessService:
    """The same app, served by uvicorn on a thread of this process (no second start-up of torch)."""

    def __init__(self, environ: dict[str, str]):
        import uvicorn

        from kronos_rolling.serve.app import create_app
        from kronos_rolling.serve.http import server_config
        from kronos_rolling.serve.service import PredictorService
        settings = load_settings(environ).serve
        self.service = PredictorService(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(create_app(self.service), settings, host="127.0.0.1",
                                                   port=self.port, log_level="warning"))
        self.thread = None

    def __enter__(self) -> "InProcessService":
        import threading

        self.thread = threading.Thread(target=self.server.run, name="in-process-service", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def mlflow_model_server(command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                        timeout: float = 180.0):
    """Run `command` (an `mlflow models serve ... --port port`) until /ping answers; stop it and its children after.

    mlflow execs `uvicorn` by name: the interpreter's scripts folder goes on PATH, as after `export PATH`.
    """
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, Path(log_path).read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not come up"
            time.sleep(0.5)
        yield server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
