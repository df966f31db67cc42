"""Pre-training a small base: it learns from real history, only from before `until`, reproducibly.

The tiny base is the session's `pretrained_base` (tests/conftest.py: built once, shared by every test);
the other runs here use a few steps on two symbols copied into a temporary data folder.
"""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from support.pretrained import (
    QUICK,
    TEST_BASE_SETTINGS,
    UNTIL,
    pretrain_cli,
    pretrained_tiny_base,
    two_symbol_store_in,
)

from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.errors import ConfigError
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.model.hub import model_source_digest
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.training.pretrain.config import (
    DEFAULT_UNTIL,
    PretrainConfig,
    read_pretrain_report,
)
from kronos_rolling.training.pretrain.data import (
    bars_between,
    bars_digest,
    held_out_windows,
    window_dataset,
)
from kronos_rolling.training.pretrain.measure import (
    evaluate_base,
    frequency_baseline_loss,
)
from kronos_rolling.training.pretrain.run import (
    is_current_pretrain,
    pretrain_base,
)

# Symbols with bars before 2017 in the bundled data; the others start later and are skipped.
TRAINED_SYMBOLS = ["AAPL", "BTCUSD-1D", "GOOG", "IBM", "MSFT", "^GSPC", "^IXIC"]


@pytest.fixture
def two_symbol_store(tmp_path) -> DataStore:
    return two_symbol_store_in(tmp_path / "data")


def weights_digests(folder: Path) -> tuple[str, str]:
    return model_source_digest(folder / "tokenizer"), model_source_digest(folder / "predictor")


def _change_bars_after_until(store: DataStore, symbol: str) -> None:
    """Triple prices and halve volumes of every bar from `until` on (still valid bars)."""
    path = store.path_of(symbol)
    frame = pd.read_parquet(path)
    later = pd.to_datetime(frame["timestamp"], utc=True) >= UNTIL
    assert later.sum() > 100
    frame.loc[later, ["open", "high", "low", "close"]] *= 3.0
    frame.loc[later, "volume"] *= 0.5
    frame.to_parquet(path, index=False)


def test_pretrained_base_beats_random_weights_on_bars_after_until(pretrained_base):
    store = DataStore(BUNDLED_DATA_DIR)
    settings = TEST_BASE_SETTINGS
    # Windows made only of bars from `until` on: none of them was seen in pre-training.
    held = held_out_windows(store, DEFAULT_UNTIL, settings["lookback"], settings["horizon"])
    assert {"^GSPC", "BTCUSD", "EURUSD"} <= set(held.symbols) and len(held) > 1000
    tokenizer = KronosTokenizer.from_pretrained(pretrained_base / "tokenizer")
    predictor = Kronos.from_pretrained(pretrained_base / "predictor")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        random_tokenizer = KronosTokenizer.from_config(MODEL_SIZES["tiny"].tokenizer)
        random_predictor = Kronos.from_config(MODEL_SIZES["tiny"].predictor)

    pretrained = evaluate_base(tokenizer, predictor, held, max_windows=256)
    untrained = evaluate_base(tokenizer, random_predictor, held, max_windows=256)
    untrained_tokenizer = evaluate_base(random_tokenizer, None, held, max_windows=256)
    fit = window_dataset(store, bars_between(store, TRAINED_SYMBOLS, end=DEFAULT_UNTIL),
                         settings["lookback"], settings["horizon"])
    frequencies_only = frequency_baseline_loss(tokenizer, fit, held, max_windows=256)

    assert pretrained.token_loss < 0.6 * untrained.token_loss
    # Better than knowing only which tokens are common: the predictor uses the bars before each one.
    assert pretrained.token_loss < 0.9 * frequencies_only
    assert pretrained.reconstruction_mse < 0.5 * untrained_tokenizer.reconstruction_mse


