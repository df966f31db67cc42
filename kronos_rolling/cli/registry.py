"""`kronos-rolling history | rollback | retention | due | cadence`.

The commands are attached to the top-level group in `cli/main.py`
(`COMMANDS`). Errors are `KronosError`s, which the group prints without a traceback
and turns into their exit code; `due` exits 0 when a retrain is due and 1 when not.
MLflow is imported inside the commands, so `kronos-rolling --help` stays quick.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from datetime import date

import click

from kronos_rolling.cli.options import as_of_option, connect, settings_of, tracking_uri_option
from kronos_rolling.errors import RegistryError
from kronos_rolling.names import model_targets, registered_model_name
from kronos_rolling.registry.cadence import MODES
from kronos_rolling.settings import today_utc


def _asset_class_option(fn):
    return click.option("--asset-class", "asset_class", required=True,
                        help=f"One of: {', '.join(model_targets())}.")(fn)




def _registry_errors(fn):
    """Turn an unexpected MLflow error into a one-line RegistryError for the CLI."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            raise RegistryError(f"the registry refused the request: {exc.message}") from exc
    return wrapper


def _day(as_of: date | None) -> date:
    return as_of or today_utc()


def describe_move(move) -> str:
    """`kronos-lora-crypto@production: none -> v2 (@previous_production: none); audit entry 4`."""
    from kronos_rolling.registry.history import version_label

    return (f"{move.name}@production: {version_label(move.from_version)} -> {version_label(move.to_version)} "
            f"(@previous_production: {version_label(move.previous_production)}); audit entry {move.audit_seq}")


@click.command()
@_asset_class_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Newest N entries only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@tracking_uri_option
@_registry_errors
def history(asset_class: str, limit: int | None, as_json: bool, tracking_uri: str | None) -> None:
    """Audit trail of a class: promotions, refusals, rollbacks, cadence changes, retention."""
    from kronos_rolling.registry import history as audit

    name = registered_model_name(asset_class)
    entries = audit.read_history(connect(tracking_uri).client, name)
    if limit:
        entries = entries[-limit:]
    if as_json:
        for entry in entries:
            click.echo(json.dumps(asdict(entry), sort_keys=True))
    else:
        click.echo(f"{name}\n{audit.format_history(entries)}")


@click.command()
@_asset_class_option
@click.option("--version", "version", type=click.IntRange(min=1), required=True, help="Version to serve.")
@click.option("--reason", default="promoted by an operator", show_default=True,
              help="Why; recorded in the audit trail (with who and when).")
@tracking_uri_option
@_registry_errors
def promote(asset_class: str, version: int, reason: str, tracking_uri: str | None) -> None:
    """Move @production to a version by hand (outside the guard), once it passes verification; the predictor
    follows."""
    from kronos_rolling.registry.history import Actor
    from kronos_rolling.registry.promotion import promote as promote_version

    settings = settings_of()
    move = promote_version(connect(tracking_uri, settings).client, registered_model_name(asset_class), version,
                           reason, lock_dir=settings.lock_dir, actor=Actor.current(settings.job))
    if move.audit_seq is None:
        click.echo(f"{move.name}@production is already v{version}; nothing to do")
        return
    click.echo(describe_move(move))


@click.command()
@_asset_class_option
@click.option("--to-version", type=click.IntRange(min=1), default=None,
              help="Version to serve (default: the newest older version the guard promoted that "
                   "passes verification).")
@click.option("--reason", default="rolled back by an operator", show_default=True,
              help="Why; recorded in the audit trail (with who and when).")
@tracking_uri_option
@_registry_errors
def rollback(asset_class: str, to_version: int | None, reason: str,
             tracking_uri: str | None) -> None:
    """Point @production back at an earlier version (verified first) and send a rollback alert."""
    from kronos_rolling.registry.history import Actor
    from kronos_rolling.registry.promotion import rollback as rollback_production

    settings = settings_of()
    move = rollback_production(connect(tracking_uri, settings).client, asset_class, to_version, reason=reason,
                               lock_dir=settings.lock_dir, actor=Actor.current(settings.job),
                               webhook=settings.alert_webhook)
    for note in move.notes:
        click.echo(f"note: {note}")
    click.echo(describe_move(move))


@click.command()
@_asset_class_option
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Newest versions to keep (default 6, or KRONOS_KEEP_VERSIONS).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; change nothing.")
@tracking_uri_option
@_registry_errors
def retention(asset_class: str, keep: int | None, dry_run: bool, tracking_uri: str | None) -> None:
    """Keep the newest versions plus aliased ones; delete the rest and their files (adapter and model),
    keeping their training runs' params, metrics, tags and plots."""
    from kronos_rolling.registry.cleanup import apply_retention
    from kronos_rolling.registry.history import Actor

    registered_model_name(asset_class)  # a bad class is reported before anything else
    settings = settings_of()
    keep = keep or settings.thresholds.keep_versions
    tracking = connect(tracking_uri, settings)
    report = apply_retention(tracking.client, asset_class, keep, lock_dir=settings.lock_dir, dry_run=dry_run,
                             actor=Actor.current(settings.job))
    click.echo(report.summary())


@click.command()
@_asset_class_option
@as_of_option
@tracking_uri_option
@_registry_errors
@click.pass_context
def due(ctx: click.Context, asset_class: str, as_of: date | None,
        tracking_uri: str | None) -> None:
    """Is a retrain due? Exit 0 (due) or 1 (not due), saying why / when."""
    from kronos_rolling.registry import schedule

    registered_model_name(asset_class)
    settings = settings_of()
    decision = schedule.retrain_due(connect(tracking_uri, settings).client, asset_class, _day(as_of),
                                    settings.thresholds)
    if decision.due:
        click.echo(f"due: {decision.reason}")
        return
    click.echo(f"not due: {decision.reason}; next retrain due on {decision.next_due}")
    ctx.exit(1)


@click.command()
@_asset_class_option
@click.option("--set", "mode", type=click.Choice(MODES), default=None,
              help="Switch the cadence (an operator's override).")
@click.option("--reason", default="set by an operator", show_default=True)
@as_of_option
@tracking_uri_option
@_registry_errors
def cadence(asset_class: str, mode: str | None, reason: str, as_of: date | None,
            tracking_uri: str | None) -> None:
    """Show a class's retrain cadence, or set it with --set monthly|quarterly."""
    from kronos_rolling.registry import schedule
    from kronos_rolling.registry.history import Actor

    settings = settings_of()
    client = connect(tracking_uri, settings).client
    if mode is None:
        state = schedule.read_cadence(client, asset_class)
    else:
        state = schedule.set_cadence(client, asset_class, mode, _day(as_of), reason, lock_dir=settings.lock_dir,
                                     actor=Actor.current(settings.job)).after
    since = f" since {state.since}" if state.since else ""
    click.echo(f"{registered_model_name(asset_class)}: {state.mode}{since} ({state.reason})")
    for record in state.retrains:
        click.echo(f"  {record.on}  v{record.version or '?'}  {record.cadence:<9}  "
                   f"val_sharpe change {record.describe()}")


COMMANDS = [history, promote, rollback, retention, due, cadence]
