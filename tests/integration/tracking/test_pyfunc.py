"""A registered version as an MLflow pyfunc model, against the real tracking server: the input the
README documents, its ```python example run as written, and its `mlflow models serve` + curl
lines run as written (only the ports differ: the test's own tracking server and a free port)."""

from __future__ import annotations

import json
import re
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest
from support import REPO
from support.serve import mlflow_model_server, register_version, set_production

from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.tracking.server import free_port

README = (REPO / "README.md").read_text()
DEMO_TRACKING = "http://127.0.0.1:5000"


@pytest.fixture
def production(clean_registry, tiny_base):
    """kronos-lora-crypto v1 @production: a real bundle on the tiny base, logged and registered."""
    version = register_version(clean_registry, tiny_base, "crypto", seed=5)
    set_production(clean_registry, "crypto", version)
    return mlflow.pyfunc.load_model("models:/kronos-lora-crypto@production")


def bars(symbol: str, n: int = 48) -> pd.DataFrame:
    return DataStore(BUNDLED_DATA_DIR).load(symbol).tail(n).reset_index(drop=True)


def test_the_signature_holds_params_and_output_and_leaves_the_input_to_the_bar_validator(production):
    """MLflow's own input check matches column names by case and answers with a dump of the input."""
    signature = production.metadata.signature
    assert signature.inputs is None
    assert {spec.name for spec in signature.params.params} >= {"pred_len", "temperature", "top_k", "top_p"}
    outputs = {spec.name: spec for spec in signature.outputs.inputs}
    # Optional: the symbol, the legacy quantile columns, and which calibration they carry.
    assert [name for name, spec in outputs.items() if not spec.required] == ["symbol", "close_p10", "close_p50",
                                                                             "close_p90", "calibration"]


def test_column_names_are_case_insensitive_and_errors_name_the_field_not_the_input(production):
    btc = bars("BTCUSD").assign(symbol="BTCUSD")
    want = production.predict(btc, params={"pred_len": 3, "top_k": 1})
    shouting = btc.rename(columns=str.upper)
    got = production.predict(shouting, params={"pred_len": 3, "top_k": 1})
    pd.testing.assert_frame_equal(got, want)
    mixed = btc.rename(columns={"timestamp": "Timestamp", "open": "Open", "symbol": "Symbol"})
    pd.testing.assert_frame_equal(production.predict(mixed, params={"pred_len": 3, "top_k": 1}), want)

    with pytest.raises(DataError) as caught:
        production.predict(shouting.drop(columns=["CLOSE"]))
    message = str(caught.value)
    assert "missing column(s) close" in message and len(message) < 600
    assert f"{btc['open'].iloc[0]}" not in message  # no values of the input
    with pytest.raises(ConfigError, match="temperature must be between"):
        production.predict(btc, params={"pred_len": 2, "temperature": 1e-38})
    late = btc.assign(timestamp=btc["timestamp"].astype("datetime64[us, UTC]"))  # nanoseconds end in 2262
    late.loc[late.index[5], "timestamp"] = pd.Timestamp("2300-01-01", tz="UTC")
    with pytest.raises(DataError, match=r"symbol BTCUSD, row 5, column 'timestamp': timestamp more than a year after"):
        production.predict(late)


def test_the_input_the_readme_documents_is_accepted(production):
    btc = bars("BTCUSD")
    aware = production.predict(btc, params={"pred_len": 3, "top_k": 1})  # tz-aware, as the bundled data
    assert str(aware["timestamp"].dt.tz) == "UTC"
    assert aware["timestamp"].iloc[0] == btc["timestamp"].iloc[-1] + pd.Timedelta(hours=1)
    naive = production.predict(btc.assign(timestamp=btc["timestamp"].dt.tz_localize(None)),
                               params={"pred_len": 3, "top_k": 1})
    assert naive["timestamp"].dt.tz is None  # naive in, naive (UTC) out
    np.testing.assert_allclose(naive["close"], aware["close"])
    tokyo = btc.assign(timestamp=btc["timestamp"].dt.tz_convert("Asia/Tokyo"))
    pd.testing.assert_frame_equal(production.predict(tokyo, params={"pred_len": 3, "top_k": 1}), aware)
    bare = production.predict(btc[["timestamp", "open", "high", "low", "close"]], params={"pred_len": 2})
    assert len(bare) == 2 and np.isfinite(bare["close"]).all()
    whole = btc.assign(volume=btc["volume"].round().astype("int64"))  # integer volumes, as many vendors write
    assert len(production.predict(whole, params={"pred_len": 1})) == 1


