"""Asset classes: rules for the usual spellings, overrides that win, errors that say how to fix."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kronos_rolling.cli.main import main
from kronos_rolling.data.assets import ASSET_CLASSES, classify_asset, read_overrides
from kronos_rolling.errors import DataError

SPELLINGS = {
    "crypto": ["BTCUSDT", "BTC-USD", "BTC/USDT", "ETHUSD", "btcusdt", "XBTUSD", "ETH-EUR", "SOLUSDC",
               "BINANCE:BTCUSDT", "BTC-PERP", "BTCUSDT.P", "ETHBTC", "BTCUSD-1D", "BTC=F", "DOGE/USD"],
    "forex_commodity": ["EURUSD", "EUR/USD", "EUR_USD", "USDJPY=X", "JPY=X", "XAUUSD", "XAGUSD", "GC=F",
                        "CL=F", "NG=F", "6E=F", "GBPJPY", "USD/CNH", "USOIL", "XTIUSD", "FX:EURUSD", "CLZ4"],
    "equity": ["AAPL", "BRK.B", "BRK-B", "SPY", "^GSPC", "^IXIC", "005930.KS", "600519.SS", "0700.HK",
               "7203.T", "VOD.L", "SAP.DE", "RY.TO", "ES=F", "NASDAQ:AAPL", "MSFT", "GOOG", "COIN", "BTCS"],
}


@pytest.mark.parametrize("symbol,expected", [(s, c) for c, symbols in SPELLINGS.items() for s in symbols])
def test_usual_spellings_are_classified(symbol, expected):
    assert classify_asset(symbol) == expected


def test_constant_is_the_package_list():
    import kronos_rolling

    assert ASSET_CLASSES == kronos_rolling.ASSET_CLASSES == ("crypto", "forex_commodity", "equity")


@pytest.mark.parametrize("symbol", ["FOO123X", "12AB=Q", "?!", "ZZ=F"])
def test_unknown_symbol_says_how_to_add_an_override(symbol):
    with pytest.raises(DataError) as err:
        classify_asset(symbol)
    message = str(err.value)
    assert "asset_classes.csv" in message and "symbol,asset_class" in message
    assert f"{symbol.upper()},<class>" in message


@pytest.mark.parametrize("symbol", ["BTC", "ETH", "EUR", "LINK"])
def test_bare_codes_are_ambiguous_not_guessed(symbol):
    with pytest.raises(DataError, match="ambiguous"):
        classify_asset(symbol)


def test_override_wins_over_rules_and_covers_unknown_symbols():
    overrides = {"gld": "forex_commodity", "MYCOIN-X": "crypto", "BTC": "crypto"}
    assert classify_asset("GLD") == "equity"
    assert classify_asset("GLD", overrides) == "forex_commodity"
    assert classify_asset("mycoin-x", overrides) == "crypto"
    assert classify_asset("BTC", overrides) == "crypto"
    with pytest.raises(DataError, match="not one of"):
        classify_asset("AAPL", {"AAPL": "stocks"})


def test_override_file_errors_name_the_line(tmp_path):
    path = tmp_path / "asset_classes.csv"
    path.write_text("symbol,asset_class\nGLD,forex_commodity\nSPY,bonds\n")
    with pytest.raises(DataError, match=r"line 3.*'bonds'"):
        read_overrides(path)
    path.write_text("ticker,class\nGLD,equity\n")
    with pytest.raises(DataError, match="header must be `symbol,asset_class`"):
        read_overrides(path)
    path.write_text("symbol,asset_class\nGLD,equity\ngld,crypto\n")
    with pytest.raises(DataError, match="line 3.*twice"):
        read_overrides(path)
    assert read_overrides(tmp_path / "missing.csv") == {}


def test_cli_classify_prints_symbol_tab_class(tmp_path):
    result = CliRunner().invoke(main, ["data", "classify", "BTCUSDT", "EUR/USD", "^GSPC", "GC=F"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "BTCUSDT\tcrypto\nEUR/USD\tforex_commodity\n^GSPC\tequity\nGC=F\tforex_commodity\n"


def test_cli_classify_uses_the_data_folder_overrides(tmp_path, monkeypatch):
    (tmp_path / "asset_classes.csv").write_text("symbol,asset_class\nWEIRD1,crypto\n")
    runner = CliRunner()
    assert runner.invoke(main, ["data", "classify", "WEIRD1", "--data", str(tmp_path)]).stdout == "WEIRD1\tcrypto\n"
    assert runner.invoke(main, ["data", "--data", str(tmp_path), "classify", "WEIRD1"]).stdout == "WEIRD1\tcrypto\n"
    monkeypatch.setenv("KRONOS_DATA_DIR", str(tmp_path))
    assert runner.invoke(main, ["data", "classify", "WEIRD1"]).stdout == "WEIRD1\tcrypto\n"


def test_cli_classify_unknown_fails_without_partial_output():
    result = CliRunner().invoke(main, ["data", "classify", "AAPL", "FOO123X"])
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "FOO123X" in result.stderr and "asset_classes.csv" in result.stderr
