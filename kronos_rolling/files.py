"""Files: written so that a reader never sees half of one, and checked to be whole and unchanged.

Every file or folder that something else reads while we write it (a bundle, a base, a
checkpoint, the predictor's cache, a CSV of forecasts) is written beside its target
under a hidden name, then renamed over it: a rename within one file system is atomic,
so a crash leaves the old version or the new one, never a mix (the data store names its
temporary files with the writer's pid, so that the next import removes a killed one's).

No library does the folder case (a folder cannot be renamed over a non-empty one), so
it is written here once: the old folder is moved aside first, the new one moved in,
then the old one deleted.

Whole and unchanged (a downloaded or cached version, a checkpoint), three checks, each
refusing with a message that names the file:
- sizes: every file a listing names is here with the listed size (an interrupted download
  leaves a file short or missing);
- digest: the sha256 of every file (`file_manifest`), folded into one `manifest_digest`,
  equals what was recorded: a version's `sha256.<file>` tags (written at registration, see
  `digest_tags`) or a local cache's manifest;
- formats: JSON files parse and safetensors files hold whole tensors (this catches a
  truncated or garbled file even where no digest was recorded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open

from kronos_rolling.errors import ModelError

STAGING_PREFIX = ".staging-"


def write_atomic(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` through a temporary file in the same folder (mode: e.g. 0o600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{path.name}.", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write (with any library); renamed to `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging folder beside `path`; it replaces `path` (whole) when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{path.name}.", dir=path.parent))
    try:
        yield staging
        replace_folder(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, target: Path) -> None:
    """Move `staging` to `target`, replacing whatever is there."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}.old.", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


# -- whole and unchanged ---------------------------------------------------------------------

DIGEST_TAG_PREFIX = "sha256."  # version tag per bundle file, written at registration: sha256.<path in the bundle>
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {"sha256", "size"}} of every file under `folder`."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): {"sha256": file_sha256(path), "size": path.stat().st_size}
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def manifest_digest(manifest: dict[str, dict]) -> str:
    """One sha256 over `sha256  path` lines in path order (sha256sum's format)."""
    lines = "".join(f"{entry['sha256']}  {name}\n" for name, entry in sorted(manifest.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def bundle_digest(folder: Path) -> str:
    """One sha256 over the bundle's files (what /models reports as a served version's `bundle_sha256`)."""
    return manifest_digest(file_manifest(folder))


def check_sizes(folder: Path, listed: dict[str, int], what: str) -> None:
    """Every listed file is present with its listed size."""
    for name, size in sorted(listed.items()):
        path = Path(folder) / name
        if not path.is_file():
            raise ModelError(f"{what}: {name} is missing from the download (the registry lists {size} bytes); "
                             "the download was incomplete")
        actual = path.stat().st_size
        if actual != size:
            raise ModelError(f"{what}: {name} has {actual} bytes but the registry lists {size}; "
                             "the download was incomplete or the file changed while downloading")


def check_manifest(folder: Path, manifest: dict[str, dict], what: str) -> None:
    """The folder holds exactly the manifest's files, each with its recorded sha256."""
    actual = file_manifest(folder)
    missing = sorted(set(manifest) - set(actual))
    extra = sorted(set(actual) - set(manifest))
    if missing or extra:
        raise ModelError(f"{what}: files differ from its manifest (missing {missing or 'none'}, "
                         f"unexpected {extra or 'none'})")
    for name in sorted(manifest):
        if actual[name]["sha256"] != manifest[name]["sha256"]:
            raise ModelError(f"{what}: {name} does not match its recorded sha256 "
                             f"({actual[name]['sha256'][:12]} != {manifest[name]['sha256'][:12]}); it is corrupt")


def check_digest(manifest: dict[str, dict], expected: str, what: str) -> None:
    actual = manifest_digest(manifest)
    if actual != expected:
        raise ModelError(f"{what}: bundle sha256 {actual[:12]} does not match the digest recorded at "
                         f"registration {expected[:12]}; the download is corrupt or incomplete")


def check_formats(folder: Path, what: str) -> None:
    """JSON parses; safetensors headers fit their files and every tensor reads."""
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ModelError(f"{what}: {path.name} is not valid JSON ({exc}); the file is corrupt") from exc
        elif path.suffix == ".safetensors":
            try:
                # numpy, not torch: the registry commands verify without loading torch. Opening
                # checks every tensor's byte range against the file; a dtype numpy lacks (bf16)
                # raises TypeError on reading, after that check.
                with safe_open(str(path), framework="numpy") as tensors:
                    for key in tensors.keys():
                        with contextlib.suppress(TypeError):
                            tensors.get_tensor(key)
            except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
                raise ModelError(f"{what}: {path.name} is not a readable safetensors file ({exc}); "
                                 "the file is corrupt or truncated") from exc


def digest_tags(bundle_dir: Path) -> dict[str, str]:
    """The version tags that record the bundle's files: {"sha256.<file>": hex digest}."""
    return {DIGEST_TAG_PREFIX + name: entry["sha256"] for name, entry in file_manifest(bundle_dir).items()}


def recorded_files(tags: dict[str, str]) -> dict[str, str]:
    """{file: sha256} as the version's tags record them (empty: registered before they were)."""
    return {key[len(DIGEST_TAG_PREFIX):]: value for key, value in (tags or {}).items()
            if key.startswith(DIGEST_TAG_PREFIX)}


def recorded_digest(tags: dict[str, str]) -> str | None:
    """The bundle digest (manifest_digest) the recorded files fold into, if any."""
    files = recorded_files(tags)
    return manifest_digest({name: {"sha256": sha} for name, sha in files.items()}) if files else None
