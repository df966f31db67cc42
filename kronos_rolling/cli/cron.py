"""`kronos-rolling cron ...`: what the monthly script (deploy/monthly-job.sh) does around `mlflow run`.

    kronos-rolling cron unfinished --since EPOCH_MS EXPERIMENT   end the runs a failed launch left RUNNING
    kronos-rolling cron failed --as-of YYYY-MM-DD CLASS ...      the schedule's own alert naming the failed classes
"""

from __future__ import annotations

import click

from kronos_rolling.cli.options import as_of_option, connect, settings_of, tracking_uri_option
from kronos_rolling.settings import today_utc


@click.group()
def cron():
    """Around the monthly `mlflow run` of each class (deploy/monthly-job.sh)."""


@cron.command("unfinished")
@click.option("--since", "since_ms", type=click.IntRange(min=0), required=True,
              help="Epoch milliseconds the launch started at.")
@click.argument("experiment")
@tracking_uri_option
def unfinished(since_ms: int, experiment: str, tracking_uri: str | None) -> None:
    """End as FAILED the MLflow Project runs of EXPERIMENT started since --since and still RUNNING:
    a launch that failed before our code ran never ends the run MLflow created first."""
    from kronos_rolling.tracking.runs import UNFINISHED_REASON, fail_unfinished_launches

    for run_id in fail_unfinished_launches(connect(tracking_uri).client, experiment, since_ms):
        click.echo(f"ended run {run_id} in {experiment} as FAILED: {UNFINISHED_REASON}", err=True)


@cron.command("failed")
@as_of_option
@click.argument("classes", nargs=-1, required=True)
def failed(as_of, classes: tuple[str, ...]) -> None:
    """Alert that CLASSES failed this month: also failures no job could report (a tracking server
    that refused `mlflow run`, a process killed for memory)."""
    from kronos_rolling.pipeline.job import alert_classes_failed

    alert_classes_failed(list(classes), as_of or today_utc(), settings_of().alert_webhook)


COMMANDS = [cron]
