"""The bridge from the MLflow Project (MLproject) to the `kronos-rolling` command line.

`mlflow run . -P asset_class=crypto` runs MLproject's command,
`python -m kronos_rolling.project main asset_class=crypto as_of= ...`. This module turns
each `name=value` into the option of the `kronos-rolling` command the entry point stands
for (an empty value leaves the option out, so the command's own default applies), hands
the job the run `mlflow run` made (`--mlflow-run-id`), and runs the command. Click checks
every value, as it does for an operator; a value it refuses, or a job that cannot start,
exits 2 with the message and sends the `job_failed` alert.

The entry points are declared once, in ENTRY_POINTS: which options of which command each
exposes; every option's words, default and type are the command's own (cli/), so the job's
parameters are declared in one place. MLproject (and its cluster twin,
deploy/kubernetes/MLproject) are generated from it:

    python -m kronos_rolling.project --write-mlproject

and a test checks that both files are current. What the monthly script does around `mlflow
run` (end a failed launch's runs, alert the failed classes) is `kronos-rolling cron`
(cli/cron.py).

An entry point refuses, before any work, a tracking store inside the project folder
(`check_tracking_store`): that is where `mlflow run` puts MLflow's default store when
MLFLOW_TRACKING_URI is not set, and no server, predictor or later job would see the result.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import click

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.errors import ConfigError, KronosError
from kronos_rolling.settings import load_settings, parse_bool
from kronos_rolling.training.config import MODE_DEFAULTS

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Parameter:
    name: str  # as in MLproject and after -P
    option: str  # the command's option; for a switch: "--on/--off"
    default: str | None = ""  # MLproject's default (None: required); "" leaves the option out
    kind: str = "option"  # option | list (comma-separated, the option repeated) | switch
    comment: str = ""
    label: str = "string"  # MLproject's type label; whole numbers are `string` (MLflow has no int)

    def words(self, text: str) -> list[str]:
        text = text.strip()
        if self.kind == "switch":
            on, off = self.option.split("/")
            return [on] if parse_bool(f"-P {self.name}", text) else ([off] if off else [])
        if self.kind == "list":
            return [word for item in text.split(",") if item.strip() for word in (self.option, item.strip())]
        return [self.option, text] if text else []


@dataclass(frozen=True)
class EntryPoint:
    name: str
    command: tuple[str, ...]  # the kronos-rolling command the parameters are options of
    parameters: tuple[Parameter, ...]
    comment: str
    label: str | None  # the class (or pooled) whose experiment the job logs into; None: runs of its own

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


def _command(path: tuple[str, ...]) -> click.Command:
    from kronos_rolling.cli.main import main as kronos_rolling

    command = kronos_rolling
    for name in path:
        command = command.commands[name]
    return command


def _text(value) -> str:
    """A click default as MLproject's default: floats without exponent (YAML would read 5e-5 as text)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)


def exposed(path: tuple[str, ...], *names: str | tuple[str, str, str],
            defaults: Mapping[str, object] | None = None) -> tuple[Parameter, ...]:
    """MLproject parameters for options of the `kronos-rolling` command at `path`, each named by
    its click parameter (or (MLproject name, click name, comment)). The option, its default and
    its type come from the command's own declaration (cli/): the parameters are declared once.
    `defaults`: by click name, what an option left empty resolves to for this entry point (the
    mode's epochs and lr), written as the default so the run records the value used."""
    command = _command(path)
    params = {p.name: p for p in command.params if isinstance(p, click.Option)}
    context = click.Context(command)
    found = []
    for item in names:
        name, click_name, comment = (item, item, "") if isinstance(item, str) else item
        option = params[click_name]
        default = _text((defaults or {}).get(click_name, option.get_default(context)))
        if option.is_flag:
            off = option.secondary_opts[0] if option.secondary_opts else ""
            found.append(Parameter(name, f"{option.opts[0]}/{off}", default, "switch", comment))
        elif option.multiple:
            found.append(Parameter(name, option.opts[0], "", "list", comment))
        else:
            # MLflow casts a float parameter's value: an empty default (the command's own) stays text.
            label = "float" if isinstance(option.type, click.types.FloatParamType) and default else "string"
            found.append(Parameter(name, option.opts[0], None if option.required else default, "option", comment,
                                   label))
    return tuple(found)


TRAINING = (
    ("as_of", "as_of", "YYYY-MM-DD; empty: today, UTC"),
    ("data", "data_dir", "data folder (absolute); empty: KRONOS_DATA_DIR or bundled"),
    ("base_model", "base_model", "folder or hub id; empty: KRONOS_BASE_MODEL"),
    ("epochs", "epochs", "the mode's default: %s rolling, %s pooled" % (MODE_DEFAULTS["rolling"]["epochs"],
                                                                      MODE_DEFAULTS["pooled"]["epochs"])),
    ("lr", "lr", "the mode's default: %g rolling, %g pooled" % (MODE_DEFAULTS["rolling"]["lr"],
                                                              MODE_DEFAULTS["pooled"]["lr"])),
    ("note", "note", "why settings depart from the defaults (recorded on the run)"),
    "batch_size", "lookback", "horizon",
    ("stride", "stride", "bars between training samples"),
    ("years", "years", "training window before the validation month"),
    ("max_samples_per_epoch", "max_samples_per_epoch", "empty: every sample"),
    ("eval_samples", "eval_samples", "sample paths per forecast in the evaluation"),
    ("eval_max_origins", "eval_max_origins", "empty: every origin of the validation month"),
    "seed",
    ("device", "device", "auto | cpu | cuda"),
    ("precision", "precision", "float32 | bf16 (autocast forward; CUDA tensor cores)"),
)


