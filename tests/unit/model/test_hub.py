"""Hub folder format, loading errors, provenance digest, and the `model init` / `forecast` commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from support.hub import init_tiny, write_bars_csv

from kronos_rolling.cli.main import main
from kronos_rolling.errors import ModelError
from kronos_rolling.model.config import MODEL_SIZES, KronosConfig
from kronos_rolling.model.hub import model_source_digest
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("init") / "tiny")


@pytest.fixture(scope="module")
def bars_csv(tmp_path_factory):
    return write_bars_csv(tmp_path_factory.mktemp("csv") / "bars.csv")


def run_forecast(tiny_dir, csv, out, *extra):
    return CliRunner().invoke(main, [
        "forecast", "--model", str(tiny_dir / "predictor"), "--tokenizer", str(tiny_dir / "tokenizer"),
        "--csv", str(csv), "--pred-len", "6", "--out", str(out), "--device", "cpu", *extra,
    ])


def test_model_init_writes_loadable_hub_folders(tiny_dir):
    for name in ("tokenizer", "predictor"):
        assert sorted(p.name for p in (tiny_dir / name).iterdir()) == ["config.json", "model.safetensors"]
    predictor = Kronos.from_pretrained(tiny_dir / "predictor")
    tokenizer = KronosTokenizer.from_pretrained(tiny_dir / "tokenizer")
    assert predictor.config == MODEL_SIZES["tiny"].predictor
    assert json.loads((tiny_dir / "predictor" / "config.json").read_text()) == MODEL_SIZES["tiny"].predictor.to_dict()
    total = sum(p.numel() for p in predictor.parameters()) + sum(p.numel() for p in tokenizer.parameters())
    assert 100_000 < total < 600_000  # "a few hundred thousand parameters"
    # Same seed, same weights: the folder is reproducible.
    assert not predictor.training and not tokenizer.training


def test_model_init_refuses_to_overwrite(tiny_dir):
    result = CliRunner().invoke(main, ["model", "init", "--size", "tiny", "--out", str(tiny_dir)])
    assert result.exit_code == 2
    assert "already exist" in result.output and "Traceback" not in result.output


def test_save_load_round_trip_and_digest(tmp_path):
    torch.manual_seed(1)
    model = Kronos.from_config(MODEL_SIZES["tiny"].predictor)
    model.save_pretrained(tmp_path / "a")
    loaded = Kronos.from_pretrained(tmp_path / "a")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert model_source_digest(tmp_path / "a") == model_source_digest(tmp_path / "b")
    with torch.no_grad():
        loaded.head.proj_s1.bias += 1
    loaded.save_pretrained(tmp_path / "b")
    assert model_source_digest(tmp_path / "a") != model_source_digest(tmp_path / "b")


def test_loading_errors_are_clear(tiny_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="lacks model.safetensors"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "config.json").write_text("{}")
        Kronos.from_pretrained(empty)
    with pytest.raises(ModelError, match="looks like a tokenizer config"):
        Kronos.from_pretrained(tiny_dir / "tokenizer")
    # Weights that do not fit the config (another size's config.json next to tiny weights).
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_dir / "predictor", mismatched)
    (mismatched / "config.json").write_text(json.dumps(KronosConfig(n_layers=3, d_model=64, n_heads=4).to_dict()))
    with pytest.raises(ModelError, match="missing transformer.2"):
        Kronos.from_pretrained(mismatched)
    # A hub id while offline: a clear message on what to do instead.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as caught:
        Kronos.from_pretrained("NeoQuasar/Kronos-small", revision="main")
    message = str(caught.value)
    assert "NeoQuasar/Kronos-small" in message and "offline" in message and "--local-dir" in message


def test_a_hub_id_downloads_both_files_at_the_asked_revision(tiny_dir, monkeypatch):
    """The hub itself cannot be reached here: a stand-in download hands out a local folder's files."""
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, revision=None, **_):
        asked.append((repo_id, filename, revision))
        return str(tiny_dir / "predictor" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = Kronos.from_pretrained("NeoQuasar/Kronos-small", revision="abc123")
    assert asked == [("NeoQuasar/Kronos-small", "config.json", "abc123"),
                     ("NeoQuasar/Kronos-small", "model.safetensors", "abc123")]
    want = Kronos.from_pretrained(tiny_dir / "predictor").state_dict()
    assert all(torch.equal(value, want[key]) for key, value in model.state_dict().items())


def test_the_default_context_follows_the_architecture_not_training_settings():
    from dataclasses import replace

    from kronos_rolling.model.config import default_max_context

    mini = MODEL_SIZES["mini"].predictor
    assert default_max_context(mini) == 2048
    assert default_max_context(replace(mini, ffn_dropout_p=0.0, resid_dropout_p=0.1)) == 2048
    assert default_max_context(MODEL_SIZES["base"].predictor) == 512
    assert default_max_context(replace(mini, n_layers=5)) == 512  # an unknown architecture: the safe default


def test_forecast_command_greedy_is_deterministic(tiny_dir, bars_csv, tmp_path):
    first = run_forecast(tiny_dir, bars_csv, tmp_path / "a.csv", "--top-k", "1")
    second = run_forecast(tiny_dir, bars_csv, tmp_path / "b.csv", "--top-k", "1")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    out = pd.read_csv(tmp_path / "a.csv")
    assert list(out.columns) == ["timestamp", "open", "high", "low", "close", "volume", "amount"]
    assert list(pd.to_datetime(out["timestamp"])) == list(pd.date_range("2024-02-03 16:00", periods=6, freq="h",
                                                                         tz="UTC"))
    assert np.isfinite(out.drop(columns="timestamp").to_numpy()).all()


def test_forecast_command_reads_bars_as_an_import_does(tiny_dir, bars_csv, tmp_path):
    """Unix seconds are not 1970 dates, upper-case names and mixed UTC offsets forecast the same bars."""
    assert run_forecast(tiny_dir, bars_csv, tmp_path / "want.csv", "--top-k", "1").exit_code == 0
    frame = pd.read_csv(bars_csv)
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    layouts = {
        "unix.csv": frame.assign(timestamp=(stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)),
        "upper.csv": frame.rename(columns=str.upper),
        # Each row in another zone's offset: the same instants.
        "offsets.csv": frame.assign(timestamp=[t.tz_convert("Asia/Tokyo" if i % 2 else "America/New_York")
                                               .isoformat() for i, t in enumerate(stamps)]),
    }
    for name, table in layouts.items():
        table.to_csv(tmp_path / name, index=False)
        result = run_forecast(tiny_dir, tmp_path / name, tmp_path / f"out-{name}", "--top-k", "1")
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"out-{name}").read_bytes() == (tmp_path / "want.csv").read_bytes(), name


