"""Tabular datasets for the model factory: generate, load, validate, split.

Everything that reaches training goes through :class:`Dataset`, whose
construction checks the arrays' structure, and through :func:`validate` (raw
CSV cells) or :func:`validate_dataset` (in-memory arrays), which refuse bad data
loudly with a :class:`hub.errors.DataValidationError` naming row, column and
rule of every problem. Row numbers are *file line numbers*: the header is line 1,
the first data row is line 2 -- what a user sees in an editor or spreadsheet.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DataValidationError

__all__ = [
    "SENSOR_FEATURES",
    "SENSOR_LABELS",
    "Dataset",
    "Problem",
    "Splits",
    "dataset_sha256",
    "generate_sensor_data",
    "write_csv",
    "load_csv",
    "validate",
    "validate_dataset",
    "split_dataset",
    "sample_dataset_path",
]

# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------

ROW_CONVENTION = "rows are file line numbers: the header is line 1, the first data row is line 2"
MIN_ROWS = 30  # fewer rows than this cannot give meaningful train/val/test splits
MIN_CLASS_ROWS = 3  # a class needs one row in each of train, val and test
MAX_PROBLEMS = 1000  # keep reports of hopeless files bounded
MAX_PROBLEMS_IN_MESSAGE = 20


@dataclass
class Dataset:
    """A classification table held as arrays.

    ``X`` is float32 (n_rows, n_features); ``y`` holds int64 indices into
    ``labels``. ``sha256`` is computed at construction from the content (see
    :func:`dataset_sha256`), so it identifies the data -- not the file layout --
    and is the same across runs and platforms. Treat the arrays as read-only:
    the hash is not recomputed if they are changed in place.
    """

    feature_names: list[str]
    X: np.ndarray
    y: np.ndarray
    labels: list[str]
    label_column: str = "label"
    task: str = "classification"
    source: str = ""
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.feature_names = [str(n) for n in self.feature_names]
        self.labels = [str(lab) for lab in self.labels]
        self.X = np.ascontiguousarray(self.X, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.int64)
        problems = _structure_problems(self)
        if problems:
            raise _validation_error(self.source or "dataset", problems)
        self.sha256 = dataset_sha256(self.feature_names, self.X, self.y, self.labels, self.label_column, self.task)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        """Rows per class name, in label order."""
        counts = np.bincount(self.y, minlength=len(self.labels))
        return {lab: int(c) for lab, c in zip(self.labels, counts)}

    def summary(self) -> dict:
        """JSON-ready description for run records and the GUI (no arrays)."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "task": self.task,
            "rows": self.n_rows,
            "feature_names": list(self.feature_names),
            "label_column": self.label_column,
            "labels": list(self.labels),
            "class_counts": self.class_counts(),
        }


def dataset_sha256(
    feature_names: Sequence[str],
    X: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    label_column: str,
    task: str = "classification",
) -> str:
    """Content hash of a dataset, stable across runs, machines and numpy versions.

    It covers a canonical JSON header (names, labels, label column, task, shape;
    sorted keys, UTF-8) followed by the raw bytes of ``X`` as little-endian
    float32 and ``y`` as little-endian int64, in C order. CSV formatting
    (quoting, number spelling, line endings) does not change it; any change of a
    value, a name or the row order does.
    """
    X = np.ascontiguousarray(X, dtype="<f4")
    y = np.ascontiguousarray(y, dtype="<i8")
    header = {
        "feature_names": list(feature_names),
        "labels": list(labels),
        "label_column": label_column,
        "task": task,
        "shape": [int(s) for s in X.shape],
    }
    h = hashlib.sha256()
    h.update(b"edgeloop.dataset.v1\n")
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    h.update(b"\n")
    h.update(X.tobytes(order="C"))
    h.update(y.tobytes(order="C"))
    return h.hexdigest()


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


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


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Smallest magnitude that rounds to infinity in float32 (max + half an ulp).
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
_MISSING = {"", "na", "n/a", "nan", "null", "none", "?", "-"}


