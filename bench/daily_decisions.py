"""Can daily markets be decided? A 12-month replay of daily bars only, at H=16.

    python bench/daily_decisions.py                       # 2017-03 + 12 months, H=16
    python bench/daily_decisions.py --months 6 --horizon 16

It builds a data folder with ONE daily series per class from the bundled history
(BTCUSD-1D for crypto, ^GSPC for equity, EURUSD's hourly bars of 2017 aggregated to
daily bars for forex, the FX day opening at 22:00 UTC), pre-trains the tiny base on it before the first validation month,
and replays the monthly job with `simulate`'s CPU-sized settings at the given horizon,
against a tracking server of its own. One month of daily bars at H=16 holds about two
non-overlapping horizons, too few for an interval: candidates wait as pending challengers
and are judged again on a growing span.

Goal (issue 19): every class reaches a decision with an interval at least once a quarter
(in every three consecutive months of its data). Prints, per class and month, the decision,
the horizons and interval it rested on, and whether the goal holds; the rows go to
WORKDIR/daily-decisions.csv. Figures: docs/evaluation.md ("Daily markets").
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from kronos_rolling.data.store import DataStore
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.replay import SimulationSettings, simulate, tracking_for_simulation
from kronos_rolling.settings import BUNDLED_DATA_DIR, load_settings
from kronos_rolling.training.pretrain.run import pretrain_base

DAILY = {"crypto": "BTCUSD-1D", "equity": "^GSPC", "forex_commodity": "EURUSD-1D"}


def daily_store(folder: Path) -> DataStore:
    """One daily series per class, from the bundled data (EURUSD aggregated from hourly bars)."""
    folder.mkdir(parents=True, exist_ok=True)
    bundled = DataStore(BUNDLED_DATA_DIR)
    for symbol in ("BTCUSD-1D", "^GSPC"):
        shutil.copy(bundled.path_of(symbol), folder / bundled.path_of(symbol).name)
    hourly = bundled.load("EURUSD").set_index("timestamp")
    # The FX day opens at 22:00 UTC on the eve (Sunday evening opens Monday): shift by 2 hours.
    hourly.index = hourly.index + pd.Timedelta(hours=2)
    daily = hourly.resample("1D").agg({"open": "first", "high": "max", "low": "min", "close": "last",
                                       "volume": "sum", "amount": "sum"}).dropna(subset=["close"])
    daily = daily[daily.index.day_of_week < 5]
    daily.reset_index().to_parquet(folder / "EURUSD-1D.parquet", index=False)
    shutil.copy(BUNDLED_DATA_DIR / "events.csv", folder / "events.csv")
    return DataStore(folder)


def quarterly_goal(rows: pd.DataFrame) -> bool:
    """A decision with an interval in every three consecutive months the class had data for."""
    months = rows[rows["action"] != "skipped"]
    decided = (months["decision"].isin(["promoted", "refused"]) & months["decision_diff_lo"].notna()).tolist()
    return len(decided) >= 3 and all(any(decided[i:i + 3]) for i in range(len(decided) - 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", default="2017-03")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".kronos-rolling" / "bench-daily-decisions")
    args = parser.parse_args()
    started = time.monotonic()
    store = daily_store(args.workdir / "data")
    first = pd.Timestamp(args.start + "-01", tz="UTC")
    base_dir = args.workdir / "base"
    if not (base_dir / "pretrain.json").exists():
        pretrain_base(store, base_dir, until=(first - pd.DateOffset(months=1)).isoformat(), force=True,
                      progress=False)
    base = BaseModelRef.resolve(str(base_dir))
    server_dir = args.workdir / f"server-{args.start}-{args.months}m-h{args.horizon}"
    shutil.rmtree(server_dir, ignore_errors=True)
    settings = load_settings({"KRONOS_HOME": str(args.workdir / "home")})
    with tracking_for_simulation(None, server_dir) as tracking:
        ctx = JobContext.from_settings(settings, tracking, store)
        report = simulate(ctx, base, args.start, args.months, settings=SimulationSettings(horizon=args.horizon),
                          echo=print)
    frame = report.frame()
    frame.to_csv(args.workdir / "daily-decisions.csv", index=False)
    print()
    print("| class | series | months with data | decisions with an interval | pending months "
          "| median horizons at a decision | a decision every quarter |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for asset_class, rows in frame.groupby("asset_class"):
        live = rows[rows["action"] != "skipped"]
        decided = live[live["decision"].isin(["promoted", "refused"]) & live["decision_diff_lo"].notna()]
        goal = quarterly_goal(rows)
        ok &= goal
        horizons = decided["decision_horizons"].median() if len(decided) else math.nan
        print(f"| {asset_class} | {DAILY[asset_class]} | {len(live)} | {len(decided)} "
              f"({', '.join(decided['month'])}) | {(live['decision'] == 'pending').sum()} | {horizons:.1f} "
              f"| {'yes' if goal else 'NO'} |")
    print(f"\nreplayed in {time.monotonic() - started:.0f}s; rows in {args.workdir / 'daily-decisions.csv'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
