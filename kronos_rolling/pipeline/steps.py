"""The monthly job's steps, each a function with one job and explicit inputs.

    train_step      fit the adapter in an MLflow run (the run stays open for the next steps)
    evaluate_step   the candidate, the pooled and production adapters, the bare base and the
                    naive baselines on the SAME held-out span, logged into that run
    log_model_step  the adapter bundle, its metadata and the pyfunc model, logged last: only
                    then is the run complete (the device lock covers these three steps)
    register_step   a version of kronos-lora-<label> from that run, @staging, window tags
    guard_step      the pure guard decision, applied (aliases: registry/promotion.py via
                    registry/lifecycle.conclude_retrain; cadence, audit, alerts)
    retention_step  keep the newest versions plus aliased ones; reclaim storage

Failures leave the registry as it was: a run that did not finish has no model to
register, and a version is only created once the run is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kronos_rolling import ASSET_CLASSES, __version__
from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.windows import (
    TrainingWindow,
    check_data_reaches,
    coverage_shortfall,
    shortfall_summary,
)
from kronos_rolling.errors import ConfigError, RegistryError
from kronos_rolling.evaluation.calibration import Calibration
from kronos_rolling.evaluation.compare import Difference
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.forecasts import ForecastModel
from kronos_rolling.evaluation.report import log_evaluation
from kronos_rolling.evaluation.span import NAIVE, PERSISTENCE, SpanEvaluation, evaluate_span
from kronos_rolling.locks import training_lock
from kronos_rolling.model.device import resolve_device
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.references import figures_of, reference_models
from kronos_rolling.registry.cleanup import (
    RetentionReport,
    apply_retention,
)
from kronos_rolling.registry.guard import EvalFigures, GuardDecision, decide_promotion
from kronos_rolling.registry.lifecycle import RetrainConclusion, conclude_retrain
from kronos_rolling.names import CALIBRATION_TAG, POOLED, PRODUCTION, registered_model_name
from kronos_rolling.registry.promotion import mark_staging
from kronos_rolling.settings import Thresholds
from kronos_rolling.tracking.integrity import fetch_verified
from kronos_rolling.tracking.adapters import (
    ADAPTER_ARTIFACT,
    METADATA_FILE,
    AdapterSource,
    default_warm_start,
)
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.pyfunc import log_adapter_model, register_adapter_model
from kronos_rolling.tracking.runs import (
    COMPLETE_TAG,
    JOB_RUN_TAG,
    experiment_name,
    git_commit,
    log_training_inputs,
    start_run,
    training_dataset,
)
from kronos_rolling.training.checkpoint import Checkpoint, config_fingerprint
from kronos_rolling.training.config import TrainConfig
from kronos_rolling.training.distributed import (
    init_distributed,
)
from kronos_rolling.training.loop import (
    EpochRecord,
    FitResult,
    Trainee,
    build_trainee,
    fit,
    training_symbols,
)
from kronos_rolling.training.pretrain.config import pretrained_until

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_id: str
    label: str
    config: TrainConfig
    window: TrainingWindow
    model_uri: str
    evaluation: SpanEvaluation  # candidate, pooled, production, base, warm start, persistence: same origins
    compared_versions: dict[str, str]  # pooled / production / warm_start -> registry version evaluated
    fit: FitResult
    warm_start: str | None
    calibration: Calibration | None = None  # stored in the bundle as calibration.json

    def figures(self, name: str) -> EvalFigures | None:
        return figures_of(self.evaluation, name, self.compared_versions.get(name))


def evaluation_classes(label: str) -> list[str]:
    """The classes a label's versions are evaluated on: its own, or every class for pooled."""
    return list(ASSET_CLASSES) if label == POOLED else [label]


@contextlib.contextmanager
def device_lock(config: TrainConfig, ctx: JobContext, *, wait: bool = True) -> Iterator[Path]:
    """The machine's training lock, held by the main process across train, evaluate and log (a
    second job waits before it does any work at all), and a temporary folder for the adapters
    those steps download, removed however they end."""
    lock = (training_lock(ctx.lock_dir, wait=wait, job=f"train {config.label} {config.as_of}")
            if ctx.distributed.is_main else contextlib.nullcontext())
    with lock, tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:
        yield Path(scratch)


