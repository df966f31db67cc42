"""The MLflow Project's entry points: check every -P value, then run the job.

`MLproject` runs each entry point as

    python -m kronos_rolling.project ENTRY_POINT name={name} name={name} ...

MLflow hands every parameter over as text and checks none of them (its types are only
labels), so each value is checked here, by the name the operator typed after -P, before
any work starts. A valid set of parameters becomes the same `kronos-rolling` command an
operator would run by hand (`run`, `train pooled`, `simulate`), so there is one code
path for the monthly job whichever way it is started. An empty value means "the
default": today (UTC) for as_of, the bundled data for data, KRONOS_BASE_MODEL for
base_model, no cap for the caps.

`mlflow run` creates the MLflow run before our code starts and hands its id over in
MLFLOW_RUN_ID. When that run sits in the class's experiment (`--experiment-name
kronos-rolling/<class>`, what the schedules use) the training step logs into it. When it
does not (a bare `mlflow run . -P asset_class=crypto` lands in "Default"), the job makes
its run in the class's experiment as usual and leaves a pointer to it on the launcher's
run (`kronos.job_run`), so every class's months stay together in one experiment. A
failure found here sends the same `job_failed` alert as a failed job.

    python -m kronos_rolling.project failed --as-of YYYY-MM-DD CLASS ...

is the monthly script's (deploy/monthly-job.sh) own alert naming the classes that failed.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kronos_rolling import ASSET_CLASSES, TRAINING_PRECISIONS
from kronos_rolling.errors import ConfigError, KronosError

if TYPE_CHECKING:
    from kronos_rolling.registry.alerts import DeliveryResult

RUN_ID_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the entry point's process
LAUNCHER_RUN_ENV = "KRONOS_LAUNCHER_RUN_ID"  # the run `mlflow run` made, when the job logs elsewhere
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name on the Hugging Face hub


# -- how a text value becomes kronos-rolling options ------------------------------------
# Each converter takes the text MLflow passed and returns the options it stands for
# (an empty list: leave the option out, so the command's own default applies), or
# raises ValueError saying what the value should have been.

Converter = Callable[[str], list[str]]


def whole(option: str, *, minimum: int = 1, blank_means_default: bool = False) -> Converter:
    def convert(text: str) -> list[str]:
        if blank_means_default and text == "":
            return []
        if not re.fullmatch(r"[+]?\d+", text) or int(text) < minimum:
            raise ValueError(f"must be a whole number >= {minimum}"
                             + (" (or empty for no cap)" if blank_means_default else ""))
        return [option, str(int(text))]
    return convert


def positive_number(option: str) -> Converter:
    def convert(text: str) -> list[str]:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise ValueError("must be a positive number")
        return [option, text]
    return convert


def day_or_today(option: str) -> Converter:
    def convert(text: str) -> list[str]:
        if text == "":
            return []  # `kronos-rolling` takes today, UTC, at the moment the job starts
        try:
            datetime.strptime(text, "%Y-%m-%d")
        except ValueError:
            raise ValueError("must be a date YYYY-MM-DD (or empty for today, UTC)") from None
        return [option, text]
    return convert


def month(option: str) -> Converter:
    def convert(text: str) -> list[str]:
        try:
            datetime.strptime(text, "%Y-%m")
        except ValueError:
            raise ValueError("must be a month YYYY-MM") from None
        return [option, text]
    return convert


def months_or_none(option: str) -> Converter:
    """Comma-separated months YYYY-MM, each checked as `month` checks one; empty: none."""
    one_month = month(option)

    def convert(text: str) -> list[str]:
        words: list[str] = []
        for name in (name.strip() for name in text.split(",") if name.strip()):
            try:
                words += one_month(name)
            except ValueError:
                raise ValueError(f"{name} is not a month; use a comma-separated list of YYYY-MM, or empty") from None
        return words
    return convert


def one_of(option: str, choices: tuple[str, ...]) -> Converter:
    def convert(text: str) -> list[str]:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return [option, text]
    return convert


def classes_or_all(option: str) -> Converter:
    """Comma-separated asset classes; empty: all of them."""
    def convert(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in ASSET_CLASSES]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} is not an asset class; use a comma-separated list of "
                             f"{', '.join(ASSET_CLASSES)}, or empty for all")
        return [token for name in names for token in (option, name)]
    return convert


def folder_or_default(option: str) -> Converter:
    def convert(text: str) -> list[str]:
        if text == "":
            return []
        path = Path(text).expanduser()
        if not path.is_dir():
            raise ValueError(f"there is no folder {path}; give an existing folder (absolute, as the entry point "
                             "runs in the project folder) or empty for the default")
        return [option, str(path.resolve())]
    return convert


def base_model(option: str) -> Converter:
    """A folder holding predictor/ and tokenizer/, or a hub id; empty: KRONOS_BASE_MODEL."""
    def convert(text: str) -> list[str]:
        if text == "":
            return []
        path = Path(text).expanduser()
        if path.is_dir():
            return [option, str(path.resolve())]
        if path.is_absolute() or text.startswith((".", "~")) or not HUB_ID.match(text):
            raise ValueError("is neither an existing folder nor a hub id like NeoQuasar/Kronos-base")
        return [option, text]
    return convert


def warm_start(option: str) -> Converter:
    def convert(text: str) -> list[str]:
        if text in ("auto", "none") or text.startswith(("models:/", "runs:/")) or Path(text).expanduser().is_dir():
            return [option, text]
        raise ValueError("must be auto, none, models:/NAME@ALIAS, runs:/RUN_ID/adapter or an existing folder")
    return convert


def switch(when_true: list[str], when_false: list[str]) -> Converter:
    def convert(text: str) -> list[str]:
        lowered = text.lower()
        if lowered in ("true", "yes", "1"):
            return when_true
        if lowered in ("false", "no", "0"):
            return when_false
        raise ValueError("must be true or false")
    return convert


# -- the entry points -------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str  # as in MLproject and after -P
    convert: Converter
    example: str  # a valid value, shown in the error message


@dataclass(frozen=True)
class EntryPoint:
    name: str
    command: tuple[str, ...]  # the kronos-rolling command the parameters are options of
    parameters: tuple[Parameter, ...]
    # True: the job logs into the run `mlflow run` made; False: it makes runs of its own (the replay)
    uses_launcher_run: bool = True

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


def _training_parameters(epochs_example: str, lr_example: str) -> tuple[Parameter, ...]:
    return (
        Parameter("as_of", day_or_today("--as-of"), "2025-07-01"),
        Parameter("data", folder_or_default("--data"), "/srv/kronos/data"),
        Parameter("base_model", base_model("--base-model"), "NeoQuasar/Kronos-base"),
        Parameter("epochs", whole("--epochs"), epochs_example),
        Parameter("lr", positive_number("--lr"), lr_example),
        Parameter("batch_size", whole("--batch-size"), "32"),
        Parameter("lookback", whole("--lookback"), "128"),
        Parameter("horizon", whole("--horizon"), "16"),
        Parameter("stride", whole("--stride"), "1"),
        Parameter("years", positive_number("--years"), "2"),
        Parameter("max_samples_per_epoch", whole("--max-samples-per-epoch", blank_means_default=True), "20000"),
        Parameter("eval_samples", whole("--eval-samples"), "4"),
        Parameter("eval_max_origins", whole("--eval-max-origins", blank_means_default=True), "500"),
        Parameter("seed", whole("--seed", minimum=0), "42"),
        Parameter("device", one_of("--device", ("auto", "cpu", "cuda")), "auto"),
        Parameter("precision", one_of("--precision", TRAINING_PRECISIONS), "bf16"),
    )


ENTRY_POINTS = {
    entry.name: entry for entry in (
        EntryPoint("main", ("run",), (
            Parameter("asset_class", one_of("--asset-class", ASSET_CLASSES), "crypto"),
            *_training_parameters("5", "5e-5"),
            Parameter("warm_start", warm_start("--warm-start"), "auto"),
            Parameter("force", switch(["--force"], []), "false"),
        )),
        EntryPoint("pooled", ("train", "pooled"), (
            *_training_parameters("10", "1e-4"),
            Parameter("register", switch(["--register"], ["--no-register"]), "true"),
        )),
        EntryPoint("simulate", ("simulate",), (
            Parameter("start", month("--start"), "2018-01"),
            Parameter("months", whole("--months"), "12"),
            Parameter("asset_class", classes_or_all("--asset-class"), "crypto,equity"),
            Parameter("drill", months_or_none("--drill-bad-candidate"), "2018-06"),
        ), uses_launcher_run=False),
    )
}


def parse_arguments(args: list[str]) -> dict[str, str]:
    """`name=value` words from MLproject; MLflow appends unknown -P names as `--name value`."""
    values: dict[str, str] = {}
    index = 0
    while index < len(args):
        word = args[index]
        if word.startswith("--"):
            name = word[2:]
            value = args[index + 1] if index + 1 < len(args) else ""
            index += 2
        elif "=" in word:
            name, value = word.split("=", 1)
            index += 1
        else:
            raise ConfigError(f"cannot read {word!r}: parameters come as name=value")
        if name in values:
            raise ConfigError(f"parameter {name} is given twice")
        values[name] = value
    return values


def command_for(entry_name: str, values: dict[str, str]) -> list[str]:
    """The kronos-rolling command for an entry point's parameters; every value is checked."""
    entry = ENTRY_POINTS.get(entry_name)
    if entry is None:
        raise ConfigError(f"no entry point {entry_name!r}; MLproject has: {', '.join(ENTRY_POINTS)}")
    unknown = sorted(set(values) - {p.name for p in entry.parameters})
    if unknown:
        raise ConfigError(
            f"the {entry.name} entry point has no parameter {', '.join(unknown)}; "
            f"it takes: {', '.join(p.name for p in entry.parameters)}")
    command = list(entry.command)
    problems = []
    for parameter in entry.parameters:
        if parameter.name not in values:
            continue  # MLflow fills in every default, so this is a direct call with fewer names
        text = values[parameter.name].strip()
        try:
            command += parameter.convert(text)
        except ValueError as why:
            problems.append(f"-P {parameter.name}={text!r} {why} (e.g. -P {parameter.name}={parameter.example})")
    if problems:
        raise ConfigError("; ".join(problems))
    return command


