"""Reading a test (or prediction) file against a model's input contract.

The file goes through the normal dataset readers (:func:`edgeloop.hub.datasets.load_dataset`:
every cell, schema and window rule applies and the content hash is computed) with
the training-only rules off. Then the columns are matched to what the model reads:

* the **label column** is ``label_column`` when given, else the training data's label
  column when the file has it, else ``label``, else the one column the model does not
  read; with several such columns the labels must be named (``--label-column``);
* columns the model does not read are ignored (and reported);
* a tabular model's feature columns may come in any order (an NPZ without ``feature_names``
  is taken to hold them in the model's order); a window model needs the
  same channels x steps (wide ``ch{c}_t{t}`` columns in any order, or the long layout);
* classes are re-numbered to the model's (a class the model does not know is refused,
  naming its rows); a test file may lack some of the model's classes.

A file without labels can still be read for predictions (``need_labels=False``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.hub.datasets import MIN_ROWS, Dataset, Problem, Schema, align_labels, load_dataset, validate_dataset
from edgeloop.hub.datasets.csv_io import read_csv_cells, table_from_cells
from edgeloop.hub.datasets.schema import DEFAULT_LABEL_COLUMN, DEFAULT_TIME_COLUMN, DEFAULT_WINDOW_ID_COLUMN
from edgeloop.hub.datasets.tables import finish_table
from edgeloop.hub.datasets.windows import window_feature_names
from edgeloop.hub.errors import DataValidationError

__all__ = ["ModelInputs", "TestData", "for_model", "model_inputs", "read_for_model"]

_NO_LABEL = "__edgeloop_no_label__"  # a placeholder label column for files read only to predict


@dataclass(frozen=True)
class ModelInputs:
    """What a version's model reads and predicts (from its ``meta.json``)."""

    feature_names: list[str]
    task: str
    labels: list[str] = field(default_factory=list)
    window_shape: tuple[int, int] | None = None
    label_column: str | None = None  # the training data's, when known

    @classmethod
    def from_meta(cls, meta: dict[str, Any], label_column: str | None = None) -> ModelInputs:
        shape = meta.get("window_shape")
        labels = [str(x) for x in meta.get("labels") or []]
        return cls([str(n) for n in meta["feature_names"]], str(meta["task"]), labels,
                   (int(shape[0]), int(shape[1])) if shape else None, label_column)

    def describe(self) -> str:
        if self.window_shape:
            return f"windows of {self.window_shape[0]} channels x {self.window_shape[1]} steps"
        return f"{len(self.feature_names)} features ({_names(self.feature_names)})"


@dataclass
class TestData:
    """A file read for a model: the dataset as loaded (its ``sha256`` is the file's dataset
    hash), the model's inputs ``X`` (its feature order), the truth ``y`` in the model's
    class numbering (None without labels) and what was ignored."""

    dataset: Dataset
    X: np.ndarray
    y: np.ndarray | None
    label_column: str | None
    ignored_columns: list[str]

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _truth(model: ModelInputs) -> str:
    return "values" if model.task == "regression" else "classes"


def _csv_header(path: Path) -> list[str] | None:
    """The header row of a CSV file; None when it cannot be read (the reader then says why)."""
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _structural(header: Sequence[str], model: ModelInputs) -> set[str]:
    """The columns a long-layout window file uses for the window id, the step and the channels."""
    if model.window_shape is None or DEFAULT_WINDOW_ID_COLUMN not in header:
        return set()
    return {DEFAULT_WINDOW_ID_COLUMN, DEFAULT_TIME_COLUMN} | {f"ch{c}" for c in range(model.window_shape[0])}


def _label_column(path: Path, header: Sequence[str], model: ModelInputs, given: str | None,
                  need_labels: bool) -> tuple[str | None, list[str]]:
    """(the label column or None, the other columns the model does not read)."""
    known = set(model.feature_names) | _structural(header, model)
    extra = [h for h in header if h not in known]
    if given:
        if given not in header:
            raise DataValidationError(f"{path} has no column {given!r} (--label-column); its columns: "
                                      f"{_names(list(header), 12)}", [Problem(1, given, "missing_label_column", "")])
        return given, [h for h in extra if h != given]
    for candidate in (model.label_column, DEFAULT_LABEL_COLUMN):
        if candidate and candidate in extra:
            return candidate, [h for h in extra if h != candidate]
    if len(extra) == 1:
        return extra[0], []
    if need_labels:
        wanted = model.label_column or DEFAULT_LABEL_COLUMN
        if not extra:
            raise DataValidationError(
                f"{path} has no label column: every column is a feature the model reads, so there is nothing "
                f"to score the predictions against. Add the true {_truth(model)} as a column named {wanted!r} "
                "(or name yours with --label-column), or use `edgeloop predict` for "
                "predictions only.", [Problem(1, wanted, "missing_label_column", "no label column")])
        raise DataValidationError(
            f"{path} has several columns the model does not read ({_names(extra)}); say which holds the labels "
            "with --label-column NAME (the others are ignored).", [Problem(1, None, "ambiguous_label_column", "")])
    return None, extra


