"""`kronos-rolling demo`: the whole product on bundled data, on a laptop, in a few minutes.

1. start (or reuse) the local tracking server (SQLite + artifact folder under KRONOS_HOME)
2. take the tiny base shipped with the package (pre-trained on bundled history before the
   first validation month: sample_data/tiny-base, its PROVENANCE.md says how to rebuild it)
3. train the pooled adapter (as of 2017-12-01) and register it
4. run one monthly cycle (as of 2018-01-01) for every asset class: train, evaluate,
   register, guard, retention
5. answer one forecast per class through the predictor's selection code
6. end with the verdicts, one row per class, and the next commands, runnable as printed

Safe to run twice: the server and the pooled adapter are reused, and the monthly jobs
find they are not due again.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.data.assets import classify_asset
from kronos_rolling.data.store import DataStore
from kronos_rolling.model.base import BaseModelRef, remember_base_model
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.job import monthly_job
from kronos_rolling.pipeline.replay import SimulationSettings, serving_now
from kronos_rolling.names import POOLED, registered_model_name
from kronos_rolling.serve.forecasting import ForecastOptions, SeriesInput
from kronos_rolling.serve.service import PredictorService
from kronos_rolling.settings import (
    BUNDLED_BASE_DIR,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_TRACKING_URI,
    Settings,
    load_settings,
)
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.runs import experiment_name, ui_link
from kronos_rolling.tracking.server import (
    is_healthy,
    stop_process_tree,
    wait_until_healthy,
)

POOLED_AS_OF = date(2017, 12, 1)
MONTH_AS_OF = date(2018, 1, 1)  # the shipped base saw bars before 2017-11-01, the pooled adapter's validation month
DEMO_SYMBOLS = {"crypto": "BTCUSD", "forex_commodity": "EURUSD", "equity": "^GSPC"}
SERVER_PID_FILE = "server.pid"


@dataclass
class DemoReport:
    tracking_uri: str
    server_started: bool
    lines: list[str] = field(default_factory=list)
    verdicts: list[dict[str, str]] = field(default_factory=list)  # one row per class (and pooled)


def ensure_server(home: Path, port: int, echo) -> tuple[str, bool]:
    """The local tracking server's URL; started in the background (and left running) if needed."""
    url = f"http://{DEFAULT_HOST}:{port}"
    if is_healthy(url):
        echo(f"      reusing the tracking server at {url}")
        return url, False
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "kronos_rolling.cli", "server", "--data-dir", str(home), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    (home / SERVER_PID_FILE).write_text(f"{process.pid}\n")
    wait_until_healthy(process, url, 120, f"see {home / 'server.log'}")
    echo(f"      started the tracking server at {url} (pid {process.pid}, data in {home})")
    return url, True


def stop_server(home: Path) -> bool:
    """Stop a server that `demo` started (its pid file says which); True if one was running."""
    pid_file = home / SERVER_PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip())
    pid_file.unlink()
    return stop_process_tree(pid, timeout=10)


def _pooled_done(client):
    """The demo's pooled version, when an earlier run trained it and the guard decided on it
    (promoted or refused: a refused one stays in @staging and is not trained again)."""
    try:
        versions = client.search_model_versions(f"name='{registered_model_name(POOLED)}'")
    except MlflowException:
        return None
    done = [v for v in versions if v.tags.get("as_of") == str(POOLED_AS_OF) and "guard_decision" in v.tags]
    return max(done, key=lambda v: int(v.version), default=None)


