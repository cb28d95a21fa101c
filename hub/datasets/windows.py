"""Multichannel sensor windows for sequence models (1D-CNN): the layout -- naming, detection, long → wide.

A window dataset holds one fixed-length multichannel recording per row. Its
arrays stay *flat*: ``X`` is (n_windows, C*T) in **channel-major** order --
feature ``c*T + t`` is channel ``c`` at step ``t`` and is named ``ch{c}_t{t}``
-- so ``X.reshape(n, C, T)`` gives the (batch, channels, steps) tensor a 1D-CNN
wants while the ONNX input stays ``[batch, C*T]``. ``Dataset.window_shape`` is
``(C, T)``.

Two file layouts are read (by :func:`edgeloop.hub.datasets.load_dataset`):

* **wide**: one row per window with feature columns named ``ch{c}_t{t}``, in any
  column order; detected when *every* feature column has such a name and the
  names form the complete ``C × T`` grid;
* **long**: one row per time step, ``window_id, t, ch0, ch1, …, label``. Rows are
  grouped by the window id (windows in order of first appearance), ordered by
  the optional time column ``t`` (else by file order), and the channel columns
  (any names; channel ``c`` is the ``c``-th of them) become ``ch{c}_t{t}``. Every
  window must have the same number of steps (rule ``ragged_window``), no step
  twice (``duplicate_step``) and one label throughout (``inconsistent_window_label``).

Synthetic window data (:func:`edgeloop.hub.datasets.generate_sensor_windows`)
live in :mod:`edgeloop.hub.datasets.synthetic`; this module holds only the
layout helpers, so it depends on nothing but
:mod:`edgeloop.hub.datasets.problems`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from edgeloop.hub.datasets.problems import Problem

__all__ = ["detect_wide_windows", "long_to_wide", "parse_window_column", "window_feature_names"]

_WINDOW_COLUMN = re.compile(r"ch(\d+)_t(\d+)")


def window_feature_names(channels: int, steps: int) -> list[str]:
    """``ch{c}_t{t}`` in channel-major order: the feature names of a (channels, steps) window dataset."""
    return [f"ch{c}_t{t}" for c in range(channels) for t in range(steps)]


def parse_window_column(name: str) -> tuple[int, int] | None:
    """``(channel, step)`` of a ``ch{c}_t{t}`` column name, else ``None``."""
    m = _WINDOW_COLUMN.fullmatch(name.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def detect_wide_windows(names: Sequence[str]) -> tuple[tuple[int, int] | None, list[int], list[Problem]]:
    """Look for the wide window layout among feature column ``names``.

    Returns ``(window_shape, order, problems)``: ``window_shape`` is ``(C, T)`` or
    ``None`` (tabular); ``order[k]`` is the index in ``names`` of canonical
    feature ``k`` (channel-major). Problems: ``mixed_window_columns`` (some but
    not all columns are ``ch{c}_t{t}``) and ``incomplete_window_columns`` (the
    names do not form a complete C × T grid).
    """
    parsed = [parse_window_column(n) for n in names]
    hits = [i for i, p in enumerate(parsed) if p is not None]
    if not hits:
        return None, list(range(len(names))), []
    if len(hits) != len(names):
        others = [names[i] for i, p in enumerate(parsed) if p is None]
        return None, list(range(len(names))), [Problem(
            1, None, "mixed_window_columns",
            f"{len(hits)} column(s) are window samples (ch{{c}}_t{{t}}) but {len(others)} are not: "
            f"{others[:5]}{' ...' if len(others) > 5 else ''}; drop them (schema ignore_columns) or set the "
            "schema's layout to 'tabular'")]
    grid = [p for p in parsed if p is not None]  # all of them: every name parsed
    channels = max(c for c, _ in grid) + 1
    steps = max(t for _, t in grid) + 1
    where = {p: i for i, p in enumerate(parsed)}
    missing = [f"ch{c}_t{t}" for c in range(channels) for t in range(steps) if (c, t) not in where]
    if missing or len(where) != len(names):
        detail = (f"window columns must form a complete grid of {channels} channel(s) × {steps} step(s); "
                  f"missing {len(missing)}: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                  if missing else "two columns name the same channel and step")
        return None, list(range(len(names))), [Problem(1, None, "incomplete_window_columns", detail)]
    order = [where[(c, t)] for c in range(channels) for t in range(steps)]
    return (channels, steps), order, []


def long_to_wide(
    window_ids: Sequence[str],
    steps: Sequence[float] | None,
    values: np.ndarray,
    labels: Sequence,
    lines: Sequence[int],
    *,
    window_id_column: str,
    time_column: str | None,
    label_column: str,
    expected_steps: int | None = None,
) -> tuple[np.ndarray, list, list[int], list[Problem]]:
    """Group long-format rows into windows.

    ``values`` is (n_rows, C) with the channel columns of each row; ``labels``
    the row labels (class names or numbers); ``lines`` the rows' file lines.
    Returns ``(X, window_labels, window_lines, problems)`` with ``X`` of shape
    (n_windows, C*T) in channel-major order and each window's first line.
    """
    values = np.asarray(values, dtype=np.float32)
    groups: dict[str, list[int]] = {}
    for i, wid in enumerate(window_ids):
        groups.setdefault(wid, []).append(i)
    problems: list[Problem] = []
    if time_column is not None and steps is not None:
        for wid, rows in groups.items():
            rows.sort(key=lambda i: (steps[i], i))
            for a, b in itertools.pairwise(rows):
                if steps[a] == steps[b]:
                    problems.append(Problem(lines[b], time_column, "duplicate_step",
                                            f"window {wid!r} has step {steps[b]:g} twice (also on line {lines[a]})"))
    counts = Counter(len(rows) for rows in groups.values())
    n_steps = expected_steps if expected_steps is not None else (
        max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0] if counts else 0)
    for wid, rows in groups.items():
        if len(rows) != n_steps:
            why = "the declared window_shape" if expected_steps is not None else "as most windows have"
            problems.append(Problem(min(lines[i] for i in rows), window_id_column, "ragged_window",
                                    f"window {wid!r} has {len(rows)} step(s); every window needs {n_steps} ({why})"))
    for wid, rows in groups.items():
        by_line = sorted(rows, key=lambda i: lines[i])
        first = by_line[0]
        for i in by_line[1:]:
            if not _same(labels[i], labels[first]):
                problems.append(Problem(lines[i], label_column, "inconsistent_window_label",
                                        f"window {wid!r} changes its label to {labels[i]!r}; its first row "
                                        f"(line {lines[first]}) has {labels[first]!r}; a window has one label"))
                break
    n_channels = values.shape[1] if values.ndim == 2 else 0
    if problems:
        return np.zeros((0, n_channels * n_steps), np.float32), [], [], problems
    X = np.stack([values[rows].T.reshape(-1) for rows in groups.values()]) if groups else np.zeros((0, 0), np.float32)
    window_labels = [labels[min(rows, key=lambda i: lines[i])] for rows in groups.values()]
    window_lines = [min(lines[i] for i in rows) for rows in groups.values()]
    return X.astype(np.float32), window_labels, window_lines, []


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
