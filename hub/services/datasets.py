"""Datasets in the hub: import (validated, registered by content hash), the hub's own
copy under its home, reloading it, and the runs and versions made from each dataset."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np

from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.hub.datasets import MIN_ROWS, MIN_ROWS_FLOOR, Dataset, Schema, load_csv, load_dataset, write_csv
from edgeloop.hub.errors import DataValidationError, NotFoundError
from edgeloop.hub.services.core import HubCore
from edgeloop.hub.views import feature_summary

PREVIEW_LINES = 25  # lines of a CSV file an inspection shows
PREVIEW_WIDTH = 200  # characters of each


class HubDatasets(HubCore):
    def register_dataset(self, dataset: Dataset, name: str | None = None) -> dict:
        """Keep a canonical copy under the home and record it (idempotent by content hash),
        with its warnings (``dataset.warnings``: constant or identical columns, few rows).

        The copy is written before the registry row that points to it."""
        copy = self._stored_copy(dataset.sha256)
        if copy is None:
            copy = write_csv(dataset, self._dataset_copy(dataset.sha256))
        return self.registry.add_dataset(
            dataset.sha256, name or Path(dataset.source or "dataset").stem, dataset.source or str(copy),
            dataset.n_rows, dataset.feature_names, dataset.labels, actor=self.actor,
            warnings=[w.to_dict() for w in dataset.warnings])

    # The hub's copy of a dataset: <datasets>/<sha16>.csv (written by write_csv, or the
    # imported file's bytes) or <sha16>.npz, plus <sha16>.schema.json (the resolved schema)
    # for files imported with edgeloop.hub.datasets.load_dataset.
    def _dataset_copy(self, sha: str, suffix: str = ".csv") -> Path:
        return self.home.datasets_dir / f"{sha[:16]}{suffix}"

    def _stored_copy(self, sha: str) -> Path | None:
        for suffix in (".csv", ".npz"):
            if self._dataset_copy(sha, suffix).exists():
                return self._dataset_copy(sha, suffix)
        return None

    def _schema_copy(self, sha: str) -> Path:
        return self.home.datasets_dir / f"{sha[:16]}.schema.json"

    def import_dataset(self, path: Path | str, *, schema_file: Path | str | None = None,
                       name: str | None = None, min_rows: int = MIN_ROWS) -> dict:
        """Validate a data file and register it (idempotent by content hash).

        Uses :func:`edgeloop.hub.datasets.load_dataset` (CSV or NPZ, schema
        inference, optional schema file). ``min_rows`` is the fewest rows (windows)
        accepted: default 30, at least :data:`~edgeloop.hub.datasets.MIN_ROWS_FLOOR`
        (6); fewer than 30 then import with a ``few_rows`` warning. The hub keeps a
        copy under its home -- for a file loaded with a schema the original bytes
        plus the resolved schema, so :meth:`load_dataset` rebuilds the identical
        dataset. Returns the registry record -- ``"warnings"`` lists what did not
        refuse the data (constant or identical columns, few rows; see
        :mod:`edgeloop.hub.datasets.data_warnings`) -- plus ``"summary"`` (rows,
        features, task, classes, warnings...). Raises
        :class:`edgeloop.hub.errors.DataValidationError` listing every problem.
        """
        path = Path(path)
        ds = load_dataset(path, schema_file=Path(schema_file) if schema_file is not None else None,
                          min_rows=min_rows)
        if self._stored_copy(ds.sha256) is None:
            self._keep_schema_copy(ds, path, schema_file)
        record = self.register_dataset(ds, name or path.stem)
        return {**record, "summary": ds.summary()}

    def inspect_dataset(self, path: Path | str, *, schema: dict | None = None,
                        schema_file: Path | str | None = None, min_rows: int = MIN_ROWS) -> dict:
        """What :meth:`import_dataset` would make of a data file, registering nothing.

        ``schema`` (the schema-file form, as a dict: an edited schema) and/or ``schema_file``
        override what is inferred, as in :func:`edgeloop.hub.datasets.load_dataset`. Returns
        ``{"path", "valid", "preview", "schema", "summary", "problems", "warnings", "message"}``:
        ``preview`` is the file's first lines numbered as file lines (an NPZ's arrays, dtypes
        and shapes); ``schema`` the resolved schema (the given one when the data is refused);
        ``summary`` what import would return as ``"summary"`` (None when refused);
        ``problems`` every finding that refuses the data as ``{"row", "column", "rule",
        "detail"}`` (``row`` is the file line, the header being line 1; None for whole-column
        or whole-file rules); ``warnings`` the findings that do not (constant or identical
        columns, few rows); ``message`` one line saying which. An unreadable file is a problem
        (rule ``unreadable``), not an exception.
        """
        path = Path(path)
        try:
            preview = _preview(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            detail = f"{path} cannot be read ({exc}); check the path and that it is a CSV or .npz file"
            return _inspection(path, "", schema, None, [{"row": None, "column": None, "rule": "unreadable",
                                                          "detail": detail}], [], detail)
        try:
            override = Schema.from_dict(schema, source="the given schema") if schema else None
            ds = load_dataset(path, schema=override, min_rows=min_rows,
                              schema_file=Path(schema_file) if schema_file is not None else None)
        except DataValidationError as exc:
            message = (str(exc).splitlines() or ["the data is not valid"])[0]
            return _inspection(path, preview, schema, None, [_problem_dict(p) for p in exc.problems], [], message)
        summary = ds.summary()
        resolved = ds.schema.to_dict() if ds.schema is not None else None
        return _inspection(path, preview, resolved, summary, [], list(summary.get("warnings") or []),
                           f"valid: {ds.n_rows} rows, {feature_summary(ds.feature_names, ds.window_shape)}")

    def _keep_schema_copy(self, ds: Dataset, path: Path, schema_file: Path | str | None) -> None:
        """Original bytes + resolved schema, so a reload gives the same dataset (and sha256).

        The schema goes first: the data copy's presence is what marks the copy complete."""
        schema = getattr(ds, "schema", None)
        if schema is not None and hasattr(schema, "to_dict"):
            schema_text = json.dumps(schema.to_dict(), indent=2, ensure_ascii=False) + "\n"
        elif schema_file is not None:
            schema_text = Path(schema_file).read_text(encoding="utf-8")
        else:
            return  # nothing beyond the CSV: register_dataset writes the canonical copy
        suffix = path.suffix.lower() if path.suffix.lower() in (".csv", ".npz") else ".csv"
        self.home.datasets_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._schema_copy(ds.sha256), schema_text.encode("utf-8"))
        atomic_write_bytes(self._dataset_copy(ds.sha256, suffix), path.read_bytes())

    def list_datasets(self) -> list[dict]:
        """Registered datasets, newest first (registry records)."""
        return self.registry.list_datasets()

    def get_dataset(self, ref: str) -> dict:
        """A dataset record by id (``ds-...``) or sha256 (prefix of >= 8 hex digits)."""
        return self.registry.get_dataset(ref)

    def list_runs(self, model: str | None = None, *, dataset: str | None = None) -> list[dict]:
        """Training runs, newest first: all, one model's, and/or those on one dataset (id or sha256)."""
        runs = self.registry.list_runs(model)
        if dataset is None:
            return runs
        dataset_id = self.registry.get_dataset(dataset)["id"]
        return [r for r in runs if r["dataset_id"] == dataset_id]

    def dataset_detail(self, ref: str) -> dict:
        """``{"dataset", "summary", "runs", "versions"}``: a dataset record, the summary of the
        hub's copy (``{"error": ...}`` when that copy is gone or changed), and the runs and
        versions made from it."""
        rec = self.registry.get_dataset(ref)
        runs = self.list_runs(dataset=rec["id"])
        run_ids = {r["id"] for r in runs}
        versions = [v for v in self.registry.list_versions() if v["run_id"] in run_ids]
        try:
            summary = self.load_dataset(rec["id"]).summary()
        except EdgeloopError as exc:  # the copy is gone or changed: show the record anyway
            summary = {"error": str(exc)}
        return {"dataset": rec, "summary": summary, "runs": runs, "versions": versions}

    def load_dataset(self, ref: str, *, training: bool = True) -> Dataset:
        """The registered dataset ``ref``, loaded from the hub's copy (its sha256 is checked).
        ``training=False``: as data to evaluate on (see :func:`edgeloop.hub.datasets.load_dataset`).

        It was validated when imported, so the reload applies the same rules but the
        row count only down to :data:`~edgeloop.hub.datasets.MIN_ROWS_FLOOR` (it may
        have been imported with a lower ``min_rows``): what imports, trains."""
        rec = self.registry.get_dataset(ref)
        copy = self._stored_copy(rec["sha256"])
        if copy is None:
            raise NotFoundError(f"the hub's copy of dataset {rec['id']} is missing from {self.home.datasets_dir}; "
                                f"import the file again (edgeloop data import {rec.get('source') or 'FILE'})")
        schema_copy = self._schema_copy(rec["sha256"])
        if schema_copy.exists():
            ds = load_dataset(copy, schema_file=schema_copy, min_rows=MIN_ROWS_FLOOR, training=training)
        else:
            ds = load_csv(copy, _label_column_of(copy), labels=rec.get("labels"), min_rows=MIN_ROWS_FLOOR,
                          training=training)
        if ds.sha256 != rec["sha256"]:
            raise DataValidationError(
                f"the hub's copy of dataset {rec['id']} ({copy}) no longer matches its sha256 "
                f"{rec['sha256'][:16]}…; it was changed on disk. Import the original file again."
            )
        return ds


def _inspection(path: Path, preview: str, schema: dict | None, summary: dict | None, problems: list[dict],
                warnings: list[dict], message: str) -> dict:
    return {"path": str(path), "valid": summary is not None and not problems, "preview": preview,
            "schema": schema, "summary": summary, "problems": problems, "warnings": warnings, "message": message}


def _problem_dict(problem: object) -> dict:
    if hasattr(problem, "to_dict"):
        return dict(problem.to_dict())
    return {"row": None, "column": None, "rule": "invalid", "detail": str(problem)}


def _preview(path: Path) -> str:
    """The first :data:`PREVIEW_LINES` lines of a CSV file, numbered as file lines; an NPZ's arrays."""
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return "\n".join(f"{k}: {z[k].dtype} {z[k].shape}" for k in z.files)
    lines = []
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i >= PREVIEW_LINES:
                lines.append("…")
                break
            lines.append(f"{i + 1:>4}  {line.rstrip()[:PREVIEW_WIDTH]}")
    return "\n".join(lines)


def _label_column_of(csv_path: Path) -> str:
    """The label column of a canonical copy (written by write_csv: features, then the label)."""
    with csv_path.open("r", encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), None)
    return header[-1].strip() if header else "label"