def run_demo(settings: Settings, port: int = DEFAULT_PORT, *, echo=print, progress: bool = True) -> DemoReport:
    home = settings.home
    started = time.monotonic()
    store = DataStore()
    replay = SimulationSettings()
    echo("[1/6] tracking server")
    url, server_started = ensure_server(home.server_data, port, echo)
    tracking = Tracking.connect(url)
    client = tracking.client
    ctx = JobContext.from_settings(settings, tracking, store)
    report = DemoReport(url, server_started)

    echo("[2/6] base: the tiny Kronos shipped with the package (no pre-training)")
    base = BaseModelRef.resolve(str(BUNDLED_BASE_DIR))
    base_dir = str(BUNDLED_BASE_DIR)
    if remember_base_model(home, base_dir):
        echo(f"      {base_dir} (now this machine's default base: {home.config_file})")
    else:
        echo(f"      {base_dir}")

    echo(f"[3/6] pooled adapter, all classes, as of {POOLED_AS_OF}")
    pooled = _pooled_done(client)
    if pooled is not None:
        echo(f"      already trained: kronos-lora-pooled v{pooled.version}, "
             f"{pooled.tags['guard_decision']} by the guard")
        versions = {POOLED: pooled.version}
    else:
        result = monthly_job(replay.train_config("pooled", POOLED_AS_OF, None, base), ctx,
                             warm_start=None, eval_settings=replay.eval_settings(), check_due=False,
                             progress=progress)
        echo(f"      kronos-lora-pooled v{result.version}: {_verdict(result)}")
        versions = {POOLED: result.version}

    echo(f"[4/6] monthly cycle as of {MONTH_AS_OF}: {', '.join(ASSET_CLASSES)}, one after another")
    for asset_class in ASSET_CLASSES:
        result = monthly_job(replay.train_config("rolling", MONTH_AS_OF, asset_class, base), ctx,
                             eval_settings=replay.eval_settings(), progress=progress)
        line = (f"      {asset_class}: v{result.version} {_verdict(result)}" if result.due
                else f"      {asset_class}: not due ({result.reason})")
        echo(line)
        report.lines.append(line)
        versions[asset_class] = result.version if result.due else _month_version(client, asset_class)

    echo("[5/6] one forecast per class through the predictor's selection")
    for asset_class, symbol in DEMO_SYMBOLS.items():
        echo("      " + forecast_line(symbol, store, base, settings, url))

    echo(f"[6/6] verdicts (demo finished in {time.monotonic() - started:.0f}s)")
    report.verdicts = [verdict_row(client, label, versions.get(label)) for label in (POOLED, *ASSET_CLASSES)]
    for line in verdict_table(report.verdicts, settings.thresholds.primary_metric):
        echo(line)
    for line in where_to_look(url, settings, tracking):
        echo(line)
    return report


def _month_version(client, asset_class: str) -> str | None:
    """The class's version trained as of the demo's month by an earlier run, if any."""
    try:
        versions = client.search_model_versions(f"name='{registered_model_name(asset_class)}'")
    except MlflowException:
        return None
    month = [v for v in versions if v.tags.get("as_of") == str(MONTH_AS_OF)]
    return max(month, key=lambda v: int(v.version)).version if month else None


def verdict_row(client, label: str, version: str | None) -> dict[str, str]:
    """One class's verdict, read back from the registry: the version trained, the guard's decision,
    its reference, the difference with its interval, the skill against no change, what serves now."""
    row = {"class": label, "version": "-", "decision": "-", "reference": "-", "difference": "-", "skill": "-",
           "serves now": _serving_label(client, label)}
    if version is None:
        return row
    tags = client.get_model_version(registered_model_name(label), version).tags
    row.update({"version": f"v{version}", "decision": tags.get("latest_decision", tags.get("guard_decision", "-")),
                "reference": tags.get("guard_reference", "-")})
    if "vs_reference_diff" in tags:
        row["difference"] = (f"{float(tags['vs_reference_diff']):+.2e} [{float(tags['vs_reference_diff_lo']):+.2e}, "
                             f"{float(tags['vs_reference_diff_hi']):+.2e}]")
    if "val_mae_skill" in tags:
        row["skill"] = f"{float(tags['val_mae_skill']):+.3f}"
    return row


def _serving_label(client, label: str) -> str:
    serving = serving_now(client, label)
    if serving == "base":
        return "the bare base"
    if serving == "pooled":
        return "pooled (no class version in @production)"
    return f"{registered_model_name(label)} v{serving}"


VERDICT_COLUMNS = ("class", "version", "decision", "reference", "difference", "skill", "serves now")