@dataclass
class Trained:
    """What training hands on: the open run, the fitted adapter and what it was trained from."""

    run_id: str
    config: TrainConfig
    window: TrainingWindow
    symbols: list[str]
    trainee: Trainee
    warm_source: AdapterSource | None
    fit: FitResult
    checkpoint: Checkpoint
    launcher_run_id: str | None

    @property
    def experiment(self) -> str:
        return experiment_name(self.config.label)


def train_step(config: TrainConfig, ctx: JobContext, eval_settings: EvalSettings, scratch: Path, *,
               warm_start: str | None = "auto", progress: bool = True,
               launcher_run_id: str | None = None) -> Trained | None:
    """Fit the adapter in a run of `kronos-rolling/<label>`; None on ranks other than 0.

    The run records the training's inputs (window, data digest, warm start, every setting that
    departs from the released defaults, `eval_settings` among them) and its per-epoch losses.
    scratch: the job's temporary folder, where the verified warm start is downloaded.
    launcher_run_id: the run `mlflow run` made; logged into when it is in our experiment."""
    store, tracking, dist_info = ctx.store, ctx.tracking, ctx.distributed
    window = config.window()
    symbols = training_symbols(config, store)
    check_data_reaches({c: store.coverage(store.symbols_for(c)) for c in evaluation_classes(config.label)}, window)
    shortfalls = coverage_shortfall(store.coverage(symbols), window)
    if shortfalls:  # one warning per run, with the count
        log.warning("window shortfall: %s", shortfall_summary(shortfalls, len(symbols)))
    base = config.base
    if base is None:
        raise ConfigError("no base model to train on: TrainConfig.base must name one (the command resolves "
                          "--base-model / KRONOS_BASE_MODEL)")
    base_seen_until = pretrained_until(base)
    if base_seen_until is not None and base_seen_until > window.val_start:
        # A base that saw the validation month flatters every model evaluated on it.
        log.warning("the base %s was pre-trained on bars up to %s, after the validation span starts (%s): "
                    "its figures on that span are not out-of-sample; pre-train it on earlier data",
                    base.describe(), base_seen_until.date(), window.val_start.date())
    warm_source = _warm_source(config, ctx, warm_start, scratch)

    device = resolve_device(config.device)
    if device.type == "cuda" and dist_info.enabled:
        device = resolve_device(f"cuda:{dist_info.local_rank}")
    init_distributed(dist_info, device)
    model, tokenizer = base.load()
    calendar = store.events()
    trainee, lora = build_trainee(model, tokenizer, calendar.event_types(), config.lora,
                                  warm_source.bundle_dir if warm_source else None, config.seed)
    config.lora = lora
    fit_span, inner_span = window.fit_span, window.inner_val_span
    train_set = BarWindowDataset(store, symbols, *fit_span, config.lookback, config.horizon, trainee.vocabulary,
                                 stride=config.stride, seed=config.seed, calendar=calendar)
    inner_set = BarWindowDataset(store, symbols, *inner_span, config.lookback, config.horizon, trainee.vocabulary,
                                 stride=config.stride, seed=config.seed, calendar=calendar,
                                 max_samples=config.max_inner_val_samples)
    dataset = training_dataset(store, symbols, window.train_start, window.train_end,
                               name=f"{config.label}-{window.train_start:%Y-%m-%d}-{window.train_end:%Y-%m-%d}")
    fingerprint = config_fingerprint(config, base, dataset.digest, warm_source.describe() if warm_source else None)
    checkpoint = Checkpoint(ctx.home.checkpoints / f"{config.label}-{config.as_of}-{fingerprint}", fingerprint)

    if not dist_info.is_main:
        # Same checkpoint as rank 0 (read only: fit saves on rank 0), so a resumed job starts
        # every rank at the same epoch; otherwise the ranks' collectives no longer pair up.
        fit(trainee, train_set, inner_set, config, device=device, dist_info=dist_info, checkpoint=checkpoint,
            token_cache=ctx.home.token_cache, progress=False)
        return None

    resumed = checkpoint.load()
    run_id = resumed.get("run_id") if resumed else None
    if run_id is None and launcher_run_id and _in_experiment(tracking, launcher_run_id, experiment_name(config.label)):
        run_id = launcher_run_id  # `mlflow run` made this run in our experiment: log into it
    with start_run(tracking, experiment_name(config.label), run_id=run_id, run_name=f"{config.label}-{config.as_of}",
                   system_metrics=True) as run:
        if not resumed:
            log_training_inputs(run, config, base, window, symbols, warm_source, dataset, train_set, inner_set,
                                eval_settings)
            if base_seen_until is not None:
                run.set_tags({"base_pretrained_until": base_seen_until.isoformat(),
                              "base_saw_validation_span": str(base_seen_until > window.val_start).lower()})
            if shortfalls:  # a window shorter than asked is allowed, and said where operators look
                run.set_tags({"window_shortfall": "; ".join(str(s) for s in shortfalls)[:4000]})
                run.log_dict({"shortfalls": [str(s) for s in shortfalls]}, "window_shortfall.json")

        def on_epoch(record: EpochRecord) -> None:
            run.log_metrics({"train_loss": record.train_loss, "val_loss": record.val_loss, "lr": record.lr,
                             "bars_per_second": record.bars_per_second}, step=record.epoch)

        fitted = fit(trainee, train_set, inner_set, config, device=device, dist_info=dist_info,
                     checkpoint=checkpoint, on_epoch=on_epoch, progress=progress,
                     state_extra={"run_id": run.run_id}, token_cache=ctx.home.token_cache)
        run.log_metrics({"best_epoch": fitted.best_epoch, "best_val_loss": fitted.best_val_loss,
                         "train_seconds": fitted.seconds, "stopped_early": float(fitted.stopped_early)})
    log.info("%s: trained %d epoch(s) on %d samples in %.0fs; best epoch %d (inner val loss %.4f)",
             config.label, len(fitted.history), fitted.samples, fitted.seconds, fitted.best_epoch,
             fitted.best_val_loss)
    trainee.model.eval()
    trainee.event_embedding.eval()
    return Trained(run.run_id, config, window, symbols, trainee, warm_source, fitted, checkpoint, launcher_run_id)


