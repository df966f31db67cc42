"""Replay the monthly cron on bundled history: `kronos-rolling simulate --start 2018-01 --months 12`.

Against a real tracking server, `as_of` moves forward one month at a time. Each month the
job of every class runs exactly as cron would run it (due? -> train -> evaluate ->
register -> guard -> alerts -> retention); the pooled adapter is trained once, as of
the start. One row per class and month records what happened, so the phase's success
criteria can be checked on real data before trusting the job: months without
intervention, the guard refusing a worse candidate, the cadence going quarterly after
three stable months, and retention keeping the newest versions.

A drill (`--drill-bad-candidate 2018-06`) sabotages that month's warm start (noise in
the LoRA weights) to watch the guard refuse and the regression alert fire; its rows are
marked as a drill.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from safetensors.torch import load_file, save_file

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import calendar_months, select_training_window
from kronos_rolling.errors import ConfigError, KronosError
from kronos_rolling.evaluation.config import EvalSettings, settings_for
from kronos_rolling.evaluation.span import NAIVE, PERSISTENCE, SpanEvaluation, evaluate_span
from kronos_rolling.files import atomic_file
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.job import JobResult, monthly_job
from kronos_rolling.names import POOLED, PRODUCTION, registered_model_name
from kronos_rolling.registry.schedule import read_cadence
from kronos_rolling.settings import BUNDLED_BASE_DIR, BUNDLED_DATA_DIR, Thresholds
from kronos_rolling.tracking.adapters import (
    calibration_of,
    default_warm_start,
    fetch_adapter,
    load_base_forecast_model,
    load_forecast_model,
)
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.integrity import fetch_verified
from kronos_rolling.tracking.runs import start_run
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port
from kronos_rolling.training.config import TrainConfig
from kronos_rolling.training.pretrain.config import read_pretrain_report
from kronos_rolling.training.pretrain.run import pretrain_base

log = logging.getLogger(__name__)


CPU_SIZED_NOTE = (
    "CPU-sized replay: a few hundred samples per epoch instead of the whole window, so the adapter "
    "gets tens of optimiser steps, not thousands; at the phase's LR its LoRA weights would barely leave "
    "their start and the candidate could not differ measurably from its warm start"
)


@dataclass(frozen=True)
class SimulationSettings:
    """Small enough for two CPU cores and the tiny base; every value can be raised.

    The phase's 5 epochs are kept; the LRs are 20x (rolling) and 10x (pooled) the phase's
    because each epoch here is a capped sample (`max_samples_per_epoch`), and the runs say
    so (`note`, recorded as kronos.non_default_reason). The evaluation is the job's, every
    origin of the month, with K=8 paths instead of 16: on two CPU cores the evaluation is most
    of a month's job (the demo runs four), and the guard's paired intervals come from the
    origins, not the paths.
    """

    lookback: int = 32
    horizon: int = 4
    epochs: int = 5  # the rolling default
    lr: float = 1e-3
    pooled_epochs: int = 4
    pooled_lr: float = 1e-3
    batch_size: int = 32
    max_samples_per_epoch: int = 256
    pooled_max_samples_per_epoch: int = 512
    eval_samples: int = 8  # half the job's EvalSettings.samples (recorded as eval_samples 8 instead of 16)
    eval_max_origins: int | None = None  # every origin
    seed: int = 42
    note: str = CPU_SIZED_NOTE

    def train_config(self, mode: str, as_of: date, asset_class: str | None, base: BaseModelRef) -> TrainConfig:
        pooled = mode == "pooled"
        return TrainConfig(
            mode=mode, as_of=as_of, asset_class=asset_class, base=base,
            epochs=self.pooled_epochs if pooled else self.epochs, lr=self.pooled_lr if pooled else self.lr,
            lookback=self.lookback, horizon=self.horizon, batch_size=self.batch_size,
            max_samples_per_epoch=self.pooled_max_samples_per_epoch if pooled else self.max_samples_per_epoch,
            max_inner_val_samples=64, seed=self.seed, note=self.note,
        )

    def eval_settings(self) -> EvalSettings:
        return EvalSettings(lookback=self.lookback, horizon=self.horizon, samples=self.eval_samples,
                            max_origins=self.eval_max_origins, seed=self.seed)


@dataclass
class MonthRow:
    """One class and month of the replay; the first columns are `simulate --report`'s contract."""

    asset_class: str
    month: str
    action: str  # trained | not_due | skipped
    decision: str = "none"  # promoted | refused | kept | withdrawn | none
    serving_after: str = ""  # a version number, "pooled" or "base": what the predictor serves after the job
    serving_val_mae: float | None = None  # of what serves after the job, on this month's span
    pooled_val_mae: float | None = None
    candidate_val_mae: float | None = None
    candidate_val_nll: float | None = None
    warm_start_val_nll: float | None = None
    persistence_val_mae: float | None = None
    run_id: str | None = None  # the training run, or the incumbent check's evaluation-only run
    version: str | None = None  # the candidate's
    candidate_val_mae_skill: float | None = None
    vs_pooled_mae_diff: float | None = None
    vs_pooled_mae_diff_lo: float | None = None
    vs_pooled_mae_diff_hi: float | None = None
    production_val_mae: float | None = None
    base_val_mae: float | None = None
    candidate_val_sharpe: float | None = None
    buyhold_val_sharpe: float | None = None
    sharpe_delta: float | None = None
    reason: str = ""
    alerts: str = ""
    cadence: str = ""
    versions_kept: str = ""  # the class's versions left after retention, e.g. "3,4,5,6,7,8"
    aliased: str = ""  # those of them holding an alias (kept whatever their age)
    drill: bool = False
    failed: bool = False
    seconds: float = 0.0
    reference: str = ""  # pooled | base: what the predictor falls back to for the class after the job
    reference_val_mae: float | None = None  # the reference's, on the evaluation's span
    decision_diff: float | None = None  # the comparison the decision used (NaN where it had no interval)
    decision_diff_lo: float | None = None
    decision_diff_hi: float | None = None
    decision_horizons: float | None = None  # non-overlapping horizons behind that comparison
    evidence_months: int | None = None  # calendar months the evaluated span covers
    challenger: str | None = None  # a pending version judged again this month instead of a retrain
    naive_val_crps: float | None = None  # the random walk with the lookback's volatility, this month's span
    serving_val_crps: float | None = None  # of what serves after the job, on this month's span
    serving_coverage_80: float | None = None  # its 80% intervals as served (calibrated or not), over the month it
    # serves (out of sample: the month after the job)
    serving_coverage_80_uncalibrated: float | None = None  # the same intervals without its calibration


