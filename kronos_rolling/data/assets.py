"""Which asset class a symbol belongs to: crypto, forex_commodity or equity.

Each class gets its own monthly fine-tune, so a wrong class silently trains a symbol
with the wrong market. The rules below recognise the usual spellings across exchanges
and data vendors; anything they cannot place with confidence is an error that says
how to add an override, never a guess. An override always wins over the rules.

Overrides live in `asset_classes.csv` in the data folder: a header line
`symbol,asset_class`, then one `SYMBOL,class` per line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.errors import DataError

CRYPTO, FOREX_COMMODITY, EQUITY = ASSET_CLASSES
OVERRIDES_FILE = "asset_classes.csv"

# Coins and tokens seen as the base of a trading pair (the most traded ones; others
# need an override).
CRYPTO_ASSETS = frozenset(
    """
    BTC XBT ETH LTC XRP BCH BSV ADA DOT SOL DOGE SHIB AVAX MATIC POL LINK UNI ATOM XLM
    ALGO TRX ETC XMR EOS XTZ NEO DASH ZEC FIL AAVE COMP MKR SNX YFI SUSHI CRV BAT ZRX
    ENJ MANA SAND AXS GRT NEAR FTM ICP APT ARB OP SUI SEI TIA INJ PEPE WIF BONK FLOKI
    TON HBAR VET EGLD THETA KSM RUNE CAKE BNB FTT OKB LEO CRO HT KCS GALA CHZ FLOW
    IOTA MIOTA XEM QTUM ZIL ONE WAVES OMG ICX LRC 1INCH ENS LDO RPL GMX DYDX BLUR
    JUP PYTH STX IMX RNDR RENDER FET AGIX OCEAN WLD ORDI KAS XDC HNT MINA
    USDT USDC BUSD DAI TUSD USDP FDUSD PYUSD UST WBTC WETH STETH
    """.split()
)
# Quotes that only exist on crypto venues: a pair quoted in one of these is crypto.
CRYPTO_QUOTES = frozenset("USDT USDC BUSD DAI TUSD USDP FDUSD PYUSD UST BTC XBT ETH BNB".split())
FIAT_CURRENCIES = frozenset(
    """
    USD EUR JPY GBP CHF AUD CAD NZD SEK NOK DKK HKD SGD CNH CNY MXN ZAR TRY PLN HUF CZK
    ILS INR KRW BRL RUB THB TWD IDR MYR PHP CLP COP PEN ARS SAR AED KWD QAR RON BGN
    HRK ISK NGN EGP KES PKR VND UAH KZT
    """.split()
)
# Metal and energy codes used as the base of spot/CFD quotes (XAUUSD, XTIUSD, ...).
COMMODITY_CODES = frozenset("XAU XAG XPT XPD XCU XTI XBR XNG WTI BRENT".split())
COMMODITY_NAMES = frozenset("USOIL UKOIL NGAS NATGAS SPOTCRUDE SPOTBRENT".split())

# Futures roots, as written before `=F` (Yahoo) or on their own with a contract month.
COMMODITY_FUTURES = frozenset(
    """
    GC SI HG PL PA MGC SIL CL BZ NG HO RB QM QG ZC ZW ZS ZM ZL ZO ZR KE KC CC SB CT OJ
    LE HE GF LBS DX 6E 6J 6B 6A 6C 6S 6N 6M E7 J7 M6E
    """.split()
)
EQUITY_FUTURES = frozenset("ES NQ YM RTY MES MNQ MYM M2K EMD NKD".split())
CRYPTO_FUTURES = frozenset("BTC ETH MBT MET BRR".split())

# Exchange suffixes as written by Yahoo, Reuters, Bloomberg-lite and stooq.
EQUITY_EXCHANGE_SUFFIXES = frozenset(
    """
    KS KQ SS SZ SH HK T TYO L LN DE F PA AS BR MI MC LS SW ST OL CO HE IR VI TO V CN NE
    AX NZ NS BO SI JK BK KL TW TWO SA MX BA SN IS TA JO US N OQ O A PK
    """.split()
)

# A trailing spacing tag that marks one of several series of the same instrument
# (`BTCUSD-1D` is the daily series of BTCUSD); it does not change the class.
_SPACING_TAG = re.compile(r"-\d+(MIN|M|H|D|W)$")
# Venue prefixes in TradingView style: `BINANCE:BTCUSDT`, `NASDAQ:AAPL`.
_VENUE_PREFIX = re.compile(r"^[A-Z0-9_]+:")
# Derivative tags on crypto pairs: BTC-PERP, BTCUSDT.P, BTC-USDT-SWAP, BTCUSD_PERP.
_CRYPTO_DERIVATIVE_TAG = re.compile(r"([-_.](PERP|PERPETUAL|SWAP|P|FUTURES?))$")
_PAIR_SEPARATORS = re.compile(r"[/_\-]")
_TICKER = re.compile(r"^[A-Z]{1,5}$")
_SHARE_CLASS = re.compile(r"^[A-Z]{1,5}[.\-/][A-Z]{1,2}$")
_NUMERIC_TICKER = re.compile(r"^\d{4,6}$")
_FUTURES_CONTRACT = re.compile(r"^([A-Z0-9]{1,3}?)[FGHJKMNQUVXZ]\d{1,2}$")


def normalise_symbol(symbol: str) -> str:
    """The form rules and overrides compare: upper case, no surrounding spaces."""
    return str(symbol).strip().upper()


def classify_asset(symbol: str, overrides: dict | None = None) -> str:
    """The asset class of `symbol`: "crypto", "forex_commodity" or "equity".

    `overrides` maps symbols to classes and wins over every rule. A symbol no rule
    covers raises DataError explaining how to add an override.
    """
    key = normalise_symbol(symbol)
    if not key:
        raise DataError("empty symbol: give a ticker such as AAPL, BTCUSDT or EURUSD")
    if overrides:
        normalised = {normalise_symbol(k): v for k, v in overrides.items()}
        for candidate in (key, _SPACING_TAG.sub("", key)):
            if candidate in normalised:
                return _checked_class(normalised[candidate], f"override for {symbol!r}")
    asset_class = _classify_by_rules(_VENUE_PREFIX.sub("", _SPACING_TAG.sub("", key)))
    if asset_class is None:
        raise DataError(
            f"cannot tell the asset class of symbol {symbol!r}: no rule matches it. "
            f"Add a line `{key},<class>` to {OVERRIDES_FILE} in the data folder "
            f"(header `symbol,asset_class`; class one of {', '.join(ASSET_CLASSES)}), "
            "or pass --asset-class when importing it."
        )
    if asset_class == "ambiguous":
        raise DataError(
            f"symbol {symbol!r} is ambiguous: it is a crypto or currency code and could "
            "also be a stock ticker. Write crypto and currencies as a pair (BTCUSD, "
            f"BTC-USDT, EUR/USD), or add a line `{key},<class>` to {OVERRIDES_FILE} "
            f"in the data folder (header `symbol,asset_class`)."
        )
    return asset_class


def _classify_by_rules(key: str) -> str | None:
    if key.endswith("=X"):  # Yahoo currency pairs: EURUSD=X, USDJPY=X, JPY=X
        return FOREX_COMMODITY
    if key.endswith("=F"):  # Yahoo continuous futures: GC=F, CL=F, ES=F, BTC=F
        return _futures_class(key[:-2])
    if key.startswith("^"):  # index quotes: ^GSPC, ^IXIC, ^N225
        return EQUITY if re.fullmatch(r"\^[A-Z0-9.]+", key) else None
    if key in COMMODITY_NAMES:
        return FOREX_COMMODITY

    pair_class = _pair_class(key)
    if pair_class is not None:
        return pair_class

    if key in CRYPTO_ASSETS or key in FIAT_CURRENCIES or key in COMMODITY_CODES:
        return "ambiguous"
    if "." in key:
        base, _, suffix = key.rpartition(".")
        if suffix in EQUITY_EXCHANGE_SUFFIXES and re.fullmatch(r"[A-Z0-9\-]{1,12}", base):
            return EQUITY
    if _TICKER.match(key) or _SHARE_CLASS.match(key) or _NUMERIC_TICKER.match(key):
        return EQUITY
    contract = _FUTURES_CONTRACT.match(key)  # e.g. CLZ4, ESH25, GCM2024 is not covered
    if contract:
        return _futures_class(contract.group(1))
    return None


def _pair_class(key: str) -> str | None:
    """Class of a currency, crypto or metal pair written with or without a separator."""
    stripped = _CRYPTO_DERIVATIVE_TAG.sub("", key)
    derivative = stripped != key
    parts = [p for p in _PAIR_SEPARATORS.split(stripped) if p]
    if len(parts) == 2:
        return _class_of_pair(*parts)
    if len(parts) == 1:
        (word,) = parts
        if derivative and word in CRYPTO_ASSETS:  # BTC-PERP, ETH-PERP
            return CRYPTO
        for cut in range(2, len(word) - 1):
            found = _class_of_pair(word[:cut], word[cut:])
            if found is not None:
                return found
    return None


def _class_of_pair(base: str, quote: str) -> str | None:
    if base in CRYPTO_ASSETS and (quote in FIAT_CURRENCIES or quote in CRYPTO_QUOTES or quote in CRYPTO_ASSETS):
        return CRYPTO
    if quote in CRYPTO_QUOTES and base in FIAT_CURRENCIES | CRYPTO_ASSETS:
        return CRYPTO
    if base in FIAT_CURRENCIES | COMMODITY_CODES and quote in FIAT_CURRENCIES:
        return FOREX_COMMODITY
    return None


def _futures_class(root: str) -> str | None:
    if root in COMMODITY_FUTURES:
        return FOREX_COMMODITY
    if root in EQUITY_FUTURES:
        return EQUITY
    if root in CRYPTO_FUTURES:
        return CRYPTO
    return None


def _checked_class(value, where: str) -> str:
    text = str(value).strip().lower()
    if text not in ASSET_CLASSES:
        raise DataError(f"{where}: asset class {value!r} is not one of {', '.join(ASSET_CLASSES)}")
    return text


def read_overrides(path: str | Path) -> dict[str, str]:
    """Read an `asset_classes.csv` (symbol,asset_class); a missing file means no overrides."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        table = pd.read_csv(path, dtype=str, comment="#", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the asset-class overrides ({exc}); "
                        "expected a header `symbol,asset_class` and one `SYMBOL,class` per line") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    if list(table.columns) != ["symbol", "asset_class"]:
        raise DataError(f"{path}: header must be `symbol,asset_class`, found {','.join(table.columns)}")
    overrides: dict[str, str] = {}
    for offset, (symbol, value) in enumerate(zip(table["symbol"], table["asset_class"])):
        line = offset + 2  # header is line 1 (comment lines are not counted)
        if pd.isna(symbol) or not str(symbol).strip():
            raise DataError(f"{path}, line {line}: empty symbol; write `SYMBOL,class`")
        key = normalise_symbol(symbol)
        if key in overrides:
            raise DataError(f"{path}, line {line}: symbol {key} is listed twice; keep one line")
        overrides[key] = _checked_class("" if pd.isna(value) else value, f"{path}, line {line}")
    return overrides


def write_overrides(path: str | Path, overrides: dict[str, str]) -> None:
    """Write overrides sorted by symbol (callers make it atomic by writing a temp path)."""
    lines = ["symbol,asset_class"] + [f"{s},{c}" for s, c in sorted(overrides.items())]
    Path(path).write_text("\n".join(lines) + "\n")
