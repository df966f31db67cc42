"""Real parts shared by the registry tests.

- `register_stand_in`: a model version made the way training makes one: an MLflow run
  that logs a file, a logged model holding a small adapter bundle (safetensors + metadata),
  registered by its `models:/` URI with its file digests. It stands in for the pyfunc
  version; the registry lifecycle only verifies its files (tracking/integrity.py).
- `FaultProxy`: a real HTTP proxy in front of the tracking server that fails chosen
  requests (503) a chosen number of times, to produce real transient failures.
- `Receiver`: a real webhook receiver that records JSON bodies and can fail the first N.
"""

from __future__ import annotations

import math

import json
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import requests
from mlflow import MlflowClient

from kronos_rolling.evaluation.compare import Difference
from kronos_rolling.registry.guard import EvalFigures, decide_promotion
from kronos_rolling.names import registered_model_name
from kronos_rolling.settings import Thresholds


def register_stand_in(client: MlflowClient, asset_class: str, *, adapter_bytes: int = 4096,
                      experiment: str = "registry-tests", label: str | None = None, nan: bool = False,
                      class_tag: str | None = None, calibration: dict | None = None):
    """Train-run stand-in: a run (params, metrics, a plot, the bundle as its `adapter` artifact) + a
    logged model holding a small adapter bundle (a safetensors file of
    `adapter_bytes` bytes of finite weights, or NaN ones with `nan`, and metadata.json saying it was
    trained for `label`, default the class; `calibration`: a calibration.json's content), registered
    the way training registers a version: by
    its `models:/` URI, with the `asset_class` tag (`class_tag`, default the class) and the sha256
    of every file."""
    import torch
    from safetensors.torch import save_file

    from kronos_rolling.tracking.pyfunc import register_adapter_model

    name = registered_model_name(asset_class)
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_experiment(experiment)
    weights = torch.randn(max(1, adapter_bytes // 4), generator=torch.Generator().manual_seed(adapter_bytes))
    if nan:
        weights[::2] = float("nan")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as folder:
        mlflow.log_text(json.dumps({"asset_class": asset_class}), "metadata.json")
        mlflow.log_params({"asset_class": asset_class, "lookback": 32})
        mlflow.log_metrics({"val_mae": 0.01 * adapter_bytes ** 0.5, "train_loss": 1.0})
        mlflow.log_text("a forecast plot's bytes", "plots/forecast.png")
        model = mlflow.initialize_logged_model(name="adapter", source_run_id=run.info.run_id)
        save_file({"lora_A": weights}, str(Path(folder, "adapter_model.safetensors")))
        Path(folder, "metadata.json").write_text(json.dumps({"label": label or asset_class}))
        if calibration is not None:  # the bundle's calibration.json, as training writes it
            Path(folder, "calibration.json").write_text(json.dumps(calibration))
        mlflow.log_artifacts(folder, "adapter")  # the run's copy of the bundle, as training logs it
        client.log_model_artifacts(model.model_id, folder)
        mlflow.finalize_logged_model(model.model_id, "READY")
    return register_adapter_model(client, name, f"models:/{model.model_id}", run.info.run_id,
                                  tags={"asset_class": class_tag or asset_class}, description="",
                                  await_s=60)


def figures(mae: float, sharpe: float = 0.5, version: str | None = None, skill: float = 0.1) -> EvalFigures:
    """A model's figures; `skill` sets its val_mae against no change, measured to +/- 0.001
    (so a negative skill is significantly worse than no change)."""
    persistence = mae / (1 - skill) if math.isfinite(mae) and skill < 1 else math.nan
    against = mae - persistence
    vs_persistence = Difference("val_mae", against, against - 0.001, against + 0.001, 100, 0.9, horizons=10, dof=4)
    return EvalFigures(val_mae=mae, val_sharpe=sharpe, val_mae_skill=skill, origins=100, version=version,
                       vs_persistence=vs_persistence)


def difference(first: EvalFigures | None, second: EvalFigures | None, *, width: float = 0.001,
               origins: int = 100, horizons: float = 10.0) -> Difference | None:
    """first - second in val_mae, with an interval of +/- width resting on `horizons`
    non-overlapping horizons (what the evaluation would measure)."""
    if first is None or second is None:
        return None
    mean = first.val_mae - second.val_mae
    if horizons < 2.5:  # as paired_difference: too little data for an interval
        return Difference("val_mae", mean, math.nan, math.nan, origins, 0.9,
                          f"{horizons:.1f} non-overlapping horizons of data; an interval needs 2.5", horizons)
    return Difference("val_mae", mean, mean - width, mean + width, origins, 0.9, horizons=horizons,
                      dof=int(horizons // 2.5))


def judge(candidate: EvalFigures, pooled: EvalFigures | None, production: EvalFigures | None = None,
          base: EvalFigures | None = None, thresholds: Thresholds = Thresholds(), evidence_months: int = 1, **kw):
    """The guard's decision on figures whose differences are measured with `kw` (width, origins, horizons)."""
    sharpe = None
    if production is not None:  # the cadence's measure: the Sharpe change against production, +/- 0.01
        change = candidate.val_sharpe - production.val_sharpe
        sharpe = Difference("val_sharpe", change, change - 0.01, change + 0.01, 25, 0.9)
    return decide_promotion(candidate, pooled=pooled, production=production, base=base,
                            vs_pooled=difference(candidate, pooled, **kw),
                            vs_production=difference(candidate, production, **kw),
                            vs_base=difference(candidate, base, **kw), sharpe_change=sharpe, thresholds=thresholds,
                            evidence_months=evidence_months)


def promote_decision(mae: float = 1.0, pooled_mae: float = 1.1):
    return judge(figures(mae), figures(pooled_mae))


def refuse_decision(mae: float = 1.2, pooled_mae: float = 1.1):
    return judge(figures(mae), figures(pooled_mae))


# ---- a proxy that fails chosen requests ------------------------------------------------

@dataclass
class FaultRule:
    method: str
    path_part: str
    body_part: str = ""
    failures: int = 1  # how many matching requests fail before they pass
    status: int = 503
    hits: int = 0  # matching requests seen (failed or passed)


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.rules: list[FaultRule] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                for rule in proxy.rules:
                    if (rule.method == self.command and rule.path_part in self.path
                            and rule.body_part.encode() in body):
                        rule.hits += 1
                        if rule.hits <= rule.failures:
                            self.send_response(rule.status)
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                answer = requests.request(self.command, proxy.upstream + self.path,
                                          data=body, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                           "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def fail(self, method: str, path_part: str, body_part: str = "", failures: int = 1,
             status: int = 503) -> FaultRule:
        rule = FaultRule(method, path_part, body_part, failures, status)
        self.rules.append(rule)
        return rule

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- a webhook receiver -------------------------------------------------------------------

@dataclass
class Receiver:
    fail_first: int = 0
    fail_status: int = 503
    bodies: list[dict] = field(default_factory=list)
    requests_seen: int = 0

    def __post_init__(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                receiver.requests_seen += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.requests_seen <= receiver.fail_first:
                    self.send_response(receiver.fail_status)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