def test_pretrain_json_records_what_the_base_was_trained_on(pretrained_base):
    report = read_pretrain_report(pretrained_base)
    assert report is not None
    settings, data = report["settings"], report["data"]
    assert settings["until"] == UNTIL.isoformat()
    assert settings["size"] == "tiny" and settings["seed"] == 0
    assert {k: settings[k] for k in TEST_BASE_SETTINGS} == TEST_BASE_SETTINGS
    assert data["symbols"] == TRAINED_SYMBOLS
    assert set(data["skipped"]) == {"BTCUSD", "ETHUSD", "EURUSD", "LTCUSD"}
    assert pd.Timestamp(data["last_bar"]) < UNTIL
    store = DataStore(BUNDLED_DATA_DIR)
    assert data["digest"] == bars_digest(bars_between(store, store.symbols(), end=DEFAULT_UNTIL))
    for stage in ("tokenizer", "predictor"):
        assert report[stage]["steps"] == settings[f"{stage}_steps"]
        assert report[stage]["final_loss"] < report[stage]["first_loss"]
    assert set(report["tokenizer"]["final_parts"]) == {"recon_s1", "recon", "bsq"}


def test_pretrained_base_loads_and_forecasts_closer_than_random_weights(pretrained_base):
    base = BaseModelRef.resolve(str(pretrained_base))
    predictor, tokenizer = base.load()
    store = DataStore(BUNDLED_DATA_DIR)
    histories, actual_closes = [], []
    for symbol in ("^GSPC", "^IXIC", "BTCUSD-1D"):
        bars = store.load(symbol)
        bars = bars[bars["timestamp"] >= UNTIL].reset_index(drop=True)
        for origin in range(64, 64 + 8 * 30, 30):  # 8 origins a month apart, all after `until`
            histories.append(bars.iloc[origin - 64:origin])
            actual_closes.append(bars["close"].iloc[origin:origin + 8].to_numpy())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        random_predictor = Kronos.from_config(MODEL_SIZES["tiny"].predictor)

    def close_error(model) -> float:
        results = Forecaster(model, tokenizer, device="cpu").forecast(histories, pred_len=8, top_k=1)
        for result in results:
            assert len(result.mean) == 8 and np.isfinite(result.mean[["open", "close"]].to_numpy()).all()
        return float(np.mean([np.abs(r.mean["close"].to_numpy() / a - 1).mean()
                              for r, a in zip(results, actual_closes)]))

    assert close_error(predictor) < 0.75 * close_error(random_predictor)


def test_cached_base_is_reused(pretrained_base):
    weights = pretrained_base / "predictor" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert pretrained_tiny_base(pretrained_base) == pretrained_base
    assert time.monotonic() - started < 5
    assert weights.stat().st_mtime_ns == before


def test_cached_base_is_current_only_for_the_same_settings_and_bars(pretrained_base, tmp_path):
    store = DataStore(BUNDLED_DATA_DIR)
    config = PretrainConfig(until=DEFAULT_UNTIL, **TEST_BASE_SETTINGS)
    assert is_current_pretrain(pretrained_base, config, store)
    assert not is_current_pretrain(pretrained_base, replace(config, seed=1), store)
    assert not is_current_pretrain(pretrained_base, replace(config, until="2016-06-01"), store)

    # Another data folder whose bars before `until` differ in one value.
    root = tmp_path / "data"
    shutil.copytree(BUNDLED_DATA_DIR, root)
    frame = pd.read_parquet(root / "IBM.parquet")
    frame.loc[10, "volume"] += 1
    frame.to_parquet(root / "IBM.parquet", index=False)
    assert not is_current_pretrain(pretrained_base, config, DataStore(root))

    copy = tmp_path / "base"
    shutil.copytree(pretrained_base, copy)
    (copy / "predictor" / "model.safetensors").unlink()  # incomplete: never reused
    assert not is_current_pretrain(copy, config, store)


def test_same_seed_gives_the_same_base_whatever_comes_after_until(two_symbol_store, tmp_path):
    first = pretrain_base(two_symbol_store, tmp_path / "first", seed=3, **QUICK)
    _change_bars_after_until(two_symbol_store, "^GSPC")
    _change_bars_after_until(two_symbol_store, "BTCUSD-1D")
    changed = DataStore(two_symbol_store.root)
    second = pretrain_base(changed, tmp_path / "second", seed=3, **QUICK)
    other_seed = pretrain_base(changed, tmp_path / "other-seed", seed=4, **QUICK)

    assert weights_digests(tmp_path / "first") == weights_digests(tmp_path / "second")
    assert first.data_digest == second.data_digest
    assert first.predictor.final_loss == second.predictor.final_loss
    digests = weights_digests(tmp_path / "other-seed")
    assert digests[0] != weights_digests(tmp_path / "first")[0]
    assert digests[1] != weights_digests(tmp_path / "first")[1]
    assert other_seed.data_digest == first.data_digest