def _warm_source(config: TrainConfig, ctx: JobContext, warm_start: str | None, scratch: Path
                 ) -> AdapterSource | None:
    """What the adapter continues from, downloaded and verified: rolling defaults ("auto") to the
    class's production adapter, else the pooled one; the pooled adapter starts fresh."""
    if config.mode == "pooled" and warm_start == "auto":
        return None
    if warm_start == "auto":
        warm_start = default_warm_start(config.asset_class, ctx.client)
        if warm_start is None:
            log.warning("no production adapter for %s or pooled: the rolling fine-tune starts from a fresh adapter",
                        config.asset_class)
    return fetch_verified(warm_start, ctx.tracking, scratch / "warm-start") if warm_start else None


@dataclass
class Evaluated:
    evaluation: SpanEvaluation  # candidate, pooled, production, base, warm start, baselines: same origins
    versions: dict[str, str]  # pooled / production / warm_start -> the registry version evaluated
    settings: EvalSettings
    calibration: Calibration  # the candidate's, fitted per class on the validation span (stored with it)


def evaluate_step(trained: Trained, ctx: JobContext, eval_settings: EvalSettings, scratch: Path) -> Evaluated:
    """The candidate beside what it would replace, on the validation span, logged into the run
    (the references are downloaded and verified under `scratch`)."""
    config, store = trained.config, ctx.store
    base, trainee = config.base, trained.trainee
    candidate = ForecastModel(trainee.model, trainee.tokenizer, trainee.event_embedding, trainee.vocabulary,
                              base.max_context)
    refs = reference_models(ctx.tracking, config.label, base, scratch, trained.warm_source)
    classes = [c for c in evaluation_classes(config.label) if store.symbols_for(c)]
    evaluation = evaluate_span(store, classes, trained.window.val_span, {"candidate": candidate, **refs.models},
                               eval_settings, trainee.vocabulary, refs.calibrations)
    calibration = evaluation.fit_calibration("candidate", ctx.thresholds.calibration_min_outcomes)
    evaluation.calibrations["candidate"] = calibration  # its in-sample calibrated coverage, logged
    with start_run(ctx.tracking, trained.experiment, run_id=trained.run_id) as run:
        log_evaluation(run, evaluation, primary=ctx.thresholds.primary_metric)
        run.set_tags({CALIBRATION_TAG: calibration.describe()})
    figures = evaluation.figures("candidate")
    log.info("%s: evaluated on %d of %d origins of %s..%s: val_mae %.6g (persistence %.6g), val_nll %.4f, "
             "val_crps %.4g (naive %.4g), 80%% intervals cover %.1f%%; calibration: %s",
             config.label, evaluation.origins, evaluation.candidates, trained.window.val_start.date(),
             trained.window.val_end.date(), figures["val_mae"], evaluation.figures(PERSISTENCE)["val_mae"],
             figures["val_nll"], figures["val_crps"], evaluation.figures(NAIVE)["val_crps"],
             100 * figures["val_coverage_80"], calibration.describe())
    return Evaluated(evaluation, refs.versions, eval_settings, calibration)


