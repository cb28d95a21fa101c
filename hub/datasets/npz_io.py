"""NumPy ``.npz`` datasets: read and validate (:func:`load_npz`), write (:func:`write_npz`).

The archive holds ``X`` and ``y`` and optional names and metadata arrays; it is
read without pickle. Problems name rows as lines of the equivalent CSV (array
row 0 is line 2). The arrays are parsed into a
:class:`~edgeloop.hub.datasets.tables.ParsedTable` here and finished by
:func:`~edgeloop.hub.datasets.tables.finish_table`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.agent.fsutil import atomic_writer
from edgeloop.hub.datasets.dataset import MIN_ROWS, Dataset
from edgeloop.hub.datasets.problems import ARRAY_ROW_CONVENTION, MAX_PROBLEMS, Problem, file_error, validation_error
from edgeloop.hub.datasets.schema import TASKS, Schema, infer_task_from_array, is_missing
from edgeloop.hub.datasets.tables import FLOAT32_OVERFLOW, ParsedTable, finish_table, parse_cell, schema_overrides
from edgeloop.hub.datasets.windows import detect_wide_windows, window_feature_names

__all__ = ["load_npz", "write_npz"]

def write_npz(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as an uncompressed ``.npz`` that :func:`load_npz` reads back with the same hash.

    Arrays: ``X`` (n, F) float32, ``y`` (int64 class indices or float32
    targets), ``feature_names``, ``labels`` (classification only) and the
    0-d/1-d metadata ``label_column``, ``task`` and (window data)
    ``window_shape``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {  # Any: numpy's savez stub takes **kwds as the allow_pickle flag
        "X": dataset.X,
        "y": dataset.y,
        "feature_names": np.array(dataset.feature_names, dtype=str),
        "label_column": np.array(dataset.label_column, dtype=str),
        "task": np.array(dataset.task, dtype=str),
    }
    if dataset.task == "classification":
        arrays["labels"] = np.array(dataset.labels, dtype=str)
    if dataset.window_shape is not None:
        arrays["window_shape"] = np.array(dataset.window_shape, dtype=np.int64)
    with atomic_writer(path) as fh:
        np.savez(fh, **arrays)
    return path


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, read without pickle; an unreadable file is a ``file_error``."""
    source = str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise file_error(source, "file_not_found", "does not exist; check the path.", exc) from exc
    except IsADirectoryError as exc:
        raise file_error(source, "not_a_file", "is a folder; give the path of a .npz file.", exc) from exc
    except PermissionError as exc:
        raise file_error(source, "not_readable", "cannot be read (permission denied).", exc) from exc
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise file_error(source, "bad_npz", f"is not a NumPy .npz archive ({exc}); save it with "
                         "numpy.savez(path, X=..., y=...).", exc) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise file_error(source, "bad_npz", "holds a single .npy array; save X and y with "
                         "numpy.savez(path, X=..., y=...).")
    out: dict[str, np.ndarray] = {}
    with loaded:
        for key in loaded.files:
            try:
                out[key] = loaded[key]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise file_error(source, "bad_npz", f"array {key!r} cannot be read without pickle ({exc}); "
                                 "store numbers and strings only.", exc) from exc
    return out


def _npz_text(a: np.ndarray) -> list[str] | None:
    """The strings of a text array (``str`` or UTF-8 ``bytes``), flattened; ``None`` for any other dtype."""
    if a.dtype.kind == "U":
        return [str(s) for s in a.reshape(-1)]
    if a.dtype.kind == "S":
        return [s.decode("utf-8", "replace") for s in a.reshape(-1)]
    return None


