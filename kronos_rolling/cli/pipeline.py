"""`kronos-rolling train pooled|rolling`, `run`, `run-all`, `evaluate`, `simulate` and `demo`.

`train` is one training step (an MLflow run ending with a logged model) plus, unless
`--no-register`, the registration, guard and retention that follow it; `run` is the
monthly job for one class (first: is a retrain due?); `run-all` runs every class, one
after another, and keeps going when one fails. Option defaults come from the settings
dataclasses (`TrainConfig`, `LoraSettings`, `EvalSettings`), so they are written once.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.parse import urlparse

import click

from kronos_rolling import ASSET_CLASSES, TRAINING_PRECISIONS
from kronos_rolling.cli.options import (
    as_of_option,
    connect,
    data_option,
    settings_of,
    tracking_uri_option,
)
from kronos_rolling.errors import KronosError
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.model.config import LoraSettings
from kronos_rolling.settings import DEFAULT_PORT, today_utc
from kronos_rolling.training.config import MODE_DEFAULTS, TrainConfig

log = logging.getLogger(__name__)



def training_options(fn):
    """Options shared by every command that trains."""
    options = [
        as_of_option(help="Decision date YYYY-MM-DD (default: today, UTC); the window ends here."),
        data_option,
        click.option("--base-model", default=None,
                     help="Frozen base: hub id (NeoQuasar/Kronos-base) or a folder with predictor/ and tokenizer/ "
                          "[env KRONOS_BASE_MODEL; default: this machine's recorded base, else NeoQuasar/Kronos-base]."),
        click.option("--tokenizer", default=None, help="Tokenizer hub id or folder (default: the base's own)."),
        click.option("--base-revision", default=None, help="Hub revision of the base predictor."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help=f"Default: {MODE_DEFAULTS['pooled']['epochs']} pooled, "
                          f"{MODE_DEFAULTS['rolling']['epochs']} rolling."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help=f"Peak learning rate. Default: {MODE_DEFAULTS['pooled']['lr']:g} pooled, "
                          f"{MODE_DEFAULTS['rolling']['lr']:g} rolling."),
        click.option("--note", default="",
                     help="Why settings depart from the released defaults; recorded on the run with every "
                          "setting that does (tags kronos.non_default_settings and kronos.non_default_reason)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=TrainConfig.batch_size, show_default=True),
        click.option("--lookback", type=click.IntRange(min=1), default=TrainConfig.lookback, show_default=True),
        click.option("--horizon", type=click.IntRange(min=1), default=TrainConfig.horizon, show_default=True),
        click.option("--stride", type=click.IntRange(min=1), default=TrainConfig.stride, show_default=True,
                     help="Bars between training samples."),
        click.option("--max-samples-per-epoch", type=click.IntRange(min=1), default=None,
                     help="Cap on samples per epoch (a seeded subset)."),
        click.option("--years", type=click.FloatRange(min=0, min_open=True), default=TrainConfig.years,
                     show_default=True),
        click.option("--lora-rank", type=click.IntRange(min=1), default=LoraSettings.rank, show_default=True),
        click.option("--lora-alpha", type=click.IntRange(min=1), default=LoraSettings.alpha, show_default=True),
        click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=TrainConfig.device,
                     show_default=True),
        click.option("--precision", type=click.Choice(TRAINING_PRECISIONS), default=TrainConfig.precision,
                     show_default=True,
                     help="Training forward precision (bf16 autocast; weights and optimiser stay float32)."),
        click.option("--warm-start", default="auto", show_default=True,
                     help="Adapter to continue from: a folder, runs:/ID/adapter, models:/NAME@ALIAS, 'auto' "
                          "(rolling: the class's production adapter, else the pooled one) or 'none'."),
        click.option("--eval-samples", type=click.IntRange(min=1), default=EvalSettings.samples, show_default=True,
                     help="Sample paths per origin in the evaluation; their mean is the point forecast."),
        click.option("--eval-max-origins", type=click.IntRange(min=1), default=None,
                     help="Cap on evaluation origins (a seeded subset; default: every origin of the month)."),
        click.option("--eval-cost", type=click.FloatRange(min=0), default=EvalSettings.cost, show_default=True,
                     help="Trading cost per unit of position change."),
        click.option("--no-wait", is_flag=True, help="Exit with code 75 at once if another training holds the lock."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
        tracking_uri_option,
        click.option("--mlflow-run-id", default=None, hidden=True,
                     help="The run `mlflow run` made (the MLflow Project bridge passes it)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _build(mode: str, asset_class: str | None, kw: dict):
    """The job's context, TrainConfig and EvalSettings from the shared options and the settings."""
    from kronos_rolling.data.store import DataStore
    from kronos_rolling.model.base import BaseModelRef, default_base_model
    from kronos_rolling.pipeline.context import JobContext

    settings = settings_of(data_dir=kw["data_dir"], base_model=kw["base_model"])
    base = BaseModelRef.resolve(default_base_model(settings.base_model, settings.home), kw["tokenizer"],
                                kw["base_revision"])
    config = TrainConfig(
        mode=mode, as_of=kw["as_of"] or today_utc(), asset_class=asset_class, base=base, epochs=kw["epochs"],
        lr=kw["lr"], years=kw["years"], batch_size=kw["batch_size"], lookback=kw["lookback"],
        horizon=kw["horizon"], stride=kw["stride"], max_samples_per_epoch=kw["max_samples_per_epoch"],
        lora=LoraSettings(rank=kw["lora_rank"], alpha=kw["lora_alpha"]), seed=kw["seed"], device=kw["device"],
        precision=kw["precision"], note=kw["note"],
    )
    eval_settings = EvalSettings(lookback=kw["lookback"], horizon=kw["horizon"], samples=kw["eval_samples"],
                                 cost=kw["eval_cost"], max_origins=kw["eval_max_origins"])  # the choices
    ctx = JobContext.from_settings(settings, connect(kw["tracking_uri"], settings), DataStore(settings.data_dir))
    return ctx, config, eval_settings