def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in _MISSING


def _validation_error(source: str, problems: list[Problem]) -> DataValidationError:
    shown = problems[:MAX_PROBLEMS_IN_MESSAGE]
    more = len(problems) - len(shown)
    capped = " (stopped counting)" if len(problems) >= MAX_PROBLEMS else ""
    lines = [f"{source} is not valid training data: {len(problems)} problem(s){capped} ({ROW_CONVENTION}):"]
    lines += [f"  - {p}" for p in shown]
    if more > 0:
        lines.append(f"  ... and {more} more (see the error's problems list)")
    lines.append("Fix the data and load it again; nothing was trained.")
    return DataValidationError("\n".join(lines), problems)


def _column_problems(names: Sequence[str], columns: Sequence[np.ndarray]) -> list[Problem]:
    """Constant and duplicate-content columns among fully numeric feature columns."""
    problems: list[Problem] = []
    seen: dict[bytes, str] = {}
    for name, col in zip(names, columns):
        if col.size and np.all(col == col[0]):
            problems.append(
                Problem(None, name, "constant_column", f"every value is {col[0]:g}; it carries no information -- drop the column")
            )
            continue
        key = np.ascontiguousarray(col, dtype="<f4").tobytes()
        if key in seen:
            problems.append(
                Problem(None, name, "duplicate_column", f"has exactly the same values as column {seen[key]!r}; drop one of them")
            )
        else:
            seen[key] = name
    return problems


def _label_problems(label_column: str, class_counts: dict[str, int], n_rows: int, min_rows: int) -> list[Problem]:
    problems: list[Problem] = []
    if n_rows < min_rows:
        problems.append(Problem(None, None, "too_few_rows", f"{n_rows} data row(s); at least {min_rows} are needed"))
    present = {k: v for k, v in class_counts.items() if v > 0}
    if len(present) < 2:
        found = ", ".join(repr(k) for k in present) or "none"
        problems.append(
            Problem(None, label_column, "too_few_classes", f"found {len(present)} class(es) ({found}); a classifier needs at least 2")
        )
    for name, count in present.items():
        if count < MIN_CLASS_ROWS:
            problems.append(
                Problem(
                    None,
                    label_column,
                    "too_few_class_rows",
                    f"class {name!r} has {count} row(s); each class needs at least {MIN_CLASS_ROWS} (one per train/val/test split)",
                )
            )
    return problems