NOT_APPLICABLE = "n/a"

# `simulate --report`'s contract: these columns first, in this order (the rest may change).
REPORT_COLUMNS = ("asset_class", "month", "action", "decision", "serving_after", "serving_val_mae",
                  "pooled_val_mae", "candidate_val_mae", "candidate_val_nll", "warm_start_val_nll",
                  "persistence_val_mae", "run_id")


@dataclass
class SimulationReport:
    rows: list[MonthRow] = field(default_factory=list)
    tracking_uri: str = ""
    run_id: str | None = None
    keep_versions: int = Thresholds.keep_versions  # what retention kept in this replay
    stall_retrains: int = Thresholds.stall_retrains  # monthly retrains before quarterly is possible

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([asdict(r) for r in self.rows])
        figures = [c for c in frame.columns if c.endswith(("_mae", "_nll", "_sharpe", "_skill", "_lo", "_hi",
                                                               "_diff", "sharpe_delta", "_horizons", "_crps",
                                                               "_80", "_uncalibrated"))]
        frame[figures] = frame[figures].astype("float64")  # None (not measured) -> NaN
        return frame

    def write_csv(self, path: Path) -> Path:
        """The report at `path` (relative: to the working directory; its folders are made), whole or
        not at all; returns where it went, as an absolute path."""
        path = Path(path).expanduser().resolve()
        frame = self.frame()
        rest = [c for c in frame.columns if c not in REPORT_COLUMNS]
        with atomic_file(path) as tmp:
            frame[[*REPORT_COLUMNS, *rest]].to_csv(tmp, index=False)
        return path

    def summary(self) -> dict[str, int]:
        """Counts over the class-months: what served, what the guard did with ties, what beat pooled."""
        frame = self.frame()
        trained = frame[frame["action"] == "trained"]
        worse = frame["serving_val_mae"] > frame["reference_val_mae"]
        return {
            "class-months where something worse than the fallback served": int(worse.sum()),
            "promotions on ties": int(((trained["decision"] == "promoted") & (trained["vs_pooled_mae_diff"] == 0)).sum()),
            "candidates that beat pooled": int((trained["candidate_val_mae"] < trained["pooled_val_mae"]).sum()),
            "candidates whose val_nll equals their warm start's": int(
                (trained["candidate_val_nll"] == trained["warm_start_val_nll"]).sum()),
            "withdrawals": int((frame["decision"] == "withdrawn").sum()),
        }

    def coverage(self) -> pd.DataFrame:
        """Per class, over the months measured: the mean share of outcomes inside the 80% intervals
        as served (out of sample) and uncalibrated, and how many months that mean rests on."""
        frame = self.frame()
        measured = frame[frame["serving_coverage_80"].notna()]
        return measured.groupby("asset_class").agg(
            months=("month", "count"), served_80=("serving_coverage_80", "mean"),
            uncalibrated_80=("serving_coverage_80_uncalibrated", "mean"))

    def criteria(self) -> dict[str, bool | str]:
        """The phase's success criteria, read off the rows; "n/a (needs N months)" where the replay
        is too short for one to happen."""
        frame, keep = self.frame(), self.keep_versions
        months = frame["month"].nunique() if len(frame) else 0
        retrained = frame["action"] == "trained"
        # Unattended months: no job failed and at least one class really retrained.
        longest = streak = 0
        for _, rows in frame.groupby("month", sort=True):
            ok = not rows["failed"].any() and retrained[rows.index].any()
            streak = streak + 1 if ok else 0
            longest = max(longest, streak)

        def needs(count: int, value: bool) -> bool | str:
            return value if value or months >= count else f"{NOT_APPLICABLE} (needs {count} months)"

        return {
            "3 consecutive months without intervention": needs(3, longest >= 3),
            "guard refused a worse candidate": bool((frame.loc[retrained, "decision"] == "refused").any()),
            "cadence switched to quarterly": needs(self.stall_retrains + 1,
                                                   bool(frame["cadence"].str.startswith("quarterly").any())),
            f"exactly the last {keep} versions kept (plus aliased)": all(
                _keeps_the_last(row.versions_kept, row.aliased, keep) for row in frame.itertuples()),
            f"retention deleted versions beyond the last {keep}": needs(keep + 1, any(
                _numbers(row.versions_kept) and max(_numbers(row.versions_kept)) > keep
                for row in frame.itertuples())),
        }


