"""The monthly job's steps, each a function with explicit inputs.

    train_step      one MLflow run: fit the adapter, evaluate the candidate, the pooled
                    and production adapters, the bare base and persistence on the SAME
                    held-out span, log everything, log the pyfunc model last
    register_step   a version of kronos-lora-<label> from that run, @staging, window tags
    guard_step      the pure guard decision, applied (aliases, cadence, audit, alerts)
    retention_step  keep the newest versions plus aliased ones; reclaim storage

Failures leave the registry as it was: a run that did not finish has no model to
register, and a version is only created once the run is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from datetime import date
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
from kronos_rolling.evaluation.compare import Difference
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.forecasts import ForecastModel
from kronos_rolling.evaluation.report import log_evaluation
from kronos_rolling.evaluation.span import PERSISTENCE, SpanEvaluation, evaluate_span
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
from kronos_rolling.registry.names import POOLED, PRODUCTION, registered_model_name
from kronos_rolling.registry.promotion import mark_staging
from kronos_rolling.settings import Thresholds
from kronos_rolling.tracking.adapters import (
    ADAPTER_ARTIFACT,
    METADATA_FILE,
    default_warm_start,
)
from kronos_rolling.registry.integrity import fetch_verified
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

    def figures(self, name: str) -> EvalFigures | None:
        return figures_of(self.evaluation, name, self.compared_versions.get(name))


def evaluation_classes(config: TrainConfig) -> list[str]:
    return [config.asset_class] if config.mode == "rolling" else list(ASSET_CLASSES)


def train_step(config: TrainConfig, ctx: JobContext, *, warm_start: str | None = "auto",
               eval_settings: EvalSettings | None = None, progress: bool = True, wait_for_lock: bool = True,
               launcher_run_id: str | None = None) -> TrainOutcome | None:
    """Train and evaluate in one MLflow run; returns None on ranks other than 0.

    launcher_run_id: the run `mlflow run` made in another experiment; it gets a pointer to
    this run (`kronos.job_run`)."""
    dist_info = ctx.distributed
    # The device lock comes first: a second job waits before it does any work at all.
    lock = (training_lock(ctx.lock_dir, wait=wait_for_lock, job=f"train {config.label} {config.as_of}")
            if dist_info.is_main else contextlib.nullcontext())
    # The adapters it downloads (warm start, references) go to a folder of its own, removed
    # when it ends, however it ends.
    with lock, tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:
        return _train_locked(config, ctx, warm_start, eval_settings, progress, dist_info, launcher_run_id,
                             Path(scratch))


def _train_locked(config, ctx: JobContext, warm_start, eval_settings, progress, dist_info,
                  launcher_run_id, scratch: Path) -> TrainOutcome | None:
    store, tracking = ctx.store, ctx.tracking
    eval_settings = eval_settings or EvalSettings(lookback=config.lookback, horizon=config.horizon)
    window = config.window()
    symbols = training_symbols(config, store)
    check_data_reaches({c: store.coverage(store.symbols_for(c)) for c in evaluation_classes(config)}, window)
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

    # Warm start: rolling defaults to the class's production adapter, else the pooled one.
    if config.mode == "pooled" and warm_start == "auto":
        warm_start = None
    if warm_start == "auto":
        warm_start = default_warm_start(config.asset_class, tracking.client)
        if warm_start is None:
            log.warning("no production adapter for %s or pooled: the rolling fine-tune starts from a fresh adapter",
                        config.asset_class)
    warm_source = fetch_verified(warm_start, tracking, scratch / "warm-start") if warm_start else None

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
            token_cache=ctx.home.token_cache,
            progress=False)
        return None

    resumed = checkpoint.load()
    run_id = resumed.get("run_id") if resumed else None
    if run_id is None and launcher_run_id and _in_experiment(tracking, launcher_run_id, experiment_name(config.label)):
        run_id = launcher_run_id  # `mlflow run` made this run in our experiment: log into it
    with start_run(tracking, experiment_name(config.label), run_id=run_id, run_name=f"{config.label}-{config.as_of}",
                   system_metrics=True) as run:
        if not resumed:
            log_training_inputs(run, config, base, window, symbols, warm_source, dataset, train_set, inner_set)
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
        candidate = ForecastModel(trainee.model, trainee.tokenizer, trainee.event_embedding.eval(),
                                  trainee.vocabulary, base.max_context)
        refs = reference_models(tracking, config.label, base, scratch, warm_source)
        classes = [c for c in evaluation_classes(config) if store.symbols_for(c)]
        evaluation = evaluate_span(store, classes, window.val_span, {"candidate": candidate, **refs.models},
                                   eval_settings, trainee.vocabulary)
        log_evaluation(run, evaluation, primary=ctx.thresholds.primary_metric)
        candidate_figures = evaluation.figures("candidate")
        log.info("%s: evaluated on %d of %d origins of %s..%s: val_mae %.6g (persistence %.6g), val_nll %.4f",
                 config.label, evaluation.origins, evaluation.candidates, window.val_start.date(),
                 window.val_end.date(), candidate_figures["val_mae"], evaluation.figures("persistence")["val_mae"],
                 candidate_figures["val_nll"])

        with tempfile.TemporaryDirectory(prefix="kronos-bundle-") as tmp:
            bundle_dir = Path(tmp) / ADAPTER_ARTIFACT
            trainee.save(bundle_dir)
            metadata = {
                "label": config.label, "asset_class": config.asset_class, "mode": config.mode,
                "as_of": config.as_of, **{k: v for k, v in window.to_dict().items() if k != "as_of"},
                **candidate_figures,
                "figures": {name: evaluation.figures(name) for name in [*evaluation.models, PERSISTENCE]},
                "compared_versions": refs.versions, "base": base.to_dict(), "symbols": symbols,
                "warm_start": warm_source.describe() if warm_source else None,
                "run_id": run.run_id, "code_version": git_commit(), "kronos_rolling": __version__,
                "eval": asdict(eval_settings), "lookback": config.lookback, "horizon": config.horizon,
            }
            (bundle_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
            run.log_artifacts(bundle_dir, ADAPTER_ARTIFACT)
            run.log_dict(metadata, METADATA_FILE)
            example = store.load(symbols[0]).tail(max(config.lookback, 32)).reset_index(drop=True)
            model_uri = log_adapter_model(run, bundle_dir, example)
        run.set_tags({COMPLETE_TAG: "true"})
    checkpoint.clear()
    if launcher_run_id and launcher_run_id != run.run_id:  # `mlflow run` made a run elsewhere: point it here
        tracking.client.set_tag(launcher_run_id, JOB_RUN_TAG, f"{experiment_name(config.label)}/{run.run_id}")
    return TrainOutcome(run.run_id, config.label, config, window, model_uri, evaluation, refs.versions,
                        fitted, warm_source.describe() if warm_source else None)


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
        "asset_class": outcome.label, "as_of": outcome.config.as_of,
        "train_window": f"{window.train_start:%Y-%m-%d}/{window.train_end:%Y-%m-%d}",
        "val_span": f"{window.val_start:%Y-%m-%d}/{window.val_end:%Y-%m-%d}",
        "val_mae": f"{candidate.val_mae:.6g}", "val_nll": f"{candidate.val_nll:.6g}",
        "val_sharpe": f"{candidate.val_sharpe:.6g}", "warm_start": outcome.warm_start or "none",
    }
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


def guard_step(outcome: TrainOutcome, version: str, ctx: JobContext, *, as_of: date
               ) -> tuple[GuardDecision, RetrainConclusion]:
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
    conclusion = conclude_retrain(client, outcome.label, version, decision, as_of=as_of, lock_dir=ctx.lock_dir,
                                  thresholds=thresholds, webhook=ctx.webhook, actor=ctx.actor)
    log.info("%s v%s: %s", name, version, decision.describe())
    return decision, conclusion


def judge_candidate(evaluation: SpanEvaluation, label: str, versions: dict[str, str],
                    thresholds: Thresholds) -> GuardDecision:
    """The guard's inputs read off an evaluation, and its decision. For the pooled label the
    pooled production adapter is both the reference and the incumbent."""
    metric = thresholds.primary_metric

    def versus(other: str) -> Difference | None:
        return evaluation.difference("candidate", other, metric) if other in evaluation.models else None

    production = None if label == POOLED else figures_of(evaluation, "production", versions.get("production"))
    pooled_name = "production" if label == POOLED else "pooled"
    sharpe_other = pooled_name if label == POOLED else "production"
    return decide_promotion(
        figures_of(evaluation, "candidate"), pooled=figures_of(evaluation, pooled_name, versions.get(pooled_name)),
        production=production, base=figures_of(evaluation, "base"), vs_pooled=versus(pooled_name),
        vs_production=None if production is None else versus("production"), vs_base=versus("base"),
        sharpe_change=(evaluation.difference("candidate", sharpe_other, "val_sharpe")
                       if sharpe_other in evaluation.models else None),
        thresholds=thresholds)


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
