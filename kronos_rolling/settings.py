"""Every setting kronos-rolling reads, with its default, in one place, and the one loader.

Three layers, each overriding the one before: the defaults written below; the
environment; a command's flags (applied with `dataclasses.replace`). Only
`load_settings` reads the environment: a command calls it once and hands each part to
the code that needs it, as an argument. Nothing below the command line reads or writes
`os.environ`.

    variable                   setting                                    default
    KRONOS_HOME                Settings.home (laid out by `Home`)         ~/.kronos-rolling
    KRONOS_DATA_DIR            Settings.data_dir (market data)            the bundled sample data
    KRONOS_LOCK_DIR            Settings.lock_dir (training/registry)      $KRONOS_HOME/locks
    KRONOS_BASE_MODEL          Settings.base_model (hub id or folder)     $KRONOS_HOME/config.json's, else
                                                                          NeoQuasar/Kronos-base
    MLFLOW_TRACKING_URI        Settings.tracking_uri                      http://127.0.0.1:<KRONOS_MLFLOW_PORT,
                                                                          5000>: the server `kronos-rolling
                                                                          server` starts here
    KRONOS_ALERT_WEBHOOK       Settings.alert_webhook                     none: alerts are logged only
    KRONOS_JOB                 Settings.job (names the job in the audit)  mlflow-run:<MLFLOW_RUN_ID> under
                                                                          `mlflow run`, else pid:<pid>
    KRONOS_MLFLOW_<FIELD>      any field of `ServerSettings` (`kronos-rolling server`'s options); its
                               BACKEND_URI and ARTIFACTS also tell retention where to reclaim storage
    KRONOS_<FIELD>             any field of `Thresholds`, e.g. KRONOS_PRIMARY_METRIC=val_nll
    KRONOS_SERVE_<FIELD>       any field of `ServeSettings` / `RequestLimits`, e.g. KRONOS_SERVE_POLL_INTERVAL_S=10
    KRONOS_SERVE_DEVICE, KRONOS_API_TOKEN, KRONOS_WEBHOOK_SECRET   the predictor service's device and secrets
    RANK, WORLD_SIZE, LOCAL_RANK   set by torchrun: which process of a distributed training this is
    MLFLOW_RUN_ID              set by `mlflow run`: the run it made for the job

Booleans are true/false, yes/no, on/off or 1/0, in any case. Training and evaluation
settings are the dataclasses `TrainConfig` and `EvalSettings` beside the code that uses
them; the command-line options and the MLflow Project take their defaults from there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timezone
from pathlib import Path

from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.names import model_targets

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000  # of the tracking server
DEFAULT_SERVE_PORT = 8080  # of the predictor service
DEFAULT_TRACKING_URI = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "sample_data"
# A tiny Kronos pre-trained on the bundled bars before 2017-11-01 (`kronos-rolling model pretrain`;
# its PROVENANCE.md gives the command that rebuilds it): the demo's and the replay's base.
BUNDLED_BASE_DIR = BUNDLED_DATA_DIR / "tiny-base"
DEFAULT_MAX_GAP = 5
"""Most missing bars tolerated between two consecutive bars before it counts as a gap."""


# -- parsing, one dialect for every variable ---------------------------------------------

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def parse_as_of(value) -> date:
    """The decision date `as_of`, read once at the edge (command line, MLflow Project, replay):
    a date, a datetime (its UTC day; naive means UTC), or text YYYY-MM-DD. Every layer below
    takes this `date`; spans derived from it are computed where they are needed."""
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if value.tzinfo else value).date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ConfigError(f"as_of {value!r} is not a date; give YYYY-MM-DD, e.g. 2018-02-01") from None


def today_utc() -> date:
    """The default `as_of` of a command: today, in UTC."""
    return datetime.now(timezone.utc).date()


def _parse(name: str, raw: str, kind: type, example) -> object:
    if kind is bool:
        return parse_bool(name, raw)
    try:
        return kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}; unset it or give e.g. {example}") from None


def _from_environ(cls, environ: Mapping[str, str], prefix: str, skip=()) -> dict[str, object]:
    """`{field: value}` for every simple field of the dataclass `cls` set as PREFIX<FIELD>
    (a field that defaults to None is text)."""
    defaults = cls()
    values = {}
    for f in fields(cls):
        default = getattr(defaults, f.name)
        if f.name in skip or not (default is None or isinstance(default, (bool, int, float, str))):
            continue
        name = f"{prefix}{f.name.upper()}"
        if environ.get(name) is not None and (default is not None or environ[name].strip()):
            values[f.name] = _parse(name, environ[name], str if default is None else type(default), default)
    return values


# -- the home folder ---------------------------------------------------------------------


@dataclass(frozen=True)
class Home:
    """KRONOS_HOME, and where everything lives inside it (spelled out here only)."""

    root: Path

    @property
    def config_file(self) -> Path:  # what this machine remembers, e.g. the demo's base
        return self.root / "config.json"

    @property
    def server_data(self) -> Path:  # the embedded tracking server: mlflow.db, artifacts/, server.log
        return self.root

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def checkpoints(self) -> Path:  # epoch checkpoints of running trainings
        return self.root / "checkpoints"

    @property
    def predictor_cache(self) -> Path:  # verified versions the predictor can start from
        return self.root / "predictor-cache"

    @property
    def token_cache(self) -> Path:  # tokenizer tokens of training windows
        return self.root / "token-cache"

    @property
    def simulation(self) -> Path:  # replays' servers and pre-trained bases
        return self.root / "simulation"


# -- decisions -----------------------------------------------------------------------------


PRIMARY_METRICS = ("val_mae", "val_nll", "val_crps", "val_crps_skill")  # what the guard may decide on


@dataclass(frozen=True)
class Thresholds:
    """Every number the registry lifecycle decides or waits by; the pure decisions take one.
    docs/evaluation.md states the rules they feed."""

    # Guard: the figure that decides (val_mae | val_nll | val_crps: lower is better;
    # val_crps_skill, 1 - val_crps / naive_val_crps: higher is better). A candidate is promoted
    # only when it is strictly better on it than the reference (pooled, else the bare base) AND
    # than the current production, on the same origins; a tie keeps the incumbent.
    primary_metric: str = "val_mae"
    # Guard: require each difference's whole interval below zero (significance at the
    # evaluation's `confidence`, 90%: a one-sided 5% test). Off, two point estimates below
    # zero are enough, and a candidate no better than the incumbent is promoted in about
    # half the months (docs/evaluation.md, "Error rates").
    min_confidence: bool = True
    # The level of every interval the decisions read (paired differences, Sharpe changes):
    # 0.90, so requiring the whole interval on one side of zero is a one-sided 5% test.
    confidence: float = 0.90
    # Guard: the evidence a decision needs: an interval resting on at least this many
    # non-overlapping horizons of data. Short of it the candidate waits at @staging
    # ("pending") while months of evidence accumulate, for at most max_evidence_months.
    min_horizons: float = 3.0
    max_evidence_months: int = 6
    # Alert when candidate val_mae > prior production val_mae * (1 + ratio), same span, and
    # the difference is significant (its interval above zero).
    regression_alert_ratio: float = 0.10
    # Also refuse a candidate that triggers the regression alert.
    refuse_on_regression: bool = False
    # Alert when the version about to serve forecasts significantly worse than no change
    # (its val_mae interval against persistence above zero); with this on, such a candidate
    # is refused as well.
    refuse_negative_skill: bool = False
    # Monthly incumbent check: withdraw @production when its val_mae is more than this
    # fraction worse than what would serve instead (pooled, else the base) on the months
    # since it was chosen (the phase document's rule) ...
    withdraw_ratio: float = 0.10
    # ... and, with this on, that difference is significant (its interval above zero). Off,
    # noise withdraws a good incumbent in some months (docs/evaluation.md, "Error rates").
    withdraw_significant: bool = True
    # Cadence: switch monthly -> quarterly when the last `stall_retrains` monthly retrains,
    # measured together (the mean of their Sharpe changes over what served before them),
    # improved val_sharpe by less than `stall_sharpe_delta`: retraining did not help.
    stall_sharpe_delta: float = 0.05
    stall_retrains: int = 3
    # Cadence: back to monthly when a quarterly retrain moves val_sharpe by at least this much
    # either way, measured (the whole interval beyond it): the market drifts faster than quarterly.
    resume_monthly_sharpe_change: float = 0.15
    quarterly_interval_months: int = 3
    # Retention: newest versions kept per registered model (plus every aliased version).
    keep_versions: int = 6
    # Calibration: the fewest validation outcomes (origins) a class's calibration is fitted on;
    # with fewer the class serves uncalibrated quantiles and the version says so. With 100
    # independent outcomes a conformal 80% interval's coverage varies by about 4 points.
    calibration_min_outcomes: int = 100
    # Guard: `miscalibrated` alert when the version about to serve covers more or less than
    # 80% of outcomes by more than this (0.10: outside 70-90%) with its 80% intervals as served.
    miscalibration_points: float = 0.10

    def __post_init__(self) -> None:
        if not (isinstance(self.confidence, float) and 0 < self.confidence < 1):
            raise ConfigError(f"threshold confidence={self.confidence!r} must lie strictly between 0 and 1 "
                              "(set KRONOS_CONFIDENCE to e.g. 0.9)")
        if self.primary_metric not in PRIMARY_METRICS:
            raise ConfigError(f"threshold primary_metric={self.primary_metric!r} must be one of "
                              f"{', '.join(PRIMARY_METRICS)} (set KRONOS_PRIMARY_METRIC)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, str):
                continue
            if isinstance(f.default, bool):
                ok = isinstance(value, bool)
                want = "true or false"
            elif isinstance(f.default, int):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
                want = "a whole number >= 1"
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and value >= 0
                want = "a finite number >= 0"
            if not ok:
                raise ConfigError(f"threshold {f.name}={value!r} must be {want} "
                                  f"(set KRONOS_{f.name.upper()} to e.g. {f.default})")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: wait first_delay_s, then x factor each time, capped at max_delay_s."""

    attempts: int = 3
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0


