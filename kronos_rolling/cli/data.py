"""`kronos-rolling data ...`: import, list, validate and classify market data.

The data folder is `--data DIR` (on `data` or on any of its commands), else the
`KRONOS_DATA_DIR` setting, else the bundled sample data. Problems raise `DataError`, which the
top-level group prints as one message with a non-zero exit. The data modules (pandas) are
imported inside the commands, so `kronos-rolling --help` does not load them.
"""

from __future__ import annotations

from pathlib import Path

import click

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.cli.options import settings_of
from kronos_rolling.data.issues import listing, summary, write_report
from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.settings import DEFAULT_MAX_GAP

_DATA_HELP = "Data folder [env KRONOS_DATA_DIR; default: the bundled sample data]."


def _data_option(command):
    return click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                        help=_DATA_HELP)(command)


def _store(ctx: click.Context, data_dir: Path | None):
    """The command's --data, else the group's --data, else the setting: a DataStore."""
    from kronos_rolling.data.store import DataStore

    chosen = data_dir if data_dir is not None else ctx.find_object(dict).get("data_dir")
    return DataStore(settings_of(ctx, data_dir=chosen).data_dir)


@click.group()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help=_DATA_HELP)
@click.pass_context
def data(ctx: click.Context, data_dir: Path | None) -> None:
    """Import, list, validate and classify market data."""
    ctx.obj = {"data_dir": data_dir}  # the commands' --data wins over it


@data.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--symbol", required=True, help="Symbol to store the bars under, e.g. AAPL, BTCUSDT, EURUSD.")
@click.option("--asset-class", type=click.Choice(ASSET_CLASSES), default=None,
              help="Set the class when the rules cannot tell (saved in asset_classes.csv).")
@click.option("--time-format", default=None, help="strftime pattern of the time column, e.g. '%d.%m.%Y %H:%M'.")
@click.option("--tz", default="UTC", show_default=True, help="Time zone of timestamps that carry no offset.")
@click.option("--replace", is_flag=True, help="Overwrite the symbol if it already exists.")
@click.option("--max-gap", type=click.IntRange(min=0), default=DEFAULT_MAX_GAP, show_default=True,
              help="Missing bars tolerated before a gap is reported.")
@click.option("--drop-invalid", is_flag=True,
              help="Leave out duplicate timestamps (the later row is kept), all-zero or non-positive bars, "
                   "inconsistent OHLC and unreadable rows; they go to SYMBOL.dropped.csv with a reason.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every problem found (file, row, column, problem, detail) to this CSV.")
@_data_option
@click.pass_context
def import_(ctx, src, symbol, asset_class, time_format, tz, replace, max_gap, drop_invalid, report_path, data_dir):
    """Convert a CSV (or parquet) of bars into the data folder as SYMBOL.parquet.

    Columns may be named in any case: timestamp/date/datetime/time (or date + time),
    open, high, low, close, optional volume and amount. Timestamps may be text, unix
    seconds or milliseconds; they are stored in UTC. A failed import writes nothing and
    counts every kind of problem; --report FILE lists every offending row.
    """
    import pandas as pd

    from kronos_rolling.data.calendars import format_spacing

    store = _store(ctx, data_dir)
    report = store.import_csv(src, symbol, asset_class, time_format=time_format, tz=tz, replace=replace,
                              max_gap=max_gap, drop_invalid_rows=drop_invalid, report=report_path,
                              now=pd.Timestamp.now(tz="UTC"))
    for temp in report.removed_temps:
        click.echo(f"note: removed {temp.name}, left by an import that was stopped", err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for gap in report.gaps:
        click.echo(f"warning: {gap}", err=True)
    if report.dropped:
        counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(report.dropped.items()))
        click.echo(f"dropped {sum(report.dropped.values())} row(s) ({counts}) -> {report.dropped_path}", err=True)
    click.echo(f"imported {report.symbol} ({report.asset_class}): {report.rows} bars of "
               f"{format_spacing(report.bar_spacing)} from {report.first} to {report.last} -> {report.path}")


@data.command("list")
@_data_option
@click.pass_context
def list_(ctx, data_dir):
    """Show each symbol's class, bar spacing, first and last bar and row count."""
    from kronos_rolling.data.calendars import format_spacing

    store = _store(ctx, data_dir)
    rows = [("SYMBOL", "CLASS", "SPACING", "FIRST", "LAST", "ROWS")]
    for symbol in store.symbols():
        s = store.summary(symbol)
        rows.append((s.symbol, s.asset_class or "unknown (add to asset_classes.csv)", format_spacing(s.bar_spacing),
                     _stamp(s.first), _stamp(s.last), str(s.rows)))
    if len(rows) == 1:
        click.echo(f"no symbols in {store.root}")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _stamp(moment) -> str:
    return moment.strftime("%Y-%m-%d") if moment.hour == moment.minute == 0 else moment.strftime("%Y-%m-%d %H:%M")


@data.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--symbol", default=None,
              help="The series a single FILE holds (default: its file name), for its asset class and known gaps.")
@click.option("--max-gap", type=click.IntRange(min=0), default=DEFAULT_MAX_GAP, show_default=True,
              help="Missing bars tolerated before a gap is a problem.")
@click.option("--time-format", default=None, help="strftime pattern of the time column, e.g. '%d.%m.%Y %H:%M'.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every problem found (file, row, column, problem, detail) to this CSV.")
@_data_option
@click.pass_context
def validate(ctx, paths, symbol, max_gap, time_format, report_path, data_dir):
    """Check bar files or folders (default: the data folder); exit non-zero on any problem.

    A FILE may hold any series: when its name (or --symbol) is no symbol the rules can
    classify, its content is checked all the same and the class is only a warning.
    The first rows of each kind of problem are listed and every kind is counted;
    --report FILE lists every row.
    """
    import pandas as pd

    from kronos_rolling.data.validate import validate_path

    if symbol is not None and (len(paths) != 1 or Path(paths[0]).is_dir()):
        raise ConfigError("--symbol names the series of one FILE; pass exactly one file with it")
    targets = list(paths) or [_store(ctx, data_dir).root]
    now = pd.Timestamp.now(tz="UTC")
    found = [issue for target in targets
             for issue in validate_path(target, max_gap=max_gap, symbol=symbol, time_format=time_format, now=now)]
    warnings = [i for i in found if i.warning]
    issues = [i for i in found if not i.warning]
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for line in listing(issues):
        click.echo(line)
    if report_path is not None:
        write_report(report_path, found)
    if issues:
        raise DataError(f"{summary(issues)} in {', '.join(map(str, targets))}")
    click.echo(f"ok: {', '.join(map(str, targets))}")


@data.command("classify")
@click.argument("symbols", nargs=-1, required=True)
@_data_option
@click.pass_context
def classify(ctx, symbols, data_dir):
    """Print `SYMBOL<TAB>class` for each symbol (overrides from the data folder win)."""
    from kronos_rolling.data.assets import classify_asset

    store = _store(ctx, data_dir)
    overrides = store.overrides()
    classes, problems = [], []
    for symbol in symbols:
        try:
            classes.append((symbol, classify_asset(symbol, overrides)))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("\n".join(problems))
    for symbol, asset_class in classes:
        click.echo(f"{symbol}\t{asset_class}")
