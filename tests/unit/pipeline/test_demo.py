"""The demo's closing table (the rows come from the registry: tests/integration/test_readme.py)."""

from __future__ import annotations

from kronos_rolling.pipeline.demo import VERDICT_COLUMNS, verdict_table


def test_the_verdicts_are_one_aligned_row_per_class_under_a_header_naming_the_metric():
    rows = [
        {"class": "pooled", "version": "v1", "decision": "promoted by the guard", "reference": "base",
         "difference": "-2.07e-04 [-3.77e-04, -3.65e-05]", "skill": "-0.102", "serves now": "kronos-lora-pooled v1"},
        {"class": "forex_commodity", "version": "-", "decision": "-", "reference": "-", "difference": "-",
         "skill": "-", "serves now": "pooled (no class version in @production)"},
    ]
    header, pooled, forex = verdict_table(rows, "val_crps")
    assert header.split()[:4] == ["class", "version", "decision", "reference"]
    assert "val_crps - reference [interval]" in header and header.rstrip().endswith("serves now")
    for column in VERDICT_COLUMNS[1:]:  # every column starts at the same place on every line
        at = header.index(column if column != "difference" else "val_crps")
        assert pooled[at - 1] == " " and forex[at - 1] == " " and pooled[at] != " ", column
    assert forex.rstrip().endswith("pooled (no class version in @production)")
