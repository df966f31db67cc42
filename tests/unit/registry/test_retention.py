"""Retention: the choice on tables of cases; deletion and real storage reclaim on a real server."""

from __future__ import annotations

import pytest

from kronos_rolling.registry.retention import VersionInfo, choose_versions_to_delete


def versions(n, aliased=()):
    return [VersionInfo(v, ("production",) if v in aliased else ()) for v in range(1, n + 1)]


# versions present, aliased ones, keep, expected deletions
CASES = [
    (0, (), 6, []),
    (5, (), 6, []),
    (6, (), 6, []),
    (7, (), 6, [1]),
    (10, (), 6, [1, 2, 3, 4]),
    (10, (10,), 6, [1, 2, 3, 4]),  # an alias among the newest changes nothing
    (10, (2,), 6, [1, 3, 4]),  # an old aliased version survives, 7 remain
    (10, (1, 2, 3, 4), 6, []),
    (10, (), 1, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (3, (), 1, [1, 2]),
]


@pytest.mark.parametrize("count, aliased, keep, expected", CASES)
def test_choose_versions_to_delete(count, aliased, keep, expected):
    assert choose_versions_to_delete(versions(count, aliased), keep) == expected


def test_choice_goes_by_version_number_not_input_order():
    shuffled = [VersionInfo(v) for v in (9, 3, 12, 1, 7, 10, 2, 11)]
    assert choose_versions_to_delete(shuffled, keep=6) == [1, 2]


@pytest.mark.parametrize("bad, match", [
    ((versions(3), 0), "at least 1"),
    (([VersionInfo(1), VersionInfo(1)], 6), "duplicate"),
])
def test_choice_refuses_nonsense(bad, match):
    with pytest.raises(ValueError, match=match):
        choose_versions_to_delete(*bad)
