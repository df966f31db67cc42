"""Out-of-sample coverage of the per-class calibration, month after month, with nothing else
in the way (issue 20's goal, measured where the 12-month replay could not).

The replay (`kronos-rolling simulate`) measures the 80% intervals of what serves after each
job. On the bundled data that is, most months, the bare base (no retrain beats it), which
carries no calibration, so its calibrated and uncalibrated figures are the same numbers. This
script measures the calibration method itself on the model that served: each month M it
evaluates the frozen base on M's validation span (the month before M) exactly as the job
evaluates a candidate (CPU-sized settings of the replay: lookback 32, H = 4, 8 paths, every
origin), fits the per-class calibration there (`SpanEvaluation.fit_calibration`, at
`--min-outcomes`), and scores it on the month after (the month it would serve), beside the
uncalibrated intervals. Printed: per class and month, then the yearly means per class.

    python bench/calibration_oos.py --start 2018-01 --months 12                 # the documented minimum, 100
    python bench/calibration_oos.py --start 2018-01 --months 12 --min-outcomes 30

Uses KRONOS_HOME's pre-trained tiny base (the one `simulate` pre-trains, reused when present).
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", default="2018-01")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--min-outcomes", type=int, default=None, help="default: Thresholds.calibration_min_outcomes")
    args = parser.parse_args()

    from kronos_rolling import ASSET_CLASSES
    from kronos_rolling.data.store import DataStore
    from kronos_rolling.evaluation.span import evaluate_span
    from kronos_rolling.pipeline.replay import SimulationSettings, months_from, offline_tiny_base
    from kronos_rolling.settings import load_settings
    from kronos_rolling.tracking.adapters import load_base_forecast_model

    settings = load_settings()
    minimum = args.min_outcomes or settings.thresholds.calibration_min_outcomes
    store = DataStore(settings.data_dir)
    months = [pd.Timestamp(m, tz="UTC") for m in months_from(args.start, args.months)]  # the jobs' as_of
    first_span = months[0] - pd.DateOffset(months=1)
    base = offline_tiny_base(store, settings.home.root, first_span, False)
    model = load_base_forecast_model(base)
    eval_settings = SimulationSettings().eval_settings()
    print(f"base {base.describe()}, lookback {eval_settings.lookback}, H {eval_settings.horizon}, "
          f"{eval_settings.samples} paths, min outcomes {minimum}, load {os.getloadavg()[0]:.1f}", flush=True)
    started = time.monotonic()
    evaluations = {}
    for start in [first_span, *months]:
        span = (start, start + pd.DateOffset(months=1))
        evaluations[start] = evaluate_span(store, list(ASSET_CLASSES), span, {"base": model}, eval_settings, None)
    rows = []
    for job in months:  # the job as of `job` fits on the month before it, then serves the month from `job` on
        fitted, served = evaluations[job - pd.DateOffset(months=1)], evaluations[job]
        calibration = fitted.fit_calibration("base", minimum)
        for asset_class in served.classes:
            uncalibrated = served.class_coverage("base", asset_class)[0.8]
            entry = calibration.classes.get(asset_class)
            calibrated = served.class_coverage("base", asset_class, calibration)[0.8] if entry else None
            rows.append({"asset_class": asset_class, "month": f"{job:%Y-%m}",
                         "fitted_on_outcomes": entry.outcomes if entry else None,
                         "uncalibrated_80": uncalibrated, "calibrated_80": calibrated,
                         "why_not": None if entry else calibration.why_not(asset_class)})
    frame = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{len(evaluations)} monthly evaluations in {time.monotonic() - started:.0f}s; yearly means per class "
          "(80% intervals, out of sample; calibrated where a calibration was fitted, else as served: uncalibrated):")
    for asset_class, part in frame.groupby("asset_class"):
        served = part["calibrated_80"].fillna(part["uncalibrated_80"])
        fitted = part["calibrated_80"].notna()
        print(f"  {asset_class}: served {served.mean():.1%} (uncalibrated {part['uncalibrated_80'].mean():.1%}) over "
              f"{len(part)} month(s), calibrated in {int(fitted.sum())}"
              + (f" (those months: {part.loc[fitted, 'calibrated_80'].mean():.1%} calibrated vs "
                 f"{part.loc[fitted, 'uncalibrated_80'].mean():.1%})" if fitted.any() else ""), flush=True)


if __name__ == "__main__":
    main()
