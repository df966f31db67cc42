"""The replay of past months: its decisions on tables, and a short real replay."""

from __future__ import annotations

import json
from datetime import date
import shutil
from pathlib import Path

import pandas as pd
import pytest

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import ConfigError
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.settings import BUNDLED_BASE_DIR
from kronos_rolling.pipeline.replay import (
    MonthRow,
    SimulationReport,
    months_from,
    offline_tiny_base,
)


def _row(month, outcome, cadence="monthly", kept="1", aliased=""):
    action, decision, failed = {"promoted": ("trained", "promoted", False), "refused": ("trained", "refused", False),
                                "failed": ("skipped", "none", True), "not due": ("not_due", "none", False),
                                "no data": ("skipped", "none", False)}[outcome]
    return MonthRow("crypto", month, action, decision=decision, cadence=cadence, versions_kept=kept,
                    aliased=aliased, failed=failed)


UNATTENDED, REFUSED, QUARTERLY = ("3 consecutive months without intervention", "guard refused a worse candidate",
                                  "cadence switched to quarterly")


EXACT, DELETED = "exactly the last 6 versions kept (plus aliased)", "retention deleted versions beyond the last 6"


def _fake_base(folder: Path, until: str, data_dir: Path):
    folder.mkdir(parents=True)
    (folder / "pretrain.json").write_text(json.dumps(
        {"format": "kronos-rolling-pretrain/1", "settings": {"until": until, "size": "tiny"},
         "data": {"dir": str(data_dir)}}))
    for part in ("predictor", "tokenizer"):
        (folder / part).mkdir()


def test_months_are_calendar_months_from_the_start():
    assert [m.strftime("%Y-%m-%d") for m in months_from("2018-11", 3)] == ["2018-11-01", "2018-12-01", "2019-01-01"]
    assert months_from("2018-01-15", 1)[0] == date(2018, 1, 1)  # the one as_of type: a date
    with pytest.raises(ConfigError, match="YYYY-MM"):
        months_from("January", 2)
    with pytest.raises(ConfigError, match="--months"):
        months_from("2018-01", 0)


@pytest.mark.parametrize("rows, expected", [
    ([_row("2018-01", "promoted"), _row("2018-02", "refused"), _row("2018-03", "promoted", "quarterly")],
     {UNATTENDED: True, REFUSED: True, QUARTERLY: True, EXACT: True, DELETED: "n/a (needs 7 months)"}),
    ([_row("2018-01", "promoted"), _row("2018-02", "failed"), _row("2018-03", "promoted")],
     {UNATTENDED: False, REFUSED: False, QUARTERLY: "n/a (needs 4 months)"}),
    ([_row(f"2018-{m:02d}", "promoted") for m in range(1, 5)], {UNATTENDED: True, QUARTERLY: False}),
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
        assert criteria[name] == value if isinstance(value, str) else criteria[name] is value, name


def test_the_newest_fitting_base_is_reused(tmp_path, tiny_base, monkeypatch):
    import kronos_rolling.model.base as base_module

    monkeypatch.setattr(base_module, "model_source_digest", lambda path: "digest")  # fake folders hold no weights
    store = DataStore()
    _fake_base(tmp_path / "bases" / "tiny-until-2017-06-01", "2017-06-01T00:00:00+00:00", store.root)
    _fake_base(tmp_path / "bases" / "tiny-until-2017-11-01", "2017-11-01T00:00:00+00:00", store.root)
    _fake_base(tmp_path / "bases" / "tiny-until-2018-03-01", "2018-03-01T00:00:00+00:00", store.root)
    _fake_base(tmp_path / "bases" / "tiny-until-2017-12-01", "2017-12-01T00:00:00+00:00", tmp_path / "other-data")
    # On the bundled data the shipped base (until 2017-11-01) is a candidate too, and wins a tie.
    chosen = offline_tiny_base(store, tmp_path, pd.Timestamp("2017-12-01", tz="UTC"), progress=False)
    assert chosen.predictor == str(BUNDLED_BASE_DIR / "predictor")
    _fake_base(tmp_path / "bases" / "tiny-until-2017-11-15", "2017-11-15T00:00:00+00:00", store.root)
    chosen = offline_tiny_base(store, tmp_path, pd.Timestamp("2017-12-01", tz="UTC"), progress=False)
    assert chosen.predictor == str((tmp_path / "bases" / "tiny-until-2017-11-15" / "predictor").resolve())
    # Other data: never the shipped base.
    other = tmp_path / "other-data"
    shutil.copytree(store.root, other, ignore=shutil.ignore_patterns("tiny-base"))
    chosen = offline_tiny_base(DataStore(other), tmp_path, pd.Timestamp("2018-01-01", tz="UTC"), progress=False)
    assert chosen.predictor == str((tmp_path / "bases" / "tiny-until-2017-12-01" / "predictor").resolve())


def test_where_a_base_stopped_seeing_bars_is_read_from_its_pretrain_report(tmp_path):
    from kronos_rolling.training.pretrain.config import pretrained_until

    data_dir = DataStore().root
    _fake_base(tmp_path / "base", "2017-11-01T00:00:00+00:00", data_dir)
    folder = tmp_path / "base"
    folder_base = BaseModelRef(predictor=str(folder / "predictor"), tokenizer=str(folder / "tokenizer"))
    assert pretrained_until(folder_base) == pd.Timestamp("2017-11-01", tz="UTC")
    hub_base = BaseModelRef(predictor="NeoQuasar/Kronos-base", tokenizer="NeoQuasar/Kronos-Tokenizer-base")
    assert pretrained_until(hub_base) is None  # a hub checkpoint: where it stopped is unknown


def test_the_report_goes_where_the_user_says_and_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = SimulationReport(rows=[_row("2018-01", "promoted")])
    written = report.write_csv(Path("reports/simulation.csv"))  # relative: to where the command runs
    assert written == tmp_path / "reports" / "simulation.csv" and written.is_absolute()
    assert written.read_text().startswith("asset_class,month,action,")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["simulation.csv"], "no staging file left"
