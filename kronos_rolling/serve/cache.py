"""The local cache of resolved versions: what the service serves when the registry is down.

    <cache_dir>/                      ($KRONOS_HOME/predictor-cache by default)
      resolved.json                   per label: the version @production pointed at, when
      kronos-lora-crypto/3/model/     the verified logged model of that version (MLmodel, code,
                                      artifacts/adapter/: the adapter bundle)
      kronos-lora-crypto/3/manifest.json   sha256 + size of every file, their digest, the
                                           version's tags, when it was stored

A version enters the cache only after its download was verified, and every load from
the cache checks each file against the manifest: a corrupt or partial cache entry is
refused, never served. Writes go to a temporary folder renamed into place, so a crash
leaves either the old entry or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kronos_rolling.errors import ModelError
from kronos_rolling.tracking.adapters import bundle_in
from kronos_rolling.files import (
    check_digest,
    check_formats,
    check_manifest,
    file_manifest,
    manifest_digest,
)

RESOLVED_FILE = "resolved.json"
MANIFEST_FILE = "manifest.json"
MODEL_FOLDER = "model"
CACHE_FORMAT = 2  # 2: the whole logged model (1 held the adapter bundle only)


@dataclass(frozen=True)
class CachedVersion:
    registered_model: str
    version: str
    model_dir: Path
    manifest: dict

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def bundle_dir(self) -> Path:
        return bundle_in(self.model_dir)


class VersionCache:
    def __init__(self, root: Path, keep: int = 3):
        self.root = Path(root)
        self.keep = keep

    def folder(self, registered_model: str, version: str) -> Path:
        return self.root / registered_model / str(version)

    def store(self, registered_model: str, version: str, model_dir: Path, *, tags: dict | None = None,
              run_id: str | None = None, expected_digest: str | None = None) -> CachedVersion:
        """Copy a verified version's model folder in; the digest is checked again on the copy."""
        target = self.folder(registered_model, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
        try:
            shutil.copytree(model_dir, staging / MODEL_FOLDER)
            files = file_manifest(staging / MODEL_FOLDER)
            digest = manifest_digest(files)
            if expected_digest is not None:
                check_digest(files, expected_digest, f"{registered_model} v{version} (copy into the cache)")
            manifest = {"format": CACHE_FORMAT, "registered_model": registered_model, "version": str(version),
                        "run_id": run_id,
                        "tags": dict(tags or {}), "digest": digest, "files": files,
                        "stored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            _write_json(staging / MANIFEST_FILE, manifest)
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{version}.old.", dir=target.parent))
                os.replace(target, retired / "entry")
                shutil.rmtree(retired, ignore_errors=True)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return CachedVersion(registered_model, str(version), target / MODEL_FOLDER, manifest)

    def load(self, registered_model: str, version: str, expected_digest: str | None = None) -> CachedVersion:
        """The cached version after checking every file; ModelError when absent or corrupt."""
        folder = self.folder(registered_model, version)
        what = f"cached {registered_model} v{version} ({folder})"
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            files, digest = manifest["files"], manifest["digest"]
        except FileNotFoundError:
            raise ModelError(f"{what} is not in the cache") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{what}: its manifest is unreadable ({exc}); the entry is corrupt") from exc
        if manifest.get("format") != CACHE_FORMAT:
            raise ModelError(f"{what} was written by an older kronos-rolling (the adapter without its model); "
                             "it is not used")
        check_digest(files, digest, what)
        if expected_digest is not None and digest != expected_digest:
            raise ModelError(f"{what}: digest {digest[:12]} differs from the registry's {expected_digest[:12]}")
        check_manifest(folder / MODEL_FOLDER, files, what)
        check_formats(folder / MODEL_FOLDER, what)
        return CachedVersion(registered_model, str(version), folder / MODEL_FOLDER, manifest)

    def has(self, registered_model: str, version: str) -> bool:
        return (self.folder(registered_model, version) / MANIFEST_FILE).is_file()

    # -- what each label resolved to ----------------------------------------------------

    def resolved(self) -> dict[str, dict]:
        """{label: {"registered_model", "version", "alias", "resolved_at"}} as last recorded."""
        try:
            data = json.loads((self.root / RESOLVED_FILE).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ModelError(f"{self.root / RESOLVED_FILE} is unreadable ({exc}); delete it, the next "
                             "registry read writes it again") from exc
        return data if isinstance(data, dict) else {}

    def record_resolved(self, label: str, registered_model: str, version: str, alias: str,
                        resolved_at: datetime) -> None:
        entries = self.resolved()
        entries[label] = {"registered_model": registered_model, "version": str(version), "alias": alias,
                          "resolved_at": resolved_at.isoformat(timespec="seconds")}
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(self.root / RESOLVED_FILE, entries)

    def forget_resolved(self, label: str) -> None:
        entries = self.resolved()
        if entries.pop(label, None) is not None:
            _write_json(self.root / RESOLVED_FILE, entries)

    def prune(self, registered_model: str, keep_versions: set[str]) -> list[str]:
        """Delete all but the newest `keep` cached versions (and those in `keep_versions`)."""
        folder = self.root / registered_model
        if not folder.is_dir():
            return []
        versions = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=int, reverse=True)
        removed = [v for v in versions[self.keep:] if v not in keep_versions]
        for version in removed:
            shutil.rmtree(folder / version, ignore_errors=True)
        return removed


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
