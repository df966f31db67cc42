"""Following the registry: which version each label's `@production` alias holds, loaded and verified.

`RegistryWatcher.refresh()` is one pass over the registry. For each label (asset class or
pooled) it resolves the alias and, when it moved, obtains the version (from the verified
local cache when it holds it intact, else downloaded), checks it and swaps it into the pool:

    alias moved -> check_class (tags, before any download) -> obtain (cache | download)
                -> check_version (sha256 of every file, finite tensors) -> same base? -> install

A version that fails any step is refused: the previous version keeps serving, the refusal
(label, version, reason, when) is reported by `/health` and `/models`, and a
`version_refused` alert goes out once per version. A refused version is tried again after
`refused_retry_s` (or at the next pushed refresh, at most once per poll interval).

The registry being down only makes the state stale (`freshness`): nothing is unloaded, and
a cold start serves the last resolved versions from the verified cache. `failing_since`
is the first failed read of the current outage, so the stale reason does not move.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kronos_rolling.errors import DataError, ModelError, RegistryUnavailable
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.names import PRODUCTION
from kronos_rolling.registry import alerts
from kronos_rolling.tracking.integrity import check_class, check_version
from kronos_rolling.serve.cache import CachedVersion, VersionCache
from kronos_rolling.serve.pool import AdapterPool, LoadedAdapter
from kronos_rolling.serve.selection import Freshness, registry_freshness, same_base
from kronos_rolling.serve.source import RegistrySource, VersionRef
from kronos_rolling.settings import ServeSettings
from kronos_rolling.tracking.adapters import METADATA_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    registered_model: str
    version: str
    reason: str
    at: datetime


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


class RegistryWatcher:
    """Keeps `pool` serving what the registry's `@production` aliases hold, verified."""

    def __init__(self, settings: ServeSettings, base: BaseModelRef, source: RegistrySource, cache: VersionCache,
                 pool: AdapterPool):
        self.settings = settings
        self.base = base
        self.source = source
        self.cache = cache
        self.pool = pool
        self._refresh_lock = threading.Lock()  # one pass at a time; reports read without it
        self.last_success: datetime | None = None
        self.last_failure: datetime | None = None
        self.failing_since: datetime | None = None  # the first failed read of the current outage
        self.last_error: str | None = None
        self.refused: dict[str, Refusal] = {}  # replaced, never edited: readers need no lock
        self._counts_lock = threading.Lock()
        self._swaps: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()

    # -- reports ------------------------------------------------------------------------------

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(swaps, refusals) per label since start."""
        with self._counts_lock:
            return dict(self._swaps), dict(self._refusals)

    def freshness(self, now: datetime) -> Freshness:
        return registry_freshness(self.last_success, self.failing_since, now, self.settings.poll_interval_s)

    def unavailable(self) -> dict[str, str]:
        """Why each refused label's version does not serve (for the answers' fallback reasons)."""
        return {label: f"{r.registered_model} v{r.version} was refused ({r.reason})" for label, r in
                self.refused.items()}

    def refusals(self) -> list[dict]:
        """The versions refused (for /health and /models): label, version, reason, when."""
        return [{"label": label, "registered_model": r.registered_model, "version": r.version,
                 "reason": r.reason, "at": iso(r.at)} for label, r in sorted(self.refused.items())]

    # -- one pass -----------------------------------------------------------------------------

    def refresh(self, *, cold: bool = False, retry_refused: bool = False) -> dict[str, str]:
        """One pass over the registry: {label: what happened} (empty when it was unreachable).

        cold: the first pass of a start; when the registry cannot be read, serve the last
        resolved versions from the verified cache."""
        with self._refresh_lock:
            now = now_utc()
            try:
                refs = self.source.resolve(self.settings.labels)
            except RegistryUnavailable as exc:
                self._failed(now, exc, cold)
                return {}
            outcome = {}
            try:
                for label in self.settings.labels:
                    outcome[label] = self._follow(label, refs[label], now, retry_refused)
            except RegistryUnavailable as exc:  # went away in the middle: keep what is loaded
                self._failed(now_utc(), exc, cold)
                return outcome
            self.last_success, self.last_error, self.failing_since = now, None, None
            return outcome

    def _failed(self, now: datetime, exc: Exception, cold: bool) -> None:
        self.last_failure, self.last_error = now, str(exc)
        if self.failing_since is None:
            self.failing_since = now
        log.warning("registry unreachable, serving what is loaded: %s", exc)
        if cold:
            self._load_cached_resolved()

    def _follow(self, label: str, ref: VersionRef | None, now: datetime, retry_refused: bool) -> str:
        loaded = self.pool.served.get(label)
        if ref is None:
            self._clear_refusal(label)
            if loaded is None:
                return "none"
            self.pool.remove(label)
            self.cache.forget_resolved(label)
            self._count(self._swaps, label)
            return f"removed {loaded.describe()}: no @{PRODUCTION} alias any more"
        if loaded is not None and (loaded.registered_model, loaded.version) == (ref.registered_model, ref.version):
            self._clear_refusal(label)
            if loaded.source != "registry":
                self.pool.mark_source(label, "registry")
                self.cache.record_resolved(label, ref.registered_model, ref.version, ref.alias, now)
            self.pool.mark_tags(label, ref.tags)  # whether its calibration serves can change on the version
            return "unchanged"
        prior = self.refused.get(label)
        if prior is not None and prior.version == ref.version:
            # A refused version is fetched again after refused_retry_s, or sooner when pushed
            # (but at most once per poll interval, so a burst of pushes cannot loop downloads).
            wait = self.settings.poll_interval_s if retry_refused else self.settings.refused_retry_s
            if (now - prior.at).total_seconds() < wait:
                return f"still refusing {ref.describe()}"
        try:
            check_class(ref.registered_model, ref.version, ref.tags)  # before any download
            cached = self._obtain(ref)
            check_version(cached.model_dir, ref.registered_model, ref.version, ref.tags)
            installed = self._install(label, ref.registered_model, ref.version, ref.alias, cached, "registry",
                                      tags=ref.tags)
        except (ModelError, DataError) as exc:
            self._refuse(label, ref.registered_model, ref.version, str(exc), now)
            if self.pool.served.get(label) is None:
                self._load_cached_resolved(only=label)
            return f"refused {ref.describe()}"
        self._clear_refusal(label)
        self._count(self._swaps, label)
        self.cache.record_resolved(label, ref.registered_model, ref.version, ref.alias, now)
        self.cache.prune(ref.registered_model, {ref.version})
        return f"loaded {installed.describe()}"

    def _obtain(self, ref: VersionRef) -> CachedVersion:
        """The verified version `ref`: from the cache when it holds it intact, else downloaded and checked."""
        expected = self.source.recorded_digest(ref)
        if self.cache.has(ref.registered_model, ref.version):
            try:
                return self.cache.load(ref.registered_model, ref.version, expected_digest=expected)
            except ModelError as exc:
                log.warning("%s; downloading it again", exc)
        scratch_root = self.cache.root / ".downloads"
        scratch_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
            model_dir = self.source.download(ref, Path(scratch))
            check_version(model_dir, ref.registered_model, ref.version, ref.tags)  # names the file that differs
            return self.cache.store(ref.registered_model, ref.version, model_dir, tags=ref.tags, run_id=ref.run_id,
                                    expected_digest=expected)

    def _install(self, label: str, registered_model: str, version: str, alias: str, cached: CachedVersion,
                 source: str, tags: dict | None = None) -> LoadedAdapter:
        """Check the bundle's base and load it; `tags`: the version's tags now (default: as cached)."""
        metadata_path = cached.bundle_dir / METADATA_FILE
        metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        if "base" not in metadata:
            raise ModelError(f"{registered_model} v{version} names no base model in its {METADATA_FILE}; "
                             "refusing to guess which base it belongs on")
        adapter_base = BaseModelRef.from_dict(metadata["base"])
        if not same_base(self.base, adapter_base):
            raise ModelError(f"{registered_model} v{version} was trained on {adapter_base.describe()} but this "
                             f"service runs {self.base.describe()}; refusing to serve it on the wrong base "
                             "(start the service with KRONOS_BASE_MODEL set to the adapter's base)")
        tags = cached.manifest.get("tags") if tags is None else tags
        return self.pool.install(label, registered_model, version, alias, cached.bundle_dir, metadata=metadata,
                                 digest=cached.digest, source=source, tags=tags)

    def _refuse(self, label: str, registered_model: str, version: str, reason: str, now: datetime) -> None:
        prior = self.refused.get(label)
        self.refused = {**self.refused, label: Refusal(registered_model, version, reason, now)}
        self._count(self._refusals, label)
        still = self.pool.served.get(label)
        serving = f"v{still.version} keeps serving" if still else "nothing of it serves (the fallback answers)"
        log.error("refused %s v%s: %s; %s", registered_model, version, reason, serving)
        if prior is None or (prior.registered_model, prior.version) != (registered_model, version):
            alerts.send_alert(alerts.VERSION_REFUSED,
                              f":no_entry: predictor refused {registered_model} v{version}: {reason}; {serving}",
                              {"registered_model": registered_model, "version": version, "reason": reason,
                               "still_serving": still.version if still else "none"}, self.settings.alert_webhook)

    def _load_cached_resolved(self, only: str | None = None) -> None:
        """Serve the last resolved versions from the local cache (the registry cannot tell us)."""
        try:
            resolved = self.cache.resolved()
        except ModelError as exc:
            log.error("%s", exc)
            return
        for label in self.settings.labels:
            entry = resolved.get(label)
            if entry is None or (only is not None and label != only) or label in self.pool.served:
                continue
            name, version = entry["registered_model"], entry["version"]
            if only is not None and self.refused.get(label) and self.refused[label].version == version:
                continue  # the refused version is the cached one: nothing older to fall back to
            try:
                cached = self.cache.load(name, version)
                check_version(cached.model_dir, name, version, cached.manifest.get("tags") or {})
                self._install(label, name, version, entry.get("alias", PRODUCTION), cached, "cache")
                self._count(self._swaps, label)
            except (ModelError, DataError) as exc:
                self._refuse(label, name, version, str(exc), now_utc())

    def _count(self, counter: Counter, label: str) -> None:
        with self._counts_lock:
            counter[label] += 1

    def _clear_refusal(self, label: str) -> None:
        if label in self.refused:
            self.refused = {k: v for k, v in self.refused.items() if k != label}
