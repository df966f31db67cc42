"""Cadence: the pure rule on tables of cases, then its state on a real registry and the CLI."""

from __future__ import annotations

from datetime import date

import pytest

from kronos_rolling.registry import cadence
from kronos_rolling.registry.cadence import (
    MONTHLY,
    QUARTERLY,
    CadenceState,
    RetrainRecord,
    after_retrain,
    is_retrain_due,
    with_mode,
)
from kronos_rolling.settings import Thresholds

D = date.fromisoformat


def state(mode=MONTHLY, last=None, since=None):
    retrains = (RetrainRecord(D(last), mode, 0.1),) if last else ()
    return CadenceState(mode=mode, since=D(since) if since else None, retrains=retrains)


# mode, last retrain, as_of, due, next_due
DUE_CASES = [
    (MONTHLY, None, "2024-03-15", True, "2024-03-15"),
    (MONTHLY, "2024-03-01", "2024-03-01", False, "2024-04-01"),  # same day
    (MONTHLY, "2024-03-01", "2024-03-31", False, "2024-04-01"),
    (MONTHLY, "2024-03-01", "2024-04-01", True, "2024-04-01"),  # the next 1st
    (MONTHLY, "2024-03-03", "2024-04-01", True, "2024-04-01"),  # a late run does not slip
    (MONTHLY, "2024-03-31", "2024-04-01", True, "2024-04-01"),
    (MONTHLY, "2024-01-01", "2024-06-20", True, "2024-06-20"),  # missed months: due once
    (MONTHLY, "2023-12-01", "2024-01-01", True, "2024-01-01"),  # across a year
    (MONTHLY, "2024-05-01", "2024-04-01", False, "2024-06-01"),  # as-of before last retrain
    (QUARTERLY, None, "2024-03-15", True, "2024-03-15"),
    (QUARTERLY, "2024-01-01", "2024-02-01", False, "2024-04-01"),
    (QUARTERLY, "2024-01-01", "2024-03-31", False, "2024-04-01"),
    (QUARTERLY, "2024-01-01", "2024-04-01", True, "2024-04-01"),
    (QUARTERLY, "2024-01-05", "2024-04-01", True, "2024-04-01"),
    (QUARTERLY, "2024-11-01", "2025-01-01", False, "2025-02-01"),
    (QUARTERLY, "2024-11-01", "2025-02-01", True, "2025-02-01"),
]