def verdict_table(rows: list[dict[str, str]], metric: str = "val_mae") -> list[str]:
    """The verdicts as an aligned table; `difference` is the candidate's `metric` (the guard's) minus
    the reference's on the same origins, with its interval (below 0: better), `skill` its val_mae
    skill against no change (above 0: better)."""
    header = {c: c for c in VERDICT_COLUMNS}
    header["difference"] = f"{metric} - reference [interval]"
    header["skill"] = "skill"
    widths = {c: max(len(r[c]) for r in [header, *rows]) for c in VERDICT_COLUMNS}
    return ["      " + "  ".join(r[c].ljust(widths[c]) for c in VERDICT_COLUMNS).rstrip() for r in [header, *rows]]


def _verdict(result) -> str:
    if result.decision is None:
        return result.reason
    verb = "promoted to @production" if result.decision.promote else "refused, kept in @staging"
    return f"{verb} ({result.decision.reason})"


def forecast_line(symbol: str, store: DataStore, base: BaseModelRef, settings: Settings, url: str) -> str:
    asset_class = classify_asset(symbol)
    bars = store.load(symbol)
    bars = bars[bars["timestamp"] < pd.Timestamp(MONTH_AS_OF, tz="UTC")].tail(64).reset_index(drop=True)
    serving = replace(settings.serve, base_model=str(Path(base.predictor).parent), tracking_uri=url,
                      cache_dir=settings.home.root / "serve-cache", labels=(asset_class, POOLED))
    service = PredictorService(serving, watch=False).start()
    try:
        answer = service.forecast([SeriesInput(symbol, bars)], ForecastOptions(pred_len=4, seed=0))[0]
    finally:
        service.stop()
    last = bars["close"].iloc[-1]
    nxt = answer.result.point["close"].iloc[-1]
    # The same request and seed to the bare base: what the adapter changed.
    model, tokenizer = base.load()
    bare = Forecaster(model, tokenizer, device="cpu").forecast(
        [bars], 4, seed=0, asset_class=asset_class)[0].point["close"].iloc[-1]
    return (f"{symbol:<7} last close {last:,.4f} -> in 4 bars {nxt:,.4f}  "
            f"answered by {answer.model.describe()} (bare base: {bare:,.4f})")


def where_to_look(url: str, settings: Settings, tracking: Tracking) -> list[str]:
    """Where the results are, and the next commands, runnable as printed in a fresh shell:
    absolute paths, and the variables a fresh shell would lack (a port or home other than
    the defaults)."""
    cli = Path(sys.executable).parent / "kronos-rolling"
    command = shlex.quote(str(cli)) if cli.exists() else f"{shlex.quote(sys.executable)} -m kronos_rolling.cli"
    env = []
    if url != DEFAULT_TRACKING_URI:
        env.append(f"MLFLOW_TRACKING_URI={url}")
    if settings.home.root != load_settings({}).home.root:
        env.append(f"KRONOS_HOME={shlex.quote(str(settings.home.root))}")
    run = " ".join([*env, command])
    crypto = tracking.client.get_experiment_by_name(experiment_name("crypto"))
    return [
        "      (difference: the candidate's minus the reference's on the same origins, with its interval;",
        "       below 0 is better. skill: val_mae against a no-change forecast, above 0 is better.",
        "       docs/evaluation.md has the rules)",
        f"      MLflow UI (machine-learning view): {ui_link(url, 'experiments')}",
        f"        crypto's retrains, one run per month: {ui_link(url, f'experiments/{crypto.experiment_id}')}"
        if crypto is not None else "        experiments kronos-rolling/<class>: one run per retrain",
        f"        crypto's versions, aliases and audit trail: {ui_link(url, 'models/kronos-lora-crypto')}",
        "      Next, runnable as printed:",
        f"        {run} history --asset-class crypto     # who promoted what, when and why",
        f"        {run} serve     # the predictor, http://127.0.0.1:8080/docs (Ctrl-C stops it)",
        f"        {run} demo --stop-server     # stop the tracking server",
    ]