def test_pretraining_leaves_the_global_random_stream_alone(two_symbol_store, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pretrain_base(two_symbol_store, tmp_path / "base", **QUICK)
    assert torch.equal(torch.rand(3), expected)


def test_foreign_folder_is_kept_unless_forced(two_symbol_store, tmp_path):
    out = tmp_path / "out"
    (out / "predictor").mkdir(parents=True)
    (out / "predictor" / "config.json").write_text("{}")  # e.g. `model init` output or anything else
    with pytest.raises(ConfigError, match="--force"):
        pretrain_base(two_symbol_store, out, **QUICK)
    assert (out / "predictor" / "config.json").read_text() == "{}"

    pretrain_base(two_symbol_store, out, force=True, **QUICK)
    assert read_pretrain_report(out) is not None
    assert KronosTokenizer.from_pretrained(out / "tokenizer") is not None
    assert sorted(p.name for p in out.iterdir()) == ["predictor", "pretrain.json", "tokenizer"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_previous_pretrain_output_is_replaced(two_symbol_store, tmp_path):
    out = tmp_path / "out"
    pretrain_base(two_symbol_store, out, seed=1, **QUICK)
    first = weights_digests(out)
    pretrain_base(two_symbol_store, out, seed=2, **QUICK)
    assert read_pretrain_report(out)["settings"]["seed"] == 2
    assert weights_digests(out) != first


def test_killed_run_leaves_the_previous_base_untouched(two_symbol_store, tmp_path):
    out = tmp_path / "out"
    pretrain_base(two_symbol_store, out, seed=1, **QUICK)
    before = weights_digests(out)
    script = (
        "from kronos_rolling.data.store import DataStore\n"
        "from kronos_rolling.training.pretrain.run import pretrain_base\n"
        f"pretrain_base(DataStore({str(two_symbol_store.root)!r}), {str(out)!r}, until='2017-01-01', seed=2,\n"
        "              tokenizer_steps=100000, predictor_steps=10, batch_size=8, lookback=32, horizon=8)\n"
    )
    # stderr is a terminal, so the live progress bar is drawn as soon as training runs
    # (elsewhere only one line per finished stage is printed: training/progress.py).
    terminal, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a real terminal's size
    process = subprocess.Popen([sys.executable, "-c", script], stderr=child_end)
    os.close(child_end)
    try:
        seen, deadline = "", time.monotonic() + 120
        while "pretrain tokenizer" not in seen:
            try:
                chunk = os.read(terminal, 1024).decode(errors="replace")
            except OSError:  # the child closed the terminal: it exited
                chunk = ""
            assert chunk and time.monotonic() < deadline, f"no training started: {seen!r}"
            seen += chunk
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        os.close(terminal)
    assert weights_digests(out) == before
    assert read_pretrain_report(out)["settings"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_cli_pretrains_and_prints_a_summary(two_symbol_store, tmp_path):
    out = tmp_path / "cli-base"
    result = CliRunner().invoke(pretrain_cli(), [
        "pretrain", "--out", str(out), "--data", str(two_symbol_store.root), "--until", "2016-01-01",
        "--tokenizer-steps", "3", "--predictor-steps", "3", "--batch-size", "8", "--lookback", "32",
        "--horizon", "8", "--seed", "5", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "pretrained tiny base on" in result.output and "2 symbols" in result.output
    report = read_pretrain_report(out)
    assert report["settings"]["until"].startswith("2016-01-01") and report["settings"]["seed"] == 5
    assert pd.Timestamp(report["data"]["last_bar"]) < pd.Timestamp("2016-01-01", tz="UTC")
