"""Pre-training a small base: it learns from real history, only from before `until`, reproducibly.

What needs no training run: data digests, refusals, samplers, the shipped base's provenance
(the runs themselves: tests/integration/training/test_pretrain.py). A few steps on two symbols
copied into a temporary data folder where a refusal needs a store.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from support.pretrained import QUICK, UNTIL, pretrain_cli, two_symbol_store_in

from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.errors import ConfigError, DataError, KronosError
from kronos_rolling.training.pretrain.config import (
    DEFAULT_UNTIL,
)
from kronos_rolling.training.pretrain.data import (
    bars_between,
    bars_digest,
    PassSampler,
    held_out_windows,
)
from kronos_rolling.training.pretrain.run import (
    check_output_folder,
    pretrain_base,
)


@pytest.fixture
def two_symbol_store(tmp_path) -> DataStore:
    return two_symbol_store_in(tmp_path / "data")


def test_data_digest_covers_every_bar_before_until(two_symbol_store):
    bars = bars_between(two_symbol_store, ["^GSPC"], end=DEFAULT_UNTIL)
    assert bars["^GSPC"]["timestamp"].max() < UNTIL
    changed = {"^GSPC": bars["^GSPC"].copy()}
    changed["^GSPC"].loc[len(bars["^GSPC"]) - 1, "volume"] += 1.0  # the last bar before `until`
    assert bars_digest(changed) != bars_digest(bars)


def test_no_bars_before_until_is_refused(two_symbol_store, tmp_path):
    with pytest.raises(DataError, match=r"no bars before --until 1990-01-01.*earliest bar is 1999-01-04"):
        pretrain_base(two_symbol_store, tmp_path / "base", **{**QUICK, "until": "1990-01-01"})
    assert not (tmp_path / "base").exists()


def test_symbol_without_history_before_until_is_refused(tmp_path):
    store = DataStore(BUNDLED_DATA_DIR)
    with pytest.raises(DataError, match=r"EURUSD: no bars before 2017-01-01"):
        pretrain_base(store, tmp_path / "base", symbols=["^GSPC", "EURUSD"], **QUICK)
    with pytest.raises(DataError, match=r"no data for symbol 'NOPE'"):
        pretrain_base(store, tmp_path / "base", symbols=["NOPE"], **QUICK)
    assert not (tmp_path / "base").exists()


def test_bad_settings_are_refused(two_symbol_store, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model size 'huge'; use one of tiny, mini, small, base"):
        pretrain_base(two_symbol_store, tmp_path / "base", size="huge", **QUICK)
    with pytest.raises(ConfigError, match=r"exceed the tiny model's context of 512 bars"):
        pretrain_base(two_symbol_store, tmp_path / "base", **{**QUICK, "lookback": 600})
    with pytest.raises(ConfigError, match=r"predictor_steps must be >= 1"):
        pretrain_base(two_symbol_store, tmp_path / "base", **{**QUICK, "predictor_steps": 0})


def test_output_folder_decisions(tmp_path):
    check_output_folder(tmp_path / "new", force=False)  # absent: fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", force=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not the output of an earlier `kronos-rolling model pretrain`.*--force"):
        check_output_folder(other, force=False)
    check_output_folder(other, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"is a file"):
        check_output_folder(tmp_path / "file", force=True)


def test_a_stage_sampler_covers_every_sample_once_per_pass_and_is_seeded():
    flat = np.array(list(PassSampler(10, count=20, seed=0)))
    assert len(flat) == len(PassSampler(10, count=20, seed=0)) == 20
    assert sorted(flat[:10]) == list(range(10))  # first pass: each sample once
    assert sorted(flat[10:20]) == list(range(10))
    assert len(list(PassSampler(10, count=13, seed=0))) == 13  # a stage may end inside a pass
    again = np.array(list(PassSampler(10, count=20, seed=0)))
    other = np.array(list(PassSampler(10, count=20, seed=1)))
    assert np.array_equal(flat, again) and not np.array_equal(flat, other)


def test_held_out_windows_use_only_bars_from_since():
    store = DataStore(BUNDLED_DATA_DIR)
    held = held_out_windows(store, DEFAULT_UNTIL, lookback=32, horizon=8, symbols=["^GSPC"])
    first = held[0]
    # The first window's first bar is the first bar of 2017, so its first horizon bar is 32 bars later.
    bars = store.load("^GSPC")
    first_2017 = bars.index[bars["timestamp"] >= UNTIL][0]
    assert int(first["origin"]) == bars["timestamp"].iloc[first_2017 + 32].value


def test_cli_reports_bad_input_without_traceback(two_symbol_store, tmp_path):
    result = CliRunner().invoke(pretrain_cli(), [
        "pretrain", "--out", str(tmp_path / "x"), "--data", str(two_symbol_store.root), "--until", "1990-01-01",
    ])
    assert result.exit_code == DataError.exit_code
    assert result.output.startswith("error: no bars before --until 1990-01-01")
    assert "Traceback" not in result.output
    result = CliRunner().invoke(pretrain_cli(), [
        "pretrain", "--out", str(tmp_path / "x"), "--data", str(two_symbol_store.root), "--until", "not a date",
    ])
    assert result.exit_code == KronosError.exit_code
    assert "cannot read 'not a date' as a date" in result.output


def test_the_shipped_base_is_what_its_provenance_says_and_loads_like_any_base():
    """sample_data/tiny-base: pre-trained by `model pretrain --until 2017-11-01` on exactly the
    bundled bars before the cut-off (the data digest is recomputed here), a few MB at most, and
    loaded through the same code as any base folder."""
    from kronos_rolling.model.base import BaseModelRef
    from kronos_rolling.settings import BUNDLED_BASE_DIR
    from kronos_rolling.training.pretrain.config import pretrained_until, read_pretrain_report

    report = read_pretrain_report(BUNDLED_BASE_DIR)
    assert report["settings"]["until"] == "2017-11-01T00:00:00+00:00" and report["settings"]["size"] == "tiny"
    store = DataStore(BUNDLED_DATA_DIR)
    read = bars_between(store, store.symbols(), end="2017-11-01")
    assert bars_digest(read) == report["data"]["digest"]  # every bar read, LTCUSD's too (too few for a window)
    assert pd.Timestamp(report["data"]["last_bar"]) < pd.Timestamp("2017-11-01", tz="UTC")
    assert sum(f.stat().st_size for f in BUNDLED_BASE_DIR.rglob("*") if f.is_file()) < 3_000_000
    provenance = (BUNDLED_BASE_DIR / "PROVENANCE.md").read_text()
    assert "kronos-rolling model pretrain --until 2017-11-01 --out kronos_rolling/sample_data/tiny-base" in provenance
    assert report["data"]["digest"] in provenance

    base = BaseModelRef.resolve(str(BUNDLED_BASE_DIR))
    assert base.predictor == str(BUNDLED_BASE_DIR / "predictor") and base.predictor_digest
    assert pretrained_until(base) == pd.Timestamp("2017-11-01", tz="UTC")
    model, tokenizer = base.load()
    assert sum(p.numel() for p in model.parameters()) == 132_928