def validate(
    header: Sequence[str],
    rows: Iterable[tuple[int, Sequence[str]]],
    *,
    label_column: str = "label",
    min_rows: int = MIN_ROWS,
    source: str = "data",
) -> None:
    """Check raw CSV cells before they become arrays; raise on any problem.

    ``rows`` yields ``(line_number, cells)`` with line numbers as in the file
    (header = line 1). Rules: ``missing_label_column``, ``empty_column_name``,
    ``duplicate_column_name``, ``no_features``, ``wrong_cell_count``,
    ``missing_value`` (empty, NA, NaN, null, ...), ``non_numeric``,
    ``non_finite`` (inf), ``constant_column``, ``duplicate_column`` (same
    values as another column), ``too_few_rows``, ``too_few_classes`` and
    ``too_few_class_rows``. Every problem found is reported, not just the first.

    Raises :class:`hub.errors.DataValidationError` whose ``problems`` is a list
    of :class:`Problem`.
    """
    problems: list[Problem] = []
    names = [h.strip() for h in header]
    for i, name in enumerate(names):
        if not name:
            problems.append(Problem(1, f"#{i + 1}", "empty_column_name", f"header cell {i + 1} is empty; name every column"))
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            problems.append(Problem(1, name, "duplicate_column_name", "this column name appears more than once in the header"))
        seen.add(name)
    if label_column not in names:
        problems.append(
            Problem(1, label_column, "missing_label_column", f"no column named {label_column!r}; header has {names}")
        )
    label_idx = names.index(label_column) if label_column in names else None
    feature_idx = [i for i, n in enumerate(names) if i != label_idx]
    if not feature_idx:
        problems.append(Problem(1, None, "no_features", "there are no feature columns besides the label"))

    values: list[list[float]] = [[] for _ in feature_idx]
    cell_ok = [True] * len(feature_idx)
    class_counts: dict[str, int] = {}
    n_rows = 0
    for line, cells in rows:
        n_rows += 1
        if len(problems) >= MAX_PROBLEMS:
            continue  # keep counting rows only
        if len(cells) != len(names):
            problems.append(Problem(line, None, "wrong_cell_count", f"has {len(cells)} cells, the header has {len(names)}"))
            cell_ok = [False] * len(feature_idx)
            continue
        if label_idx is not None:
            lab = cells[label_idx].strip()
            if _is_missing(lab):
                problems.append(Problem(line, label_column, "missing_value", "the label is empty"))
            else:
                class_counts[lab] = class_counts.get(lab, 0) + 1
        for j, ci in enumerate(feature_idx):
            cell = cells[ci].strip()
            problem = _cell_problem(line, names[ci], cell)
            if problem is not None:
                problems.append(problem)
                cell_ok[j] = False
            elif cell_ok[j]:
                values[j].append(float(cell))

    complete = [j for j in range(len(feature_idx)) if cell_ok[j]]
    if n_rows > 0 and len(problems) < MAX_PROBLEMS:
        problems += _column_problems(
            [names[feature_idx[j]] for j in complete],
            [np.asarray(values[j], dtype=np.float32) for j in complete],
        )
    if label_idx is not None:
        problems += _label_problems(label_column, class_counts, n_rows, min_rows)
    if problems:
        raise _validation_error(source, problems[:MAX_PROBLEMS])


def _cell_problem(line: int, column: str, cell: str) -> Problem | None:
    if _is_missing(cell):
        return Problem(line, column, "missing_value", f"the value is missing ({cell!r})")
    if _NUMBER.fullmatch(cell) is None:
        if cell.lower().lstrip("+-") in ("inf", "infinity"):
            return Problem(line, column, "non_finite", f"{cell!r} is not a finite number")
        return Problem(line, column, "non_numeric", f"{cell!r} is not a number")
    value = float(cell)
    if not math.isfinite(value) or abs(value) >= _FLOAT32_OVERFLOW:
        return Problem(line, column, "non_finite", f"{cell!r} is too large for a 32-bit float")
    return None


def validate_dataset(dataset: Dataset, *, min_rows: int = MIN_ROWS) -> None:
    """Apply the value rules of :func:`validate` to an in-memory :class:`Dataset`.

    Row numbers refer to the line the row would have in :func:`write_csv`'s
    output (row index 0 is line 2). Raises :class:`hub.errors.DataValidationError`.
    """
    problems: list[Problem] = []
    bad = ~np.isfinite(dataset.X)
    if bad.any():
        for r, c in zip(*np.nonzero(bad)):
            v = dataset.X[r, c]
            rule = "missing_value" if np.isnan(v) else "non_finite"
            problems.append(Problem(int(r) + 2, dataset.feature_names[c], rule, f"the value is {v}"))
            if len(problems) >= MAX_PROBLEMS:
                break
    ok_cols = [c for c in range(dataset.n_features) if not bad[:, c].any()]
    problems += _column_problems([dataset.feature_names[c] for c in ok_cols], [dataset.X[:, c] for c in ok_cols])
    problems += _label_problems(dataset.label_column, dataset.class_counts(), dataset.n_rows, min_rows)
    if problems:
        raise _validation_error(dataset.source or "dataset", problems[:MAX_PROBLEMS])


