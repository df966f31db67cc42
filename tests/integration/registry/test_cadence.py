"""Cadence: the pure rule on tables of cases, then its state on a real registry and the CLI."""

from __future__ import annotations

from datetime import date

import pytest
from support.registry import register_stand_in

from kronos_rolling.errors import RegistryError
from kronos_rolling.registry import cadence, history, schedule
from kronos_rolling.registry.cadence import (
    QUARTERLY,
    CadenceState,
)
from kronos_rolling.names import CADENCE_TAG

D = date.fromisoformat


def test_cadence_lives_on_the_registered_model(clean_registry, cli, lock_dir):
    client = clean_registry
    # before any version: due, and nothing stored
    assert schedule.read_cadence(client, "equity") == CadenceState()
    result = cli("due", "--asset-class", "equity", "--as-of", "2024-01-01")
    assert result.exit_code == 0 and "no retrain recorded" in result.output

    register_stand_in(client, "equity")
    # Three measured, small Sharpe changes: each interval inside (-0.05, +0.05).
    updates = [schedule.record_retrain(client, "equity", str(i + 1), D(f"2024-0{i + 1}-01"), delta,
                                       sharpe_lo=delta - 0.01, sharpe_hi=delta + 0.01, lock_dir=lock_dir)
               for i, delta in enumerate([0.01, 0.02, 0.03])]
    assert [u.switched for u in updates] == [False, False, True]
    stored = client.get_registered_model("kronos-lora-equity").tags[CADENCE_TAG]
    assert cadence.from_json(stored).mode == QUARTERLY
    switch = [e for e in history.read_history(client, "kronos-lora-equity")
              if e.action == history.CADENCE]
    assert len(switch) == 1 and "monthly -> quarterly" in switch[0].reason

    not_due = cli("due", "--asset-class", "equity", "--as-of", "2024-05-01")
    assert not_due.exit_code == 1, not_due.output
    assert "next retrain due on 2024-06-01" in not_due.output and "quarterly" in not_due.output
    due = cli("due", "--asset-class", "equity", "--as-of", "2024-06-01")
    assert due.exit_code == 0 and due.output.startswith("due: quarterly")

    shown = cli("cadence", "--asset-class", "equity")
    assert shown.exit_code == 0 and "quarterly since 2024-03-01" in shown.output
    assert "+0.030 [+0.020, +0.040]" in shown.output

    back = cli("cadence", "--asset-class", "equity", "--set", "monthly", "--as-of", "2024-05-02",
               "--reason", "earnings season")
    assert back.exit_code == 0 and "monthly since 2024-05-02 (earnings season)" in back.output
    monthly = cli("due", "--asset-class", "equity", "--as-of", "2024-05-02")
    assert monthly.exit_code == 0 and "monthly cadence: last retrain on 2024-03-01" in monthly.output
    entries = history.read_history(client, "kronos-lora-equity")
    assert entries[-1].action == history.CADENCE and "earnings season" in entries[-1].reason


def test_unreadable_cadence_is_reported_and_reset_by_an_operator(clean_registry, cli, lock_dir):
    register_stand_in(clean_registry, "forex_commodity")
    clean_registry.set_registered_model_tag("kronos-lora-forex_commodity", CADENCE_TAG, "{oops")
    result = cli("due", "--asset-class", "forex_commodity", "--as-of", "2024-01-01")
    assert result.exit_code == RegistryError.exit_code
    assert "unreadable" in result.output and "--set monthly" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(RegistryError):
        schedule.record_retrain(clean_registry, "forex_commodity", "1", D("2024-01-01"), 0.1, lock_dir=lock_dir)
    fixed = cli("cadence", "--asset-class", "forex_commodity", "--set", "monthly")
    assert fixed.exit_code == 0, fixed.output
    assert cli("due", "--asset-class", "forex_commodity", "--as-of", "2024-01-01").exit_code == 0


def test_due_with_bad_input(cli, tracking_uri):
    unknown = cli("due", "--asset-class", "bonds", "--as-of", "2024-01-01")
    assert unknown.exit_code == 2 and "crypto, forex_commodity, equity, pooled" in unknown.output
    bad_date = cli("due", "--asset-class", "crypto", "--as-of", "2024-13-01")
    assert bad_date.exit_code == 2 and "--as-of" in bad_date.output
