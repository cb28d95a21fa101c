"""CSV datasets: read and validate (:func:`load_csv`), write (:func:`write_csv`).

A CSV dataset is UTF-8 with a header row; the label column holds class names
or numeric targets; window data come in the wide (``ch{c}_t{t}`` columns) or
the long layout (``window_id, t, ch0, …``). Cells are parsed into a
:class:`~edgeloop.hub.datasets.tables.ParsedTable` here and finished by
:func:`~edgeloop.hub.datasets.tables.finish_table`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edgeloop.agent.fsutil import atomic_writer
from edgeloop.hub.datasets.dataset import MIN_ROWS, Dataset
from edgeloop.hub.datasets.problems import MAX_PROBLEMS, ROW_CONVENTION, Problem, file_error
from edgeloop.hub.datasets.schema import (
    DEFAULT_TIME_COLUMN,
    DEFAULT_WINDOW_ID_COLUMN,
    Schema,
    infer_label_dtype,
    infer_task,
    is_missing,
    resolve_label_column,
)
from edgeloop.hub.datasets.tables import ParsedTable, finish_table, parse_cell, schema_overrides
from edgeloop.hub.datasets.windows import detect_wide_windows
from edgeloop.hub.errors import DataValidationError

__all__ = ["load_csv", "read_csv_cells", "table_from_cells", "validate", "write_csv"]


def table_from_cells(header: Sequence[str], rows: Sequence[tuple[int, Sequence[str]]], override: Schema,
                     source: str) -> ParsedTable:
    """Parse CSV cells (``rows``: (file line, cells)) into a :class:`ParsedTable`, collecting cell-level problems."""
    problems: list[Problem] = []
    names = [h.strip() for h in header]
    for i, name in enumerate(names):
        if not name:
            problems.append(Problem(1, f"#{i + 1}", "empty_column_name",
                                    f"header cell {i + 1} is empty; name every column"))
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            problems.append(Problem(1, name, "duplicate_column_name",
                                    "this column name appears more than once in the header"))
        seen.add(name)
    ignored = set(override.ignore_columns or ())
    for name in override.ignore_columns or ():
        if name not in names:
            problems.append(Problem(1, name, "unknown_column",
                                    "the schema's ignore_columns names a column the file does not have"))
    kept = [i for i, n in enumerate(names) if n not in ignored]
    kept_names = [names[i] for i in kept]

    label_column = resolve_label_column(kept_names, override.label_column)
    if label_column not in kept_names:
        problems.append(Problem(1, label_column, "missing_label_column",
                                f"no column named {label_column!r}; header has {names}"))
    label_idx = names.index(label_column) if label_column in kept_names else None

    wid_col = override.window_id_column or DEFAULT_WINDOW_ID_COLUMN
    long = override.layout != "tabular" and wid_col in kept_names and wid_col != label_column
    wid_idx = names.index(wid_col) if long else None
    time_col = override.time_column or DEFAULT_TIME_COLUMN
    time_idx = names.index(time_col) if long and time_col in kept_names and time_col != label_column else None
    feature_idx = [i for i in kept if i not in (label_idx, wid_idx, time_idx)]
    if not feature_idx:
        problems.append(Problem(1, None, "no_features", "there are no feature columns besides the label"))
    feature_names = [names[i] for i in feature_idx]

    wide_shape, wide_order = None, None
    if not long and override.layout != "tabular" and feature_names:
        wide_shape, wide_order, wproblems = detect_wide_windows(feature_names)
        problems += wproblems
    if override.layout == "windows" and not long and wide_shape is None and feature_names:
        problems.append(Problem(1, None, "not_windows",
                                f"the schema says layout 'windows' but there is no {wid_col!r} column (long format) "
                                "and the feature columns are not named ch{c}_t{t} (wide format)"))

    # Task: declared, implied by a class list, or inferred from the label cells.
    label_cells = [cells[label_idx] for _, cells in rows if label_idx is not None and len(cells) == len(names)]
    if override.task is not None:
        task = override.task
        label_dtype = "float" if task == "regression" else infer_label_dtype(label_cells)
    elif override.labels is not None or label_idx is None:
        task, label_dtype = "classification", infer_label_dtype(label_cells)
    else:
        task, label_dtype = infer_task(label_cells)

    n_rows = 0
    values: list[list[float]] = []
    lines: list[int] = []
    texts: list[str | None] = []
    targets: list[float] = []
    window_ids: list[str | None] = []
    steps: list[float] = []
    wrong_counts = False
    for line, cells in rows:
        n_rows += 1
        if len(problems) >= MAX_PROBLEMS:
            continue  # keep counting rows only
        if len(cells) != len(names):
            problems.append(Problem(line, None, "wrong_cell_count",
                                    f"has {len(cells)} cells, the header has {len(names)}"))
            wrong_counts = True
            continue
        lab = cells[label_idx].strip() if label_idx is not None else ""
        if task == "classification":
            if label_idx is not None and is_missing(lab):
                problems.append(Problem(line, label_column, "missing_value", "the label is empty"))
            texts.append(None if label_idx is None or is_missing(lab) else lab)
        elif label_idx is not None:
            value, problem = parse_cell(line, label_column, lab)
            if problem is not None:
                problems.append(problem)
            targets.append(value)
        if wid_idx is not None:
            wid = cells[wid_idx].strip()
            if is_missing(wid):
                problems.append(Problem(line, wid_col, "missing_value", "the window id is empty"))
            window_ids.append(None if is_missing(wid) else wid)
        if time_idx is not None:
            value, problem = parse_cell(line, time_col, cells[time_idx].strip())
            if problem is not None:
                problems.append(problem)
            steps.append(value)
        row = []
        for ci in feature_idx:
            value, problem = parse_cell(line, names[ci], cells[ci].strip())
            if problem is not None:
                problems.append(problem)
            row.append(value)
        values.append(row)
        lines.append(line)
    X = np.array(values, dtype=np.float64).reshape(len(values), len(feature_idx)).astype(np.float32)
    return ParsedTable(
        source=source, convention=ROW_CONVENTION, names=feature_names, X=X, lines=lines,
        label_column=label_column, task=task, label_dtype=label_dtype,
        texts=texts if task == "classification" else None,
        targets=np.array(targets, dtype=np.float64) if task == "regression" and label_idx is not None else None,
        wide_shape=wide_shape, wide_order=wide_order,
        window_ids=window_ids if long else None, steps=steps if time_idx is not None else None,
        window_id_column=wid_col if long else None, time_column=time_col if time_idx is not None else None,
        problems=problems, n_rows_total=n_rows, skip_column_rules=wrong_counts or len(problems) >= MAX_PROBLEMS,
        skip_label_rules=label_idx is None,
    )


def validate(
    header: Sequence[str],
    rows: Iterable[tuple[int, Sequence[str]]],
    *,
    label_column: str | None = "label",
    min_rows: int = MIN_ROWS,
    source: str = "data",
    schema: Schema | None = None,
    training: bool = True,
) -> None:
    """Check raw CSV cells; raise on any problem.

    ``rows`` yields ``(line_number, cells)`` with line numbers as in the file
    (header = line 1). ``schema`` (optional) overrides what is inferred; its
    ``label_column`` wins over ``label_column`` (``None``: infer). Rules:
    ``missing_label_column``, ``empty_column_name``, ``duplicate_column_name``,
    ``no_features``, ``wrong_cell_count``, ``missing_value`` (empty, NA, NaN,
    null, ...), ``non_numeric``, ``non_finite`` (inf), ``too_few_rows`` (fewer
    than ``min_rows``; ``bad_min_rows`` below its floor), ``too_few_classes``,
    ``too_few_class_rows``, ``unknown_class``; for
    regression ``constant_label``; with a schema ``out_of_range``,
    ``not_integer``, ``unknown_feature``, ``unknown_column``; for windows
    ``mixed_window_columns``, ``incomplete_window_columns``, ``not_windows``,
    ``ragged_window``, ``duplicate_step``, ``inconsistent_window_label`` and
    ``window_shape_mismatch``. Every problem found is reported, not just the first.
    Constant and identical columns are warnings, not problems (``Dataset.warnings``).

    Raises :class:`edgeloop.hub.errors.DataValidationError` whose ``problems`` is a list
    of :class:`Problem`.
    """
    override = Schema(label_column=label_column).merged(schema)
    finish_table(table_from_cells(header, list(rows), override, source), override, min_rows, training)


def _format_column(col: np.ndarray) -> list[str]:
    """Shortest decimal spelling of each float32 that reads back to the same float32.

    Reading goes through float64 (``float(text)``) then float32; the shortest
    float32 spelling almost always survives that double rounding, and where it
    would not, the exact float64 spelling (``repr``) is used instead.
    """
    col = np.asarray(col, dtype=np.float32)
    texts = [np.format_float_positional(v, unique=True, trim="-") for v in col]
    back = np.array([float(t) for t in texts], dtype=np.float64).astype(np.float32)
    for i in np.nonzero(back.view(np.uint32) != col.view(np.uint32))[0]:
        texts[i] = repr(float(col[i]))
    return texts


def write_csv(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as UTF-8 CSV: a header row, features then the label column.

    The label column holds class names (classification) or the targets
    (regression); window data are written in the wide ``ch{c}_t{t}`` layout.
    Numbers are written so that :func:`load_csv` reads back identical float32
    values, hence the same :attr:`Dataset.sha256` -- for a regression target
    with at most 20 distinct whole values pass the schema (``task``) when
    loading, or save ``dataset.schema`` with
    :func:`edgeloop.hub.datasets.schema.write_schema_file` next to it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [_format_column(dataset.X[:, j]) for j in range(dataset.n_features)]
    if dataset.task == "regression":
        label_text = _format_column(dataset.y)
    else:
        label_text = [dataset.labels[i] for i in dataset.y]
    with atomic_writer(path) as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([*dataset.feature_names, dataset.label_column])
        for i in range(dataset.n_rows):
            w.writerow([c[i] for c in cols] + [label_text[i]])
        fh.flush()
        fh.detach()  # the writer closes the file after fsync
    return path


def read_csv_cells(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows as ``(file line, cells)``; an unreadable file is a ``file_error``."""
    source = str(path)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataValidationError(
                    f"{source} is empty; expected a header row and data rows ({ROW_CONVENTION}).",
                    [Problem(None, None, "empty_file", "the file has no header row")],
                )
            rows: list[tuple[int, list[str]]] = []
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # blank line
                rows.append((reader.line_num, cells))
    except FileNotFoundError as exc:
        raise file_error(source, "file_not_found", "does not exist; check the path.", exc) from exc
    except UnicodeDecodeError as exc:
        raise file_error(source, "not_utf8", f"is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "save it as UTF-8 CSV.", exc) from exc
    except IsADirectoryError as exc:
        raise file_error(source, "not_a_file", "is a folder; give the path of a CSV file.", exc) from exc
    except PermissionError as exc:
        raise file_error(source, "not_readable", "cannot be read (permission denied); check the file's "
                         "permissions.", exc) from exc
    except csv.Error as exc:
        raise file_error(source, "bad_csv", f"is not readable CSV: {exc}.", exc) from exc
    return header, rows


def load_csv(
    path: str | Path,
    label_column: str = "label",
    *,
    labels: Sequence[str] | None = None,
    min_rows: int = MIN_ROWS,
    task: str | None = None,
    schema: Schema | None = None,
    schema_file: str | Path | None = None,
    training: bool = True,
) -> Dataset:
    """Read and validate a CSV (header row; numeric features; class names or numeric targets in ``label_column``).

    Class indices follow ``labels`` when given (a class not listed there is a
    problem; an empty list counts as not given), else the sorted class names.
    The task is ``task`` when given, else inferred (see :mod:`edgeloop.hub.datasets.schema`);
    window layouts (wide ``ch{c}_t{t}`` columns, long format with a
    ``window_id`` column) are detected. A schema file and/or ``schema``
    override the inferred schema -- including ``label_column``, which then wins
    over this function's default -- while ``labels`` and ``task`` win over both.
    ``training=False``: see :func:`edgeloop.hub.datasets.load_dataset`.
    Raises :class:`edgeloop.hub.errors.DataValidationError` listing every problem with
    its line number (header = line 1), column and rule; nothing is returned
    unless the whole file is valid.
    """
    path = Path(path)
    override = Schema(label_column=label_column).merged(schema_overrides(schema, schema_file))
    override = override.merged(Schema(labels=list(labels) if labels else None, task=task))
    header, rows = read_csv_cells(path)
    return finish_table(table_from_cells(header, rows, override, str(path)), override, min_rows, training)