def _structure_problems(ds: Dataset) -> list[Problem]:
    """Shape/type consistency of a Dataset's fields (programming errors, not data errors)."""
    p: list[Problem] = []
    if ds.task != "classification":
        p.append(Problem(None, None, "unsupported_task", f"task {ds.task!r}; only 'classification' is supported"))
    if ds.X.ndim != 2:
        p.append(Problem(None, None, "bad_shape", f"X must be 2-D (rows, features), got shape {ds.X.shape}"))
        return p
    if ds.y.ndim != 1 or ds.y.shape[0] != ds.X.shape[0]:
        p.append(Problem(None, ds.label_column, "bad_shape", f"y must be 1-D with {ds.X.shape[0]} rows, got shape {ds.y.shape}"))
    if len(ds.feature_names) != ds.X.shape[1]:
        p.append(Problem(None, None, "bad_shape", f"{len(ds.feature_names)} feature names for {ds.X.shape[1]} columns"))
    if len(set(ds.feature_names)) != len(ds.feature_names):
        p.append(Problem(None, None, "duplicate_column_name", f"feature names repeat: {ds.feature_names}"))
    if ds.label_column in ds.feature_names:
        p.append(Problem(None, ds.label_column, "duplicate_column_name", "the label column is also a feature name"))
    if len(set(ds.labels)) != len(ds.labels):
        p.append(Problem(None, ds.label_column, "duplicate_label", f"class names repeat: {ds.labels}"))
    if ds.y.size and (ds.y.min() < 0 or ds.y.max() >= len(ds.labels)):
        p.append(Problem(None, ds.label_column, "bad_label_index", f"y must lie in [0, {len(ds.labels)})"))
    return p


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


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
    """Write ``dataset`` as UTF-8 CSV: a header row, features then the label column (class names).

    Numbers are written so that :func:`load_csv` reads back identical float32
    values, hence the same :attr:`Dataset.sha256`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [_format_column(dataset.X[:, j]) for j in range(dataset.n_features)]
    label_text = [dataset.labels[i] for i in dataset.y]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([*dataset.feature_names, dataset.label_column])
        for i in range(dataset.n_rows):
            w.writerow([c[i] for c in cols] + [label_text[i]])
    tmp.replace(path)
    return path


def load_csv(
    path: str | Path,
    label_column: str = "label",
    *,
    labels: Sequence[str] | None = None,
    min_rows: int = MIN_ROWS,
) -> Dataset:
    """Read and validate a CSV (header row; numeric features; class names in ``label_column``).

    Class indices follow ``labels`` when given (a class not listed there is a
    problem), else the sorted class names. Raises
    :class:`hub.errors.DataValidationError` listing every problem with its
    line number (header = line 1), column and rule; nothing is returned unless
    the whole file is valid.
    """
    path = Path(path)
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
        raise DataValidationError(
            f"{source} does not exist; check the path.", [Problem(None, None, "file_not_found", str(exc))]
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV.",
            [Problem(None, None, "not_utf8", str(exc))],
        ) from exc
    except IsADirectoryError as exc:
        raise DataValidationError(
            f"{source} is a folder; give the path of a CSV file.", [Problem(None, None, "not_a_file", str(exc))]
        ) from exc
    except PermissionError as exc:
        raise DataValidationError(
            f"{source} cannot be read (permission denied); check the file's permissions.",
            [Problem(None, None, "not_readable", str(exc))],
        ) from exc
    except csv.Error as exc:
        raise DataValidationError(
            f"{source} is not readable CSV: {exc}.", [Problem(None, None, "bad_csv", str(exc))]
        ) from exc

    validate(header, rows, label_column=label_column, min_rows=min_rows, source=source)

    names = [h.strip() for h in header]
    label_idx = names.index(label_column)
    feature_idx = [i for i in range(len(names)) if i != label_idx]
    text_labels = [cells[label_idx].strip() for _, cells in rows]
    if labels is None:
        labels = sorted(set(text_labels))
    labels = list(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = [Problem(line, label_column, "unknown_class", f"class {lab!r} is not one of {labels}")
               for (line, _), lab in zip(rows, text_labels) if lab not in index]
    if unknown:
        raise _validation_error(source, unknown[:MAX_PROBLEMS])
    X = np.array([[float(cells[i]) for i in feature_idx] for _, cells in rows], dtype=np.float64).astype(np.float32)
    y = np.array([index[lab] for lab in text_labels], dtype=np.int64)
    return Dataset([names[i] for i in feature_idx], X.reshape(len(rows), len(feature_idx)), y, labels,
                   label_column=label_column, source=source)


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


@dataclass
class Splits:
    """Row indices of the train/validation/test parts (sorted int64 arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    fractions: tuple[float, float, float]

    def counts(self) -> dict[str, int]:
        return {"train": int(self.train.size), "val": int(self.val.size), "test": int(self.test.size)}

    def sha256(self) -> str:
        """Hash of the three index arrays, so a run record pins the exact split."""
        h = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            a = np.ascontiguousarray(part, dtype="<i8")
            h.update(len(a).to_bytes(8, "little"))
            h.update(a.tobytes())
        return h.hexdigest()

    def to_dict(self) -> dict:
        """JSON-ready record: seed, fractions, counts and the index hash (not the indices)."""
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "stratified": True,
            "counts": self.counts(),
            "sha256": self.sha256(),
        }