def log_model_step(trained: Trained, evaluated: Evaluated, ctx: JobContext) -> TrainOutcome:
    """The adapter bundle with its metadata and the pyfunc model, logged last: the run is complete."""
    config, window, evaluation = trained.config, trained.window, evaluated.evaluation
    warm = trained.warm_source.describe() if trained.warm_source else None
    with start_run(ctx.tracking, trained.experiment, run_id=trained.run_id) as run, \
            tempfile.TemporaryDirectory(prefix="kronos-bundle-") as tmp:
        bundle_dir = Path(tmp) / ADAPTER_ARTIFACT
        trained.trainee.save(bundle_dir)
        evaluated.calibration.write(bundle_dir)  # covered by the version's sha256 tags like every bundle file
        metadata = {
            "label": config.label, "asset_class": config.asset_class, "mode": config.mode,
            "as_of": config.as_of, **{k: v for k, v in window.to_dict().items() if k != "as_of"},
            **evaluation.figures("candidate"),
            "figures": {name: evaluation.figures(name) for name in [*evaluation.models, PERSISTENCE]},
            "compared_versions": evaluated.versions, "base": config.base.to_dict(), "symbols": trained.symbols,
            "warm_start": warm, "run_id": run.run_id, "code_version": git_commit(), "kronos_rolling": __version__,
            "eval": asdict(evaluated.settings), "lookback": config.lookback, "horizon": config.horizon,
            "calibration": evaluated.calibration.describe(),
        }
        (bundle_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        run.log_artifacts(bundle_dir, ADAPTER_ARTIFACT)
        run.log_dict(json.loads(json.dumps(metadata, default=str)), METADATA_FILE)
        example = ctx.store.load(trained.symbols[0]).tail(max(config.lookback, 32)).reset_index(drop=True)
        model_uri = log_adapter_model(run, bundle_dir, example)
        run.set_tags({COMPLETE_TAG: "true"})
    trained.checkpoint.clear()
    launcher = trained.launcher_run_id
    if launcher and launcher != run.run_id:  # `mlflow run` made a run elsewhere: point it here
        ctx.client.set_tag(launcher, JOB_RUN_TAG, f"{trained.experiment}/{run.run_id}")
    return TrainOutcome(run.run_id, config.label, config, window, model_uri, evaluation, evaluated.versions,
                        trained.fit, warm, evaluated.calibration)


def _in_experiment(tracking: Tracking, run_id: str, experiment: str) -> bool:
    run = tracking.client.get_run(run_id)
    return tracking.client.get_experiment(run.info.experiment_id).name == experiment


def register_step(outcome: TrainOutcome, ctx: JobContext) -> str:
    """Register the run's model as a new version with @staging; all of it or none of it."""
    client = ctx.client
    run = client.get_run(outcome.run_id)
    if run.data.tags.get(COMPLETE_TAG) != "true" or run.info.status != "FINISHED":
        raise RegistryError(f"run {outcome.run_id} did not finish training and evaluation; it cannot be registered")
    name = registered_model_name(outcome.label)
    window = outcome.window
    candidate = outcome.figures("candidate")
    tags = {
        "asset_class": outcome.label, "as_of": str(outcome.config.as_of),
        "train_window": f"{window.train_start:%Y-%m-%d}/{window.train_end:%Y-%m-%d}",
        "val_span": f"{window.val_start:%Y-%m-%d}/{window.val_end:%Y-%m-%d}",
        "val_mae": f"{candidate.val_mae:.6g}", "val_nll": f"{candidate.val_nll:.6g}",
        "val_sharpe": f"{candidate.val_sharpe:.6g}", "warm_start": outcome.warm_start or "none",
    }
    if outcome.calibration is not None:
        tags[CALIBRATION_TAG] = outcome.calibration.describe()
    version = register_adapter_model(
        client, name, outcome.model_uri, outcome.run_id, tags=tags,
        description=f"Trained on {tags['train_window']}, as of {outcome.config.as_of}; "
                    f"val_mae {tags['val_mae']}, val_sharpe {tags['val_sharpe']}.")
    try:
        if version.status != "READY":
            raise RegistryError(f"{name} v{version.version} did not become READY (status {version.status})")
        mark_staging(client, name, version.version, lock_dir=ctx.lock_dir)
    except Exception:
        client.delete_model_version(name, version.version)  # never leave a half-registered version
        raise
    log.info("registered %s v%s (@staging)", name, version.version)
    return version.version


def guard_step(outcome: TrainOutcome, version: str, ctx: JobContext) -> tuple[GuardDecision, RetrainConclusion]:
    """Decide from the differences measured on one span, then move aliases, record cadence and alert."""
    client, thresholds = ctx.client, ctx.thresholds
    name = registered_model_name(outcome.label)
    current = _production_version_number(client, name)
    if current != outcome.compared_versions.get("production"):
        # Production moved while we trained (a rollback, another job): the figures no
        # longer describe the version we would replace, so judge again later, not now.
        raise RegistryError(
            f"{name}@production is v{current} but the evaluation compared with "
            f"v{outcome.compared_versions.get('production')}; rerun the job to evaluate against the new production"
        )
    decision = judge_candidate(outcome.evaluation, outcome.label, outcome.compared_versions, thresholds)
    conclusion = conclude_retrain(client, outcome.label, version, decision, as_of=outcome.config.as_of,
                                  lock_dir=ctx.lock_dir, thresholds=thresholds, webhook=ctx.webhook, actor=ctx.actor)
    log.info("%s v%s: %s", name, version, decision.describe())
    return decision, conclusion


def judge_candidate(evaluation: SpanEvaluation, label: str, versions: dict[str, str],
                    thresholds: Thresholds, evidence_months: int = 1) -> GuardDecision:
    """The guard's inputs read off an evaluation, and its decision. For the pooled label the
    pooled production adapter is both the reference and the incumbent. The Sharpe change
    (the cadence's measure) is against what served before: production, else the fallback."""
    metric = thresholds.primary_metric

    def versus(other: str) -> Difference | None:
        return evaluation.difference("candidate", other, metric) if other in evaluation.models else None

    # Under the pooled label, the "production" model is the pooled adapter itself: it is the reference.
    pooled_as = "production" if label == POOLED else "pooled"
    production = None if label == POOLED else figures_of(evaluation, "production", versions.get("production"))
    served_before = next((m for m in ("production", pooled_as, "base") if m in evaluation.models), None)
    return decide_promotion(
        figures_of(evaluation, "candidate"), pooled=figures_of(evaluation, pooled_as, versions.get(pooled_as)),
        production=production, base=figures_of(evaluation, "base"), vs_pooled=versus(pooled_as),
        vs_production=None if production is None else versus("production"), vs_base=versus("base"),
        sharpe_change=(evaluation.difference("candidate", served_before, "val_sharpe")
                       if served_before else None),
        thresholds=thresholds, evidence_months=evidence_months)


def _production_version_number(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, PRODUCTION).version
    except MlflowException:
        return None


def retention_step(label: str, ctx: JobContext) -> RetentionReport:
    report = apply_retention(ctx.client, label, ctx.thresholds.keep_versions, lock_dir=ctx.lock_dir,
                             actor=ctx.actor)
    log.info(report.summary())
    return report
