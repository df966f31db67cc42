"""The replay of past months: its decisions on tables, and a short real replay."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pytest
import pandas as pd
from mlflow import MlflowClient
from support.training import job_context

from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.pipeline.replay import (
    REPORT_COLUMNS,
    SimulationSettings,
    log_report,
    simulate,
)

UNATTENDED, REFUSED, QUARTERLY = ("3 consecutive months without intervention", "guard refused a worse candidate",
                                  "cadence switched to quarterly")


EXACT, DELETED = "exactly the last 6 versions kept (plus aliased)", "retention deleted versions beyond the last 6"


def test_a_short_replay_on_real_data(tracking_uri, clean_registry, pretrained_base, kronos_home, tmp_path):
    settings = SimulationSettings(epochs=1, pooled_epochs=1, max_samples_per_epoch=32, pooled_max_samples_per_epoch=32,
                                  eval_samples=2, eval_max_origins=64, lookback=16, horizon=4)
    lines = []
    started_ms = int(time.time() * 1000)
    ctx = job_context(tracking_uri)
    report = simulate(ctx, BaseModelRef.resolve(str(pretrained_base)), "2018-01", 2,
                      classes=["crypto", "forex_commodity"], settings=settings, drill_months=("2018-02",),
                      echo=lines.append)
    frame = report.frame()
    assert list(zip(frame["month"], frame["asset_class"])) == [
        ("2018-01", "crypto"), ("2018-01", "forex_commodity"), ("2018-02", "crypto"), ("2018-02", "forex_commodity")]
    crypto = frame[frame["asset_class"] == "crypto"]
    assert list(crypto["action"]) == ["trained", "trained"] and list(crypto["version"]) == ["1", "2"]
    assert set(crypto["decision"]) <= {"promoted", "refused", "withdrawn"}  # a month of hourly BTC decides
    for column in ("candidate_val_mae", "candidate_val_nll", "warm_start_val_nll",
                   "persistence_val_mae", "serving_val_mae"):
        assert crypto[column].notna().all(), column
    # Pooled figures exist exactly when the guard promoted the pooled adapter (it may refuse it:
    # on these few samples pooled and the bare base are close, and a tie or a loss never promotes).
    pooled_promoted = any(line.startswith("  pooled v1: promoted") for line in lines)
    assert crypto["pooled_val_mae"].notna().all() if pooled_promoted else crypto["pooled_val_mae"].isna().all()
    # The reference is what the predictor falls back to; every decision records its comparison.
    assert set(crypto["reference"]) == {"pooled" if pooled_promoted else "base"}
    assert crypto["reference_val_mae"].notna().all()
    assert (crypto["decision_diff_lo"] <= crypto["decision_diff"]).all()
    assert (crypto["decision_diff"] <= crypto["decision_diff_hi"]).all()
    assert (crypto["decision_horizons"] >= 3).all() and (crypto["evidence_months"] == 1).all()
    assert crypto["run_id"].notna().all()
    # What serves after the job: the candidate when promoted, else production, else pooled or base.
    for row in crypto.itertuples():
        if row.decision == "promoted":
            assert row.serving_after == row.version and row.serving_val_mae == row.candidate_val_mae
        else:
            assert row.serving_after != row.version
    assert list(crypto["versions_kept"]) == ["1", "1,2"]
    assert crypto["aliased"].iloc[-1] in ("1,2", "2")  # v2 holds @staging or @production, v1 maybe @production
    forex = frame[frame["asset_class"] == "forex_commodity"]
    # EURUSD covers 2017 only: January 2018 is judged on December 2017; February has nothing to judge on.
    assert forex["action"].iloc[0] == "trained" and forex["action"].iloc[1] == "skipped"
    assert "the bundled data has no bars" in forex["reason"].iloc[1]
    assert any("pooled v1" in line for line in lines)
    # The drill month warm-started crypto from a sabotaged copy of what the job would have used.
    assert list(crypto["drill"]) == [False, True]
    # Distributions: the naive baseline, what serves scored on the month, and its 80% intervals as served
    # over the month after the job (out of sample; 64 origins a month fit no calibration: served = uncalibrated).
    assert crypto["naive_val_crps"].notna().all() and crypto["serving_val_crps"].notna().all()
    assert crypto["serving_coverage_80"].between(0, 1).all()
    assert (crypto["serving_coverage_80"] == crypto["serving_coverage_80_uncalibrated"]).all()
    # EURUSD has no bars in the months forex's versions served (2018): nothing measured there.
    assert frame.loc[frame["asset_class"] == "forex_commodity", "serving_coverage_80"].isna().all()
    assert list(report.coverage().index) == ["crypto"] and report.coverage().loc["crypto", "months"] == 2
    assert any("80% intervals as served covered" in line for line in lines)
    # The report file: the contract's columns first, one row per class and month, the new ones last.
    written = pd.read_csv(report.write_csv(tmp_path / "report.csv"))
    assert list(written.columns[:len(REPORT_COLUMNS)]) == list(REPORT_COLUMNS) and len(written) == 4
    assert list(written.columns[-4:]) == ["naive_val_crps", "serving_val_crps", "serving_coverage_80",
                                          "serving_coverage_80_uncalibrated"]
    assert set(report.summary()) == {
        "class-months where something worse than the fallback served", "promotions on ties",
        "candidates that beat pooled", "candidates whose val_nll equals their warm start's", "withdrawals"}
    [february] = [r for r in mlflow.search_runs(experiment_names=["kronos-rolling/crypto"], output_format="list",
                                                filter_string=f"attributes.start_time >= {started_ms}")
                  if r.data.params.get("as_of") == "2018-02-01"]
    assert february.data.params["warm_start"].endswith("sabotaged-adapter")
    # The forex window is shorter than two years: allowed, and recorded on the run.
    [forex_run] = mlflow.search_runs(experiment_names=["kronos-rolling/forex_commodity"], output_format="list",
                                     filter_string=f"attributes.start_time >= {started_ms}")
    assert forex_run.data.tags["window_shortfall"].startswith("EURUSD: covers ")
    assert "window_shortfall.json" in {a.path for a in MlflowClient().list_artifacts(forex_run.info.run_id)}
    # The base's pre-training ended before the validation month: recorded, and out-of-sample.
    assert forex_run.data.tags["base_pretrained_until"].startswith("2017-01-01")
    assert forex_run.data.tags["base_saw_validation_span"] == "false"

    run_id = log_report(report, "2018-01", 2, ctx.tracking)
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/simulation/criteria.json")
    assert set(logged) == set(report.criteria())
    names = {a.path for a in MlflowClient().list_artifacts(run_id, "simulation")}
    assert names == {"simulation/rows.json", "simulation/criteria.json", "simulation/summary.json",
                     "simulation/coverage.json", "simulation/val_mae.png"}


def test_daily_bars_at_a_long_horizon_wait_as_a_pending_challenger_then_decide_within_a_quarter(
        tracking_uri, clean_registry, pretrained_base, kronos_home):
    """Equity's daily indices at H=16: one month holds about 1.4 non-overlapping horizons (no
    interval), so the first candidate waits at @staging; the next months judge it again on the
    growing span instead of retraining, and the third month decides with an interval on more than
    min_horizons horizons. The audit trail shows each step."""
    from kronos_rolling.registry.history import read_history

    settings = SimulationSettings(epochs=1, pooled_epochs=1, max_samples_per_epoch=32, pooled_max_samples_per_epoch=32,
                                  eval_samples=2, lookback=16, horizon=16)
    report = simulate(job_context(tracking_uri), BaseModelRef.resolve(str(pretrained_base)), "2018-01", 3,
                      classes=["equity"], settings=settings, echo=lambda line: None)
    frame = report.frame()
    assert list(frame["action"]) == ["trained", "not_due", "not_due"]
    assert list(frame["decision"][:2]) == ["pending", "pending"] and frame["decision"].iloc[2] in (
        "promoted", "refused")
    assert list(frame["version"]) == ["1", "1", "1"] and list(frame["challenger"][1:]) == ["1", "1"]
    assert list(frame["evidence_months"]) == [1, 2, 3]
    first, second, third = frame["decision_horizons"]
    assert first < 2.5 and 2.5 <= second < 3 <= third, list(frame["decision_horizons"])
    # No interval on one month; an interval on two, but on fewer than min_horizons (3) horizons: still waiting.
    assert np.isnan(frame["decision_diff_lo"].iloc[0]) and frame["decision_diff_lo"].notna().iloc[1:].all()
    assert frame["decision_diff_lo"].iloc[2] < frame["decision_diff"].iloc[2] < frame["decision_diff_hi"].iloc[2]
    trail = [(e.action, e.to_version) for e in read_history(clean_registry, "kronos-lora-equity")]
    assert trail[:2] == [("pending", "1"), ("pending", "1")] and trail[2][0] in ("promote", "refuse")
    version = clean_registry.get_model_version("kronos-lora-equity", "1")
    assert version.tags["guard_decision"] == frame["decision"].iloc[2]
    assert float(version.tags["decision_horizons"]) == pytest.approx(third, rel=1e-4)