def test_several_symbols_keep_their_column_and_their_own_calendar(production):
    frame = pd.concat([bars("BTCUSD").assign(symbol="BTCUSD"), bars("^GSPC").assign(symbol="^GSPC")])
    out = production.predict(frame, params={"pred_len": 3, "top_k": 1})
    assert list(out["symbol"]) == ["BTCUSD"] * 3 + ["^GSPC"] * 3 and list(out.columns[:2]) == ["symbol", "timestamp"]
    alone = production.predict(bars("BTCUSD"), params={"pred_len": 3, "top_k": 1})
    np.testing.assert_allclose(out["close"].iloc[:3], alone["close"])
    # The S&P 500's last bundled bar is Monday 2018-12-31; 1 January is an NYSE holiday.
    assert list(out["timestamp"].iloc[3:]) == [pd.Timestamp(d, tz="UTC") for d in
                                               ("2019-01-02", "2019-01-03", "2019-01-04")]


def test_bad_bars_name_symbol_row_and_column_without_the_frame(production):
    frame = pd.concat([bars("BTCUSD").assign(symbol="BTCUSD"), bars("ETHUSD").assign(symbol="ETHUSD")],
                      ignore_index=True)
    frame.loc[frame.index[frame["symbol"] == "ETHUSD"][4], "high"] = 1.0  # ETHUSD's bar 4 (from 0)
    with pytest.raises(DataError) as caught:
        production.predict(frame)
    message = str(caught.value)
    assert "symbol ETHUSD, row 4, column 'high': high is below low (1.0 vs " in message
    assert len(message) < 2000 and "BTCUSD" not in message


def readme_block(language: str, after: str | None = None) -> str:
    """The first ```language block of the README (after the text `after`, when given)."""
    text = README if after is None else README[README.index(after):]
    return re.search(rf"```{language}\n(.*?)```", text, flags=re.S).group(1)


def test_the_readme_python_example_runs_as_written(production, tracking_uri, capsys):
    code = readme_block("python")
    assert DEMO_TRACKING in code
    exec(compile(code.replace(DEMO_TRACKING, tracking_uri), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.count("BTCUSD") == 4 and printed.count("ETHUSD") == 4
    assert "2019-10-17 10:00:00+00:00" in printed and "2020-01-18 00:00:00+00:00" in printed


def test_the_readme_mlflow_models_serve_and_curl_lines_run_as_written(production, tracking_uri, tmp_path):
    serve_line, curl_line = readme_block("bash", after="mlflow models serve` answers").strip().splitlines()
    assert serve_line.startswith(f"MLFLOW_TRACKING_URI={DEMO_TRACKING} mlflow models serve -m "
                                 "models:/kronos-lora-crypto@production")
    port = free_port()
    serve_line = serve_line.split("#")[0].replace(DEMO_TRACKING, tracking_uri).replace("5001", str(port))
    curl_line = curl_line.replace("5001", str(port))
    with mlflow_model_server(["bash", "-c", f"exec env {serve_line}"], port, tmp_path / "serve.log"):
        answer = subprocess.run(["bash", "-c", curl_line], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    rows = json.loads(answer.stdout)["predictions"]
    assert len(rows) == 3 and all(np.isfinite(r["close"]) for r in rows)
    assert [pd.Timestamp(r["timestamp"]) for r in rows] == [
        pd.Timestamp(f"2019-10-17 {h}:00", tz="UTC") for h in (10, 11, 12)]
