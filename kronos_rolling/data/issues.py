"""One problem found in bar data, named precisely enough to fix it, and how lists of them
are shown: every problem is kept; a message lists the first rows of each kind and counts
the rest, and a report file holds every one.

Files people open in spreadsheets (the `--report` CSV, `SYMBOL.dropped.csv`) hold cells
copied from the user's data; `spreadsheet_safe` keeps a spreadsheet from running them as
formulas (OWASP's advice on CSV injection)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issue:
    """A problem in `file` at data row `row` of `column`.

    `row` is the source's own row label: 1-based data rows (header not counted) for a
    file, positions (0-based, as `iloc`) for a DataFrame or a request's list of bars.
    `row` and `column` are None when the problem concerns the whole file or column.
    `problem` names the kind (the same text for every row with that problem); `detail`
    adds this row's values. A `warning` is worth knowing but leaves the data usable.
    """

    file: str
    row: int | None
    column: str | None
    problem: str
    detail: str = ""
    warning: bool = False

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where)}: {self.problem}{self.detail}"

    @property
    def kind(self) -> tuple[str, str | None, str]:
        return self.file, self.column, self.problem


MAX_ROWS_PER_PROBLEM = 10
"""Rows a message lists for one kind of problem; the rest are counted (a report lists all)."""


def row_issues(file: str, rows, column: str | None, problem: str, details=None) -> list[Issue]:
    """One issue per row in `rows` with the same problem; `details` (one string per row) adds values."""
    rows = [int(r) for r in rows]
    return [Issue(file, r, column, problem, details[i] if details is not None else "") for i, r in enumerate(rows)]


def counts_by_kind(issues: list[Issue]) -> Counter:
    """How many issues of each kind (file, column, problem), in order of first appearance."""
    return Counter(i.kind for i in issues)


def listing(issues: list[Issue], per_kind: int = MAX_ROWS_PER_PROBLEM) -> list[str]:
    """The first `per_kind` issues of each kind in row order, then one line per kind with more, counting them all."""
    seen: Counter = Counter()
    lines = []
    for issue in sorted(issues, key=lambda i: (i.row is not None, i.row or 0)):
        seen[issue.kind] += 1
        if seen[issue.kind] <= per_kind:
            lines.append(str(issue))
    for (file, column, problem), count in counts_by_kind(issues).items():
        if count > per_kind:
            where = f"{file}, column '{column}'" if column else file
            lines.append(f"{where}: {problem}: {count - per_kind} more rows ({count} in all)")
    return lines


def summary(issues: list[Issue]) -> str:
    """`N problem(s)` and the count of every kind, e.g. for an error's first lines."""
    kinds = counts_by_kind(issues)
    parts = [f"{problem}{f' (column {column!r})' if column else ''}: {count}"
             for (_, column, problem), count in kinds.items()]
    return f"{len(issues)} problem(s): " + "; ".join(parts)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SPREADSHEET_QUOTING = csv.QUOTE_ALL
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def spreadsheet_safe(value):
    """A cell that a spreadsheet shows as the text it is and never runs as a formula.

    OWASP (CSV injection): a cell starting with =, +, -, @, a tab or a carriage return gets
    a leading single quote, so spreadsheets read it as text. A plain number (-1.5, +2e3)
    starts so too but is no formula: it is left as it is. Such files are written with every
    cell in double quotes (SPREADSHEET_QUOTING), so no separator, quote or line break inside
    a cell can start a new one.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def write_report(path: str | Path, issues: list[Issue]) -> Path:
    """Every issue as a CSV row: file, row, column, problem, detail (cells spreadsheet-safe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, quoting=SPREADSHEET_QUOTING)
        writer.writerow(["file", "row", "column", "problem", "detail"])
        for issue in issues:
            writer.writerow([spreadsheet_safe(cell) for cell in (
                issue.file, "" if issue.row is None else issue.row, issue.column or "", issue.problem,
                issue.detail.strip(" :()"))])
    return path
