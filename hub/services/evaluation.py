"""Scoring a version's shipped ONNX artifacts on separate test data (``edgeloop eval``), and
writing its predictions for a file (``edgeloop predict``).

Both run the exact files the version ships (checked against the sha256 the registry
holds) with onnxruntime, with the edge agent's session options. Test data is a
registered dataset or a CSV/NPZ file, read through the normal dataset readers (so
validation and the dataset sha256 apply; a file is registered like ``data import``
would, without the training-only rules) and matched to the model's inputs by
:mod:`edgeloop.hub.evaluation.inputs`. Each evaluation is recorded in the registry
(:mod:`edgeloop.hub.registry.evaluations`), linked to the version and the dataset
sha256, where gates read it (``eval.accuracy``...).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.hub.errors import ExportError, HubError, NotFoundError
from edgeloop.hub.evaluation import ARTIFACTS, FEW_ROWS, score
from edgeloop.hub.evaluation.inference import run_artifact
from edgeloop.hub.evaluation.inputs import ModelInputs, TestData, for_model, read_for_model
from edgeloop.hub.services.promotion import HubPromotion

ARTIFACT_CHOICES = (*ARTIFACTS, "all")


class HubEvaluation(HubPromotion):
    # --- evaluate -----------------------------------------------------------------------------
    def evaluate(self, version_ref: str, data: str | Path, *, artifact: str = "all",
                 label_column: str | None = None, name: str | None = None) -> dict:
        """Score the version's shipped artifact(s) on a test set and record each evaluation.

        ``data`` is a registered dataset (id, name, sha256) or a CSV/NPZ file with the true
        labels (a file is registered as a dataset named ``name``, default its file name).
        ``artifact``: ``"fp32"``, ``"int8"`` or ``"all"`` (both where the version has
        both). Classification scores accuracy, macro-F1, the confusion matrix and
        per-class counts; regression MAE, RMSE and R² (see
        :mod:`edgeloop.hub.evaluation.scoring`). Returns ``{"version", "model", "task",
        "chosen", "dataset": {"id", "sha256", "name", "source", "rows"}, "label_column",
        "ignored_columns", "evaluations": [registry row + "shipped"], "warnings"}``.
        Raises :class:`edgeloop.hub.errors.DataValidationError` for data the model cannot be
        scored on (no labels, missing features, unknown classes), naming the next step.
        """
        version = self.registry.get_version(version_ref)
        kinds = self._artifact_kinds(version, artifact)
        model = self._model_inputs(version)
        test, record = self._test_data(data, model, label_column=label_column, need_labels=True, name=name)
        assert test.y is not None  # need_labels
        evaluations = []
        for kind in kinds:
            outputs = run_artifact(self._artifact_bytes(version, kind), test.X,
                                   what=f"the {kind} model of {version['id']}")
            metrics = score(model.task, test.y, outputs, model.labels)
            row = self.registry.add_evaluation(version["id"], kind, record["sha256"], test.rows, metrics,
                                               dataset_name=record.get("name"), actor=self.actor)
            evaluations.append({**row, "shipped": kind == version["chosen"]})
        return {"version": version["id"], "model": version["model_name"], "task": model.task,
                "chosen": version["chosen"], "dataset": _dataset_note(record, test),
                "label_column": test.label_column, "ignored_columns": test.ignored_columns,
                "evaluations": evaluations, "warnings": self._warnings(version, record, test, evaluations)}

    def list_evaluations(self, version_ref: str | None = None, *, model: str | None = None) -> list[dict]:
        """Recorded evaluations, newest first: of one version, of one model's versions, or all."""
        return self.registry.list_evaluations(version_ref, model=model)

    # --- predict ------------------------------------------------------------------------------
    def predict(self, version_ref: str, data: str | Path, out: str | Path, *, artifact: str | None = None,
                label_column: str | None = None) -> dict:
        """Write the version's predictions for every row of ``data`` to the CSV ``out``.

        ``data`` is a CSV/NPZ file (labels optional) or a registered dataset; ``artifact``
        defaults to the one the version ships. Columns: ``line`` (the row's line in the
        file; a window's first line in the long layout), ``true_label``/``true_value`` when
        the data has labels, then ``predicted_label`` and ``probability_<class>`` per class
        (classification) or ``predicted_value`` (regression). The file is written
        atomically. Returns ``{"version", "artifact", "out", "rows", "columns",
        "dataset_sha256", "source", "label_column", "ignored_columns"}``.
        """
        version = self.registry.get_version(version_ref)
        if artifact == "all":
            raise HubError("predict writes the predictions of one model: choose --artifact fp32 or int8 "
                           "(default: the one the version ships)")
        kind = self._artifact_kinds(version, artifact or version["chosen"])[0]
        model = self._model_inputs(version)
        test, record = self._test_data(data, model, label_column=label_column, need_labels=False, register=False)
        outputs = run_artifact(self._artifact_bytes(version, kind), test.X, what=f"the {kind} model of {version['id']}")
        header, rows = _prediction_rows(model, test, outputs)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        path = Path(out)
        if not path.parent.exists():
            raise NotFoundError(f"the folder of {path} does not exist; create it or choose another --out")
        atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
        self.registry.audit(self.actor, "version.predict", version["id"], artifact=kind, out=str(path),
                            rows=test.rows, dataset_sha256=test.dataset.sha256, source=str(record["source"]))
        return {"version": version["id"], "artifact": kind, "out": str(path), "rows": test.rows, "columns": header,
                "dataset_sha256": test.dataset.sha256, "source": record["source"],
                "label_column": test.label_column, "ignored_columns": test.ignored_columns}

    # --- the version's files -----------------------------------------------------------------
    def _version_folder(self, version: dict) -> Path:
        return self.home.models_dir / version["model_name"] / version["version"]

    def _artifact_kinds(self, version: dict, artifact: str) -> list[str]:
        if artifact not in ARTIFACT_CHOICES:
            raise HubError(f"artifact {artifact!r}: choose fp32, int8 or all")
        has_int8 = bool(version.get("int8_sha256"))
        if artifact == "int8" and not has_int8:
            raise HubError(f"{version['id']} has no int8 model (it was not quantized, or int8 was not kept); "
                           "evaluate --artifact fp32")
        if artifact == "all":
            return ["fp32", "int8"] if has_int8 else ["fp32"]
        return [artifact]

    def _artifact_bytes(self, version: dict, kind: str) -> bytes:
        """The version's ``kind`` ONNX file, checked against the sha256 the registry holds."""
        path = self._version_folder(version) / f"model.{kind}.onnx"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ExportError(f"the {kind} model of {version['id']} cannot be read ({path}: {exc.strerror}); "
                              "train the version again") from exc
        expected = version["onnx_sha256"] if kind == "fp32" else version["int8_sha256"]
        if sha256_hex(data) != expected:
            raise ExportError(f"{path} does not match the sha256 registered for {version['id']}; it was changed "
                              "after training, so it is not what the version ships -- train the version again")
        return data

    def _model_inputs(self, version: dict) -> ModelInputs:
        path = self._version_folder(version) / "meta.json"
        try:
            meta = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"the description of {version['id']} ({path}) cannot be read: {exc}; train the "
                              "version again") from exc
        return ModelInputs.from_meta(meta, self._training_label_column(version))

    def _training_label_column(self, version: dict) -> str | None:
        """The label column of the version's training data (from the hub's copy), if known."""
        try:
            record = self.registry.get_dataset(self.registry.get_run(version["run_id"])["dataset_id"])
            schema = self._schema_copy(record["sha256"])
            if schema.exists():
                return json.loads(schema.read_text("utf-8")).get("label_column")
            copy = self._stored_copy(record["sha256"])
            if copy is not None and copy.suffix == ".csv":
                with copy.open("r", encoding="utf-8-sig", newline="") as fh:
                    header = next(csv.reader(fh), None)
                return header[-1].strip() if header else None
        except (OSError, ValueError, HubError):
            pass
        return None

    # --- the data -----------------------------------------------------------------------------
    def _test_data(self, data: str | Path, model: ModelInputs, *, label_column: str | None, need_labels: bool,
                   name: str | None = None, register: bool = True) -> tuple[TestData, dict]:
        """The data as the model's inputs, and its dataset record (registered, for files, when
        ``register``; else ``{"sha256", "name", "source"}``)."""
        path = Path(data)
        if path.is_file():
            test = read_for_model(path, model, label_column=label_column, need_labels=need_labels)
            if not register or test.y is None:
                return test, {"id": None, "sha256": test.dataset.sha256, "name": name or path.stem,
                              "source": str(path)}
            if self._stored_copy(test.dataset.sha256) is None:
                self._keep_schema_copy(test.dataset, path, None)
            return test, self.register_dataset(test.dataset, name or path.stem)
        if path.suffix.lower() in (".csv", ".npz") or "/" in str(data):
            raise NotFoundError(f"{data} does not exist; give a CSV or NPZ file, or a registered dataset "
                                "(see `edgeloop data list`)")
        record = self.registry.get_dataset(str(data))
        if label_column:
            raise HubError(f"--label-column is for files; the label column of dataset {record['id']} was "
                           "fixed when it was imported")
        return for_model(self.load_dataset(record["id"], training=False), model), record

    def _warnings(self, version: dict, record: dict, test: TestData, evaluations: list[dict]) -> list[str]:
        out = []
        if test.rows < FEW_ROWS:
            out.append(f"only {test.rows} rows: one row moves accuracy by {100 / test.rows:.1f} points, so a "
                       f"decision on this score is weak (aim for {FEW_ROWS} or more)")
        absent = (evaluations[0]["metrics"].get("absent_classes") or []) if evaluations else []
        if absent:
            out.append(f"the test set has no rows of class(es) {', '.join(absent)}: their recall is not measured")
        run = self.registry.get_run(version["run_id"])
        if record.get("id") and record["id"] == run["dataset_id"]:
            out.append(f"this is the data {version['id']} was trained on: its score is optimistic; evaluate on a "
                       "separate test set")
        if test.ignored_columns:
            out.append(f"ignored column(s) the model does not read: {', '.join(test.ignored_columns)}")
        return out


