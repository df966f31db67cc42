"""The "Phase 5" evaluation: rolling-origin forecasts on a held-out span.

Every model that a decision compares (the candidate, the pooled adapter, the class's
production version, the bare base, and a no-change persistence forecast) is scored on
the *same* samples: one `EvaluationSamples` is built per span and reused. Sampling is
seeded per batch, so the same model on the same span always gives the same numbers.

Metrics (see `kronos_rolling.metrics`): `val_mae` is the mean absolute error of forecast
vs actual cumulative close returns over the horizon; `val_sharpe` is the mean, over
series, of the annualised Sharpe ratio of holding sign(forecast return) for `hold` bars.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.features import STD_EPS
from kronos_rolling.metrics import (
    annualized_sharpe,
    bars_per_year,
    cumulative_returns,
    mean_absolute_return_error,
    strategy_returns,
)
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.forecast import generate

CLOSE = 3  # index of `close` in FEATURE_COLUMNS


@dataclass(frozen=True)
class EvalSettings:
    lookback: int = 128
    horizon: int = 16
    hold: int = 1  # bars between forecast origins, and how long the sign rule holds a position
    samples: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    cost: float = 0.0005  # per unit of position change (5 bp)
    seed: int = 1234
    batch_size: int = 64
    max_origins: int | None = None  # None: every origin in the span; else a seeded subsample

    def __post_init__(self):
        if not 1 <= self.hold <= self.horizon:
            raise ValueError(f"hold must be between 1 and the horizon ({self.horizon}), got {self.hold}")


@dataclass
class SeriesFigures:
    symbol: str
    origins: int
    val_mae: float
    val_sharpe: float


@dataclass
class EvalResult:
    val_mae: float
    val_sharpe: float
    origins: int
    series: list[SeriesFigures] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ForecastModel:
    """What evaluation needs of a model: the predictor (plain or with LoRA), its tokenizer,
    and its event embedding with the vocabulary it was trained on (both None: no events)."""

    model: torch.nn.Module
    tokenizer: torch.nn.Module
    event_embedding: EventEmbedding | None = None
    vocabulary: EventVocabulary | None = None
    max_context: int = 512


@dataclass
class EvaluationSamples:
    """Rolling-origin samples of one span, with the raw prices needed to score them."""

    dataset: BarWindowDataset
    vocabulary: EventVocabulary
    symbols: list[str]  # per sample
    last_close: np.ndarray  # (N,) close of the last lookback bar
    actual_close: np.ndarray  # (N, horizon)
    origin: np.ndarray  # (N,) ns timestamp of the first horizon bar
    periods_per_year: dict[str, float]  # per symbol, for the holding period
    settings: EvalSettings

    def __len__(self) -> int:
        return len(self.last_close)


def build_samples(store: DataStore, symbols: list[str], span: tuple, settings: EvalSettings,
                  vocabulary: EventVocabulary) -> EvaluationSamples:
    """Origins every `hold` bars whose whole horizon lies inside `span`."""
    start, end = span
    dataset = BarWindowDataset(
        store, symbols, start, end, lookback=settings.lookback, horizon=settings.horizon,
        vocabulary=vocabulary, stride=settings.hold, seed=settings.seed, max_samples=settings.max_origins,
    )
    if len(dataset) == 0:
        raise DataError(
            f"no evaluation samples for {', '.join(symbols)} in [{start}, {end}): each needs "
            f"{settings.lookback} bars of lookback before and {settings.horizon} bars inside the span; "
            "use a longer validation span, a shorter horizon, or data that covers it"
        )
    refs = dataset.origins()
    origins = refs["origin"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    last_close = np.empty(len(refs))
    actual = np.empty((len(refs), settings.horizon))
    for symbol, rows in refs.groupby("symbol").indices.items():
        bars = store.load(symbol)
        times = pd.DatetimeIndex(bars["timestamp"]).asi8
        close = bars["close"].to_numpy(dtype=np.float64)
        at = np.searchsorted(times, origins[rows])
        last_close[rows] = close[at - 1]
        actual[rows] = close[at[:, None] + np.arange(settings.horizon)]
    per_year = {
        s: bars_per_year(store.asset_class(s), store.bar_spacing(s)) / settings.hold for s in dataset.symbols
    }
    return EvaluationSamples(dataset, vocabulary, refs["symbol"].tolist(), last_close, actual, origins,
                             per_year, settings)


def _vocabulary_map(samples: EvaluationSamples, model: ForecastModel) -> torch.Tensor | None:
    """Ids of the samples' vocabulary -> ids of the model's (types it never saw -> 0)."""
    if model.event_embedding is None:
        return None
    mapping = torch.zeros(samples.vocabulary.size, dtype=torch.long)
    own = model.vocabulary.to_dict() if model.vocabulary is not None else {}
    for event_type, index in samples.vocabulary.to_dict().items():
        mapping[index] = own.get(event_type, 0)
    return mapping


@torch.no_grad()
def forecast_closes(model: ForecastModel, samples: EvaluationSamples) -> np.ndarray:
    """Mean forecast close path (N, horizon) of `model` for every sample, in price units."""
    settings = samples.settings
    remap = _vocabulary_map(samples, model)
    loader = torch.utils.data.DataLoader(samples.dataset, batch_size=settings.batch_size, shuffle=False)
    lookback = settings.lookback
    out = []
    for batch_index, batch in enumerate(loader):
        event_ids = None if remap is None else remap[batch["event_ids"]]
        paths = generate(
            model.model, model.tokenizer, batch["x"][:, :lookback], batch["stamp"][:, :lookback],
            batch["stamp"][:, lookback:], settings.horizon, temperature=settings.temperature,
            top_k=settings.top_k, top_p=settings.top_p, samples=settings.samples,
            generator=settings.seed + batch_index, max_context=model.max_context,
            event_ids=event_ids, event_embedding=model.event_embedding,
        )
        mean_path = paths.mean(dim=1)[..., CLOSE].double()  # (B, H), normalised
        close_mean = batch["mean"][:, CLOSE].double()[:, None]
        close_std = batch["std"][:, CLOSE].double()[:, None]
        out.append((mean_path * (close_std + STD_EPS) + close_mean).numpy())
    return np.concatenate(out, axis=0)


def score(samples: EvaluationSamples, closes: np.ndarray | None) -> EvalResult:
    """Figures of forecast closes (N, horizon); None scores the no-change (persistence) forecast."""
    settings = samples.settings
    actual = cumulative_returns(samples.actual_close, samples.last_close)
    forecast = np.zeros_like(actual) if closes is None else cumulative_returns(closes, samples.last_close)
    symbols = np.asarray(samples.symbols)
    series = []
    for symbol in dict.fromkeys(samples.symbols):  # first-seen order
        rows = np.flatnonzero(symbols == symbol)
        rows = rows[np.argsort(samples.origin[rows], kind="stable")]
        held = strategy_returns(forecast[rows, settings.hold - 1], actual[rows, settings.hold - 1], settings.cost)
        series.append(SeriesFigures(
            symbol, len(rows), mean_absolute_return_error(forecast[rows], actual[rows]),
            annualized_sharpe(held, samples.periods_per_year[symbol]),
        ))
    return EvalResult(
        val_mae=mean_absolute_return_error(forecast, actual),
        val_sharpe=float(np.mean([s.val_sharpe for s in series])),
        origins=len(samples),
        series=series,
    )


def evaluate(model: ForecastModel | None, samples: EvaluationSamples) -> EvalResult:
    """Score one model (None: persistence) on prepared samples."""
    return score(samples, None if model is None else forecast_closes(model, samples))


def compare(models: dict[str, ForecastModel | None], samples: EvaluationSamples) -> dict[str, EvalResult]:
    """Score several models on the very same samples (None: persistence)."""
    return {name: evaluate(model, samples) for name, model in models.items()}
