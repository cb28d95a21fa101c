"""Validation findings shared by the modules of :mod:`edgeloop.hub.datasets`.

A :class:`Problem` names the row, column and rule of one finding; the data
modules collect *every* problem of a file and raise one
:class:`edgeloop.hub.errors.DataValidationError` whose ``problems`` list holds them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeloop.hub.errors import DataValidationError

__all__ = [
    "ARRAY_ROW_CONVENTION",
    "MAX_PROBLEMS",
    "MAX_PROBLEMS_IN_MESSAGE",
    "ROW_CONVENTION",
    "Problem",
    "file_error",
    "problems_error",
    "validation_error",
]

ROW_CONVENTION = "rows are file line numbers: the header is line 1, the first data row is line 2"
ARRAY_ROW_CONVENTION = ("rows are numbered like the lines of the equivalent CSV: the header is line 1, "
                        "the first data row is line 2 (array row 0)")
MAX_PROBLEMS = 1000  # keep reports of hopeless files bounded
MAX_PROBLEMS_IN_MESSAGE = 20


@dataclass(frozen=True)
class Problem:
    """One validation finding.

    ``row`` is the file line number (header = line 1, first data row = line 2)
    or ``None`` for whole-column/whole-file rules; ``column`` is the column name
    or ``None`` for whole-file rules; ``rule`` is a stable machine-readable id.
    """

    row: int | None
    column: str | None
    rule: str
    detail: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"line {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        prefix = ", ".join(where) if where else "file"
        return f"{prefix}: [{self.rule}] {self.detail}"

    def to_dict(self) -> dict:
        return {"row": self.row, "column": self.column, "rule": self.rule, "detail": self.detail}


def problems_error(intro: str, problems: list[Problem], outro: str) -> DataValidationError:
    """A :class:`DataValidationError` whose message lists the first problems between ``intro`` and ``outro``."""
    problems = problems[:MAX_PROBLEMS]
    shown = problems[:MAX_PROBLEMS_IN_MESSAGE]
    more = len(problems) - len(shown)
    lines = [intro]
    lines += [f"  - {p}" for p in shown]
    if more > 0:
        lines.append(f"  ... and {more} more (see the error's problems list)")
    lines.append(outro)
    return DataValidationError("\n".join(lines), problems)


def validation_error(source: str, problems: list[Problem], *, convention: str = ROW_CONVENTION,
                     headline: str | None = None) -> DataValidationError:
    """The error raised for invalid training data: every problem, with row, column and rule."""
    capped = " (stopped counting)" if len(problems) >= MAX_PROBLEMS else ""
    count = min(len(problems), MAX_PROBLEMS)
    intro = f"{source} is not valid training data: {count} problem(s){capped} ({convention}):"
    if headline:
        intro = f"{headline}\n{intro}"
    return problems_error(intro, problems, "Fix the data and load it again; nothing was trained.")


def file_error(source: str, rule: str, detail: str, exc: BaseException | None = None) -> DataValidationError:
    """A data file that cannot be read: the message names the file, the problem carries the rule."""
    return DataValidationError(f"{source} {detail}", [Problem(None, None, rule, str(exc) if exc else detail)])
