"""The replay of past months: its decisions on tables, and a short real replay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import ConfigError
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.pipeline.replay import (
    MonthRow,
    SimulationReport,
    SimulationSettings,
    log_report,
    months_from,
    offline_tiny_base,
    simulate,
)


def test_months_are_calendar_months_from_the_start():
    assert [m.strftime("%Y-%m-%d") for m in months_from("2018-11", 3)] == ["2018-11-01", "2018-12-01", "2019-01-01"]
    assert months_from("2018-01-15", 1)[0] == pd.Timestamp("2018-01-01")
    with pytest.raises(ConfigError, match="YYYY-MM"):
        months_from("January", 2)
    with pytest.raises(ConfigError, match="--months"):
        months_from("2018-01", 0)


def _row(month, outcome, cadence="monthly", kept="1", aliased=""):
    return MonthRow(month, "crypto", outcome, cadence=cadence, versions_kept=kept, aliased=aliased)


UNATTENDED, REFUSED, QUARTERLY = ("3 consecutive months without intervention", "guard refused a worse candidate",
                                  "cadence switched to quarterly")
EXACT, DELETED = "exactly the last 6 versions kept (plus aliased)", "retention deleted versions beyond the last 6"


@pytest.mark.parametrize("rows, expected", [
    ([_row("2018-01", "promoted"), _row("2018-02", "refused"), _row("2018-03", "promoted", "quarterly")],
     {UNATTENDED: True, REFUSED: True, QUARTERLY: True, EXACT: True, DELETED: False}),
    ([_row("2018-01", "promoted"), _row("2018-02", "failed"), _row("2018-03", "promoted")],
     {UNATTENDED: False, REFUSED: False, QUARTERLY: False}),
    # Months where nothing retrained do not count as unattended work.
    ([_row("2018-01", "not due"), _row("2018-02", "no data"), _row("2018-03", "promoted")], {UNATTENDED: False}),
    # Ten versions, none deleted; then the newest six plus v2, which holds an alias.
    ([_row("2018-01", "promoted", kept="1,2,3,4,5,6,7,8,9,10")], {EXACT: False, DELETED: True}),
    ([_row("2018-01", "promoted", kept="2,5,6,7,8,9,10", aliased="2,10")], {EXACT: True, DELETED: True}),
    # An old version kept without an alias, or one of the newest six deleted: not exact.
    ([_row("2018-01", "promoted", kept="3,5,6,7,8,9,10", aliased="10")], {EXACT: False}),
    ([_row("2018-01", "promoted", kept="5,6,7,9,10", aliased="10")], {EXACT: False}),
])
def test_success_criteria_are_read_off_the_rows(rows, expected):
    criteria = SimulationReport(rows=rows).criteria()
    for name, value in expected.items():
        assert criteria[name] is value, name


def _fake_base(folder: Path, until: str, data_dir: Path):
    folder.mkdir(parents=True)
    (folder / "pretrain.json").write_text(json.dumps(
        {"format": "kronos-rolling-pretrain/1", "settings": {"until": until, "size": "tiny"},
         "data": {"dir": str(data_dir)}}))
    for part in ("predictor", "tokenizer"):
        (folder / part).mkdir()


def test_the_newest_fitting_base_is_reused(tmp_path, tiny_base, monkeypatch):
    import kronos_rolling.model.base as base_module

    monkeypatch.setattr(base_module, "model_source_digest", lambda path: "digest")  # fake folders hold no weights
    store = DataStore()
    _fake_base(tmp_path / "bases" / "tiny-until-2017-06-01", "2017-06-01T00:00:00+00:00", store.root)
    _fake_base(tmp_path / "bases" / "tiny-until-2017-11-01", "2017-11-01T00:00:00+00:00", store.root)
    _fake_base(tmp_path / "bases" / "tiny-until-2018-03-01", "2018-03-01T00:00:00+00:00", store.root)
    _fake_base(tmp_path / "bases" / "tiny-until-2017-12-01", "2017-12-01T00:00:00+00:00", tmp_path / "other-data")
    chosen = offline_tiny_base(store, tmp_path, pd.Timestamp("2017-12-01", tz="UTC"), progress=False)
    assert chosen.predictor == str((tmp_path / "bases" / "tiny-until-2017-11-01" / "predictor").resolve())


def test_where_a_base_stopped_seeing_bars_is_read_from_its_pretrain_report(tmp_path):
    from kronos_rolling.training.pretrain.config import pretrained_until

    data_dir = DataStore().root
    _fake_base(tmp_path / "base", "2017-11-01T00:00:00+00:00", data_dir)
    folder = tmp_path / "base"
    folder_base = BaseModelRef(predictor=str(folder / "predictor"), tokenizer=str(folder / "tokenizer"))
    assert pretrained_until(folder_base) == pd.Timestamp("2017-11-01", tz="UTC")
    hub_base = BaseModelRef(predictor="NeoQuasar/Kronos-base", tokenizer="NeoQuasar/Kronos-Tokenizer-base")
    assert pretrained_until(hub_base) is None  # a hub checkpoint: where it stopped is unknown


def test_a_short_replay_on_real_data(tracking_uri, clean_registry, pretrained_base, kronos_home):
    settings = SimulationSettings(epochs=1, pooled_epochs=1, max_samples_per_epoch=32, eval_max_origins=16,
                                  lookback=16, horizon=4)
    lines = []
    started_ms = int(time.time() * 1000)
    report = simulate(DataStore(), BaseModelRef.resolve(str(pretrained_base)), "2018-01", 2,
                      classes=["crypto", "forex_commodity"], client=clean_registry, settings=settings,
                      drill_months=("2018-02",), echo=lines.append)
    frame = report.frame()
    assert list(zip(frame["month"], frame["asset_class"])) == [
        ("2018-01", "crypto"), ("2018-01", "forex_commodity"), ("2018-02", "crypto"), ("2018-02", "forex_commodity")]
    crypto = frame[frame["asset_class"] == "crypto"]
    assert set(crypto["outcome"]) <= {"promoted", "refused"} and list(crypto["version"]) == ["1", "2"]
    assert crypto["val_mae"].notna().all() and crypto["pooled_val_mae"].notna().all()
    assert list(crypto["versions_kept"]) == ["1", "1,2"]
    assert crypto["aliased"].iloc[-1] in ("1,2", "2")  # v2 holds @staging or @production, v1 maybe @production
    forex = frame[frame["asset_class"] == "forex_commodity"]
    # EURUSD covers 2017 only: January 2018 is judged on December 2017; February has nothing to judge on.
    assert forex["outcome"].iloc[0] in ("promoted", "refused") and forex["outcome"].iloc[1] == "no data"
    assert any("pooled v1" in line for line in lines)
    # The drill month warm-started crypto from a sabotaged copy of what the job would have used.
    assert list(crypto["drill"]) == [False, True]
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

    run_id = log_report(report, "2018-01", 2)
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/simulation/criteria.json")
    assert set(logged) == set(report.criteria())
    names = {a.path for a in MlflowClient().list_artifacts(run_id, "simulation")}
    assert names == {"simulation/rows.json", "simulation/criteria.json", "simulation/val_mae.png"}