def _warm_start(value: str) -> str | None:
    return None if value.lower() == "none" else value


def evaluation_table(evaluation, versions: dict[str, str], name: str = "candidate") -> str:
    """Every model's figures on the span, and the evaluated model's differences with their intervals."""
    from kronos_rolling.evaluation.report import differences
    from kronos_rolling.evaluation.span import BASELINES

    rows = [("model", "val_mae", "skill", "val_nll", "val_crps", "crps_skill", "cover_80", "val_sharpe")]
    for model in [*evaluation.models, *BASELINES]:
        f = evaluation.figures(model)
        label = model + (f" (v{versions[model]})" if model in versions else "")
        cover = f.get("served_val_coverage_80", f["val_coverage_80"])
        rows.append((label, f"{f['val_mae']:.6f}", f"{f['val_mae_skill']:+.3f}", f"{f['val_nll']:.4f}",
                     f"{f['val_crps']:.6f}", f"{f['val_crps_skill']:+.3f}", f"{cover:.1%}".replace("nan%", "-"),
                     f"{f['val_sharpe']:+.3f}"))
    rows.append(("buy-and-hold", "", "", "", "", "", "", f"{evaluation.buyhold_sharpe():+.3f}"))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, width)))
             for row in rows]
    for other, by_metric in differences(evaluation, name).items():
        lines.append(f"  {name} - {other}: " + "; ".join(d.describe() for d in by_metric.values()))
    capped = f" (capped from {evaluation.candidates})" if evaluation.candidates != evaluation.origins else ""
    lines.append(f"  on {evaluation.origins} origins{capped} of {evaluation.span[0]:%Y-%m-%d}.."
                 f"{evaluation.span[1]:%Y-%m-%d}, {evaluation.settings.samples} paths each; cover_80: the share of "
                 "outcomes inside the 80% intervals (as served, where a version carries a calibration)"
                 + "".join(f"\n  note: {note}" for note in evaluation.notes))
    return "\n".join(lines)