def read_for_model(path: str | Path, model: ModelInputs, *, label_column: str | None = None,
                   need_labels: bool = True) -> TestData:
    """Read a CSV or NPZ file for ``model`` (see the module docstring); raises
    :class:`edgeloop.hub.errors.DataValidationError` naming every problem and the next step."""
    path = Path(path)
    ignored: list[str] = []
    lc: str | None = None
    if path.suffix.lower() == ".csv" and (header := _csv_header(path)) is not None:
        lc, ignored = _label_column(path, header, model, label_column, need_labels)
        layout = "tabular" if model.window_shape is None else None
        if lc is None:
            ds = _features_only_csv(path, ignored, layout)
        else:
            ds = load_dataset(path, schema=Schema(label_column=lc, task=model.task, ignore_columns=ignored or None,
                                                  layout=layout), training=False)
    elif path.suffix.lower() == ".npz" and not _npz_has_y(path):
        if need_labels:
            raise DataValidationError(
                f"{path} has no array 'y' with the true {_truth(model)}, so there is nothing to score the predictions "
                "against; save it with numpy.savez(path, X=..., y=...), or use `edgeloop predict` for predictions "
                "only.", [Problem(None, "y", "missing_label_column", "no y array")])
        ds = _features_only_npz(path)
    else:
        ds = load_dataset(path, training=False)
        lc = ds.label_column
    return for_model(ds, model, labelled=lc is not None, ignored=ignored)


def for_model(ds: Dataset, model: ModelInputs, *, labelled: bool = True, ignored: Sequence[str] = ()) -> TestData:
    """A loaded dataset as ``model``'s inputs and (``labelled``) truth in the model's class numbering."""
    y = None
    if labelled:
        if ds.task != model.task:
            raise DataValidationError(
                f"{ds.source or 'the data'} holds {ds.task} labels in {ds.label_column!r}, but the model does "
                f"{model.task}; give the column of the true values with --label-column",
                [Problem(None, ds.label_column, "task_mismatch", "")])
        y = align_labels(ds, model.labels).y if model.task == "classification" else ds.y
    return TestData(ds, model_inputs(ds, model), y, ds.label_column if labelled else None, list(ignored))


def model_inputs(ds: Dataset, model: ModelInputs) -> np.ndarray:
    """``ds.X`` with the model's feature columns in the model's order; refuses data the model cannot read."""
    source = ds.source or "the data"
    if model.window_shape is not None:
        if ds.window_shape != model.window_shape:
            has = (f"windows of {ds.window_shape[0]} channels x {ds.window_shape[1]} steps" if ds.window_shape
                   else f"{ds.n_features} tabular columns")
            raise DataValidationError(
                f"{source} holds {has}, but the model reads {model.describe()} (wide ch{{c}}_t{{t}} columns or the "
                "long window_id/t/ch{c} layout); give data recorded like the training data.",
                [Problem(None, None, "window_shape_mismatch", has)])
        return ds.X
    if ds.feature_names == [f"x{j}" for j in range(ds.n_features)]:  # an NPZ without feature names
        if ds.n_features == len(model.feature_names):
            return ds.X  # its columns are taken in the model's order
        raise DataValidationError(
            f"{source} holds {ds.n_features} unnamed columns, but the model reads {model.describe()}; save the "
            "model's columns (with feature_names) and try again.", [Problem(None, "X", "feature_count", "")])
    missing = [f for f in model.feature_names if f not in ds.feature_names]
    if missing:
        raise DataValidationError(
            f"{source} lacks {len(missing)} feature column(s) the model reads: {_names(missing)} (the model reads "
            f"{model.describe()}); add them with the same names as in the training data.",
            [Problem(1, name, "missing_feature", "the model reads this column") for name in missing[:20]])
    index = {name: j for j, name in enumerate(ds.feature_names)}
    return np.ascontiguousarray(ds.X[:, [index[f] for f in model.feature_names]])


def _features_only_csv(path: Path, ignored: list[str], layout: str | None) -> Dataset:
    """A CSV without labels, read through the normal CSV rules with a placeholder label column."""
    header, rows = read_csv_cells(path)
    cells = [(line, [*row, "unlabelled"]) for line, row in rows]
    override = Schema(label_column=_NO_LABEL, task="classification", ignore_columns=ignored or None, layout=layout)
    return finish_table(table_from_cells([*header, _NO_LABEL], cells, override, str(path)), override, MIN_ROWS, False)


def _npz_has_y(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return "y" in arrays.files
    except (OSError, ValueError):
        return True  # unreadable: load_dataset says why


def _features_only_npz(path: Path) -> Dataset:
    """An NPZ holding ``X`` (and optional ``feature_names``) but no ``y``: features to predict on."""
    with np.load(path, allow_pickle=False) as arrays:
        if "X" not in arrays.files:
            raise DataValidationError(f"{path} has no array 'X' (it has {sorted(arrays.files)}); save the rows "
                                      "with numpy.savez(path, X=...)", [Problem(None, "X", "bad_npz", "")])
        X = np.asarray(arrays["X"])
        names = [str(n) for n in arrays["feature_names"]] if "feature_names" in arrays.files else None
    shape = (int(X.shape[1]), int(X.shape[2])) if X.ndim == 3 else None
    X = X.reshape(X.shape[0], -1) if X.ndim >= 2 else X
    if shape is not None:
        names = window_feature_names(*shape)
    names = names or [f"x{j}" for j in range(X.shape[1] if X.ndim == 2 else 0)]
    ds = Dataset(names, X, np.zeros(len(X), dtype=np.int64), ["?"], source=str(path), window_shape=shape)
    validate_dataset(ds, training=False)
    return ds