def load_npz(
    path: str | Path,
    *,
    schema: Schema | None = None,
    schema_file: str | Path | None = None,
    min_rows: int = MIN_ROWS,
    training: bool = True,
) -> Dataset:
    """Read and validate a NumPy ``.npz`` dataset.

    Arrays: ``X`` (required): numeric (n, F), or (n, C, T) for sensor windows
    (flattened channel-major); ``y`` (required): n class names (strings), class
    values (integers), class indices into ``labels``, or regression targets;
    optional ``feature_names`` (F strings; ``ch{c}_t{t}`` names are detected as
    windows; default ``x0, x1, …``), ``labels`` (class names; ``y`` then holds
    indices), and the metadata :func:`write_npz` stores (``label_column``,
    ``task``, ``window_shape``), which a schema file / ``schema`` override.
    Other arrays are ignored. Problems name rows as lines of the equivalent CSV
    (array row 0 is line 2). Raises :class:`edgeloop.hub.errors.DataValidationError`.
    """
    path = Path(path)
    source = str(path)
    arrays = _read_npz(path)
    problems: list[Problem] = []
    bad = lambda key, detail: problems.append(Problem(None, key, "bad_npz", detail))
    for key in ("X", "y"):
        if key not in arrays:
            bad(key, f"the archive has no array {key!r} (it has {sorted(arrays)}); save X and y with numpy.savez")
    if problems:
        raise validation_error(source, problems, convention=ARRAY_ROW_CONVENTION)

    meta: dict = {}
    for key in ("label_column", "task"):
        if key in arrays:
            text = _npz_text(arrays[key])
            if text is None or len(text) != 1:
                bad(key, f"must be a single string, got {arrays[key]!r}")
            elif key == "task" and text[0] not in TASKS:
                bad(key, f"must be one of {TASKS}, got {text[0]!r}")
            else:
                meta[key] = text[0]
    if "window_shape" in arrays:
        ws = arrays["window_shape"]
        if ws.dtype.kind not in "iu" or ws.shape != (2,) or (ws < 1).any():
            bad("window_shape", f"must be two positive integers (channels, steps), got {ws!r}")
        else:
            meta["window_shape"] = (int(ws[0]), int(ws[1]))
    override = Schema(**meta).merged(schema_overrides(schema, schema_file))

    X = arrays["X"]
    y = arrays["y"]
    if X.dtype.kind not in "biuf":
        bad("X", f"must be numeric, got dtype {X.dtype}")
    if X.ndim not in (2, 3):
        bad("X", f"must be (rows, features) or (rows, channels, steps), got shape {X.shape}")
    if problems:
        raise validation_error(source, problems, convention=ARRAY_ROW_CONVENTION)
    n = int(X.shape[0])
    if y.shape != (n,):
        bad("y", f"must be 1-D with one entry per row of X ({n}), got shape {y.shape}")
    window_shape = (int(X.shape[1]), int(X.shape[2])) if X.ndim == 3 else None
    Xf = X.reshape(n, -1).astype(np.float64)
    names: list[str] | None = None
    if "feature_names" in arrays:
        names = _npz_text(arrays["feature_names"])
        if names is None or arrays["feature_names"].ndim != 1:
            bad("feature_names", "must be a 1-D array of strings")
            names = None
        else:
            names = [s.strip() for s in names]
            if window_shape is not None and len(names) == window_shape[0]:
                names = None  # channel names of 3-D X: the flat names are canonical
            elif len(names) != Xf.shape[1]:
                bad("feature_names", f"has {len(names)} names for {Xf.shape[1]} features")
                names = None
            elif len(set(names)) != len(names):
                dup = sorted({s for s in names if names.count(s) > 1})
                problems.append(Problem(None, dup[0], "duplicate_column_name", f"feature names repeat: {dup}"))
    if names is None:
        if window_shape is not None:
            names = window_feature_names(*window_shape)
        else:
            names = [f"x{j}" for j in range(Xf.shape[1])]
    class_list = None
    if "labels" in arrays:
        class_list = _npz_text(arrays["labels"])
        if class_list is None or arrays["labels"].ndim != 1:
            bad("labels", "must be a 1-D array of class names (strings)")
            class_list = None
        else:
            class_list = [s.strip() for s in class_list]
    if problems:
        raise validation_error(source, problems, convention=ARRAY_ROW_CONVENTION)

    ignored = set(override.ignore_columns or ())
    for name in override.ignore_columns or ():
        if name not in names:
            problems.append(Problem(None, name, "unknown_column",
                                    "the schema's ignore_columns names a feature the file does not have"))
    keep = [j for j, nm in enumerate(names) if nm not in ignored]
    names = [names[j] for j in keep]
    Xf = Xf[:, keep]
    label_column = override.label_column or "label"
    if label_column in names:
        problems.append(Problem(None, label_column, "duplicate_column_name", "the label column is also a feature name"))

    wide_shape, wide_order = window_shape, list(range(len(names))) if window_shape is not None else None
    if window_shape is None and override.layout != "tabular":
        wide_shape, wide_order, wproblems = detect_wide_windows(names)
        problems += wproblems
    if override.layout == "windows" and wide_shape is None:
        problems.append(Problem(None, None, "not_windows", "the schema says layout 'windows' but X is 2-D and its "
                                "feature names are not ch{c}_t{t}"))
    if window_shape is not None and override.layout == "tabular":
        problems.append(Problem(None, None, "not_windows", "the schema says layout 'tabular' but X is 3-D (windows)"))

    # Features: non-finite values and float32 overflow, cell by cell.
    lines = list(range(2, n + 2))
    with np.errstate(invalid="ignore", over="ignore"):
        bad_cells = ~np.isfinite(Xf) | (np.abs(Xf) >= FLOAT32_OVERFLOW)
    for r, c in zip(*np.nonzero(bad_cells), strict=True):
        v = Xf[r, c]
        rule = "missing_value" if np.isnan(v) else "non_finite"
        problems.append(Problem(int(r) + 2, names[c], rule, f"the value is {v}"))
        if len(problems) >= MAX_PROBLEMS:
            break
    Xf = np.where(bad_cells, np.nan, Xf)

    # Task and labels.
    y_text = _npz_text(y)
    if override.task is not None:
        task = override.task
        label_dtype = "string" if y_text is not None else ("float" if task == "regression" else "int")
    elif override.labels is not None or class_list is not None:
        task, label_dtype = "classification", "string" if y_text is not None else "int"
    else:
        task, label_dtype = infer_task_from_array(y) if y_text is None else ("classification", "string")
    texts: list[str | None] | None = None
    targets: np.ndarray | None = None
    if y.shape == (n,):
        if task == "classification":
            texts = []
            if y_text is not None:
                for i, s in enumerate(y_text):
                    if is_missing(s):
                        problems.append(Problem(i + 2, label_column, "missing_value", "the label is empty"))
                        texts.append(None)
                    else:
                        texts.append(s.strip())
            else:
                yv = y.astype(np.float64)
                for i, v in enumerate(yv):
                    if not np.isfinite(v):
                        problems.append(Problem(i + 2, label_column, "missing_value" if np.isnan(v) else "non_finite",
                                                f"the label is {v}"))
                        texts.append(None)
                    elif class_list is not None:
                        if v != round(v) or not 0 <= v < len(class_list):
                            problems.append(Problem(i + 2, label_column, "bad_label_index",
                                                    f"{v:g} is not an index into labels (0..{len(class_list) - 1})"))
                            texts.append(None)
                        else:
                            texts.append(class_list[int(v)])
                    else:
                        texts.append(str(int(v)) if v == round(v) else np.format_float_positional(v, trim="-"))
        else:
            if class_list is not None:
                problems.append(Problem(None, "labels", "labels_for_regression",
                                        "the archive has a labels array but the task is regression"))
            if y_text is not None:
                vals = []
                for i, s in enumerate(y_text):
                    value, problem = parse_cell(i + 2, label_column, s.strip())
                    if problem is not None:
                        problems.append(problem)
                    vals.append(value)
                targets = np.array(vals, dtype=np.float64)
            else:
                targets = y.astype(np.float64)
                for i in np.nonzero(~np.isfinite(targets) | (np.abs(targets) >= FLOAT32_OVERFLOW))[0][:MAX_PROBLEMS]:
                    v = targets[i]
                    problems.append(Problem(int(i) + 2, label_column, "missing_value" if np.isnan(v) else "non_finite",
                                            f"the target is {v}"))
                    targets[i] = np.nan
    tab = ParsedTable(
        source=source, convention=ARRAY_ROW_CONVENTION, names=names, X=Xf.astype(np.float32), lines=lines,
        label_column=label_column, task=task, label_dtype=label_dtype, texts=texts,
        targets=targets, class_list=class_list, wide_shape=wide_shape, wide_order=wide_order,
        problems=problems, skip_label_rules=y.shape != (n,),
    )
    return finish_table(tab, override, min_rows, training)