def _numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _keeps_the_last(kept: str, aliased: str, keep: int) -> bool:
    """Versions are numbered 1..newest and the newest is never deleted, so the kept set must be
    exactly the newest `keep` numbers plus those holding an alias."""
    versions = _numbers(kept)
    if not versions:
        return True
    newest = max(versions)
    return set(versions) == set(range(max(1, newest - keep + 1), newest + 1)) | set(_numbers(aliased))


def months_from(start: str, count: int) -> list[date]:
    """`count` first-of-month dates from the month of `start` (YYYY-MM or YYYY-MM-DD)."""
    if not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", start.strip()):
        raise ConfigError(f"--start {start!r} is not a month; use YYYY-MM, e.g. 2018-01")
    try:
        first = pd.Timestamp(start.strip()[:7] + "-01")
    except ValueError as exc:
        raise ConfigError(f"--start {start!r} is not a month; use YYYY-MM, e.g. 2018-01") from exc
    if count < 1:
        raise ConfigError(f"--months must be >= 1, got {count}")
    return [month.date() for month in pd.date_range(first, periods=count, freq="MS")]


def has_validation_data(store: DataStore, asset_class: str, as_of: date, settings: SimulationSettings) -> bool:
    """Enough bars in the month before `as_of` to score at least one forecast."""
    window = select_training_window(as_of)
    for symbol in store.symbols_for(asset_class):
        stamps = store.load(symbol)["timestamp"]
        inside = ((stamps >= window.val_start) & (stamps < window.val_end)).sum()
        before = (stamps < window.val_start).sum()
        if inside >= settings.horizon and before >= settings.lookback:
            return True
    return False


