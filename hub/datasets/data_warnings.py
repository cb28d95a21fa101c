"""Dataset warnings: findings that do not refuse a dataset but that its user should know about.

Real recordings have them. A sensor that holds its value between samples makes two
adjacent time-step columns identical in every row of a small file; an unplugged or
saturated sensor is a constant channel; a site file may hold fewer rows than
recommended. Such data load and train (standardization gives a constant column a
scale of 1, so it enters the model as zeros), and every finding is reported as one
:class:`DataWarning` -- a stable ``rule``, the ``columns`` concerned and a sentence --
shown by ``edgeloop data import`` / ``data show`` and kept in the dataset's registry
record (``datasets.warnings``).

Rules: ``constant_column`` (one value in every row), ``duplicate_column`` (the same
values as an earlier column; ``groups`` lists each set of identical columns, first
column first) and ``few_rows`` (fewer rows than recommended, accepted because the
load's ``min_rows`` allows it). Columns holding a missing or non-finite value are
not examined (those are errors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop.hub.datasets.windows import parse_window_column

__all__ = ["WARNING_RULES", "DataWarning", "column_warnings", "describe_columns", "few_rows_warning"]

WARNING_RULES = ("constant_column", "duplicate_column", "few_rows")
_SHOWN = 6  # columns or pairs named in a warning's sentence; the full list is in .columns


@dataclass(frozen=True)
class DataWarning:
    """One warning: ``rule`` (see :data:`WARNING_RULES`), the ``columns`` concerned, a sentence (``detail``).

    ``groups`` (``duplicate_column`` only): each set of identical columns, the first
    one (kept by any reader that drops duplicates) first.
    """

    rule: str
    columns: tuple[str, ...]
    detail: str
    groups: tuple[tuple[str, ...], ...] = ()

    def __str__(self) -> str:
        return f"[{self.rule}] {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"rule", "columns", "detail"}`` (and ``"groups"`` when there are any)."""
        out: dict[str, Any] = {"rule": self.rule, "columns": list(self.columns), "detail": self.detail}
        if self.groups:
            out["groups"] = [list(g) for g in self.groups]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataWarning:
        return cls(str(data["rule"]), tuple(map(str, data.get("columns") or ())), str(data.get("detail", "")),
                   tuple(tuple(map(str, g)) for g in data.get("groups") or ()))


def describe_columns(names: Sequence[str], window_shape: tuple[int, int] | None = None,
                     limit: int = _SHOWN) -> str:
    """A short text naming ``names``: for window data a channel all of whose steps are
    listed is ``ch2 (all 64 steps)``; at most ``limit`` items, then ``and N more``."""
    items: list[str] = []
    rest = list(names)
    if window_shape is not None:
        steps = window_shape[1]
        by_channel: dict[int, int] = {}
        for n in names:
            p = parse_window_column(n)
            if p is not None:
                by_channel[p[0]] = by_channel.get(p[0], 0) + 1
        whole = {c for c, k in by_channel.items() if k == steps}
        items = [f"ch{c} (all {steps} steps)" for c in sorted(whole)]
        rest = [n for n in names if (parse_window_column(n) or (-1, 0))[0] not in whole]
    items += rest
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def column_warnings(names: Sequence[str], X: np.ndarray,
                    window_shape: tuple[int, int] | None = None) -> list[DataWarning]:
    """``constant_column`` and ``duplicate_column`` warnings of the feature columns of ``X`` (rows, features).

    Columns with a non-finite value are skipped; ``-0.0`` equals ``0.0``. At most one
    warning per rule; each names every column concerned.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        return []
    finite = np.isfinite(X).all(axis=0)
    constant = finite & (X == X[0]).all(axis=0)
    out: list[DataWarning] = []
    const_idx = np.nonzero(constant)[0]
    if const_idx.size:
        cols = tuple(names[int(j)] for j in const_idx)
        values = np.unique(X[0, const_idx])
        value = f"the value {float(values[0]):g}" if values.size == 1 else f"{values.size} different values"
        what = "column holds" if len(cols) == 1 else "columns each hold"
        hint = ("" if window_shape is not None  # a window keeps its full channels × steps grid
                else " (drop them with the schema's ignore_columns)")
        out.append(DataWarning("constant_column", cols, (
            f"{len(cols)} {what} one value in every row ({value}) and carry no information: "
            f"{describe_columns(cols, window_shape)}; kept, they enter the model as zeros{hint}")))
    firsts: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    cols_t = np.ascontiguousarray((X + np.float32(0.0)).T)  # + 0.0 turns -0.0 into 0.0
    for j in np.nonzero(finite & ~constant)[0]:
        key = cols_t[j].tobytes()
        first = firsts.setdefault(key, int(j))
        if first != j:
            groups.setdefault(first, [first]).append(int(j))
    if groups:
        group_names = tuple(tuple(names[j] for j in g) for g in groups.values())
        dups = tuple(n for g in group_names for n in g[1:])
        pairs = [f"{n} = {g[0]}" for g in group_names for n in g[1:]]
        shown = ", ".join(pairs[:_SHOWN]) + (f" and {len(pairs) - _SHOWN} more" if len(pairs) > _SHOWN else "")
        why = (" -- typical of sensors that hold their value between samples" if window_shape is not None
               else "")
        out.append(DataWarning("duplicate_column", dups, (
            f"{len(dups)} column(s) repeat an earlier column exactly in every row{why}: {shown}; kept "
            "(they add no information)"), group_names))
    return out


def few_rows_warning(n_rows: int, recommended: int, min_rows: int, unit: str = "row") -> DataWarning | None:
    """``few_rows`` when ``min_rows <= n_rows < recommended`` (fewer are refused), else ``None``."""
    if not min_rows <= n_rows < recommended:
        return None
    test_rows = max(1, round(n_rows * 0.15))
    return DataWarning("few_rows", (), (
        f"{n_rows} {unit}(s), fewer than the {recommended} recommended (accepted because a lower min_rows "
        f"was given): the validation and test splits hold about {test_rows} {unit}(s) each at the default "
        "15%, so metrics and the int8 decision rest on few rows; add data or evaluate on a separate test file"))
