"""One base model in memory, one LoRA adapter + event embedding per served label beside it.

peft keeps several adapters in the same LoRA layers, each under its own name
(`<label>-v<version>`), and `set_adapter` picks the one a forward uses; the event
embeddings are small separate modules. So serving the three asset classes plus the
pooled adapter costs one base plus four adapters, not four bases.

Atomic swaps: the served table (label -> LoadedAdapter) is an immutable mapping that is
replaced, never edited, and both the swap and every forecast run under one lock. A
request therefore sees the table either before or after a swap, activates exactly one
adapter and its own event embedding, and finishes before the old adapter is deleted: no
request fails, and none mixes two versions. A new version is downloaded, verified and
its event embedding read outside the lock; only the injection into the LoRA layers (a
few milliseconds) and the swap hold it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

import torch
from peft import PeftModel

from kronos_rolling.base import BaseModelRef
from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.errors import DataError, ModelError
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.model.lora import EVENT_EMBEDDING, EVENT_VOCAB, load_adapter_bundle

log = logging.getLogger(__name__)


@dataclass
class LoadedAdapter:
    label: str
    registered_model: str
    version: str
    alias: str
    adapter_name: str  # the peft adapter name
    forecaster: Forecaster  # shares the pool's model; carries this adapter's event embedding
    vocabulary: EventVocabulary
    metadata: dict
    digest: str
    source: str  # "registry" (resolved live) or "cache" (registry down at start-up)
    tags: dict = field(default_factory=dict)  # the version's registry tags when it was resolved
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def describe(self) -> str:
        return f"{self.registered_model} v{self.version}"


class AdapterPool:
    def __init__(self, base: BaseModelRef, device: str = "auto"):
        self.base = base
        self.device = device
        self.lock = threading.Lock()  # adapter switch + forward, and every change of the table
        self._load_base()
        self._table: Mapping[str, LoadedAdapter] = MappingProxyType({})

    def _load_base(self) -> None:
        self.kronos, self.tokenizer = self.base.load()
        self.kronos.eval()
        self.tokenizer.eval()
        self.peft: PeftModel | None = None
        self.base_forecaster = Forecaster(self.kronos, self.tokenizer, device=self.device,
                                          max_context=self.base.max_context)

    @property
    def max_context(self) -> int:
        return self.base_forecaster.max_context

    @property
    def served(self) -> Mapping[str, LoadedAdapter]:
        """A snapshot of the table (for reports; forecasts read it under the lock)."""
        return self._table

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
            vocabulary = EventVocabulary.from_dict(_read_json(bundle_dir / EVENT_VOCAB))
        except (OSError, ValueError, DataError) as exc:
            raise ModelError(f"{registered_model} v{version}: unreadable event vocabulary ({exc})") from exc
        adapter_name = f"{label}-v{version}"
        with self.lock:
            old = self._table.get(label)
            if old is not None and old.adapter_name == adapter_name:
                return old
            self._inject(adapter_name, bundle_dir)
            forecaster = Forecaster(self.peft, self.tokenizer, device=self.device, max_context=self.max_context,
                                    event_embedding=event_embedding)
            loaded = LoadedAdapter(label, registered_model, str(version), alias, adapter_name, forecaster,
                                   vocabulary, metadata, digest, source, dict(tags or {}))
            self._table = MappingProxyType({**self._table, label: loaded})
            if old is not None:
                self._delete(old.adapter_name)
        log.info("serving %s for %s (%s)", loaded.describe(), label, source)
        return loaded

    def remove(self, label: str) -> LoadedAdapter | None:
        with self.lock:
            old = self._table.get(label)
            if old is None:
                return None
            self._table = MappingProxyType({k: v for k, v in self._table.items() if k != label})
            self._delete(old.adapter_name)
        log.info("no longer serving %s for %s", old.describe(), label)
        return old

    def mark_source(self, label: str, source: str) -> None:
        with self.lock:
            loaded = self._table.get(label)
            if loaded is not None:
                loaded.source = source

    def _delete(self, adapter_name: str) -> None:
        """Drop an adapter no request can reach any more (lock held)."""
        others = [name for name in self.peft.peft_config if name != adapter_name]
        if not others:  # peft cannot run without an adapter: take the LoRA layers out of the base
            self.kronos = self.peft.unload()
            self.peft = None
            self.base_forecaster = Forecaster(self.kronos, self.tokenizer, device=self.device,
                                              max_context=self.max_context)
            return
        if self.peft.active_adapter == adapter_name:
            self.peft.set_adapter(others[0])  # peft warns when the active adapter is deleted
        self.peft.delete_adapter(adapter_name)

    def _inject(self, adapter_name: str, bundle_dir: Path) -> None:
        """Add the bundle's LoRA weights under `adapter_name` (lock held)."""
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
            self.base_forecaster = Forecaster(self.peft, self.tokenizer, device=self.device,
                                              max_context=self.max_context)
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

    @contextlib.contextmanager
    def exclusive(self, threads: int | None = None) -> Iterator["Session"]:
        """Hold the lock for a group of forecasts; `threads`: torch CPU threads to use meanwhile."""
        with self.lock:
            if threads is not None and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            yield Session(self, self._table)


class Session:
    """The table as one request sees it, and the way to run the chosen adapter (lock held)."""

    def __init__(self, pool: AdapterPool, served: Mapping[str, LoadedAdapter]):
        self.pool = pool
        self.served = served

    @contextlib.contextmanager
    def use(self, adapter: LoadedAdapter | None) -> Iterator[Forecaster]:
        """Activate `adapter` (None: the bare base) and yield the forecaster that runs it."""
        pool = self.pool
        if adapter is None:
            if pool.peft is None:
                yield pool.base_forecaster
            else:
                with pool.peft.disable_adapter():
                    yield pool.base_forecaster
            return
        if self.served.get(adapter.label) is not adapter:
            raise ModelError(f"{adapter.describe()} is no longer served")  # guards misuse; never by a swap
        if pool.peft.active_adapter != adapter.adapter_name:
            pool.peft.set_adapter(adapter.adapter_name)
        yield adapter.forecaster


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())