def sabotage(bundle_source: str, tracking: Tracking, out_dir: Path, seed: int) -> Path:
    """A copy of an adapter with loud noise in its LoRA weights: a bad warm start for a drill."""
    target = out_dir / "sabotaged-adapter"
    with tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:
        shutil.copytree(fetch_adapter(bundle_source, tracking, Path(scratch)).bundle_dir, target)
    weights = load_file(str(target / "adapter_model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    noisy = {name: tensor + torch.randn(tensor.shape, generator=generator) if "lora_B" in name else tensor
             for name, tensor in weights.items()}
    save_file(noisy, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    return target


def _versions_kept(client: MlflowClient, label: str) -> tuple[str, str]:
    """(all versions, those holding an alias) of the class's registered model, as "1,2,3"."""
    versions = client.search_model_versions(f"name='{registered_model_name(label)}'")
    try:
        aliases = client.get_registered_model(registered_model_name(label)).aliases
    except Exception:  # noqa: BLE001 - no registered model yet: nothing kept, nothing aliased
        aliases = {}
    numbers = sorted({int(v.version) for v in versions})
    held = sorted({int(v) for v in aliases.values()} & set(numbers))
    return ",".join(map(str, numbers)), ",".join(map(str, held))


def _delivery_note(delivery) -> str:
    if delivery.skipped:
        return " (no webhook)"
    return "" if delivery.delivered else " (not delivered)"


def serving_version(client: MlflowClient, asset_class: str) -> tuple[str, str | None]:
    """What the predictor serves for the class now, as its name in an evaluation and its version:
    ("production", the class's @production version), else ("pooled", pooled's), else ("base", None)."""
    for name, label in (("production", asset_class), ("pooled", POOLED)):
        try:
            version = client.get_model_version_by_alias(registered_model_name(label), PRODUCTION).version
        except MlflowException:
            continue
        return name, str(version)
    return "base", None


def serving_now(client: MlflowClient, asset_class: str) -> str:
    """What the predictor serves for the class now: its @production version, else "pooled", else "base"."""
    name, version = serving_version(client, asset_class)
    return version if name == "production" else name


def _row(month: str, asset_class: str, result: JobResult, client: MlflowClient, seconds: float,
         drill: bool) -> MonthRow:
    cadence = read_cadence(client, asset_class)
    kept, aliased = _versions_kept(client, asset_class)
    serving = serving_now(client, asset_class)
    reference = "base" if serving_now(client, POOLED) == "base" else "pooled"
    row = MonthRow(asset_class, month, "trained" if result.due else "not_due", serving_after=serving,
                   reason=result.reason, cadence=cadence.mode, versions_kept=kept, aliased=aliased, drill=drill,
                   seconds=round(seconds, 1), reference=reference)
    evaluation, decision, compared = None, result.decision, None
    if result.due:
        evaluation = result.outcome.evaluation
        row.run_id, row.version = result.outcome.run_id, result.version
    elif result.challenger is not None:
        evaluation, row.run_id = result.challenger.evaluation, result.challenger.run_id
        row.challenger = row.version = result.challenger.version
    if decision is not None:
        row.decision, row.reason, compared = decision.outcome, decision.reason, decision.evidence
        candidate = evaluation.figures("candidate")
        row.candidate_val_mae, row.candidate_val_nll = candidate["val_mae"], candidate["val_nll"]
        row.candidate_val_mae_skill, row.candidate_val_sharpe = candidate["val_mae_skill"], candidate["val_sharpe"]
        if "warm_start" in evaluation.models:
            row.warm_start_val_nll = evaluation.figures("warm_start")["val_nll"]
        elif result.due and result.outcome.warm_start is None and "base" in evaluation.models:
            # A fresh adapter (LoRA B = 0, event table 0) forecasts exactly as the bare base does.
            row.warm_start_val_nll = evaluation.figures("base")["val_nll"]
        if "pooled" in evaluation.models:
            diff = evaluation.difference("candidate", "pooled", "val_mae")
            row.vs_pooled_mae_diff, row.vs_pooled_mae_diff_lo, row.vs_pooled_mae_diff_hi = diff.mean, diff.lo, diff.hi
        row.buyhold_val_sharpe = evaluation.buyhold_sharpe()
        row.sharpe_delta = decision.sharpe_delta
        row.alerts = ",".join(f"{d.event}{_delivery_note(d)}" for d in result.alerts)
    check = result.incumbent
    if check is not None and check.evaluation is not None:
        evaluation = evaluation or check.evaluation
        row.run_id = row.run_id or check.run_id
        if check.decision is not None:
            if check.decision.withdraw:
                row.decision = "withdrawn"
            elif decision is None:
                row.decision = "kept"
            if compared is None or check.decision.withdraw:
                compared = check.decision.difference
            row.reason += f"; incumbent check: {check.decision.reason}"
    if compared is not None:
        row.decision_diff, row.decision_diff_lo, row.decision_diff_hi = compared.mean, compared.lo, compared.hi
        row.decision_horizons = compared.horizons
    if evaluation is not None:
        figures = {name: evaluation.figures(name) for name in evaluation.models}
        row.evidence_months = calendar_months(*evaluation.span)
        row.pooled_val_mae = figures.get("pooled", {}).get("val_mae")
        row.production_val_mae = figures.get("production", {}).get("val_mae")
        row.base_val_mae = figures.get("base", {}).get("val_mae")
        row.reference_val_mae = figures.get(reference, {}).get("val_mae")
        row.persistence_val_mae = evaluation.figures(PERSISTENCE)["val_mae"]
        row.naive_val_crps = evaluation.figures(NAIVE)["val_crps"]
        serving_model = ("candidate" if row.decision == "promoted" else
                         "pooled" if serving == "pooled" else "base" if serving == "base" else "production")
        row.serving_val_mae = figures.get(serving_model, {}).get("val_mae")
        row.serving_val_crps = figures.get(serving_model, {}).get("val_crps")
    return row


@dataclass(frozen=True)
class Serving:
    """What the predictor serves a class after a month's job: a name in an evaluation and its version."""

    name: str  # "production" | "pooled" | "base"
    version: str | None
    month: date  # the first day of the month it serves (the job's as_of)

    @property
    def span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        start = pd.Timestamp(self.month, tz="UTC")
        return start, start + pd.DateOffset(months=1)


def serving_after(client: MlflowClient, asset_class: str, month: date) -> Serving:
    return Serving(*serving_version(client, asset_class), month)


def record_serving_coverage(row: MonthRow, serving: Serving, evaluation: SpanEvaluation | None,
                            versions: dict[str, str]) -> bool:
    """Fill `row`'s serving coverage from an evaluation of the month `serving` served (the next
    month's job measures it beside its candidate); False when that evaluation is of another span
    or another version."""
    if (evaluation is None or tuple(evaluation.span) != serving.span or serving.name not in evaluation.models
            or versions.get(serving.name) != serving.version):
        return False
    served = evaluation.figures(serving.name)
    row.serving_coverage_80 = served.get("served_val_coverage_80", served["val_coverage_80"])
    row.serving_coverage_80_uncalibrated = served["val_coverage_80"]
    return True


def job_evaluation(result: JobResult) -> tuple[SpanEvaluation | None, dict[str, str]]:
    """The evaluation a month's job made of its validation month, with the versions it scored."""
    if result.outcome is not None:
        return result.outcome.evaluation, result.outcome.compared_versions
    for check in (result.challenger, result.incumbent):
        if check is not None and check.evaluation is not None:
            return check.evaluation, check.versions
    return None, {}


def measure_serving(row: MonthRow, serving: Serving, asset_class: str, ctx: JobContext, base: BaseModelRef,
                    settings: EvalSettings) -> None:
    """Evaluate what served `asset_class` after a job on the month it served, as it served it
    (nothing when that month has no data: the end of the history)."""
    calibrations = {}
    try:
        if serving.name == "base":
            model = load_base_forecast_model(base)
        else:
            label = asset_class if serving.name == "production" else POOLED
            with tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:  # verified as it served
                source = fetch_verified(f"models:/{registered_model_name(label)}/{serving.version}", ctx.tracking,
                                        Path(scratch))
                model = load_forecast_model(source)
                calibration = calibration_of(source)
            if calibration is not None:
                calibrations[serving.name] = calibration
        evaluation = evaluate_span(ctx.store, [asset_class], serving.span, {serving.name: model}, settings,
                                   model.vocabulary, calibrations)
    except KronosError as exc:
        log.info("%s %s: the month its version served is not measured: %s", asset_class, row.month, exc)
        return
    record_serving_coverage(row, serving, evaluation, {serving.name: serving.version})


def simulate(ctx: JobContext, base: BaseModelRef, start: str, months: int, *,
             classes: list[str] | None = None, settings: SimulationSettings | None = None,
             drill_months: tuple[str, ...] = (), progress: bool = False, echo=print) -> SimulationReport:
    """Run the replay against the context's tracking server; returns one row per class and month."""
    store, client = ctx.store, ctx.client
    settings = settings or SimulationSettings()
    classes = list(classes or ASSET_CLASSES)
    unknown = sorted(set(classes) - set(ASSET_CLASSES))
    if unknown:
        raise ConfigError(f"unknown asset class(es) {', '.join(unknown)}; use {', '.join(ASSET_CLASSES)}")
    schedule = months_from(start, months)
    drills = {months_from(m, 1)[0] for m in drill_months}
    report = SimulationReport(tracking_uri=ctx.tracking.uri, keep_versions=ctx.thresholds.keep_versions,
                              stall_retrains=ctx.thresholds.stall_retrains)
    eval_settings = settings.eval_settings()
    awaiting: dict[str, tuple[MonthRow, Serving]] = {}  # per class: the last row, until its serving month is measured

    def measure(asset_class: str, evaluation: SpanEvaluation | None = None, versions: dict | None = None) -> None:
        row, serving = awaiting.pop(asset_class)
        if not record_serving_coverage(row, serving, evaluation, versions or {}):
            measure_serving(row, serving, asset_class, ctx, base,
                            settings_for(settings.lookback, settings.horizon, eval_settings, ctx.thresholds))

    started = time.monotonic()
    echo(f"pooled adapter as of {schedule[0]} ...")
    pooled = monthly_job(settings.train_config("pooled", schedule[0], None, base), ctx,
                         warm_start=None, eval_settings=eval_settings, check_due=False, progress=progress)
    echo(f"  pooled v{pooled.version}: {pooled.decision.outcome} ({pooled.decision.reason})")
    bundled = Path(store.root).resolve() == BUNDLED_DATA_DIR.resolve()
    for month in schedule:
        for asset_class in classes:
            label = month.strftime("%Y-%m")
            if not has_validation_data(store, asset_class, month, settings):
                kept, aliased = _versions_kept(client, asset_class)
                data = "the bundled data" if bundled else f"your data ({store.root})"
                report.rows.append(MonthRow(asset_class, label, "skipped", serving_after=serving_now(client, asset_class),
                                            reason=f"{data} has no bars in this validation span",
                                            cadence=read_cadence(client, asset_class).mode,
                                            versions_kept=kept, aliased=aliased))
                echo(_describe(report.rows[-1]))
                continue
            drill = month in drills
            tick = time.monotonic()
            try:
                with tempfile.TemporaryDirectory(prefix="kronos-drill-") as tmp:
                    warm_start = "auto"
                    if drill:  # sabotage what the job would warm-start from: class, else pooled production,
                        # else (the guard refused the pooled adapter) the pooled version this replay trained
                        source = (default_warm_start(asset_class, client)
                                  or f"models:/{registered_model_name(POOLED)}/{pooled.version}")
                        warm_start = str(sabotage(source, ctx.tracking, Path(tmp), settings.seed))
                    result = monthly_job(settings.train_config("rolling", month, asset_class, base), ctx,
                                         warm_start=warm_start, eval_settings=eval_settings, progress=progress)
                if result.pooled_challenger is not None:  # the month's first job judged a pending pooled adapter
                    judged = result.pooled_challenger
                    echo(f"  {label} pooled v{judged.version}: {judged.decision.outcome} ({judged.decision.reason})")
                row = _row(label, asset_class, result, client, time.monotonic() - tick, drill)
                evaluated = job_evaluation(result)  # the month the last job's version served, measured here
            except KronosError as exc:
                row = MonthRow(asset_class, label, "skipped", serving_after=serving_now(client, asset_class),
                               reason=f"failed: {exc}", drill=drill, failed=True,
                               seconds=round(time.monotonic() - tick, 1))
                evaluated = (None, {})
            if asset_class in awaiting:
                measure(asset_class, *evaluated)
            report.rows.append(row)
            awaiting[asset_class] = (row, serving_after(client, asset_class, month))
            echo(_describe(row))
    for asset_class in list(awaiting):  # the last month's versions, on the month after it
        measure(asset_class)
    echo(f"replayed {months} month(s) in {time.monotonic() - started:.0f}s")
    for asset_class, measured in report.coverage().iterrows():
        echo(f"  {asset_class}: 80% intervals as served covered {measured['served_80']:.1%} of outcomes out of "
             f"sample ({measured['uncalibrated_80']:.1%} uncalibrated), mean of {measured['months']} month(s)")
    return report


def _describe(row: MonthRow) -> str:
    text = f"  {row.month} {row.asset_class:<15} {row.action:<8} {row.decision:<9}"
    if row.version:
        reference = row.reference_val_mae if row.reference_val_mae is not None else float("nan")
        text += f" v{row.version:<3} val_mae {row.candidate_val_mae:.5f} ({row.reference} {reference:.5f})"
    if row.decision_diff is not None:
        interval = ("no interval" if row.decision_diff_lo is None or pd.isna(row.decision_diff_lo)
                    else f"[{row.decision_diff_lo:+.4f}, {row.decision_diff_hi:+.4f}]")
        text += f" diff {row.decision_diff:+.4f} {interval} on {row.decision_horizons:.1f} horizons"
    text += f" serving {row.serving_after}"
    if row.alerts:
        text += f" alerts: {row.alerts}"
    text += f"  [{row.cadence}]"
    if row.drill:
        text += " (drill)"
    if row.decision in ("refused", "withdrawn", "none", "kept", "pending"):
        text += f"  {row.reason}"
    return text


def log_report(report: SimulationReport, start: str, months: int, tracking: Tracking) -> str:
    """The table and a plot of val_mae per class and month, as one MLflow run."""
    frame = report.frame()
    with start_run(tracking, "kronos-rolling/simulation", run_name=f"simulate-{start}-{months}m") as run:
        run.log_params({"start": start, "months": months})
        run.log_table(frame, "simulation/rows.json")
        run.log_dict(report.criteria(), "simulation/criteria.json")
        run.log_dict(report.summary(), "simulation/summary.json")
        run.log_dict(report.coverage().reset_index().to_dict(orient="records"), "simulation/coverage.json")
        fig, ax = plt.subplots(figsize=(10, 4))
        for asset_class, rows in frame[frame["serving_val_mae"].notna()].groupby("asset_class"):
            months = pd.to_datetime(rows["month"])
            ax.plot(months, rows["serving_val_mae"], marker="o", label=f"{asset_class} serving after the job")
            ax.plot(months, rows["pooled_val_mae"], ls="--", label=f"{asset_class} pooled")
            ax.plot(months, rows["persistence_val_mae"], ls=":", label=f"{asset_class} no change")
        ax.set_ylabel("val_mae (return MAE)")
        ax.set_title("What serves after each month's job vs pooled and no change, same validation span")
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        run.log_figure(fig, "simulation/val_mae.png")
    return run.run_id


@contextlib.contextmanager
def tracking_for_simulation(tracking_uri: str | None, data_dir: Path, port: int | None = None):
    """Use the given server, or start an embedded one in `data_dir` for the replay (on `port`,
    else a free one)."""
    if tracking_uri:
        yield Tracking.connect(tracking_uri)
        return
    config = ServerConfig.embedded(data_dir, port=port or free_port())
    with TrackingServer(config) as server:
        yield Tracking.connect(server.url)


def offline_tiny_base(store: DataStore, home: Path, latest_until: pd.Timestamp, progress: bool) -> BaseModelRef:
    """A tiny base pre-trained on this store's bars before a date no later than `latest_until`.

    On the bundled data the base shipped with the package (BUNDLED_BASE_DIR) is one candidate;
    the others live in HOME/bases, shared by every replay: the newest one that fits (same data
    folder, pre-training cut at or before `latest_until`; the shipped one on a tie) is used,
    else one is pre-trained up to `latest_until` into HOME/bases.
    """
    folder = home / "bases"
    fitting = []
    shipped = read_pretrain_report(BUNDLED_BASE_DIR)
    if shipped is not None and Path(store.root).resolve() == BUNDLED_DATA_DIR.resolve():
        fitting.append((pd.Timestamp(shipped["settings"]["until"]), 1, BUNDLED_BASE_DIR))
    for candidate in sorted(folder.glob("tiny-until-*")):
        report = read_pretrain_report(candidate)
        if report is None or report.get("settings", {}).get("size") != "tiny":
            continue
        if Path(report["data"]["dir"]).resolve() == Path(store.root).resolve():
            fitting.append((pd.Timestamp(report["settings"]["until"]), 0, candidate))
    fitting = [f for f in fitting if f[0] <= latest_until]
    if fitting:
        return BaseModelRef.resolve(str(max(fitting)[2]))
    target = folder / f"tiny-until-{latest_until:%Y-%m-%d}"
    pretrain_base(store, target, until=latest_until.isoformat(), force=True, progress=progress)
    return BaseModelRef.resolve(str(target))
