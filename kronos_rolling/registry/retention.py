"""Retention: which versions of a registered model to delete.

Keep the newest `keep` versions (by version number, which MLflow only ever increases)
plus every version that holds an alias: @production, @staging and @previous_production
(the default rollback target) survive however old they are. `registry/cleanup.py` does
the deleting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kronos_rolling.settings import Thresholds


@dataclass(frozen=True)
class VersionInfo:
    version: int
    aliases: tuple[str, ...] = ()


def choose_versions_to_delete(versions: Iterable[VersionInfo],
                              keep: int = Thresholds.keep_versions) -> list[int]:
    """Version numbers to delete, oldest first."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (got {keep}); retention never deletes "
                         "every version")
    ordered: Sequence[VersionInfo] = sorted(versions, key=lambda v: v.version, reverse=True)
    numbers = [v.version for v in ordered]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"duplicate version numbers in {sorted(numbers)}")
    return sorted(v.version for v in ordered[keep:] if not v.aliases)
