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


# Half the width of one month's 90% interval of a Sharpe change, as a real replay measured it
# (docs/evaluation.md, "Cadence": crypto at H=4, every origin, K=16: widths 1.2 and 4.4, forex 7.3,
# equity 21): one month's annualised Sharpe change is far from precise.
REAL_HALF_WIDTH = 1.4


def run(changes, start=None, thresholds=Thresholds(), first=date(2024, 1, 1)):
    """Apply retrains, one per month from `first`. A change is a number (measured as a real month
    is: an interval of +/- REAL_HALF_WIDTH around it), a (delta, lo, hi) tuple, or None (none measured)."""
    s = start or CadenceState()
    for i, change in enumerate(changes):
        month = first.month - 1 + i
        on = date(first.year + month // 12, month % 12 + 1, 1)
        delta, lo, hi = (change if isinstance(change, tuple) else (None, None, None) if change is None
                         else (change, change - REAL_HALF_WIDTH, change + REAL_HALF_WIDTH))
        s = after_retrain(s, on, delta, str(i + 1), thresholds, sharpe_lo=lo, sharpe_hi=hi)
    return s


# changes of consecutive retrains, expected mode afterwards
SWITCH_CASES = [
    ([], MONTHLY),
    ([0.01, 0.02], MONTHLY),  # only two
    ([0.01, 0.02, 0.04], QUARTERLY),  # three retrains that improved Sharpe by 0.023 on average
    ([0.01, 0.02, 0.10], QUARTERLY),  # 0.043 on average: less than 0.05
    ([0.01, 0.02, 0.13], MONTHLY),  # 0.053 on average: retraining helped by the rule's measure
    ([0.30, -0.30, 0.0], QUARTERLY),  # noise either way: no improvement
    ([0.9, 0.8, -0.5], MONTHLY),  # 0.4 on average, although one month lost
    ([-0.3, -0.3, -0.3], QUARTERLY),  # retraining made it worse: it did not help either
    ([0.01, 0.02, (0.03, None, None)], QUARTERLY),  # a change without an interval still has a value
    ([None, 0.01, 0.02], MONTHLY),  # the first retrain measured nothing: two are not three
    ([None, 0.01, 0.02, 0.03], QUARTERLY),
    ([0.01, 0.6, 0.01, 0.02], MONTHLY),  # the last three average 0.21
    ([0.01, 0.6, 0.01, 0.02, 0.03], QUARTERLY),
    ([float("nan"), 0.01, 0.02], MONTHLY),  # a diverged evaluation counts as unknown
    # once quarterly: a change whose whole interval lies beyond +/-0.15 goes back to monthly
    ([0.01, 0.02, 0.03, 1.3], QUARTERLY),  # large, but its interval reaches -0.1: not measurably
    ([0.01, 0.02, 0.03, 1.6], MONTHLY),
    ([0.01, 0.02, 0.03, -1.6], MONTHLY),
    ([0.01, 0.02, 0.03, None], QUARTERLY),
    # back to monthly: a fresh streak of three is needed
    ([0.01, 0.02, 0.03, 1.6, 0.01, 0.01], MONTHLY),
    ([0.01, 0.02, 0.03, 1.6, 0.01, 0.01, 0.01], QUARTERLY),
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
    # the three months together: their mean change, and an interval combining theirs (+/-1.4 / sqrt(3))
    assert "improved val_sharpe by +0.023 [-0.785, +0.832] on average" in s.reason
    assert "+0.010 [-1.390, +1.410], +0.020 [-1.380, +1.420], +0.040 [-1.360, +1.440]" in s.reason
    assert "less than 0.05, so retraining did not help" in s.reason
    back = run([1.6], start=s, first=D("2024-06-01"))
    assert back.mode == MONTHLY and back.since == D("2024-06-01") and "+1.600 [+0.200, +3.000]" in back.reason


def test_pooled_change_combines_the_months_intervals():
    records = [RetrainRecord(D("2024-01-01"), MONTHLY, d, None, d - 1.1, d + 1.1) for d in (0.0, 0.3, -0.3)]
    together = cadence.pooled_change(records)
    assert together.mean == pytest.approx(0.0)
    assert together.hi - together.lo == pytest.approx(2 * 1.1 * 3 ** 0.5 / 3)
    assert cadence.pooled_change([*records[:2], RetrainRecord(D("2024-03-01"), MONTHLY, 0.1)]).lo is None


def test_thresholds_drive_the_switch():
    t = Thresholds(stall_sharpe_delta=0.1, stall_retrains=2, resume_monthly_sharpe_change=0.5)
    assert run([0.09, 0.09], thresholds=t).mode == QUARTERLY
    assert run([0.09, 0.12], thresholds=t).mode == MONTHLY  # 0.105 on average
    assert run([0.09, 0.09, 1.8], thresholds=t).mode == QUARTERLY  # its interval reaches 0.4
    assert run([0.09, 0.09, 1.91], thresholds=t).mode == MONTHLY


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
