"""Is a downloaded or cached adapter bundle whole and unchanged?

Three checks, each refusing with a message that names the file:
- sizes: every file the registry lists for the bundle is here with the listed size (an
  interrupted download leaves a file short or missing);
- digest: the sha256 of every file, folded into one `bundle_digest`, equals the digest the
  version's `sha256.<file>` tags fold into (written at registration, see `digest_tags`) or
  the local cache's manifest;
- formats: JSON files parse and safetensors files hold whole tensors (this catches a
  truncated or garbled file even where no digest was recorded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from kronos_rolling.errors import ModelError

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
    """The bundle digest (serve/integrity.manifest_digest) the recorded files fold into, if any."""
    files = recorded_files(tags)
    return manifest_digest({name: {"sha256": sha} for name, sha in files.items()}) if files else None