def experiment_label(entry_name: str, values: dict[str, str]) -> str | None:
    """The label (class or pooled) of the run the entry point logs into; None: runs of its own."""
    entry = ENTRY_POINTS.get(entry_name)
    if entry is None or not entry.uses_launcher_run:
        return None
    return "pooled" if entry_name == "pooled" else values.get("asset_class")


def route_launcher_run(label: str | None, environ=os.environ) -> str | None:
    """Decide which run the job logs into; returns the launcher's run id when it is left alone.

    The run `mlflow run` made is used when it is in the experiment the job logs into
    (`kronos-rolling/<label>`). Otherwise (another experiment, or an entry point that makes
    runs of its own, label None) the job must not take it over: MLFLOW_RUN_ID is dropped
    and the launcher's id passed on as KRONOS_LAUNCHER_RUN_ID, so the job can point to
    the run it made.
    """
    run_id = environ.get(RUN_ID_ENV)
    if not run_id:
        return None
    if label is not None:
        from kronos_rolling.registry.client import connect
        from kronos_rolling.tracking.runs import experiment_name

        client = connect()
        experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
        if experiment.name == experiment_name(label):
            return None
        print(f"note: this MLflow run is in experiment {experiment.name!r}; the {label} job logs into "
              f"{experiment_name(label)!r} and leaves a pointer here (launch with --experiment-name "
              f"{experiment_name(label)} to log into this run instead)", file=sys.stderr, flush=True)
    for name in (RUN_ID_ENV, "MLFLOW_EXPERIMENT_ID"):
        environ.pop(name, None)
    environ[LAUNCHER_RUN_ENV] = run_id
    return run_id


