"""Evaluations of versions' shipped ONNX artifacts on separate test data (``edgeloop eval``).

One row per scoring of one artifact (``fp32`` or ``int8``) of a version on one dataset,
append only: the version, the dataset's content hash (and its id when the dataset is
registered here), the rows scored and the metrics (JSON, see
:mod:`edgeloop.hub.evaluation.scoring`). The newest row per (version, dataset,
artifact) is what gates read (``eval.accuracy``...; see :mod:`edgeloop.hub.evaluation.names`).
"""

from __future__ import annotations

from typing import Any

from edgeloop.hub.errors import RegistryError
from edgeloop.hub.registry.catalog import QUANT_CHOICES, Catalog
from edgeloop.hub.registry.db import inserted_id
from edgeloop.hub.registry.fields import check_choice, check_sha256, dumps, now


class Evaluations(Catalog):
    """Evaluations of versions on test data: record, list, the newest per artifact."""

    def add_evaluation(
        self, version_ref: str, artifact: str, dataset_sha256: str, rows: int, metrics: dict[str, Any], *,
        dataset_name: str | None = None, actor: str = "hub",
    ) -> dict:
        """Record that ``artifact`` (``fp32``/``int8``) of a version scored ``metrics`` on ``rows`` rows
        of the dataset with content hash ``dataset_sha256``; returns the evaluation row.

        The dataset need not be registered here (``dataset_id`` is then None). A version
        without an int8 model has no ``int8`` evaluation.
        """
        check_choice(artifact, QUANT_CHOICES, "the evaluated artifact")
        sha = check_sha256(dataset_sha256, "dataset sha256")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise RegistryError(f"an evaluation scores at least one row, got rows={rows!r}")
        if not isinstance(metrics, dict):
            raise RegistryError(f"evaluation metrics must be a mapping, got {type(metrics).__name__}")
        with self._write() as db:
            version = self.get_version(version_ref)
            if artifact == "int8" and not version.get("int8_sha256"):
                raise RegistryError(f"{version['id']} has no int8 model to evaluate (it was not quantized)")
            dataset = self._first("datasets", "sha256 = ?", [sha])
            table = db.table("evaluations")
            table.insert({
                "version_id": version["id"], "dataset_id": dataset["id"] if dataset else None,
                "dataset_sha256": sha, "dataset_name": dataset_name or (dataset or {}).get("name"),
                "artifact": artifact, "rows": rows, "metrics": dumps(metrics), "created_at": now(),
                "actor": str(actor),
            })
            evaluation_id = inserted_id(table)
            self._audit(db, actor, "evaluation.add", version["id"], evaluation=evaluation_id, artifact=artifact,
                        dataset_sha256=sha, rows=rows,
                        scores={k: v for k, v in metrics.items() if isinstance(v, int | float)})
        return self._existing("evaluations", "id = ?", [evaluation_id])

    def list_evaluations(self, version_ref: str | None = None, *, model: str | None = None) -> list[dict]:
        """Evaluations, newest first: of one version, of every version of ``model``, or all."""
        if version_ref is not None:
            return self._rows("evaluations", "version_id = ?", [self.resolve(version_ref)], "id DESC")
        if model is not None:
            self.get_model(model)
            return self._rows("evaluations", "version_id IN (SELECT id FROM versions WHERE model_name = ?)",
                              [model], "id DESC")
        return self._rows("evaluations", order_by="id DESC")

    def latest_evaluation(self, version_id: str, artifact: str, dataset_sha256: str | None = None) -> dict | None:
        """The newest evaluation of ``artifact`` of a version (on one dataset, or on any), or None."""
        if dataset_sha256 is None:
            rows = self._rows("evaluations", "version_id = ? AND artifact = ?", [version_id, artifact], "id DESC", 1)
        else:
            rows = self._rows("evaluations", "version_id = ? AND artifact = ? AND dataset_sha256 = ?",
                              [version_id, artifact, dataset_sha256], "id DESC", 1)
        return rows[0] if rows else None