def _print_result(result) -> None:
    if result.incumbent is not None and result.incumbent.decision is not None:
        verdict = "WITHDRAWN" if result.incumbent.decision.withdraw else "kept"
        click.echo(f"{result.label}: incumbent check: @production {verdict}: {result.incumbent.decision.reason}")
    if not result.due:
        click.echo(f"{result.label}: not due ({result.reason})")
        return
    if result.outcome is None:  # a rank other than 0 of a torchrun job: rank 0 reports
        return
    click.echo(evaluation_table(result.outcome.evaluation, result.outcome.compared_versions))
    verdict = "promoted to @production" if result.promoted else "kept in @staging"
    click.echo(f"{result.label}: v{result.version} {verdict}: {result.decision.reason}")
    if result.retention is not None:
        click.echo(f"retention: {result.retention.summary()}")


def _job(mode: str, asset_class: str | None, kw: dict, *, check_due: bool, register: bool):
    from kronos_rolling.pipeline.job import alert_job_failed, monthly_job

    try:
        ctx, config, eval_settings = _build(mode, asset_class, kw)
    except KronosError as exc:  # the job could not even start: say so where operators look
        alert_job_failed(asset_class or "pooled", kw["as_of"] or today_utc(), exc, settings_of().alert_webhook)
        raise
    options = dict(warm_start=_warm_start(kw["warm_start"]), eval_settings=eval_settings,
                   progress=not kw["no_progress"], wait_for_lock=not kw["no_wait"],
                   launcher_run_id=kw["mlflow_run_id"])
    result = monthly_job(config, ctx, check_due=check_due, register=register, **options)
    if register:
        return result
    if result.outcome is not None:  # trained and evaluated in one run, nothing registered
        click.echo(evaluation_table(result.outcome.evaluation, result.outcome.compared_versions))
        click.echo(f"run {result.outcome.run_id}: model {result.outcome.model_uri}")
    return None


@click.group()
def train():
    """Train the pooled adapter or one class's rolling fine-tune (one MLflow run)."""


@train.command("pooled")
@training_options
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the run as a version of kronos-lora-pooled and run the guard.")
def train_pooled(register, **kw):
    """The pooled ("Phase 3") adapter: every asset class, fresh adapter, LR 1e-4, 10 epochs."""
    if kw["warm_start"] == "auto":
        kw["warm_start"] = "none"
    result = _job("pooled", None, kw, check_due=False, register=register)
    if result is not None:
        _print_result(result)


@train.command("rolling")
@click.option("--asset-class", required=True, type=click.Choice(ASSET_CLASSES))
@training_options
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the run as a version of kronos-lora-<class> and run the guard.")
def train_rolling(asset_class, register, **kw):
    """One class's rolling fine-tune: 2-year window, warm start, LR 5e-5, 5 epochs."""
    result = _job("rolling", asset_class, kw, check_due=False, register=register)
    if result is not None:
        _print_result(result)


@click.command("run")
@click.option("--asset-class", required=True, type=click.Choice(ASSET_CLASSES))
@training_options
@click.option("--force", is_flag=True, help="Retrain even if the cadence says it is not due.")
def run(asset_class, force, **kw):
    """The monthly job for one class: due? then train, evaluate, register, guard, alert, retain.

    Exits 0 when not due (saying when the next retrain is) and when the guard refuses.
    """
    _print_result(_job("rolling", asset_class, kw, check_due=not force, register=True))


@click.command("run-all")
@training_options
@click.option("--asset-class", "classes", multiple=True, type=click.Choice(ASSET_CLASSES),
              help="Classes to run (default: all), one after another.")
