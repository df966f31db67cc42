"""Retrain cadence: monthly at first, quarterly once retrains stop paying off.

Pure functions of a `CadenceState` and an explicit date; `registry/schedule.py` keeps
the state on the registered model and calls these.

- Due: monthly means once per calendar month (the first run on or after the 1st);
  quarterly means once the calendar month is `quarterly_interval_months` after the
  last retrain's. Counting calendar months, not days, keeps a retrain that ran late in
  its month (say on the 3rd) from pushing the next one past the 1st-of-month cron run.
- After each retrain its Sharpe change is recorded: candidate val_sharpe minus that of the
  version serving before it (production, else pooled, else the base), same blocks of the
  same span, with its interval (a bootstrap over calendar buckets, evaluation/compare.py);
  None when it could not be measured (fewer than 3 blocks in every series).
- The phase document's rule, "the last 3 monthly retrains showed < 0.05 Sharpe improvement
  over the prior version", is a one-sided statement: retraining did not help. It is measured
  over the last `stall_retrains` monthly retrains TOGETHER: their mean change, with an
  interval that combines theirs (`pooled_change`). When that mean improvement is below
  `stall_sharpe_delta`, switch to quarterly. The interval is reported beside the decision,
  not required to fit a band: one month's annualised Sharpe change has a 90% interval about
  two units wide, so no band of +/-0.05 could ever hold it.
- In quarterly mode a retrain whose whole interval lies at or beyond
  +/-`resume_monthly_sharpe_change` (the market moved a lot, measurably) switches back.
- An operator may set either mode at any time; a monthly streak then starts afresh.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import date

from kronos_rolling.settings import CADENCE_RECORDS_KEPT, Thresholds

MONTHLY = "monthly"
QUARTERLY = "quarterly"
MODES = (MONTHLY, QUARTERLY)


@dataclass(frozen=True)
class RetrainRecord:
    on: date
    cadence: str  # the mode in force when this retrain ran
    sharpe_delta: float | None
    version: str | None = None
    sharpe_lo: float | None = None  # the interval of the change (None: none could be computed)
    sharpe_hi: float | None = None

    def measured(self) -> bool:
        """The change itself is known (a number)."""
        return self.sharpe_delta is not None and math.isfinite(self.sharpe_delta)

    def has_interval(self) -> bool:
        return self.measured() and all(v is not None and math.isfinite(v) for v in (self.sharpe_lo, self.sharpe_hi))

    def moved(self, change: float) -> bool:
        """The whole interval of the change lies at or beyond ±change."""
        return self.has_interval() and (self.sharpe_lo >= change or self.sharpe_hi <= -change)

    def describe(self) -> str:
        if self.sharpe_delta is None:
            return "n/a (no production to compare with)"
        if not self.has_interval():
            return f"{self.sharpe_delta:+.3f} (no interval)"
        return f"{self.sharpe_delta:+.3f} [{self.sharpe_lo:+.3f}, {self.sharpe_hi:+.3f}]"


@dataclass(frozen=True)
class PooledChange:
    """The mean Sharpe change of several retrains, with an interval combining theirs."""

    mean: float
    lo: float | None
    hi: float | None

    def describe(self) -> str:
        interval = f" [{self.lo:+.3f}, {self.hi:+.3f}]" if self.lo is not None else " (no interval)"
        return f"{self.mean:+.3f}{interval}"


def pooled_change(records: list[RetrainRecord]) -> PooledChange:
    """Mean of the records' changes; its interval adds their half-widths in quadrature (the
    months are disjoint spans, so their errors are close to independent): half = sqrt(sum
    h_i^2) / n around the mean. No interval when one record has none."""
    mean = sum(r.sharpe_delta for r in records) / len(records)
    if not all(r.has_interval() for r in records):
        return PooledChange(mean, None, None)
    half = math.sqrt(sum(((r.sharpe_hi - r.sharpe_lo) / 2) ** 2 for r in records)) / len(records)
    return PooledChange(mean, mean - half, mean + half)


@dataclass(frozen=True)
class CadenceState:
    mode: str = MONTHLY
    since: date | None = None
    reason: str = "initial cadence"
    retrains: tuple[RetrainRecord, ...] = ()

    @property
    def last_retrain(self) -> date | None:
        return max((r.on for r in self.retrains), default=None)


@dataclass(frozen=True)
class DueDecision:
    due: bool
    reason: str
    next_due: date


def interval_months(mode: str, thresholds: Thresholds = Thresholds()) -> int:
    return thresholds.quarterly_interval_months if mode == QUARTERLY else 1


def is_retrain_due(state: CadenceState, as_of: date,
                   thresholds: Thresholds = Thresholds()) -> DueDecision:
    import pandas as pd  # here, not at the top: `kronos-rolling --help` lists MODES without loading pandas

    last = state.last_retrain
    if last is None:
        return DueDecision(True, f"no retrain recorded yet ({state.mode} cadence)", as_of)
    interval = interval_months(state.mode, thresholds)
    next_due = (pd.Period(last, "M") + interval).start_time.date()
    if as_of < last:
        return DueDecision(False, f"as-of {as_of} is before the last retrain on {last}",
                           next_due)
    elapsed = (pd.Period(as_of, "M") - pd.Period(last, "M")).n
    if elapsed >= interval:
        return DueDecision(True, f"{state.mode} cadence: last retrain on {last}, "
                                 f"{elapsed} calendar month(s) ago", as_of)
    return DueDecision(False, f"{state.mode} cadence: last retrain on {last}; next one is due "
                              f"on or after {next_due}", next_due)


def after_retrain(state: CadenceState, on: date, sharpe_delta: float | None, version: str | None = None,
                  thresholds: Thresholds = Thresholds(), *, sharpe_lo: float | None = None,
                  sharpe_hi: float | None = None) -> CadenceState:
    """The state after a retrain on `on`, switching cadence when the rule says so."""
    if sharpe_delta is not None and not math.isfinite(sharpe_delta):
        sharpe_delta = None  # a diverged evaluation says nothing about drift
    record = RetrainRecord(on, state.mode, sharpe_delta, version, sharpe_lo, sharpe_hi)
    kept = max(CADENCE_RECORDS_KEPT, thresholds.stall_retrains)
    new = replace(state, retrains=(*state.retrains, record)[-kept:])

    if state.mode == MONTHLY:
        streak = [r for r in new.retrains
                  if r.cadence == MONTHLY and (state.since is None or r.on >= state.since)]
        last = streak[-thresholds.stall_retrains:]
        if len(last) == thresholds.stall_retrains and all(r.measured() for r in last):
            together = pooled_change(last)
            if together.mean < thresholds.stall_sharpe_delta:
                changes = ", ".join(r.describe() for r in last)
                return replace(new, mode=QUARTERLY, since=on, reason=(
                    f"the last {len(last)} monthly retrains improved val_sharpe by {together.describe()} on "
                    f"average ({changes}): less than {thresholds.stall_sharpe_delta}, so retraining did not help"))
    elif record.moved(thresholds.resume_monthly_sharpe_change):
        return replace(new, mode=MONTHLY, since=on, reason=(
            f"quarterly retrain on {on} changed val_sharpe by {record.describe()}: the whole interval lies "
            f"beyond ±{thresholds.resume_monthly_sharpe_change}"))
    return new


def with_mode(state: CadenceState, mode: str, on: date, reason: str) -> CadenceState:
    """An operator's choice; restarts the monthly streak from `on`."""
    if mode not in MODES:
        raise ValueError(f"cadence must be one of {MODES}, not {mode!r}")
    return replace(state, mode=mode, since=on, reason=reason)


def to_json(state: CadenceState) -> str:
    return json.dumps({
        "mode": state.mode,
        "since": state.since.isoformat() if state.since else None,
        "reason": state.reason,
        "retrains": [{"on": r.on.isoformat(), "cadence": r.cadence, "sharpe_delta": r.sharpe_delta,
                      "sharpe_lo": r.sharpe_lo, "sharpe_hi": r.sharpe_hi, "version": r.version}
                     for r in state.retrains],
    }, sort_keys=True)


def from_json(text: str) -> CadenceState:
    """Parse a stored state; ValueError (with the offending part) when it is malformed."""
    try:
        raw = json.loads(text)
        mode = raw["mode"]
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        return CadenceState(
            mode=mode,
            since=date.fromisoformat(raw["since"]) if raw.get("since") else None,
            reason=str(raw.get("reason", "")),
            retrains=tuple(
                RetrainRecord(date.fromisoformat(r["on"]), r["cadence"], _number(r.get("sharpe_delta")),
                              r.get("version"), _number(r.get("sharpe_lo")), _number(r.get("sharpe_hi")))
                for r in raw.get("retrains", [])),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed cadence state ({exc!r})") from None


def _number(value) -> float | None:
    return None if value is None else float(value)