ENTRY_POINTS = {
    entry.name: entry for entry in (
        EntryPoint("main", ("run",), exposed(
            ("run",), ("asset_class", "asset_class", " | ".join(ASSET_CLASSES)), *TRAINING,
            ("warm_start", "warm_start", "auto | none | models:/NAME@ALIAS | runs:/ID/adapter | folder"),
            ("force", "force", "true: retrain even when the cadence says not due"),
            defaults=MODE_DEFAULTS["rolling"],
        ), "One class's monthly job: due (cadence)? then fine-tune, evaluate, register, guard, alert,\n"
           "retain. Not due: exits 0 saying when the next retrain is.", label="{asset_class}"),
        EntryPoint("pooled", ("train", "pooled"), exposed(
            ("train", "pooled"), *TRAINING, ("register", "register", "false: train and log the run only"),
            defaults=MODE_DEFAULTS["pooled"],
        ), "The pooled adapter: every class, fresh adapter; registered as kronos-lora-pooled and guarded\n"
           "against the bare base. Launch with --experiment-name kronos-rolling/pooled.", label="pooled"),
        EntryPoint("simulate", ("simulate",), exposed(
            ("simulate",), ("start", "start", "first month, YYYY-MM"), "months",
            ("asset_class", "classes", "comma-separated classes; empty: all"),
            ("drill", "drills", "months (YYYY-MM, comma-separated) whose warm start is sabotaged"),
        ), "The replay of past months on the bundled data (`kronos-rolling simulate`).", label=None),
    )
}


def parse_arguments(args: list[str]) -> dict[str, str]:
    """`name=value` words from MLproject; MLflow appends unknown -P names as `--name value`."""
    values: dict[str, str] = {}
    index = 0
    while index < len(args):
        word = args[index]
        if word.startswith("--"):
            name, value = word[2:], (args[index + 1] if index + 1 < len(args) else "")
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


def command_for(entry_name: str, values: dict[str, str], run_id: str | None = None) -> list[str]:
    """The kronos-rolling command line for an entry point's parameters (click checks the values)."""
    entry = ENTRY_POINTS.get(entry_name)
    if entry is None:
        raise ConfigError(f"no entry point {entry_name!r}; MLproject has: {', '.join(ENTRY_POINTS)}")
    unknown = sorted(set(values) - {p.name for p in entry.parameters})
    if unknown:
        raise ConfigError(f"the {entry.name} entry point has no parameter {', '.join(unknown)}; "
                          f"it takes: {', '.join(p.name for p in entry.parameters)}")
    command = list(entry.command)
    for parameter in entry.parameters:
        if parameter.name in values:  # MLflow fills in every default; a direct call may give fewer
            command += parameter.words(values[parameter.name])
    if run_id and entry.label is not None:
        command += ["--mlflow-run-id", run_id]
    return command


def experiment_label(entry_name: str, values: dict[str, str]) -> str | None:
    """The label (class or pooled) of the experiment the entry point's job logs into."""
    entry = ENTRY_POINTS.get(entry_name)
    if entry is None or entry.label is None:
        return None
    return values.get("asset_class") or None if entry.label == "{asset_class}" else entry.label