@click.pass_context
def run_all(ctx, classes, **kw):
    """Every class's monthly job, one after another (never two on one device at once).

    A class that fails is reported (and alerted) and the next one still runs; the exit
    code is non-zero when any failed.
    """
    failed = []
    for asset_class in classes or ASSET_CLASSES:
        click.echo(f"== {asset_class}")
        try:
            _print_result(_job("rolling", asset_class, dict(kw), check_due=True, register=True))
        except KronosError as exc:
            failed.append(asset_class)
            click.echo(f"{asset_class}: FAILED: {exc}", err=True)
        except Exception as exc:  # noqa: BLE001 - one class's crash must not stop the others
            failed.append(asset_class)
            log.exception("%s failed", asset_class)
            click.echo(f"{asset_class}: FAILED: {type(exc).__name__}: {exc}", err=True)
    if failed:
        click.echo(f"failed: {', '.join(failed)}", err=True)
        ctx.exit(1)


@click.command("evaluate")
@click.option("--model", "model_uri", required=True,
              help="Adapter to evaluate: models:/NAME@ALIAS, models:/NAME/N, runs:/ID/adapter or a folder.")
@click.option("--asset-class", required=True, type=click.Choice(ASSET_CLASSES))
@as_of_option(required=True, help="The validation span is the month before this date.")
@data_option
@click.option("--lookback", type=click.IntRange(min=1), default=None, help="Default: the adapter's own.")
@click.option("--horizon", type=click.IntRange(min=1), default=None, help="Default: the adapter's own.")
@click.option("--eval-samples", type=click.IntRange(min=1), default=EvalSettings.samples, show_default=True)
@click.option("--eval-max-origins", type=click.IntRange(min=1), default=None)
@click.option("--eval-cost", type=click.FloatRange(min=0), default=EvalSettings.cost, show_default=True)
@tracking_uri_option
def evaluate(model_uri, asset_class, as_of, data_dir, lookback, horizon, eval_samples, eval_max_origins, eval_cost,
             tracking_uri):
    """Evaluate an adapter on a class's validation span against the pooled adapter, the class's
    production, the bare base and persistence; print the table and log it as an MLflow run."""
    from kronos_rolling.data.store import DataStore
    from kronos_rolling.pipeline.evaluate import evaluate_adapter

    settings = settings_of(data_dir=data_dir)
    evaluation, versions, run_id = evaluate_adapter(
        model_uri, asset_class, as_of, connect(tracking_uri, settings), DataStore(settings.data_dir),
        EvalSettings(lookback=TrainConfig.lookback, horizon=TrainConfig.horizon, samples=eval_samples,
                     max_origins=eval_max_origins, cost=eval_cost), settings.thresholds, lookback=lookback,
        horizon=horizon)
    click.echo(evaluation_table(evaluation, versions, name="adapter"))
    click.echo(f"logged to run {run_id}")


@click.command("simulate")
@click.option("--start", default="2018-01", show_default=True, help="First month replayed (YYYY-MM).")
@click.option("--months", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--asset-class", "classes", multiple=True, type=click.Choice(ASSET_CLASSES),
              help="Classes to replay (default: all).")
@data_option
@click.option("--base-model", default=None,
              help="Frozen base (default: the tiny base, pre-trained on the data before the first validation span).")
@tracking_uri_option
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port of the embedded tracking server (default: a free one); ignored with --tracking-uri.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Where the embedded server and the pre-trained base live (default: KRONOS_HOME/simulation).")
@click.option("--drill-bad-candidate", "drills", multiple=True, metavar="YYYY-MM",
              help="Sabotage that month's warm start to watch the guard refuse (repeatable).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as CSV, one row per class and month.")
@click.option("--horizon", type=click.IntRange(min=1), default=None,
              help="Bars forecast and scored per origin (default: the CPU-sized replay's, 4).")