def split_dataset(
    dataset: Dataset, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> Splits:
    """Deterministic stratified train/val/test split.

    Within each class the rows are permuted with ``numpy.random.default_rng(seed)``
    and cut by ``fractions``; every class with at least 3 rows gets at least one
    row in each part. Same dataset and seed give the same indices.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f <= 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise DataValidationError(
            f"split fractions must be three positive numbers summing to 1, got {fractions}",
            [Problem(None, None, "bad_fractions", str(fractions))],
        )
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    problems: list[Problem] = []
    for c, name in enumerate(dataset.labels):
        idx = np.nonzero(dataset.y == c)[0]
        if idx.size == 0:
            continue
        if idx.size < MIN_CLASS_ROWS:
            problems.append(Problem(None, dataset.label_column, "too_few_class_rows",
                                    f"class {name!r} has {idx.size} row(s); need {MIN_CLASS_ROWS} to split"))
            continue
        idx = rng.permutation(idx)
        n_val = max(1, int(round(idx.size * fr[1])))
        n_test = max(1, int(round(idx.size * fr[2])))
        n_train = idx.size - n_val - n_test
        if n_train < 1:
            n_train, n_val, n_test = 1, 1, idx.size - 2
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    if problems:
        raise _validation_error(dataset.source or "dataset", problems)
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)
    return Splits(train, val, test, int(seed), fr)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Synthetic sensor process
# --------------------------------------------------------------------------

SENSOR_FEATURES = ["temperature_c", "vibration_rms", "pressure_kpa", "current_a", "humidity_pct", "rpm"]
SENSOR_LABELS = ["normal", "overheating", "worn_bearing"]  # sorted, as load_csv orders classes
SENSOR_CLASS_PRIORS = {"normal": 0.6, "overheating": 0.2, "worn_bearing": 0.2}
# Marginal standard deviations of the undrifted process (from 10^6 rows); the
# unit in which ``shift`` moves temperature and vibration.
TEMPERATURE_SD = 7.68  # °C
VIBRATION_SD = 0.95  # mm/s
LABEL_NOISE = 0.02
_DECIMALS = {"temperature_c": 2, "vibration_rms": 3, "pressure_kpa": 1, "current_a": 2, "humidity_pct": 1, "rpm": 0}


def generate_sensor_data(n_rows: int, seed: int, *, shift: float = 0.0) -> Dataset:
    """Synthetic condition-monitoring data of an electric pump motor (3 classes).

    Process, per row (``numpy.random.default_rng(seed)``):

    * condition ~ Categorical(normal 0.6, overheating 0.2, worn_bearing 0.2);
    * hidden operating point: load ~ U(0.35, 1.0) of rated load, ambient
      temperature ~ N(22, 3) °C, relative humidity ~ N(50, 12) % clipped to [5, 95];
    * ``rpm`` = 1800 - 150·load + N(0, 15) (induction-motor slip), worn bearings
      add friction (-15 rpm);
    * ``current_a`` = 6 + 14·load + N(0, 0.9), +2 A when overheating, +0.8 A
      with a worn bearing;
    * ``temperature_c`` = ambient + 20 + 25·load + 0.04·(humidity - 50) + N(0, 2.5),
      +12 °C when overheating, +3 °C with a worn bearing;
    * ``vibration_rms`` (mm/s) = (0.8 + 1.2·load) · exp(N(0, 0.2)), ×2.2 with a
      worn bearing, ×1.1 when overheating;
    * ``pressure_kpa`` (coolant) = 250 + 40·load + N(0, 10), -25 kPa when
      overheating (coolant loss is what overheats the motor);
    * then 2% of the labels are replaced by a random class (labelling mistakes).

    Classes overlap through the load and noise terms (a hot day at full load
    looks like mild overheating), so a small MLP reaches about 90-97% accuracy,
    not 100%. Values are rounded to sensor resolution (rpm to 1, pressure and
    humidity to 0.1, temperature and current to 0.01, vibration to 0.001).

    ``shift`` simulates drift (a recalibrated thermometer and a loosened
    mount): temperature moves by ``shift × TEMPERATURE_SD`` and vibration by
    ``shift × VIBRATION_SD``, the features' standard deviations under the
    undrifted process (7.68 °C and 0.95 mm/s). Labels are not changed.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    rng = np.random.default_rng(seed)
    priors = np.array([SENSOR_CLASS_PRIORS[lab] for lab in SENSOR_LABELS])
    y = rng.choice(len(SENSOR_LABELS), size=n_rows, p=priors)
    over = (y == SENSOR_LABELS.index("overheating")).astype(np.float64)
    worn = (y == SENSOR_LABELS.index("worn_bearing")).astype(np.float64)

    load = rng.uniform(0.35, 1.0, n_rows)
    ambient = rng.normal(22.0, 3.0, n_rows)
    humidity = np.clip(rng.normal(50.0, 12.0, n_rows), 5.0, 95.0)
    rpm = 1800.0 - 150.0 * load + rng.normal(0.0, 15.0, n_rows) - 15.0 * worn
    current = 6.0 + 14.0 * load + rng.normal(0.0, 0.9, n_rows) + 2.0 * over + 0.8 * worn
    temperature = (ambient + 20.0 + 25.0 * load + 0.04 * (humidity - 50.0) + rng.normal(0.0, 2.5, n_rows)
                   + 12.0 * over + 3.0 * worn)
    vibration = (0.8 + 1.2 * load) * np.exp(rng.normal(0.0, 0.2, n_rows)) * (1.0 + 1.2 * worn + 0.1 * over)
    pressure = 250.0 + 40.0 * load + rng.normal(0.0, 10.0, n_rows) - 25.0 * over

    flip = rng.random(n_rows) < LABEL_NOISE
    y = np.where(flip, rng.integers(0, len(SENSOR_LABELS), n_rows), y)

    temperature = temperature + shift * TEMPERATURE_SD
    vibration = vibration + shift * VIBRATION_SD
    cols = {
        "temperature_c": temperature,
        "vibration_rms": vibration,
        "pressure_kpa": pressure,
        "current_a": current,
        "humidity_pct": humidity,
        "rpm": rpm,
    }
    X = np.stack([np.round(cols[n], _DECIMALS[n]) for n in SENSOR_FEATURES], axis=1).astype(np.float32)
    source = f"generate_sensor_data(n_rows={n_rows}, seed={seed}, shift={shift:g})"
    return Dataset(list(SENSOR_FEATURES), X, y.astype(np.int64), list(SENSOR_LABELS), label_column="label", source=source)


def sample_dataset_path() -> Path:
    """Path of the shipped sample CSV (``hub/data/sensors.csv``, written by scripts/make_sample_data.py)."""
    return Path(__file__).resolve().parent / "data" / "sensors.csv"