def run(changes, start=None, thresholds=Thresholds(), first=date(2024, 1, 1)):
    """Apply retrains, one per month from `first`. A change is a number (measured precisely:
    an interval of +/- 0.004 around it), a (delta, lo, hi) tuple, or None (no production)."""
    s = start or CadenceState()
    for i, change in enumerate(changes):
        month = first.month - 1 + i
        on = date(first.year + month // 12, month % 12 + 1, 1)
        delta, lo, hi = (change if isinstance(change, tuple) else
                         (None, None, None) if change is None else (change, change - 0.004, change + 0.004))
        s = after_retrain(s, on, delta, str(i + 1), thresholds, sharpe_lo=lo, sharpe_hi=hi)
    return s


WIDE = (0.0, -0.5, 0.5)  # straddles zero, and reaches far past the band: no evidence of stability

# changes of consecutive retrains, expected mode afterwards
SWITCH_CASES = [
    ([], MONTHLY),
    ([0.01, 0.02], MONTHLY),  # only two
    ([0.01, 0.02, 0.04], QUARTERLY),  # three measured small changes
    ([0.01, 0.02, 0.047], MONTHLY),  # its interval reaches 0.051: not inside the band
    ([0.01, -0.03, 0.0], QUARTERLY),  # small changes either way are stable
    ([0.01, -0.30, 0.0], MONTHLY),  # a large worsening is drift, not stability
    ([WIDE, WIDE, WIDE], MONTHLY),  # an interval that straddles zero is not stability by itself
    ([0.01, (0.0, -0.04, 0.04), 0.02], QUARTERLY),  # straddles zero but lies inside the band: stable
    ([0.01, 0.02, (0.03, None, None)], MONTHLY),  # no interval: not measured
    ([None, 0.01, 0.02], MONTHLY),  # the first version had nothing to compare with
    ([None, 0.01, 0.02, 0.03], QUARTERLY),
    ([0.01, 0.2, 0.01, 0.02], MONTHLY),  # a real gain breaks the streak
    ([0.01, 0.2, 0.01, 0.02, 0.03], QUARTERLY),
    ([float("nan"), 0.01, 0.02], MONTHLY),  # a diverged evaluation counts as unknown
    # once quarterly: small or unmeasured changes keep it there, a measured large one (either way) goes back
    ([0.01, 0.02, 0.03, 0.10], QUARTERLY),
    ([0.01, 0.02, 0.03, 0.16], MONTHLY),
    ([0.01, 0.02, 0.03, -0.20], MONTHLY),
    ([0.01, 0.02, 0.03, (0.3, -0.1, 0.7)], QUARTERLY),  # large, but not measurably so
    ([0.01, 0.02, 0.03, None], QUARTERLY),
    # back to monthly: a fresh streak of three is needed
    ([0.01, 0.02, 0.03, 0.3, 0.01, 0.01], MONTHLY),
    ([0.01, 0.02, 0.03, 0.3, 0.01, 0.01, 0.01], QUARTERLY),
]


@pytest.mark.parametrize("mode, last, as_of, due, next_due", DUE_CASES)
def test_is_retrain_due(mode, last, as_of, due, next_due):
    decision = is_retrain_due(state(mode, last), D(as_of))
    assert decision.due is due, decision.reason
    assert decision.next_due == D(next_due)
    assert mode in decision.reason or "before the last retrain" in decision.reason


def test_quarterly_interval_is_a_threshold():
    decision = is_retrain_due(state(QUARTERLY, "2024-01-01"), D("2024-03-01"),
                              Thresholds(quarterly_interval_months=2))
    assert decision.due


@pytest.mark.parametrize("deltas, mode", SWITCH_CASES, ids=[str(c[0]) for c in SWITCH_CASES])
def test_cadence_switches(deltas, mode):
    assert run(deltas).mode == mode


def test_switch_records_reason_and_date():
    s = run([0.01, 0.02, 0.04])
    assert s.since == D("2024-03-01")
    assert "+0.010 [+0.006, +0.014], +0.020 [+0.016, +0.024], +0.040 [+0.036, +0.044]" in s.reason
    assert "inside ±0.05" in s.reason
    back = run([0.3], start=s, first=D("2024-06-01"))
    assert back.mode == MONTHLY and back.since == D("2024-06-01") and "+0.300 [+0.296, +0.304]" in back.reason


def test_thresholds_drive_the_switch():
    t = Thresholds(stall_sharpe_delta=0.1, stall_retrains=2, resume_monthly_sharpe_change=0.5)
    assert run([0.09, 0.09], thresholds=t).mode == QUARTERLY
    assert run([0.09, 0.09, 0.4], thresholds=t).mode == QUARTERLY
    assert run([0.09, 0.09, 0.51], thresholds=t).mode == MONTHLY


def test_operator_choice_restarts_the_streak():
    s = run([0.01, 0.02])
    s = with_mode(s, MONTHLY, D("2024-02-15"), "operator")
    # the two stalls before the override do not count towards a new streak
    assert run([0.01], start=s, first=D("2024-03-01")).mode == MONTHLY
    assert run([0.01] * 3, start=s, first=D("2024-03-01")).mode == QUARTERLY
    s = with_mode(s, QUARTERLY, D("2024-02-15"), "operator")
    assert s.mode == QUARTERLY and s.reason == "operator"
    with pytest.raises(ValueError):
        with_mode(s, "weekly", D("2024-02-15"), "x")


def test_records_are_bounded_and_round_trip():
    s = run([0.3] * 30)
    assert len(s.retrains) == 12 and s.last_retrain == D("2026-06-01")
    assert cadence.from_json(cadence.to_json(s)) == s
    for bad in ("{", '{"mode": "weekly"}', '{"nomode": 1}', "[]"):
        with pytest.raises(ValueError):
            cadence.from_json(bad)