@pytest.mark.parametrize("row,column,value,words", [
    (5, "close", "-2.5", "row 5, column 'close': price is not positive: -2.5"),
    (7, "low", "1000", "row 7, column 'high': high is below low"),
    (9, "volume", "-1", "row 9, column 'volume': negative value: -1"),
    (3, "high", "1e300", "row 3, column 'high': too large for float32"),
])
def test_forecast_command_refuses_bad_bars_naming_row_and_column(tiny_dir, bars_csv, tmp_path, row, column, value,
                                                                 words):
    table = pd.read_csv(bars_csv, dtype=str)
    table.loc[row - 1, column] = value  # row N: the file's Nth data row
    table.to_csv(tmp_path / "bad.csv", index=False)
    result = run_forecast(tiny_dir, tmp_path / "bad.csv", tmp_path / "out.csv")
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("option,value", [("--max-context", "0"), ("--pred-len", "0"), ("--samples", "0"),
                                          ("--top-p", "0"), ("--temperature", "0"), ("--lookback", "1")])
def test_forecast_command_refuses_out_of_range_settings(tiny_dir, bars_csv, tmp_path, option, value):
    result = run_forecast(tiny_dir, bars_csv, tmp_path / "out.csv", option, value)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert not (tmp_path / "out.csv").exists()


def test_forecast_command_sampling_quantiles_and_seed(tiny_dir, bars_csv, tmp_path):
    args = ["--samples", "4", "--seed", "7", "--temperature", "0.8", "--top-p", "0.95", "--quantiles"]
    assert run_forecast(tiny_dir, bars_csv, tmp_path / "a.csv", *args).exit_code == 0
    assert run_forecast(tiny_dir, bars_csv, tmp_path / "b.csv", *args).exit_code == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    out = pd.read_csv(tmp_path / "a.csv")
    assert {"close_p10", "close_p50", "close_p90"} <= set(out.columns)
    assert (out["close_p10"] <= out["close_p90"]).all()