def _dataset_note(record: dict, test: TestData) -> dict:
    return {"id": record.get("id"), "sha256": record["sha256"], "name": record.get("name"),
            "source": record.get("source"), "rows": test.rows}


def _prediction_rows(model: ModelInputs, test: TestData, outputs: Any) -> tuple[list[str], list[list[Any]]]:
    """The header and rows of a predictions CSV (see :meth:`HubEvaluation.predict`)."""
    ds = test.dataset
    lines = [ds.row_number(i) for i in range(test.rows)]
    truth: list[Any] | None = None
    if test.y is not None:
        truth = ([model.labels[int(c)] for c in test.y] if model.task == "classification"
                 else [repr(float(v)) for v in test.y])
    header = ["line"] + ([f"true_{'label' if model.task == 'classification' else 'value'}"] if truth else [])
    if model.task == "regression":
        values = outputs.reshape(len(outputs), -1)[:, 0]
        header.append("predicted_value")
        rows = [[line, *([truth[i]] if truth else []), repr(float(values[i]))] for i, line in enumerate(lines)]
        return header, rows
    header += ["predicted_label"] + [f"probability_{label}" for label in model.labels]
    best = outputs.argmax(axis=1)
    rows = [[line, *([truth[i]] if truth else []), model.labels[int(best[i])],
             *(f"{float(p):.6g}" for p in outputs[i])] for i, line in enumerate(lines)]
    return header, rows