def _alert_failure(entry_name: str, values: dict[str, str], error: KronosError) -> None:
    from kronos_rolling.registry import alerts

    label = experiment_label(entry_name, values)
    alerts.send_alert(
        alerts.JOB_FAILED,
        f"kronos-rolling MLflow Project entry point {entry_name} did not start: {error}",
        {"entry_point": entry_name, "asset_class": label or "", "as_of": values.get("as_of") or "today",
         "error": f"{type(error).__name__}: {error}"})


def report_failed_classes(classes: list[str], as_of: str) -> "DeliveryResult":
    """The schedule's own alert: which classes of this month's job failed (deploy/monthly-job.sh).

    It also covers failures no job could report: a tracking server that refused `mlflow run`,
    a process killed for memory."""
    from kronos_rolling.registry import alerts

    return alerts.send_alert(
        alerts.JOB_FAILED,
        f"kronos-rolling monthly job as of {as_of}: {', '.join(classes)} failed; see the job's log and "
        f"the runs in kronos-rolling/<class>",
        {"as_of": as_of, "failed_classes": ", ".join(classes)})


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit(f"usage: python -m kronos_rolling.project ENTRY_POINT name=value ...\n"
                         f"       python -m kronos_rolling.project failed --as-of YYYY-MM-DD CLASS ...\n"
                         f"entry points: {', '.join(ENTRY_POINTS)} (see MLproject)")
    if argv[0] == "failed" and argv[1:2] == ["--as-of"] and len(argv) > 3:
        report_failed_classes(argv[3:], argv[2])
        return
    entry_name, values = argv[0], {}
    try:
        values = parse_arguments(argv[1:])
        command = command_for(entry_name, values)
        route_launcher_run(experiment_label(entry_name, values))
    except KronosError as error:
        print(f"error: {error}", file=sys.stderr)
        _alert_failure(entry_name, values, error)
        raise SystemExit(error.exit_code) from None
    from kronos_rolling.cli.main import main as kronos_rolling

    print(f"kronos-rolling {' '.join(command)}", file=sys.stderr, flush=True)
    kronos_rolling.main(args=command, prog_name="kronos-rolling")


if __name__ == "__main__":
    main()