def test_forecast_command_reports_bad_input_without_traceback(tiny_dir, bars_csv, tmp_path):
    broken = tmp_path / "broken.csv"
    pd.read_csv(bars_csv).drop(columns=["low"]).to_csv(broken, index=False)
    result = run_forecast(tiny_dir, broken, tmp_path / "out.csv")
    assert result.exit_code == 2
    assert "missing column(s) low" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.csv").exists()
    swapped = CliRunner().invoke(main, [
        "forecast", "--model", str(tiny_dir / "tokenizer"), "--tokenizer", str(tiny_dir / "predictor"),
        "--csv", str(bars_csv), "--pred-len", "3", "--out", str(tmp_path / "out.csv"),
    ])
    assert swapped.exit_code == 2 and "swapped" in swapped.output


def test_forecast_command_any_quantile_levels_from_32_paths_and_an_adapters_calibration(tiny_dir, bars_csv, tmp_path):
    """--quantiles 0.05,0.5,0.95 (columns <column>_p5 ...), the point forecast the median of at least
    32 paths, and with --adapter the version's calibration on the close quantiles, said on stderr."""
    from support.serve import build_bundle

    from kronos_rolling.evaluation.calibration import GRID, Calibration, ClassCalibration

    bare = run_forecast(tiny_dir, bars_csv, tmp_path / "bare.csv", "--quantiles", "0.05,0.5,0.95", "--seed", "2")
    assert bare.exit_code == 0, bare.output
    assert "calibration: not applied: the bare base carries no calibration" in bare.output
    out = pd.read_csv(tmp_path / "bare.csv")
    assert {"close_p5", "close_p50", "close_p95", "high_p95"} <= set(out.columns)
    assert (out["close_p5"] <= out["close_p50"]).all() and (out["close_p50"] <= out["close_p95"]).all()
    np.testing.assert_allclose(out["close"], out["close_p50"], rtol=1e-6)  # the median of the paths

    bundle = build_bundle(tiny_dir, tmp_path / "adapter", seed=4, label="crypto")
    wide = tuple(tuple(3.0 * level for level in GRID) for _ in range(2))
    Calibration({"crypto": ClassCalibration(wide, 500)}, {}, ("2018-01-01", "2018-02-01"), 100).write(bundle)
    args = ["forecast", "--adapter", str(bundle), "--csv", str(bars_csv), "--pred-len", "6", "--device", "cpu",
            "--seed", "2", "--quantiles", "0.05,0.5,0.95", "--out"]
    calibrated = CliRunner().invoke(main, [*args, str(tmp_path / "cal.csv")])
    assert calibrated.exit_code == 0, calibrated.output
    assert f"calibration: applied: {bundle}'s crypto calibration, fitted on 2018-01-01..2018-02-01" in \
        calibrated.output
    cal = pd.read_csv(tmp_path / "cal.csv")
    assert (cal["close_p5"] <= cal["close_p50"]).all() and (cal["close_p50"] <= cal["close_p95"]).all()
    unfitted = shutil.copytree(bundle, tmp_path / "unfitted")
    Calibration({}, {"crypto": "40 outcomes, fewer than the minimum 100"}, ("2018-01-01", "2018-02-01"),
                100).write(unfitted)
    args[2] = str(unfitted)
    other = CliRunner().invoke(main, [*args, str(tmp_path / "uncal.csv")])
    assert f"calibration: not applied: {unfitted}: 40 outcomes, fewer than the minimum 100" in other.output
    uncal = pd.read_csv(tmp_path / "uncal.csv")
    np.testing.assert_allclose(cal["close"], uncal["close"], rtol=1e-6)  # same paths, same median
    assert (cal["close_p95"] - cal["close_p5"] > uncal["close_p95"] - uncal["close_p5"]).all()
    neither = CliRunner().invoke(main, ["forecast", "--csv", str(bars_csv), "--pred-len", "2", "--out",
                                        str(tmp_path / "x.csv")])
    assert neither.exit_code == 2 and "give --model and --tokenizer" in neither.output