@click.option("--no-progress", is_flag=True)
def simulate(start, months, classes, data_dir, base_model, tracking_uri, port, workdir, drills, report_path,
             horizon, no_progress):
    """Replay the monthly cron on past months, one month at a time, and report each class and
    month: what the job did, the guard's decision, the figures, and what serves afterwards."""
    import pandas as pd

    from kronos_rolling.data.store import DataStore
    from kronos_rolling.model.base import BaseModelRef
    from kronos_rolling.pipeline.context import JobContext
    from kronos_rolling.pipeline.replay import (
        REPORT_COLUMNS,
        SimulationSettings,
        log_report,
        months_from,
        offline_tiny_base,
        tracking_for_simulation,
    )
    from kronos_rolling.pipeline.replay import simulate as replay

    settings = settings_of(data_dir=data_dir)
    first = months_from(start, months)[0]
    workdir = Path(workdir or settings.home.simulation)
    store = DataStore(settings.data_dir)
    if base_model:
        base = BaseModelRef.resolve(base_model)
    else:
        until = first - pd.DateOffset(months=1)  # the first validation month stays unseen
        click.echo(f"tiny base pre-trained on bars before {until:%Y-%m-%d} or earlier (reused when present) ...")
        base = offline_tiny_base(store, settings.home.root, until.tz_localize("UTC"), not no_progress)
    server_dir = workdir / f"server-{start}-{months}m"
    if not tracking_uri and server_dir.exists():
        shutil.rmtree(server_dir)  # a replay starts from an empty registry
    with tracking_for_simulation(tracking_uri, server_dir, port) as tracking:
        ctx = JobContext.from_settings(settings, tracking, store)
        replay_settings = SimulationSettings() if horizon is None else SimulationSettings(horizon=horizon)
        report = replay(ctx, base, start, months, classes=list(classes) or None, settings=replay_settings,
                        drill_months=tuple(drills), progress=not no_progress, echo=click.echo)
        report.run_id = log_report(report, start, months, tracking)
        frame = report.frame()
        click.echo(frame[list(REPORT_COLUMNS[:-1])].to_string(index=False, na_rep="-",
                                                             float_format=lambda v: f"{v:.5f}"))
        for criterion, met in report.criteria().items():
            mark = "x" if met is True else " " if met is False else "-"
            click.echo(f"[{mark}] {criterion}" + (f": {met}" if isinstance(met, str) else ""))
        for name, count in report.summary().items():
            click.echo(f"{count:>4}  {name}")
        if report_path is not None:
            click.echo(f"report: {report.write_csv(report_path)}")
        click.echo(f"logged as run {report.run_id} of experiment kronos-rolling/simulation")
        if not tracking_uri:  # the embedded server stops with the replay; this starts it again on its port
            used = urlparse(tracking.uri).port
            click.echo(f"browse it: kronos-rolling server --data-dir {server_dir} --port {used}  "
                       f"(then http://127.0.0.1:{used})")


@click.command("demo")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"Port of the local tracking server, reused when one answers there "
                   f"[env KRONOS_MLFLOW_PORT; default {DEFAULT_PORT}].")
@click.option("--stop-server", is_flag=True, help="Stop the tracking server an earlier demo started, and exit.")
@click.option("--no-progress", is_flag=True)
def demo(port, stop_server, no_progress):
    """The whole monthly process on bundled data: tracking server, pre-trained tiny base,
    pooled adapter, one monthly cycle for every class, one forecast per class."""
    from kronos_rolling.pipeline.demo import run_demo
    from kronos_rolling.pipeline.demo import stop_server as stop

    settings = settings_of()
    if stop_server:
        click.echo("stopped the demo's tracking server" if stop(settings.home.root)
                   else "no tracking server started by a demo")
        return
    run_demo(settings, port or settings.server.port, echo=click.echo, progress=not no_progress)


COMMANDS = [train, run, run_all, evaluate, simulate, demo]
