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
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import select_training_window
from kronos_rolling.errors import ConfigError, KronosError
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.job import JobResult, monthly_job
from kronos_rolling.registry.names import POOLED, PRODUCTION, registered_model_name
from kronos_rolling.registry.schedule import read_cadence
from kronos_rolling.settings import ServerStores, Thresholds
from kronos_rolling.tracking.adapters import default_warm_start, fetch_adapter
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.runs import start_run
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port
from kronos_rolling.training.config import TrainConfig
from kronos_rolling.training.pretrain.config import read_pretrain_report
from kronos_rolling.training.pretrain.run import pretrain_base

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationSettings:
    """Small enough for two CPU cores and the tiny base; every value can be raised."""

    lookback: int = 32
    horizon: int = 4
    epochs: int = 5  # the rolling default
    pooled_epochs: int = 4
    batch_size: int = 32
    max_samples_per_epoch: int = 128
    eval_samples: int = 1
    eval_max_origins: int = 48
    seed: int = 42

    def train_config(self, mode: str, as_of: str, asset_class: str | None, base: BaseModelRef) -> TrainConfig:
        return TrainConfig(
            mode=mode, as_of=as_of, asset_class=asset_class, base=base,
            epochs=self.pooled_epochs if mode == "pooled" else self.epochs, lookback=self.lookback,
            horizon=self.horizon, batch_size=self.batch_size, max_samples_per_epoch=self.max_samples_per_epoch,
            max_inner_val_samples=64, seed=self.seed,
        )

    def eval_settings(self) -> EvalSettings:
        return EvalSettings(lookback=self.lookback, horizon=self.horizon, samples=self.eval_samples,
                            max_origins=self.eval_max_origins, seed=self.seed)


@dataclass
class MonthRow:
    month: str
    asset_class: str
    outcome: str  # promoted | refused | not due | no data | failed
    version: str | None = None
    val_mae: float | None = None
    production_val_mae: float | None = None
    pooled_val_mae: float | None = None
    base_val_mae: float | None = None
    persistence_val_mae: float | None = None
    val_sharpe: float | None = None
    sharpe_delta: float | None = None
    reason: str = ""
    alerts: str = ""
    cadence: str = ""
    versions_kept: str = ""  # the class's versions left after retention, e.g. "3,4,5,6,7,8"
    aliased: str = ""  # those of them holding an alias (kept whatever their age)
    drill: bool = False
    seconds: float = 0.0