REGISTRY_RETRY = RetryPolicy(attempts=3, first_delay_s=0.5)
ALERT_RETRY = RetryPolicy(attempts=5, first_delay_s=1.0)
ALERT_TIMEOUT_S = 5.0
# How long a job waits for another job's promotion/rollback/retention on the same model.
REGISTRY_LOCK_TIMEOUT_S = 120.0
# Cadence records kept on the registered model (the decision needs the last few only).
CADENCE_RECORDS_KEPT = 12


# -- the predictor service -------------------------------------------------------------------


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; everything larger is a 4xx with the limit named."""

    min_bars: int = 16  # fewer gives the normaliser too little history to mean anything
    max_bars: int = 2048  # further capped by the base's context at start-up
    max_pred_len: int = 128
    max_samples: int = 32
    max_batch_items: int = 32
    max_body_bytes: int = 8 * 1024 * 1024
    max_symbol_length: int = 64

    def check_options(self, pred_len: int, samples: int) -> None:
        if pred_len > self.max_pred_len:
            raise ConfigError(f"pred_len {pred_len} is over this service's limit of {self.max_pred_len} bars; "
                              f"ask for at most {self.max_pred_len} (or forecast in several steps)")
        if samples > self.max_samples:
            raise ConfigError(f"samples {samples} is over this service's limit of {self.max_samples}; "
                              f"ask for at most {self.max_samples} sample paths")

    def check_bars(self, symbol: str, n_bars: int) -> None:
        if n_bars < self.min_bars:
            raise DataError(f"{symbol}: {n_bars} bar(s) sent but at least {self.min_bars} are needed; "
                            "send more history")
        if n_bars > self.max_bars:
            raise DataError(f"{symbol}: {n_bars} bars sent but at most {self.max_bars} are used (the model's "
                            f"context); send only the last {self.max_bars}")

    def check_batch(self, n_items: int) -> None:
        if n_items > self.max_batch_items:
            raise ConfigError(f"{n_items} series in one batch but at most {self.max_batch_items} are allowed; "
                              "split the batch")


@dataclass(frozen=True)
class ServeSettings:
    base_model: str | None = None  # None: the base the settings resolve (KRONOS_BASE_MODEL, ...)
    tracking_uri: str = DEFAULT_TRACKING_URI
    data_dir: Path | None = None  # None: the bundled sample data
    cache_dir: Path | None = None  # verified versions (load_settings: $KRONOS_HOME/predictor-cache); None: none
    lock_dir: Path | None = None  # where training jobs take the device lock (load_settings: Settings.lock_dir)
    device: str = "auto"
    labels: tuple[str, ...] = field(default_factory=model_targets)  # registered models to follow
    poll_interval_s: float = 30.0
    inference_guard: bool = False  # serve pooled when a class's val_mae is > guard_ratio x pooled's
    guard_ratio: float = 1.10
    # CPU threads of the decoding thread (0: torch's default, one per core). Requests are
    # decoded in batches one after another (serve/batching.py) on one thread; with one CPU
    # thread the other cores read and check the requests meanwhile. Several threads pay off
    # only on cores nothing else uses: where another process holds one, their spin-waits
    # made a decode up to 15x slower (docs/benchmarks.md).
    inference_threads: int = 1
    busy_threads: int = 1  # CPU threads for inference while a training job holds the device
    busy_nice: int = 10  # niceness of inference threads meanwhile (Linux; 0: same priority as training)
    busy_check_s: float = 2.0
    registry_timeout_s: float = 10.0  # one registry request, before it counts as unreachable
    webhook_tolerance_s: float = 300.0  # accepted age of a signed webhook delivery
    refused_retry_s: float = 300.0  # a refused version is fetched again after this (or on a push)
    cache_keep: int = 3  # cached versions kept per registered model (besides the served one)
    # Batching (serve/batching.py): the most rows (sample paths) decoded together, and how
    # long the oldest waiting request may wait for others to join it. A batch also holds no
    # more rows than decode in half of max_queue_wait_s, learned from the batches decoded: on
    # CPUs, where a forecast of a few hundred bars costs mostly its lookback pass (which
    # batching barely shares), batches stay small; GPUs fill them (docs/benchmarks.md).
    max_batch_size: int = 32
    max_batch_wait_ms: float = 5.0
    # Load shedding: a request that would be answered later than this (at the decode rate
    # measured on the last batches) is refused at once with 503 and Retry-After.
    max_queue_wait_s: float = 10.0
    # The HTTP server (serve/http.py): a request's head must arrive within header_timeout_s
    # of its first byte, its body within body_timeout_s of the head, else the connection is
    # closed (408); idle keep-alive connections close after keep_alive_s; beyond
    # max_connections open connections (or requests in progress) requests get 503 at once.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 512
    limits: RequestLimits = field(default_factory=RequestLimits)
    api_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    alert_webhook: str | None = field(default=None, repr=False)  # KRONOS_ALERT_WEBHOOK: refused versions

    def __post_init__(self) -> None:
        unknown = sorted(set(self.labels) - set(model_targets()))
        if unknown or not self.labels:
            raise ConfigError(f"labels must be a non-empty subset of {', '.join(model_targets())}; got {unknown}")
        positive = ("poll_interval_s", "guard_ratio", "busy_check_s", "registry_timeout_s", "webhook_tolerance_s",
                    "refused_retry_s", "max_queue_wait_s", "header_timeout_s", "body_timeout_s",
                    "keep_alive_s")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r} must be a number > 0 (KRONOS_SERVE_{name.upper()})")
        if not (math.isfinite(self.max_batch_wait_ms) and self.max_batch_wait_ms >= 0):
            raise ConfigError(f"max_batch_wait_ms={self.max_batch_wait_ms!r} must be a number >= 0 "
                              "(KRONOS_SERVE_MAX_BATCH_WAIT_MS)")
        if not 0 <= self.busy_nice <= 19:
            raise ConfigError(f"busy_nice must be between 0 and 19 (KRONOS_SERVE_BUSY_NICE), got {self.busy_nice}")
        if self.inference_threads < 0:
            raise ConfigError("inference_threads must be >= 0 (0: one per core) (KRONOS_SERVE_INFERENCE_THREADS)")
        for name in ("busy_threads", "cache_keep", "max_batch_size", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (KRONOS_SERVE_{name.upper()})")
        for f in fields(RequestLimits):
            if getattr(self.limits, f.name) < 1:
                raise ConfigError(f"{f.name} must be >= 1 (KRONOS_SERVE_{f.name.upper()})")
        if self.limits.min_bars > self.limits.max_bars:
            raise ConfigError(f"min_bars {self.limits.min_bars} is above max_bars {self.limits.max_bars}")


# -- the tracking server -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    """`kronos-rolling server`'s options; KRONOS_MLFLOW_<FIELD> (e.g. KRONOS_MLFLOW_BACKEND_URI)."""

    host: str = DEFAULT_HOST  # 0.0.0.0 in a container
    port: int = DEFAULT_PORT
    workers: int = 1
    backend_uri: str | None = None  # None: sqlite:///$KRONOS_HOME/mlflow.db
    artifacts: str | None = None  # None: $KRONOS_HOME/artifacts
    basic_auth: bool = False
    auth_db_uri: str | None = None  # None: the tracking database, or a SQLite file beside it
    allowed_hosts: str | None = None  # None: MLflow's default (localhost and private IPs)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not a TCP port: use 1..65535 (KRONOS_MLFLOW_PORT, --port)")
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers} must be >= 1 (KRONOS_MLFLOW_WORKERS, --workers)")


