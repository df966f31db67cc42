"""Each month: does the calibration a serving version carries still help, out of sample?

A version's calibration was fitted on its own validation month. Every later month's
evaluation scores the registered versions beside the candidate (the class's @production,
the pooled adapter) on a month they never saw; there their calibrated intervals
(`served_val_coverage_*`) stand beside their own (`val_coverage_*`). The pure rule,
`registry.guard.decide_calibration`, says whether the calibration keeps being served;
`registry.promotion.record_calibration` writes it on the version (`calibration_served.<class>`,
`calibration_reason.<class>`), with an audit entry whenever it changes. Every entry point that
returns quantiles reads those tags: a withheld calibration is not applied, and the answer says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kronos_rolling.evaluation.span import SpanEvaluation
from kronos_rolling.names import POOLED, registered_model_name
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.registry.guard import CalibrationDecision, decide_calibration
from kronos_rolling.registry.promotion import record_calibration

log = logging.getLogger(__name__)

CHECKED = ("production", "pooled")  # the registered versions an evaluation scores beside a candidate


@dataclass(frozen=True)
class CalibrationCheck:
    registered_model: str
    version: str
    asset_class: str
    decision: CalibrationDecision
    changed: bool  # the served state moved (an audit entry was written)


def calibration_step(label: str, ctx: JobContext, evaluation: SpanEvaluation, versions: dict[str, str]
                     ) -> list[CalibrationCheck]:
    """Decide, for every registered version `evaluation` scored out of sample with a calibration,
    and every class it has one for, whether that calibration is served; record it."""
    checks, seen = [], set()
    span = f"{evaluation.span[0]:%Y-%m-%d}..{evaluation.span[1]:%Y-%m-%d}"
    for name in CHECKED:
        calibration, version = evaluation.calibrations.get(name), versions.get(name)
        if calibration is None or version is None or not evaluation.out_of_sample(calibration):
            continue
        owner = registered_model_name(label if name == "production" else POOLED)
        for asset_class in evaluation.classes:
            if asset_class not in calibration.classes or (owner, version, asset_class) in seen:
                continue  # (under the pooled label, production and pooled are one version)
            seen.add((owner, version, asset_class))
            decision = decide_calibration(evaluation.class_coverage(name, asset_class),
                                          evaluation.class_coverage(name, asset_class, calibration), span=span)
            changed = record_calibration(ctx.client, owner, version, asset_class, decision, lock_dir=ctx.lock_dir,
                                         actor=ctx.actor)
            log.info("%s v%s, %s calibration: %s", owner, version, asset_class, decision.reason)
            checks.append(CalibrationCheck(owner, version, asset_class, decision, changed))
    return checks
