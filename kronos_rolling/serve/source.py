"""Reading the registry: where each @production alias points, and fetching a version safely.

`RegistrySource.resolve` asks the registry for `kronos-lora-<label>@production` of every
label; a missing model or alias is `None`, anything else that goes wrong (connection
refused, timeout, 5xx) raises `RegistryUnavailable` so the caller keeps what it has.

`RegistrySource.download` fetches one pinned version (`models:/NAME/VERSION`), its whole
logged model, into a temporary folder and refuses it unless it is whole: every file the
registry lists is present with its size and every file parses; the service then runs
tracking/integrity.check_version on it (each file against its recorded sha256).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import requests
from mlflow.exceptions import MlflowException

from kronos_rolling.errors import RegistryError, RegistryUnavailable
from kronos_rolling.files import check_formats, check_sizes, recorded_digest
from kronos_rolling.names import POOLED, PRODUCTION, registered_model_name
from kronos_rolling.registry.client import is_missing
from kronos_rolling.serve.selection import Candidate, Choice, asset_class_of, choose, finite_or_none
from kronos_rolling.tracking.context import Tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRef:
    """What an alias pointed at when we asked."""

    label: str
    registered_model: str
    version: str
    alias: str = PRODUCTION
    run_id: str | None = None
    tags: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def uri(self) -> str:
        return f"models:/{self.registered_model}/{self.version}"

    def describe(self) -> str:
        return f"{self.registered_model} v{self.version}"


class RegistrySource:
    def __init__(self, tracking: Tracking):
        self.tracking = tracking
        self.client = tracking.client

    def describe(self) -> str:
        return self.tracking.describe()

    def resolve(self, labels, alias: str = PRODUCTION) -> dict[str, VersionRef | None]:
        return {label: self._resolve_one(label, alias) for label in labels}

    def _resolve_one(self, label: str, alias: str) -> VersionRef | None:
        name = registered_model_name(label)
        try:
            version = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if is_missing(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
                return None  # no such model, or no such alias on it
            raise RegistryUnavailable(f"cannot read {name}@{alias} from {self.describe()}: "
                                      f"{_first_line(exc.message)}") from exc
        except (requests.RequestException, OSError) as exc:
            raise RegistryUnavailable(f"cannot reach the registry at {self.describe()}: {exc}") from exc
        return VersionRef(label, name, str(version.version), alias, version.run_id, dict(version.tags or {}))

    def recorded_digest(self, ref: VersionRef) -> str | None:
        """The bundle digest the version's `sha256.<file>` tags fold into (None: it records none)."""
        return recorded_digest(ref.tags)

    def download(self, ref: VersionRef, scratch: Path) -> Path:
        """Download the version's logged model under `scratch` and check it is whole; returns its folder."""
        what = f"{ref.describe()} from {self.describe()}"
        dst = Path(tempfile.mkdtemp(prefix=f"download-{ref.version}-", dir=scratch))
        try:
            local = self.tracking.download(ref.uri, dst).resolve()
        except (MlflowException, requests.RequestException, OSError) as exc:
            raise RegistryUnavailable(f"cannot download {what}: {exc}") from exc  # try again at the next poll
        check_sizes(local, self._listed_sizes(ref), what)
        check_formats(local, what)
        return local

    def _listed_sizes(self, ref: VersionRef) -> dict[str, int]:
        """{path inside the logged model: size} as the registry's artifact store lists them."""
        try:
            root = self.client.get_model_version_download_uri(ref.registered_model, ref.version).rstrip("/")
            listed: dict[str, int] = {}
            pending = [""]
            while pending:
                folder = pending.pop()
                for info in self.tracking.list_artifacts(f"{root}/{folder}" if folder else root):
                    name = info.path.rsplit("/", 1)[-1]
                    inner = f"{folder}/{name}" if folder else name
                    if info.is_dir:
                        pending.append(inner)
                    else:
                        listed[inner] = int(info.file_size or 0)
        except MlflowException as exc:
            raise RegistryUnavailable(f"cannot list the artifacts of {ref.describe()}: "
                                      f"{_first_line(exc.message)}") from exc
        except (requests.RequestException, OSError) as exc:
            raise RegistryUnavailable(f"cannot reach the registry at {self.describe()}: {exc}") from exc
        if not listed:
            raise RegistryError(f"the registry lists no files for {ref.describe()}; it cannot be served")
        return listed


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:300] if text else "no message"


def registry_choice(symbol: str, source: RegistrySource, overrides: dict | None = None,
                    guard_ratio: float | None = None) -> Choice:
    """Who answers `symbol` according to the registry now (nothing is loaded): the phase
    document's `get_lora_checkpoint`.

    The val_mae of each version comes from its `val_mae` tag, as the training job wrote it.
    RegistryUnavailable when the registry cannot be read.
    """
    asset_class = asset_class_of(symbol, overrides)
    refs = source.resolve((asset_class, POOLED))
    available = {label: Candidate(label, ref.registered_model, ref.version, finite_or_none(ref.tags.get("val_mae")))
                 for label, ref in refs.items() if ref is not None}
    return choose(asset_class, available, guard_ratio=guard_ratio)