# -- this process ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """Which process of a `torchrun` job this is (RANK, WORLD_SIZE, LOCAL_RANK); a plain run is 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


# -- everything ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    home: Home
    data_dir: Path | None  # None: the bundled sample data
    lock_dir: Path
    base_model: str | None  # None: $KRONOS_HOME/config.json's, else the released Kronos-base
    tracking_uri: str
    alert_webhook: str | None
    job: str | None  # KRONOS_JOB (or the run `mlflow run` made): names the job in the audit trail
    mlflow_run_id: str | None  # MLFLOW_RUN_ID: the run `mlflow run` made for this process
    thresholds: Thresholds
    serve: ServeSettings
    server: ServerSettings
    distributed: Distributed


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The defaults, overridden by the environment: the only place that reads it."""
    environ = os.environ if environ is None else environ

    def path(name: str) -> Path | None:
        value = (environ.get(name) or "").strip()
        return Path(value).expanduser() if value else None

    home = Home(path("KRONOS_HOME") or Path.home() / ".kronos-rolling")
    server = ServerSettings(**_from_environ(ServerSettings, environ, "KRONOS_MLFLOW_"))
    # By default, clients talk to the server this machine's `kronos-rolling server` starts.
    tracking_uri = (environ.get("MLFLOW_TRACKING_URI") or "").strip() or f"http://{DEFAULT_HOST}:{server.port}"
    lock_dir = path("KRONOS_LOCK_DIR") or home.locks
    data_dir = path("KRONOS_DATA_DIR")
    base_model = (environ.get("KRONOS_BASE_MODEL") or "").strip() or None
    job = (environ.get("KRONOS_JOB") or "").strip() or (
        f"mlflow-run:{environ['MLFLOW_RUN_ID']}" if environ.get("MLFLOW_RUN_ID") else None)

    limits = replace(RequestLimits(), **_from_environ(RequestLimits, environ, "KRONOS_SERVE_"))
    serve = ServeSettings(
        base_model=base_model, tracking_uri=tracking_uri, data_dir=data_dir, cache_dir=home.predictor_cache,
        lock_dir=lock_dir, limits=limits, device=(environ.get("KRONOS_SERVE_DEVICE") or "").strip() or "auto",
        api_token=environ.get("KRONOS_API_TOKEN") or None, webhook_secret=environ.get("KRONOS_WEBHOOK_SECRET") or None,
        alert_webhook=(environ.get("KRONOS_ALERT_WEBHOOK") or "").strip() or None,
        **_from_environ(ServeSettings, environ, "KRONOS_SERVE_", skip=("base_model", "tracking_uri", "device", "alert_webhook")),
    )
    world = int(_parse("WORLD_SIZE", environ.get("WORLD_SIZE") or "1", int, 1))
    distributed = Distributed() if world <= 1 else Distributed(
        int(_parse("RANK", environ.get("RANK", ""), int, 0)), world,
        int(_parse("LOCAL_RANK", environ.get("LOCAL_RANK") or "0", int, 0)))
    return Settings(
        home=home, data_dir=data_dir, lock_dir=lock_dir, base_model=base_model, tracking_uri=tracking_uri,
        alert_webhook=(environ.get("KRONOS_ALERT_WEBHOOK") or "").strip() or None,
        job=job, mlflow_run_id=(environ.get("MLFLOW_RUN_ID") or "").strip() or None, thresholds=Thresholds(**_from_environ(Thresholds, environ, "KRONOS_")), serve=serve,
        server=server, distributed=distributed,
    )
