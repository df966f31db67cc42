"""Retrain cadence: monthly at first, quarterly once retrains stop paying off.

Pure functions of a `CadenceState` and an explicit date; `registry/schedule.py` keeps
the state on the registered model and calls these.

- Due: monthly means once per calendar month (the first run on or after the 1st);
  quarterly means once the calendar month is `quarterly_interval_months` after the
  last retrain's. Counting calendar months, not days, keeps a retrain that ran late in
  its month (say on the 3rd) from pushing the next one past the 1st-of-month cron run.
- After each retrain its Sharpe delta (candidate val_sharpe minus the previous
  production version's, same span; None when there was no production to compare with)
  is recorded. When the last `stall_retrains` retrains run in monthly mode each improved
  val_sharpe by less than `stall_sharpe_delta` (a negative delta is less), switch to
  quarterly. In quarterly mode a retrain whose |delta| reaches
  `resume_monthly_sharpe_change` (the market moved a lot either way) switches back.
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
    last = state.last_retrain
    if last is None:
        return DueDecision(True, f"no retrain recorded yet ({state.mode} cadence)", as_of)
    interval = interval_months(state.mode, thresholds)
    next_due = _add_months(last.replace(day=1), interval)
    if as_of < last:
        return DueDecision(False, f"as-of {as_of} is before the last retrain on {last}",
                           next_due)
    elapsed = _month_index(as_of) - _month_index(last)
    if elapsed >= interval:
        return DueDecision(True, f"{state.mode} cadence: last retrain on {last}, "
                                 f"{elapsed} calendar month(s) ago", as_of)
    return DueDecision(False, f"{state.mode} cadence: last retrain on {last}; next one is due "
                              f"on or after {next_due}", next_due)


def after_retrain(state: CadenceState, on: date, sharpe_delta: float | None,
                  version: str | None = None,
                  thresholds: Thresholds = Thresholds()) -> CadenceState:
    """The state after a retrain on `on`, switching cadence when the rule says so."""
    if sharpe_delta is not None and not math.isfinite(sharpe_delta):
        sharpe_delta = None  # a diverged evaluation says nothing about drift
    record = RetrainRecord(on, state.mode, sharpe_delta, version)
    kept = max(CADENCE_RECORDS_KEPT, thresholds.stall_retrains)
    new = replace(state, retrains=(*state.retrains, record)[-kept:])

    if state.mode == MONTHLY:
        streak = [r for r in new.retrains
                  if r.cadence == MONTHLY and (state.since is None or r.on >= state.since)]
        last = streak[-thresholds.stall_retrains:]
        if len(last) == thresholds.stall_retrains and all(
                r.sharpe_delta is not None and r.sharpe_delta < thresholds.stall_sharpe_delta
                for r in last):
            deltas = ", ".join(f"{r.sharpe_delta:+.3f}" for r in last)
            return replace(new, mode=QUARTERLY, since=on, reason=(
                f"last {len(last)} monthly retrains improved val_sharpe by {deltas} "
                f"(each < {thresholds.stall_sharpe_delta})"))
    elif sharpe_delta is not None and abs(sharpe_delta) >= thresholds.resume_monthly_sharpe_change:
        return replace(new, mode=MONTHLY, since=on, reason=(
            f"quarterly retrain on {on} changed val_sharpe by {sharpe_delta:+.3f} "
            f"(|change| >= {thresholds.resume_monthly_sharpe_change})"))
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
        "retrains": [{"on": r.on.isoformat(), "cadence": r.cadence,
                      "sharpe_delta": r.sharpe_delta, "version": r.version}
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
                RetrainRecord(date.fromisoformat(r["on"]), r["cadence"],
                              None if r.get("sharpe_delta") is None else float(r["sharpe_delta"]),
                              r.get("version"))
                for r in raw.get("retrains", [])),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed cadence state ({exc!r})") from None


def _month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


def _add_months(day: date, months: int) -> date:
    index = _month_index(day) + months
    return date(index // 12, index % 12 + 1, 1)
