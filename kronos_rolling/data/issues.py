"""One problem found in a data file, named precisely enough to fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """A problem in `file` at data row `row` (1-based, header not counted) of `column`.

    `row` and `column` are None when the problem concerns the whole file or column.
    """

    file: str
    row: int | None
    column: str | None
    problem: str

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where)}: {self.problem}"


MAX_ROWS_PER_PROBLEM = 10
"""Rows listed for one kind of problem in one column; the rest are counted in one issue."""


def row_issues(file: str, rows, column: str | None, problem: str, details=None) -> list[Issue]:
    """Issues for the first few `rows` with the same problem, plus a count of the rest.

    `details`, one string per row, is appended to the problem of the listed rows.
    """
    rows = [int(r) for r in rows]
    shown = rows[:MAX_ROWS_PER_PROBLEM]
    texts = [f"{problem}{details[i]}" if details is not None else problem for i in range(len(shown))]
    issues = [Issue(file, r, column, text) for r, text in zip(shown, texts)]
    if len(rows) > MAX_ROWS_PER_PROBLEM:
        issues.append(
            Issue(file, None, column, f"{problem}: {len(rows) - MAX_ROWS_PER_PROBLEM} more rows "
                  f"({len(rows)} in all)")
        )
    return issues
