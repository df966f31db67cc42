"""The monthly job against a real tracking server: what a run records, what a version is,
and how the steps refuse to leave half-done work behind."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from support.training import job_context, small_config, small_eval

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import RegistryError
from kronos_rolling.tracking.integrity import IntegrityError
from kronos_rolling.locks import training_lock
from kronos_rolling.pipeline.job import monthly_job
from kronos_rolling.pipeline.steps import TrainOutcome, register_step
from kronos_rolling.tracking.adapters import default_warm_start, fetch_adapter
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.runs import COMPLETE_TAG
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A registry of this module's own: the tests below read what the first jobs wrote."""
    with TrackingServer(ServerConfig.embedded(tmp_path_factory.mktemp("pipeline-server"), port=free_port())) as srv:
        yield srv


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("kronos-home")


@pytest.fixture
def env(server, home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("KRONOS_HOME", str(home))
    mlflow.set_tracking_uri(server.url)
    yield MlflowClient(server.url)
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def jobs(server, home, tiny_base):
    """The pooled adapter (as of 2018-01-01), which an operator then puts in @production whatever
    the guard said (two epochs on a random tiny base rarely differ measurably from it), then
    crypto's first monthly retrain, which warm-starts from it."""
    from kronos_rolling.registry.promotion import promote

    mp = pytest.MonkeyPatch()
    mp.setenv("KRONOS_HOME", str(home))
    # These runs last seconds; MLflow samples system metrics every 10 s by default.
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    ctx = job_context(server.url, KRONOS_HOME=str(home))
    try:
        pooled = monthly_job(small_config(tiny_base, mode="pooled", as_of="2018-01-01"), ctx,
                             eval_settings=small_eval(), progress=False)
        promote(ctx.client, "kronos-lora-pooled", "1", "test set-up: a pooled production", lock_dir=ctx.lock_dir)
        crypto = monthly_job(small_config(tiny_base, as_of="2018-02-01"), ctx, eval_settings=small_eval(),
                             progress=False)
    finally:
        mp.undo()
    return {"pooled": pooled, "crypto": crypto}


EPOCH_METRICS = {"train_loss", "val_loss", "lr", "bars_per_second"}


def test_the_pooled_adapter_is_judged_against_the_bare_base(jobs, env):
    pooled = jobs["pooled"]
    assert pooled.version == "1"
    outcome, decision = pooled.outcome, pooled.decision
    assert {"candidate", "base"} <= set(outcome.evaluation.models)
    assert decision.reference == "base"
    # Significantly better, or not promoted: a tie, noise or no evidence keeps the base.
    difference = decision.vs_reference
    assert difference.metric == "val_mae" and difference.has_interval, difference
    assert difference.mean == pytest.approx(outcome.figures("candidate").val_mae - outcome.figures("base").val_mae)
    assert decision.promote == (difference.hi < 0) and decision.evidence is difference
    version = env.get_model_version("kronos-lora-pooled", "1")
    assert version.tags["guard_decision"] == decision.outcome
    assert float(version.tags["decision_horizons"]) == pytest.approx(difference.horizons, rel=1e-5)
    figures = json.loads(open(env.download_artifacts(version.run_id, "guard/decision.json")).read())["tags"]
    assert float(figures["base_val_mae"]) == pytest.approx(outcome.figures("base").val_mae, rel=1e-5)
    lo, hi = float(version.tags["vs_reference_diff_lo"]), float(version.tags["vs_reference_diff_hi"])
    assert lo < float(version.tags["vs_reference_diff"]) < hi


def test_a_rolling_run_records_everything_the_guard_and_operators_need(jobs, env):
    crypto = jobs["crypto"]
    run = env.get_run(crypto.outcome.run_id)
    params = run.data.params
    for key in ("asset_class", "as_of", "train_start", "train_end", "val_start", "val_end", "symbols",
                "base_model", "base_digest", "warm_start", "warm_start_version", "lr", "epochs", "batch_size",
                "lookback", "horizon", "lora_rank", "lora_alpha", "lora_targets", "seed", "code_version"):
        assert key in params, f"param {key} missing"
    assert params["asset_class"] == "crypto" and params["as_of"] == "2018-02-01"
    assert params["val_start"].startswith("2018-01-01") and params["val_end"].startswith("2018-02-01")
    assert params["train_end"] == params["val_start"], "training must end where validation starts"
    assert set(params["symbols"].split(",")) == set(DataStore().symbols_for("crypto"))
    assert params["lr"] == "5e-05" and params["epochs"] == "2" and params["precision"] == "float32"

    for key in EPOCH_METRICS:
        history = env.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    metrics = run.data.metrics
    for model in ("", "pooled_", "base_"):
        for figure in ("val_mae", "val_nll", "val_crps", "val_mae_skill", "val_sharpe"):
            assert np.isfinite(metrics[model + figure]), model + figure
    for key in ("persistence_val_mae", "persistence_val_crps", "buyhold_val_sharpe",
                "vs_pooled_mae_diff", "vs_pooled_mae_diff_lo", "vs_pooled_mae_diff_hi", "vs_pooled_nll_diff"):
        assert np.isfinite(metrics[key]), key
    assert metrics["vs_pooled_mae_diff_lo"] <= metrics["vs_pooled_mae_diff"] <= metrics["vs_pooled_mae_diff_hi"]
    # Two epochs at the phase's LR on 64 samples: the sampled forecasts may not move, the likelihood does.
    assert metrics["vs_pooled_nll_diff"] != 0
    assert metrics["val_mae_skill"] == pytest.approx(1 - metrics["val_mae"] / metrics["persistence_val_mae"])
    assert params["eval_samples"] == str(small_eval().samples) and params["eval_cost"] == str(small_eval().cost)
    assert int(params["eval_origins"]) == small_eval().max_origins < int(params["eval_origins_in_span"])
    assert any(key.startswith("system/") for key in metrics), "no system metrics logged"

    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest
    assert inputs[0].tags[0].value == "training"
    assert run.data.tags[COMPLETE_TAG] == "true"

    files = {a.path for a in env.list_artifacts(run.info.run_id, "adapter")}
    assert {f"adapter/{n}" for n in ("adapter_config.json", "adapter_model.safetensors",
                                     "event_embedding.safetensors", "event_vocab.json", "metadata.json")} <= files
    plots = {a.path for a in env.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/forecast_vs_actual.png", "plots/equity_curve.png", "plots/loss_differences.png",
                     "plots/pit.png"}
    metadata = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/metadata.json"))
    for key in ("train_start", "train_end", "val_sharpe", "val_mae", "val_nll", "base", "figures",
                "compared_versions"):
        assert key in metadata
    assert metadata["val_mae"] == pytest.approx(metrics["val_mae"])


def test_distributions_are_scored_against_the_naive_baseline_and_a_version_carries_its_calibration(jobs, env,
                                                                                                  tmp_path):
    """naive beside every model (val_crps_skill, coverage, paired differences); the candidate's
    calibration fitted on its validation month, stored in its bundle (a file its sha256 tags cover)
    and described on the version; pooled's calibration, fitted on December, scored out of sample
    on January and its served state recorded on pooled v1."""
    crypto = jobs["crypto"]
    metrics = env.get_run(crypto.outcome.run_id).data.metrics
    for key in ("naive_val_crps", "naive_val_coverage_80", "val_crps_skill", "pooled_val_crps_skill",
                "base_val_crps_skill", "vs_naive_crps_diff", "vs_naive_crps_diff_lo", "vs_naive_crps_diff_hi",
                "vs_naive_mae_diff", "calibrated_val_coverage_80", "pooled_served_val_coverage_80"):
        assert np.isfinite(metrics[key]), key
    for level in ("50", "80", "90"):
        for model in ("", "pooled_", "base_", "naive_"):
            assert 0 <= metrics[f"{model}val_coverage_{level}"] <= 1 and f"{model}val_coverage_{level}_steps" in metrics
    assert metrics["val_crps_skill"] == pytest.approx(1 - metrics["val_crps"] / metrics["naive_val_crps"])
    assert metrics["vs_naive_crps_diff"] == pytest.approx(metrics["val_crps"] - metrics["naive_val_crps"], abs=1e-9)
    assert "served_val_coverage_80" not in metrics  # the candidate's calibration is in sample here

    calibration = crypto.outcome.calibration
    assert set(calibration.classes) == {"crypto"} and calibration.fitted_on == ("2018-01-01", "2018-02-01")
    assert metrics["calibrated_val_coverage_80"] == pytest.approx(0.8, abs=0.06)
    version = env.get_model_version("kronos-lora-crypto", crypto.version)
    assert version.tags["calibration"].startswith("crypto: fitted on 120 outcomes of 2018-01-01..2018-02-01")
    assert "sha256.artifacts/adapter/calibration.json" in version.tags  # covered by the version's digests
    source = fetch_adapter(f"models:/kronos-lora-crypto/{crypto.version}", Tracking.connect(env.tracking_uri),
                           tmp_path / "download")
    stored = json.loads((source.bundle_dir / "calibration.json").read_text())
    assert stored["fitted_on"] == {"start": "2018-01-01", "end": "2018-02-01"} and list(stored["classes"]) == ["crypto"]

    pooled = env.get_model_version("kronos-lora-pooled", "1")
    assert "equity: not fitted, serves uncalibrated" in pooled.tags["calibration"]
    served = pooled.tags["calibration_served.crypto"]
    assert served in ("true", "false") and "out of sample on 2018-01-01..2018-02-01" in \
        pooled.tags["calibration_reason.crypto"]
    [check] = [c for c in crypto.calibration if c.registered_model == "kronos-lora-pooled"]
    assert check.asset_class == "crypto" and check.decision.served == (served == "true")
    from kronos_rolling.registry.history import read_history

    withheld = [e for e in read_history(env, "kronos-lora-pooled") if e.action == "calibration"]
    assert len(withheld) == (0 if served == "true" else 1)  # an audit entry when the served state changes


def test_the_first_version_of_a_class_warm_starts_from_pooled_and_is_compared_with_it(jobs, env):
    crypto = jobs["crypto"]
    assert crypto.outcome.warm_start == "kronos-lora-pooled v1"
    # No class production yet; the warm start is pooled v1, evaluated once under both names.
    assert crypto.outcome.compared_versions == {"pooled": "1", "warm_start": "1"}
    evaluation = crypto.outcome.evaluation
    np.testing.assert_array_equal(evaluation.scores("warm_start").nll, evaluation.scores("pooled").nll)
    assert crypto.decision.reference == "pooled" and crypto.decision.production is None
    version = env.get_model_version("kronos-lora-crypto", crypto.version)
    tags = version.tags
    assert tags["asset_class"] == "crypto" and tags["train_window"] == "2016-01-01/2018-01-01"
    assert tags["guard_decision"] == crypto.decision.outcome
    assert float(tags["val_mae"]) == pytest.approx(crypto.outcome.figures("candidate").val_mae, rel=1e-5)
    assert crypto.decision.reason in version.description
    # One sentence on the training (window and figures), then the guard's dated decision, linking its figures.
    assert version.description.startswith("Trained on 2016-01-01/2018-01-01, as of 2018-02-01; val_mae ")
    assert version.description.count("\n\nGuard, ") == 1
    assert f"`runs:/{version.run_id}/guard/decision.json`" in version.description
    aliases = env.get_registered_model("kronos-lora-crypto").aliases
    assert aliases.get("production" if crypto.promoted else "staging") == crypto.version


def test_warm_start_prefers_the_class_then_pooled(jobs, env):
    expected = "crypto" if jobs["crypto"].promoted else "pooled"
    assert default_warm_start("crypto", env) == f"models:/kronos-lora-{expected}@production"
    assert default_warm_start("equity", env) == "models:/kronos-lora-pooled@production"


def test_a_version_weighs_a_small_fraction_of_its_base_and_refers_to_it(jobs, env, tiny_base, tmp_path):
    crypto = jobs["crypto"]
    source = fetch_adapter(f"models:/kronos-lora-crypto/{crypto.version}", Tracking.connect(env.tracking_uri),
                           tmp_path)
    assert source.metadata["base"]["predictor_digest"], "the base is referenced by digest"
    assert not any(p.name == "model.safetensors" for p in source.bundle_dir.rglob("*")), "base weights copied"


def test_the_registered_version_forecasts_as_a_pyfunc(jobs, env):
    version = jobs["crypto"].version
    model = mlflow.pyfunc.load_model(f"models:/kronos-lora-crypto/{version}")
    bars = DataStore().load("BTCUSD").iloc[-64:].reset_index(drop=True)
    bars["timestamp"] = bars["timestamp"].dt.tz_localize(None)
    out = model.predict(bars, params={"pred_len": 5, "seed": 3})
    assert list(out.columns[:5]) == ["timestamp", "open", "high", "low", "close"]
    assert len(out) == 5 and np.isfinite(out[["open", "high", "low", "close"]].to_numpy()).all()
    assert out["timestamp"].iloc[0] == bars["timestamp"].iloc[-1] + pd.Timedelta(hours=1)
    again = model.predict(bars, params={"pred_len": 5, "seed": 3})
    pd.testing.assert_frame_equal(out, again)
    assert model.metadata.signature.params is not None


def test_the_registered_version_answers_calibrated_quantiles_and_says_so(jobs, env):
    """Any levels (`quantile_levels`), the old p10/p50/p90 form, at least 32 paths, the median as
    the point forecast, the version's calibration applied unless its tags withhold it."""
    version = jobs["crypto"].version
    bars = DataStore().load("BTCUSD").iloc[-64:].reset_index(drop=True)
    model = mlflow.pyfunc.load_model(f"models:/kronos-lora-crypto/{version}")
    out = model.predict(bars, params={"pred_len": 4, "seed": 3, "quantile_levels": [0.95, 0.05, 0.5]})
    assert (out["close_p5"] <= out["close_p50"]).all() and (out["close_p50"] <= out["close_p95"]).all()
    np.testing.assert_allclose(out["close_p50"], out["close"])  # the spread is calibrated, never the median
    assert set(out["calibration"]) == {f"applied: kronos-lora-crypto v{version}'s crypto calibration, fitted on "
                                       "2018-01-01..2018-02-01"}
    old = model.predict(bars, params={"pred_len": 4, "seed": 3, "quantiles": True})
    assert {"close_p10", "close_p50", "close_p90"} <= set(old.columns)
    np.testing.assert_allclose(old["close"], out["close"])  # both from the same 32 seeded paths
    assert (old["close_p90"] - old["close_p10"] < out["close_p95"] - out["close_p5"]).all()
    point = model.predict(bars, params={"pred_len": 4, "seed": 3})
    assert "calibration" not in point.columns and "close_p50" not in point.columns

    env.set_model_version_tag("kronos-lora-crypto", version, "calibration_served.crypto", "false")
    try:
        withheld = mlflow.pyfunc.load_model(f"models:/kronos-lora-crypto/{version}").predict(
            bars, params={"pred_len": 4, "seed": 3, "quantile_levels": [0.05, 0.5, 0.95]})
    finally:
        env.delete_model_version_tag("kronos-lora-crypto", version, "calibration_served.crypto")
    assert withheld["calibration"].iloc[0].startswith(f"not applied: kronos-lora-crypto v{version}: its crypto "
                                                      "calibration made coverage worse out of sample")
    assert (withheld["close_p95"] - withheld["close_p5"] != out["close_p95"] - out["close_p5"]).all()


def test_evaluation_is_deterministic_and_logged(jobs, env, home):
    from click.testing import CliRunner

    from kronos_rolling.cli.main import main

    uri = f"models:/kronos-lora-crypto/{jobs['crypto'].version}"
    args = ["evaluate", "--model", uri, "--asset-class", "crypto", "--as-of", "2018-02-01",
            "--eval-samples", "1", "--eval-max-origins", "24", "--tracking-uri", env.tracking_uri]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output

    def table(output):
        return [line for line in output.splitlines() if line.split() and line.split()[0] in
                ("model", "adapter", "pooled", "base", "persistence", "naive")
                and line.split()[1:2] != ["-"]]  # not a difference line ("adapter - pooled: ...")

    assert table(first.output) == table(second.output)
    assert [line.split()[0] for line in table(first.output)] == ["model", "adapter", "pooled", "base", "persistence",
                                                                 "naive"]
    assert "pooled (v1)" in first.output
    assert "adapter - pooled: val_mae " in first.output and "adapter - base: val_mae " in first.output
    run_id = [line for line in first.output.splitlines() if line.startswith("logged to run")][0].split()[-1]
    assert env.get_run(run_id).data.tags["kronos.evaluation_of"] == uri


def test_an_unfinished_run_cannot_be_registered(jobs, env):
    crypto = jobs["crypto"].outcome
    mlflow.set_experiment("kronos-rolling/crypto")
    with mlflow.start_run() as run:  # a training that died before its model was logged
        mlflow.log_param("asset_class", "crypto")
    before = len(env.search_model_versions("name='kronos-lora-crypto'"))
    broken = TrainOutcome(run.info.run_id, "crypto", crypto.config, crypto.window, crypto.model_uri,
                          crypto.evaluation, crypto.compared_versions, crypto.fit, crypto.warm_start)
    with pytest.raises(RegistryError, match="did not finish"):
        register_step(broken, job_context(env.tracking_uri))
    assert len(env.search_model_versions("name='kronos-lora-crypto'")) == before


def test_a_second_training_with_no_wait_exits_75(env, tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOS_LOCK_DIR", str(tmp_path / "locks"))
    with training_lock(tmp_path / "locks", job="a test holding the device"):
        result = subprocess.run(
            [sys.executable, "-m", "kronos_rolling.cli", "train", "rolling", "--asset-class", "crypto",
             "--as-of", "2018-03-01", "--base-model", str(tiny_base), "--no-wait", "--no-progress",
             "--epochs", "1", "--max-samples-per-epoch", "16", "--lookback", "16", "--horizon", "4"],
            capture_output=True, text=True, timeout=300,
        )
    assert result.returncode == 75, result.stderr[-2000:]
    assert "training lock" in result.stderr and "a test holding the device" in result.stderr


def test_mlflow_models_serve_answers_with_the_production_version(jobs, env, tmp_path):
    import requests
    from support.serve import mlflow_model_server

    from kronos_rolling.tracking.server import free_port

    alias = "production" if jobs["crypto"].promoted else "staging"
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/kronos-lora-crypto@{alias}",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with mlflow_model_server(command, port, tmp_path / "serve.log", env={"MLFLOW_TRACKING_URI": env.tracking_uri}):
        bars = DataStore().load("BTCUSD").iloc[-64:].reset_index(drop=True)
        bars["timestamp"] = bars["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
        body = {"dataframe_split": bars.to_dict(orient="split"), "params": {"pred_len": 3, "seed": 1}}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert len(rows) == 3 and all(np.isfinite(r["close"]) for r in rows)
    assert rows[0]["timestamp"].startswith("2019-10-17T10:00")


def test_a_version_of_kronos_base_weighs_under_5_percent_of_the_base(jobs, env, tmp_path):
    """The LoRA bundle of a Kronos-base-sized model, plus the MLflow files around a version."""

    from kronos_rolling.model.config import MODEL_SIZES, LoraSettings
    from kronos_rolling.model.events import EventEmbedding
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.lora import attach_lora, save_adapter_bundle

    base = Kronos.from_config(MODEL_SIZES["base"].predictor)
    base_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    bundle = save_adapter_bundle(attach_lora(base, LoraSettings()), EventEmbedding(8, base.d_model), {"fomc": 1},
                                 tmp_path / "bundle")
    bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    # Everything else a registered version holds (MLmodel, environment files, signature,
    # input example, metadata.json), measured on the tiny version registered above.
    version_dir = Path(mlflow.artifacts.download_artifacts(f"models:/kronos-lora-crypto/{jobs['crypto'].version}",
                                                           dst_path=str(tmp_path / "v")))
    adapter_dir = next(version_dir.rglob("adapter_config.json")).parent
    overhead = sum(p.stat().st_size for p in version_dir.rglob("*")
                   if p.is_file() and adapter_dir not in p.parents)
    ratio = (bundle_bytes + overhead) / base_bytes
    assert base_bytes > 350e6, "not a Kronos-base-sized model"
    assert ratio < 0.05, f"a version would weigh {ratio:.1%} of the base"


def test_a_job_that_cannot_start_alerts_and_names_the_problem(env, tmp_path, monkeypatch):
    from support.registry import Receiver

    with Receiver() as receiver:
        monkeypatch.setenv("KRONOS_ALERT_WEBHOOK", receiver.url)
        result = subprocess.run(
            [sys.executable, "-m", "kronos_rolling.cli", "run", "--asset-class", "crypto", "--as-of", "2018-03-01",
             "--base-model", str(tmp_path / "no-such-base"), "--no-progress"],
            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no-such-base" in result.stderr and "Traceback" not in result.stderr
    assert len(receiver.bodies) == 1
    alert = receiver.bodies[0]["kronos"]
    assert alert["event"] == "job_failed"
    assert alert["fields"]["asset_class"] == "crypto" and alert["fields"]["as_of"] == "2018-03-01"
    assert "no-such-base" in alert["fields"]["error"]


def test_a_worse_candidate_is_refused_alerted_and_the_job_still_exits_0(jobs, env, home, tiny_base, tmp_path,
                                                                        monkeypatch):
    """The guard's refusal through the real command: a warm start with loud noise in its LoRA weights."""
    from support.registry import Receiver

    from kronos_rolling.pipeline.replay import sabotage

    production_before = env.get_registered_model("kronos-lora-crypto").aliases.get("production")
    bad = sabotage("models:/kronos-lora-pooled@production", Tracking.connect(env.tracking_uri), tmp_path, seed=3)
    with Receiver() as receiver:
        monkeypatch.setenv("KRONOS_ALERT_WEBHOOK", receiver.url)
        result = subprocess.run(
            [sys.executable, "-m", "kronos_rolling.cli", "run", "--asset-class", "crypto", "--as-of", "2018-03-01",
             "--base-model", str(tiny_base), "--warm-start", str(bad), "--epochs", "1", "--lookback", "16",
             "--horizon", "4", "--max-samples-per-epoch", "32", "--eval-samples", "2", "--eval-max-origins", "120",
             "--no-progress", "--tracking-uri", env.tracking_uri],
            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]  # a refusal is a decision, not a failure
    [new] = [v for v in env.search_model_versions("name='kronos-lora-crypto'") if v.tags.get("as_of") == "2018-03-01"]
    # Worse than pooled on average (the planted truth); significantly so or not, it is refused.
    assert new.tags["guard_decision"] == "refused" and float(new.tags["vs_reference_diff"]) > 0
    assert new.tags["guard_reason"].startswith(("is worse than the pooled", "does not beat the pooled"))
    aliases = env.get_registered_model("kronos-lora-crypto").aliases
    assert aliases["staging"] == new.version and aliases.get("production") == production_before
    assert "guard_refused" in {body["kronos"]["event"] for body in receiver.bodies}


def test_a_stale_production_is_withdrawn_by_the_monthly_check_and_rollback_still_works(jobs, env, home, tiny_base,
                                                                                      pretrained_base, tmp_path):
    """An operator forces a version on the random tiny base into @production, while pooled moves to
    an adapter on a pre-trained base: the planted truth is a production far worse than its fallback.
    The next month's job is not due, yet its incumbent check (an evaluation-only run) withdraws it,
    and the predictor's chain falls back to pooled. A rollback then puts a chosen version back."""
    from support.registry import Receiver

    from kronos_rolling.registry.history import read_history
    from kronos_rolling.registry.promotion import alias_state, promote, rollback

    ctx = job_context(env.tracking_uri, KRONOS_HOME=str(home))
    pooled = monthly_job(small_config(pretrained_base, mode="pooled", as_of="2018-01-01", epochs=1), ctx,
                         warm_start=None, eval_settings=small_eval(), check_due=False, progress=False)
    promote(env, "kronos-lora-pooled", pooled.version, "test set-up: pooled on a pre-trained base",
            lock_dir=ctx.lock_dir)
    forced = monthly_job(small_config(tiny_base, as_of="2018-05-01", epochs=1), ctx, warm_start=None,
                         eval_settings=small_eval(), check_due=False, progress=False)
    before = alias_state(env, "kronos-lora-crypto")
    promote(env, "kronos-lora-crypto", forced.version, "operator override (test)", lock_dir=ctx.lock_dir)

    with Receiver() as receiver:
        checking = job_context(env.tracking_uri, KRONOS_HOME=str(home), KRONOS_ALERT_WEBHOOK=receiver.url)
        result = monthly_job(small_config(tiny_base, as_of="2018-05-20"), checking, eval_settings=small_eval(),
                             progress=False)
    assert not result.due, "May already retrained: the cadence says not due"
    check = result.incumbent
    assert check.decision is not None and check.decision.withdraw, check.note
    assert "vs pooled's" in check.decision.reason and "worse, and significantly" in check.decision.reason
    assert check.decision.difference.lo > 0 and check.decision.fallback_name == "pooled"
    assert check.evaluation.span == (pd.Timestamp("2018-05-01", tz="UTC"), pd.Timestamp("2018-05-20", tz="UTC"))
    run = env.get_run(check.run_id)
    assert run.data.tags["kronos.run_kind"] == "incumbent_check" and run.data.tags["incumbent_decision"] == "withdrawn"
    assert env.get_experiment(run.info.experiment_id).name == "kronos-rolling/crypto/evaluations", \
        "incumbent checks apart from the retrains"
    assert "train_loss" not in run.data.metrics and "production_val_mae" not in run.data.metrics
    assert run.data.metrics["val_mae"] > 1.1 * run.data.metrics["pooled_val_mae"]  # production's, unprefixed
    state = alias_state(env, "kronos-lora-crypto")
    assert state.production is None and state.previous_production == forced.version
    assert env.get_model_version("kronos-lora-crypto", forced.version).tags["withdrawn_reason"].startswith(
        "incumbent check: ")
    assert default_warm_start("crypto", env) == "models:/kronos-lora-pooled@production", "falls back to pooled"
    assert read_history(env, "kronos-lora-crypto")[-1].action == "withdraw"
    [alert] = [b["kronos"] for b in receiver.bodies if b["kronos"]["event"] == "withdrawn"]
    assert alert["fields"]["version"] == forced.version

    target = before.production or forced.version
    move = rollback(env, "crypto", target, reason="back after the withdrawal (test)", lock_dir=ctx.lock_dir)
    assert move.to_version == target and alias_state(env, "kronos-lora-crypto").production == target


def test_a_job_removes_the_folders_it_downloads_into_on_success_and_on_failure(jobs, env, home, tiny_base, server,
                                                                              tmp_path, monkeypatch):
    """Warm starts and reference models are downloaded into a folder of the job's own, gone when it ends."""
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))  # where mkdtemp and TemporaryDirectory put folders
    ctx = job_context(env.tracking_uri, KRONOS_HOME=str(home))
    warm_start = "models:/kronos-lora-crypto/1"
    trained = monthly_job(small_config(tiny_base, as_of="2018-07-01", epochs=1), ctx, warm_start=warm_start,
                          eval_settings=small_eval(), check_due=False, progress=False)
    assert trained.version and trained.outcome.compared_versions  # it downloaded its references
    checked = monthly_job(small_config(tiny_base, as_of="2018-07-15"), ctx, eval_settings=small_eval(),
                          progress=False)
    assert not checked.due and checked.incumbent is not None  # the incumbent check downloaded production
    assert sorted(p.name for p in system_temp.iterdir()) == []

    # A job that fails after its download: the warm start fails verification.
    model_id = env.get_model_version("kronos-lora-crypto", "1").source.rsplit("/", 1)[-1]
    [stored] = [p for p in Path(server.config.artifacts_destination).rglob("metadata.json")
                if model_id in str(p) and "adapter" in p.parts]
    original = stored.read_bytes()
    stored.write_bytes(original + b" ")
    try:
        with pytest.raises(IntegrityError, match="metadata.json does not match the sha256 recorded"):
            monthly_job(small_config(tiny_base, as_of="2018-08-01", epochs=1), ctx, warm_start=warm_start,
                        eval_settings=small_eval(), check_due=False, progress=False)
    finally:
        stored.write_bytes(original)
    assert sorted(p.name for p in system_temp.iterdir()) == []