def mlproject(cluster: bool = False) -> str:
    """MLproject's text, from ENTRY_POINTS (cluster: the Kubernetes variant, in the project's image)."""
    lines = [
        "# Generated by `python -m kronos_rolling.project --write-mlproject` from ENTRY_POINTS in",
        "# kronos_rolling/project.py, whose defaults come from the settings dataclasses: edit there.",
        "# Every entry point runs `python -m kronos_rolling.project`, which runs the same `kronos-rolling`",
        "# command an operator would (click checks every -P value). Commands, cron and cluster set-ups:",
        "# docs/operations.md.",
        "#",
    ]
    if cluster:
        lines += [
            "# The cluster variant: the same entry points as the repository's MLproject, run in the",
            "# kronos-rolling image (MLflow's Kubernetes backend needs docker_env, and a project has one",
            "# environment). From the repository root:",
            "#",
            "#   export KUBE_MLFLOW_TRACKING_URI=http://mlflow.kronos-rolling.svc:5000",
            "#   mlflow run deploy/kubernetes -e main -P asset_class=crypto --experiment-name kronos-rolling/crypto \\",
            "#       --backend kubernetes --backend-config deploy/kubernetes/kubernetes_config.json",
            "#",
            "# MLflow builds an image FROM this one with this folder added, pushes it to the repository-uri",
            "# of kubernetes_config.json and runs it as a Job from job-template.yaml.",
            "name: kronos-rolling",
            "",
            "docker_env:",
            "  image: registry.example.com/kronos-rolling:latest",
        ]
    else:
        lines += [
            "#   mlflow run . -P asset_class=crypto --experiment-name kronos-rolling/crypto",
            "#",
            "# --experiment-name kronos-rolling/<class> (kronos-rolling/pooled for `pooled`) makes the job log",
            "# into the run `mlflow run` creates; elsewhere that run points to the job's run.",
            "name: kronos-rolling",
            "",
            "conda_env: conda.yaml",
        ]
    lines += ["", "entry_points:"]
    for entry in ENTRY_POINTS.values():
        lines += [f"  # {line}" for line in entry.comment.splitlines()]
        lines += [f"  {entry.name}:", "    parameters:"]
        for p in entry.parameters:
            spec = p.label if p.default is None else f"{{type: {p.label}, default: {_yaml(p.default)}}}"
            line = f"      {p.name}: {spec}"
            lines.append(f"{line:<54}  # {p.comment}" if p.comment else line)
        words = " ".join(f"{p.name}={{{p.name}}}" for p in entry.parameters)
        lines += ["    command: >-", *_wrap(f"python -m kronos_rolling.project {entry.name} {words}", "      "), ""]
    return "\n".join(lines).rstrip() + "\n"


def _yaml(value: str) -> str:
    return f'"{value}"' if value == "" or value.lower() in ("true", "false") else value


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    lines, line = [], indent
    for word in text.split():
        if len(line) + len(word) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += word + " "
    return lines + [line.rstrip()]


def _alert_failure(entry_name: str, values: dict[str, str], error: str, webhook: str | None) -> None:
    from kronos_rolling.registry import alerts

    alerts.send_alert(
        alerts.JOB_FAILED,
        f"kronos-rolling MLflow Project entry point {entry_name} did not start: {error}",
        {"entry_point": entry_name, "asset_class": experiment_label(entry_name, values) or "",
         "as_of": values.get("as_of") or "today", "error": error}, webhook)


def check_tracking_store(tracking_uri: str, project_dirs: list[Path]) -> None:
    """ConfigError when the job would log into a store inside the project folder.

    `mlflow run` without MLFLOW_TRACKING_URI makes MLflow's default store, `./mlflow.db` (or
    `./mlruns`), in the folder it runs in, and hands it to the job: a registry of its own that
    no predictor, cron or demo server ever reads. The job refuses it and names the fix."""
    path = _local_store_path(tracking_uri)
    if path is None:
        return
    inside = [d for d in project_dirs if path == d.resolve() or d.resolve() in path.parents]
    if inside:
        raise ConfigError(
            f"the tracking store is {tracking_uri}, inside the project folder {inside[0]}: MLflow's own default "
            "when MLFLOW_TRACKING_URI is not set, which no tracking server, predictor or later job reads. Set "
            "MLFLOW_TRACKING_URI to your tracking server, e.g. MLFLOW_TRACKING_URI=http://127.0.0.1:5000 mlflow run "
            ". ... for the demo's (kronos-rolling server starts one), or to a store outside this folder")


def _local_store_path(uri: str) -> Path | None:
    """The folder or database file of a local store URI (sqlite:///, file:, a plain path); None for a server."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https", "databricks", "postgresql", "mysql", "mssql") or "+" in parsed.scheme:
        return None
    if parsed.scheme == "sqlite":
        return Path(unquote(uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path)).resolve()
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).resolve()
    return Path(uri).resolve() if parsed.scheme == "" else None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    if argv == ["--write-mlproject"]:
        (REPO / "MLproject").write_text(mlproject())
        (REPO / "deploy" / "kubernetes" / "MLproject").write_text(mlproject(cluster=True))
        return
    if not argv:
        raise SystemExit(f"usage: python -m kronos_rolling.project ENTRY_POINT name=value ...\n"
                         f"       python -m kronos_rolling.project --write-mlproject\n"
                         f"entry points: {', '.join(ENTRY_POINTS)} (see MLproject)")
    from kronos_rolling.cli.main import main as kronos_rolling

    entry_name, values = argv[0], {}
    try:
        values = parse_arguments(argv[1:])
        check_tracking_store(settings.tracking_uri, [REPO, Path.cwd()])
        command = command_for(entry_name, values, run_id=settings.mlflow_run_id)
        print(f"kronos-rolling {' '.join(command)}", file=sys.stderr, flush=True)
        code = kronos_rolling.main(args=command, prog_name="kronos-rolling", standalone_mode=False)
    except click.ClickException as error:  # a value click refused: the job never started
        error.show()
        _alert_failure(entry_name, values, error.format_message(), settings.alert_webhook)
        raise SystemExit(2) from None
    except KronosError as error:
        print(f"error: {error}", file=sys.stderr)
        _alert_failure(entry_name, values, f"{type(error).__name__}: {error}", settings.alert_webhook)
        raise SystemExit(error.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)  # click returns what ctx.exit() was given


if __name__ == "__main__":
    main()
