"""One base model in memory, one LoRA adapter + event embedding per served label beside it.

peft keeps several adapters in the same LoRA layers, each under its own name
(`<label>-v<version>`); the event embeddings are small separate modules. So serving the
three asset classes plus the pooled adapter costs one base plus four adapters, not four
bases. A forecast (`run`) decodes several groups of series at once, each group on its own
adapter or on the bare base: peft's mixed batches share the base's products and add each
adapter's low-rank update to its own rows (`model.lora.rows_by_adapter`), so requests for
different classes go through one base forward together.

Atomic swaps: the served table (label -> LoadedAdapter) is an immutable mapping that is
replaced, never edited. Forecasts run one at a time (the batcher decodes one batch after
another; other callers take turns in the order they came); a swap waits until none runs and holds the gate while it injects the new
adapter, replaces the table and deletes the old adapter; a forecast picks its adapters
from the table under the gate, once no swap waits. So a forecast runs wholly before or
wholly after a swap, each group with exactly one adapter and that adapter's own event
embedding: no request fails, and none mixes two versions. Downloading, verifying and
reading the event embedding happen before, outside the gate; only the injection (a few
milliseconds) holds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from peft import PeftModel

from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.errors import DataError, ModelError
from kronos_rolling.evaluation.calibration import CALIBRATION_FILE, Calibration
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.model.lora import BASE_ROWS, EVENT_EMBEDDING, EVENT_VOCAB, load_adapter_bundle
from kronos_rolling.names import POOLED, withheld_calibrations
from kronos_rolling.serve.selection import Candidate, finite_or_none

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass
class LoadedAdapter:
    label: str
    registered_model: str
    version: str
    alias: str
    adapter_name: str  # the peft adapter name
    event_embedding: EventEmbedding  # this adapter's own, trained with it
    vocabulary: EventVocabulary
    metadata: dict
    digest: str
    source: str  # "registry" (resolved live) or "cache" (registry down at start-up)
    tags: dict = field(default_factory=dict)  # the version's registry tags, as last resolved
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    calibration: Calibration | None = None  # its bundle's calibration.json, verified with its files

    def describe(self) -> str:
        return f"{self.registered_model} v{self.version}"

    def served_calibration(self) -> Calibration | None:
        """Its calibration less the classes its tags withhold (made coverage worse out of sample)."""
        return None if self.calibration is None else self.calibration.with_withheld(withheld_calibrations(self.tags))

    def candidate(self) -> Candidate:
        """This version as the selection sees it: val_mae from its version tag, else its metadata,
        and the pooled version it was compared with, on its own validation span."""
        figures = self.metadata.get("figures") or {}
        compared = self.metadata.get("compared_versions") or {}
        pooled = figures.get(POOLED) or {}
        return Candidate(label=self.label, registered_model=self.registered_model, version=self.version,
                         val_mae=finite_or_none(self.tags.get("val_mae", self.metadata.get("val_mae"))),
                         pooled_version=compared.get(POOLED), pooled_val_mae=finite_or_none(pooled.get("val_mae")))


class AdapterPool:
    def __init__(self, base: BaseModelRef, device: str = "auto"):
        self.base = base
        self.device = device
        self._gate = threading.Condition()
        self._running = False  # a forecast is decoding
        self._tickets = self._serving = 0  # the turn each caller of `run` took, and whose turn it is
        self._swaps_waiting = 0
        self._table: Mapping[str, LoadedAdapter] = MappingProxyType({})
        self._load_base()

    def _load_base(self) -> None:
        self.kronos, self.tokenizer = self.base.load()
        self.kronos.eval()
        self.tokenizer.eval()
        self.peft: PeftModel | None = None
        self.forecaster = Forecaster(self.kronos, self.tokenizer, device=self.device,
                                     max_context=self.base.max_context)

    @property
    def max_context(self) -> int:
        return self.forecaster.max_context

    @property
    def served(self) -> Mapping[str, LoadedAdapter]:
        """A snapshot of the table (for reports; forecasts pick from it under the gate)."""
        return self._table

    # -- forecasts ---------------------------------------------------------------------------

    def run(self, pick: Callable[[Mapping[str, LoadedAdapter]], Sequence[LoadedAdapter | None]],
            work: Callable[[list[LoadedAdapter | None], list[str | None], Forecaster], R]) -> R:
        """Run `work` with the adapters `pick` chooses from the table, one per group (None: the
        bare base), their peft names for `ForecastGroup.adapter` (None when no adapter is
        loaded at all: the model is the bare base), and the forecaster of the shared model.

        `pick` is called under the gate once no swap waits, so its choices are ones the
        table holds for the whole forecast.
        """
        with self._gate:
            ticket, self._tickets = self._tickets, self._tickets + 1  # callers go in the order they came
            while self._swaps_waiting or self._running or ticket != self._serving:
                self._gate.wait()
            try:
                adapters = list(pick(self._table))
            except BaseException:
                self._serving += 1
                self._gate.notify_all()
                raise
            self._running = True
            forecaster = self.forecaster
        names = [None if self.peft is None else (BASE_ROWS if a is None else a.adapter_name) for a in adapters]
        try:
            return work(adapters, names, forecaster)
        finally:
            with self._gate:
                self._running = False
                self._serving += 1
                self._gate.notify_all()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the gate with no forecast running (for swaps)."""
        with self._gate:
            self._swaps_waiting += 1
            try:
                while self._running:
                    self._gate.wait()
            finally:
                self._swaps_waiting -= 1
            try:
                yield
            finally:
                self._gate.notify_all()

    # -- swaps -------------------------------------------------------------------------------

    def install(self, label: str, registered_model: str, version: str, alias: str, bundle_dir: Path, *,
                metadata: dict, digest: str, source: str, tags: dict | None = None) -> LoadedAdapter:
        """Load a verified bundle as `label`'s adapter and swap it in; the old one is deleted after."""
        bundle_dir = Path(bundle_dir)
        event_embedding = EventEmbedding.load(bundle_dir / EVENT_EMBEDDING)
        if event_embedding.d_model != self.kronos.d_model:
            raise ModelError(f"{registered_model} v{version}: its event embedding has width "
                             f"{event_embedding.d_model}, the base has d_model {self.kronos.d_model}; "
                             "it was trained on another base")
        try:
            vocabulary = EventVocabulary.from_dict(json.loads((bundle_dir / EVENT_VOCAB).read_text()))
        except (OSError, ValueError, DataError) as exc:
            raise ModelError(f"{registered_model} v{version}: unreadable event vocabulary ({exc})") from exc
        # Checked with the version's files (tracking/integrity.py) and again here: an unusable one
        # (CalibrationError, a ModelError) refuses the version like a bad adapter file.
        calibration = Calibration.read(bundle_dir, f"{registered_model} v{version}: {CALIBRATION_FILE}")
        adapter_name = f"{label}-v{version}"
        with self._exclusive():
            old = self._table.get(label)
            if old is not None and old.adapter_name == adapter_name:
                return old
            self._inject(adapter_name, bundle_dir)
            loaded = LoadedAdapter(label, registered_model, str(version), alias, adapter_name,
                                   event_embedding.to(self.forecaster.device).eval(), vocabulary, metadata, digest,
                                   source, dict(tags or {}), calibration=calibration)
            self._table = MappingProxyType({**self._table, label: loaded})
            if old is not None:
                self._delete(old.adapter_name)
        log.info("serving %s for %s (%s)", loaded.describe(), label, source)
        return loaded

    def remove(self, label: str) -> LoadedAdapter | None:
        with self._exclusive():
            old = self._table.get(label)
            if old is None:
                return None
            self._table = MappingProxyType({k: v for k, v in self._table.items() if k != label})
            self._delete(old.adapter_name)
        log.info("no longer serving %s for %s", old.describe(), label)
        return old

    def mark_source(self, label: str, source: str) -> None:
        loaded = self._table.get(label)
        if loaded is not None:
            loaded.source = source

    def mark_tags(self, label: str, tags: dict) -> None:
        """The served version's tags as the registry has them now (e.g. a calibration withheld since)."""
        loaded = self._table.get(label)
        if loaded is not None:
            loaded.tags = dict(tags or {})

    def _inject(self, adapter_name: str, bundle_dir: Path) -> None:
        """Add the bundle's LoRA weights under `adapter_name` (gate held, nothing running)."""
        if self.peft is None:
            try:
                self.peft, _, _ = load_adapter_bundle(self.kronos, bundle_dir, adapter_name=adapter_name)
            except BaseException:
                # peft injects layers into the base in place before it loads weights: a
                # failure can leave them half-made, so start again from clean base weights.
                log.warning("loading %s failed; reloading the base model to undo a partial injection", bundle_dir)
                self._load_base()
                raise
            self.peft.eval()
            self.forecaster = Forecaster(self.peft, self.tokenizer, device=self.device, max_context=self.max_context)
            return
        try:
            self.peft.load_adapter(str(bundle_dir), adapter_name=adapter_name, is_trainable=False)
        except BaseException as exc:
            if adapter_name in self.peft.peft_config:
                self.peft.delete_adapter(adapter_name)
            if isinstance(exc, (RuntimeError, ValueError, KeyError)):
                raise ModelError(f"cannot load the LoRA adapter of {bundle_dir} onto the served base ({exc}); "
                                 "it was trained on another base or is damaged") from exc
            raise

    def _delete(self, adapter_name: str) -> None:
        """Drop an adapter no forecast can reach any more (gate held, nothing running)."""
        others = [name for name in self.peft.peft_config if name != adapter_name]
        if not others:  # peft cannot run without an adapter: take the LoRA layers out of the base
            self.kronos = self.peft.unload()
            self.peft = None
            self.forecaster = Forecaster(self.kronos, self.tokenizer, device=self.device, max_context=self.max_context)
            return
        if self.peft.active_adapter == adapter_name:
            self.peft.set_adapter(others[0])  # peft warns when the active adapter is deleted
        self.peft.delete_adapter(adapter_name)
        self.peft.eval()
