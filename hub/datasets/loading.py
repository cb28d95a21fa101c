"""One entry point for dataset files: :func:`load_dataset` picks the reader by the file's suffix."""

from __future__ import annotations

from pathlib import Path

from edgeloop.hub.datasets.csv_io import read_csv_cells, table_from_cells
from edgeloop.hub.datasets.dataset import MIN_ROWS, Dataset, check_min_rows
from edgeloop.hub.datasets.npz_io import load_npz
from edgeloop.hub.datasets.problems import Problem
from edgeloop.hub.datasets.schema import Schema
from edgeloop.hub.datasets.tables import finish_table, schema_overrides
from edgeloop.hub.errors import DataValidationError

__all__ = ["DATA_SUFFIXES", "load_dataset"]

DATA_SUFFIXES = (".csv", ".npz")


def load_dataset(
    path: str | Path,
    *,
    schema: Schema | None = None,
    schema_file: str | Path | None = None,
    min_rows: int = MIN_ROWS,
    training: bool = True,
) -> Dataset:
    """Load a dataset file, choosing the reader by suffix: ``.csv`` (``load_csv``) or ``.npz`` (``load_npz``).

    The schema is inferred (label column ``"label"`` or else the last column;
    task, dtypes, classes, layout -- see :mod:`edgeloop.hub.datasets.schema`), then
    overridden by ``schema_file`` (JSON, format in :mod:`edgeloop.hub.datasets.schema`)
    and then by ``schema``. The result is validated (every problem with row,
    column and rule, raised as :class:`edgeloop.hub.errors.DataValidationError`)
    and carries the resolved schema in ``.schema``. Loading the same data twice
    gives the same ``sha256``.
    ``min_rows`` is the fewest rows (windows) training accepts: default
    :data:`~edgeloop.hub.datasets.MIN_ROWS` (30), at least
    :data:`~edgeloop.hub.datasets.MIN_ROWS_FLOOR` (6); data with fewer than 30
    rows that a lower ``min_rows`` lets in carry a ``few_rows`` warning.
    Constant and identical columns are not refused either: they are listed in
    the result's ``warnings`` (:mod:`edgeloop.hub.datasets.data_warnings`).
    ``training=False`` loads data to evaluate or fine-tune on: every cell,
    schema and window rule still applies, the training-only rules (row and
    class counts) do not -- check its classes with
    :func:`edgeloop.hub.datasets.validate_labels_known`.
    """
    path = Path(path)
    check_min_rows(min_rows)  # before reading a large file
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path, schema=schema, schema_file=schema_file, min_rows=min_rows, training=training)
    if suffix == ".csv":
        override = schema_overrides(schema, schema_file)
        header, rows = read_csv_cells(path)
        return finish_table(table_from_cells(header, rows, override, str(path)), override, min_rows, training)
    raise DataValidationError(
        f"{path} has an unsupported file type {path.suffix!r}; use one of {', '.join(DATA_SUFFIXES)}.",
        [Problem(None, None, "unsupported_format", f"suffix {path.suffix!r}")],
    )