@dataclass
class SimulationReport:
    rows: list[MonthRow] = field(default_factory=list)
    tracking_uri: str = ""
    run_id: str | None = None
    keep_versions: int = Thresholds.keep_versions  # what retention kept in this replay

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([asdict(r) for r in self.rows])
        figures = [c for c in frame.columns if c.endswith(("_mae", "_sharpe", "sharpe_delta"))]
        frame[figures] = frame[figures].astype("float64")  # None (not measured) -> NaN
        return frame

    def criteria(self) -> dict[str, bool]:
        """The phase's success criteria, read off the rows."""
        frame, keep = self.frame(), self.keep_versions
        retrained = frame["outcome"].isin(["promoted", "refused"])
        # Unattended months: no job failed and at least one class really retrained.
        longest = streak = 0
        for _, rows in frame.groupby("month", sort=True):
            ok = not (rows["outcome"] == "failed").any() and retrained[rows.index].any()
            streak = streak + 1 if ok else 0
            longest = max(longest, streak)
        return {
            "3 consecutive months without intervention": longest >= 3,
            "guard refused a worse candidate": bool((frame.loc[retrained, "outcome"] == "refused").any()),
            "cadence switched to quarterly": bool(frame["cadence"].str.startswith("quarterly").any()),
            f"exactly the last {keep} versions kept (plus aliased)": all(
                _keeps_the_last(row.versions_kept, row.aliased, keep) for row in frame.itertuples()),
            f"retention deleted versions beyond the last {keep}": any(
                _numbers(row.versions_kept) and max(_numbers(row.versions_kept)) > keep
                for row in frame.itertuples()),
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


def months_from(start: str, count: int) -> list[pd.Timestamp]:
    """`count` first-of-month dates from the month of `start` (YYYY-MM or YYYY-MM-DD)."""
    if not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", start.strip()):
        raise ConfigError(f"--start {start!r} is not a month; use YYYY-MM, e.g. 2018-01")
    try:
        first = pd.Timestamp(start.strip()[:7] + "-01")
    except ValueError as exc:
        raise ConfigError(f"--start {start!r} is not a month; use YYYY-MM, e.g. 2018-01") from exc
    if count < 1:
        raise ConfigError(f"--months must be >= 1, got {count}")
    return [first + pd.DateOffset(months=i) for i in range(count)]


def has_validation_data(store: DataStore, asset_class: str, as_of: pd.Timestamp, settings: SimulationSettings) -> bool:
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
    source = fetch_adapter(bundle_source, tracking)
    target = out_dir / "sabotaged-adapter"
    shutil.copytree(source.bundle_dir, target)
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


def _row(month: str, asset_class: str, result: JobResult, client: MlflowClient, seconds: float,
         drill: bool) -> MonthRow:
    cadence = read_cadence(client, asset_class)
    kept, aliased = _versions_kept(client, asset_class)
    row = MonthRow(month, asset_class, "not due", reason=result.reason, cadence=cadence.mode,
                   versions_kept=kept, aliased=aliased, drill=drill, seconds=round(seconds, 1))
    if not result.due:
        return row
    figures = result.outcome.figures
    decision = result.decision
    row.outcome = "promoted" if decision.promote else "refused"
    row.version = result.version
    row.reason = decision.reason
    row.val_mae = figures["candidate"].val_mae
    row.val_sharpe = figures["candidate"].val_sharpe
    for name in ("production", "pooled", "base", "persistence"):
        if name in figures:
            setattr(row, f"{name}_val_mae", figures[name].val_mae)
    row.sharpe_delta = decision.sharpe_delta
    row.alerts = ",".join(f"{d.event}{_delivery_note(d)}" for d in result.alerts)
    return row


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
    report = SimulationReport(tracking_uri=ctx.tracking.uri, keep_versions=ctx.thresholds.keep_versions)
    eval_settings = settings.eval_settings()

    started = time.monotonic()
    pooled_as_of = schedule[0].strftime("%Y-%m-%d")
    echo(f"pooled adapter as of {pooled_as_of} ...")
    pooled = monthly_job(settings.train_config("pooled", pooled_as_of, None, base), ctx,
                         warm_start=None, eval_settings=eval_settings, check_due=False, progress=progress)
    echo(f"  pooled v{pooled.version}: {'promoted' if pooled.promoted else 'refused'} ({pooled.decision.reason})")
    for month in schedule:
        as_of = month.strftime("%Y-%m-%d")
        for asset_class in classes:
            label = month.strftime("%Y-%m")
            if not has_validation_data(store, asset_class, month, settings):
                kept, aliased = _versions_kept(client, asset_class)
                report.rows.append(MonthRow(label, asset_class, "no data",
                                            reason="the bundled data has no bars in this validation span",
                                            cadence=read_cadence(client, asset_class).mode,
                                            versions_kept=kept, aliased=aliased))
                echo(_describe(report.rows[-1]))
                continue
            drill = month in drills
            tick = time.monotonic()
            try:
                with tempfile.TemporaryDirectory(prefix="kronos-drill-") as tmp:
                    warm_start = "auto"
                    if drill:  # sabotage what the job would warm-start from: class, else pooled production
                        source = (default_warm_start(asset_class, client)
                                  or f"models:/{registered_model_name(POOLED)}@{PRODUCTION}")
                        warm_start = str(sabotage(source, ctx.tracking, Path(tmp), settings.seed))
                    result = monthly_job(settings.train_config("rolling", as_of, asset_class, base), ctx,
                                         warm_start=warm_start, eval_settings=eval_settings, progress=progress)
                row = _row(label, asset_class, result, client, time.monotonic() - tick, drill)
            except KronosError as exc:
                row = MonthRow(label, asset_class, "failed", reason=str(exc), drill=drill,
                               seconds=round(time.monotonic() - tick, 1))
            report.rows.append(row)
            echo(_describe(row))
    echo(f"replayed {months} month(s) in {time.monotonic() - started:.0f}s")
    return report


def _describe(row: MonthRow) -> str:
    text = f"  {row.month} {row.asset_class:<15} {row.outcome:<9}"
    if row.version:
        text += f" v{row.version:<3} val_mae {row.val_mae:.5f} (pooled {row.pooled_val_mae or float('nan'):.5f})"
    if row.alerts:
        text += f" alerts: {row.alerts}"
    text += f"  [{row.cadence}]"
    if row.drill:
        text += " (drill)"
    if row.outcome in ("refused", "failed", "no data", "not due"):
        text += f"  {row.reason}"
    return text


def log_report(report: SimulationReport, start: str, months: int, tracking: Tracking) -> str:
    """The table and a plot of val_mae per class and month, as one MLflow run."""
    frame = report.frame()
    with start_run(tracking, "kronos-rolling/simulation", run_name=f"simulate-{start}-{months}m") as run:
        run.log_params({"start": start, "months": months})
        run.log_table(frame, "simulation/rows.json")
        run.log_dict({k: bool(v) for k, v in report.criteria().items()}, "simulation/criteria.json")
        fig, ax = plt.subplots(figsize=(10, 4))
        for asset_class, rows in frame[frame["val_mae"].notna()].groupby("asset_class"):
            months = pd.to_datetime(rows["month"])
            ax.plot(months, rows["val_mae"], marker="o", label=f"{asset_class} candidate")
            ax.plot(months, rows["pooled_val_mae"], ls="--", label=f"{asset_class} pooled")
        ax.set_ylabel("val_mae (return MAE)")
        ax.set_title("Monthly retrains: candidate vs pooled, same validation span")
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        run.log_figure(fig, "simulation/val_mae.png")
    return run.run_id


@contextlib.contextmanager
def tracking_for_simulation(tracking_uri: str | None, data_dir: Path):
    """Use the given server, or start an embedded one in `data_dir` for the replay."""
    if tracking_uri:
        yield Tracking.connect(tracking_uri), None
        return
    config = ServerConfig.embedded(data_dir, port=free_port())
    with TrackingServer(config) as server:
        yield Tracking.connect(server.url), ServerStores(config.backend_store_uri, config.artifacts_destination)


def offline_tiny_base(store: DataStore, home: Path, latest_until: pd.Timestamp, progress: bool) -> BaseModelRef:
    """A tiny base pre-trained on this store's bars before a date no later than `latest_until`.

    Bases live in HOME/bases and are shared by the demo and every replay: the newest one that
    fits (same data folder, pre-training cut at or before `latest_until`) is reused, else one
    is pre-trained up to `latest_until`.
    """
    folder = home / "bases"
    fitting = []
    for candidate in sorted(folder.glob("tiny-until-*")):
        report = read_pretrain_report(candidate)
        if report is None or report.get("settings", {}).get("size") != "tiny":
            continue
        until = pd.Timestamp(report["settings"]["until"])
        if until <= latest_until and Path(report["data"]["dir"]).resolve() == Path(store.root).resolve():
            fitting.append((until, candidate))
    if fitting:
        return BaseModelRef.resolve(str(max(fitting)[1]))
    target = folder / f"tiny-until-{latest_until:%Y-%m-%d}"
    pretrain_base(store, target, until=latest_until.isoformat(), force=True, progress=progress)
    return BaseModelRef.resolve(str(target))
