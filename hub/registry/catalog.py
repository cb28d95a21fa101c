"""The registry's catalog: datasets, training runs, models and their versions, and
the version references every other part of the registry accepts.

Ids: datasets ``ds-<first 12 hex of sha>``, runs ``run-<n>``, models by name,
versions ``<model>:<n>`` (n = 1, 2, ... per model). Version references:
``iris:3``; ``iris``, ``iris:latest`` or ``iris@latest`` for the newest version;
``iris@production`` for where that alias points now (see :meth:`Catalog.get_version`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlite_utils import Database

from edgeloop.hub.errors import NotFoundError, RegistryError
from edgeloop.hub.registry.db import RegistryDatabase
from edgeloop.hub.registry.fields import HEX, MIN_PREFIX, check_choice, check_model_name, check_sha256, dumps, now

TASKS = ("classification", "regression")
RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")
QUANT_CHOICES = ("fp32", "int8")


class Catalog(RegistryDatabase):
    """Datasets, runs, models and versions; resolution of version references."""

    # -- datasets ---------------------------------------------------------------------
    def add_dataset(
        self, sha256: str, name: str, source: str, rows: int, features: Sequence[str],
        labels: Sequence[Any] | None = None, *, actor: str = "hub", warnings: Sequence[dict] | None = None,
    ) -> dict:
        """Register a dataset by content hash; adding the same bytes again returns the existing row.

        ``warnings``: the findings that did not refuse it (``Dataset.warnings`` as dicts)."""
        sha = check_sha256(sha256, "dataset sha256")
        with self._write() as db:
            existing = self._first("datasets", "sha256 = ?", [sha])
            if existing is not None:
                return existing
            dataset_id = self._dataset_id(sha)
            db.table("datasets").insert({
                "id": dataset_id, "sha256": sha, "name": name, "source": str(source),
                "rows": int(rows), "features": dumps(list(features)),
                "labels": dumps(list(labels)) if labels is not None else None,
                "warnings": dumps(list(warnings)) if warnings else None,
                "created_at": now(),
            })
            self._audit(db, actor, "dataset.add", dataset_id, name=name, sha256=sha, rows=int(rows))
        return self.get_dataset(dataset_id)

    def _dataset_id(self, sha: str) -> str:
        """``ds-<sha12>``, lengthened in the (astronomically unlikely) case of a clash."""
        for n in (12, 16, 24, 64):
            candidate = f"ds-{sha[:n]}"
            if self._first("datasets", "id = ?", [candidate]) is None:
                return candidate
        raise RegistryError(f"dataset id for {sha} is already taken")  # same sha: unreachable

    def get_dataset(self, ref: str) -> dict:
        """A dataset by id (``ds-...``), full sha256, a sha256 prefix of at least 8 hex
        digits, or its name (the newest dataset of that name)."""
        name = str(ref).strip()
        ref = name.lower()
        row = self._first("datasets", "id = ?", [ref])
        if row is None and len(ref) >= MIN_PREFIX and HEX.match(ref):
            row = self._unique_prefix("datasets", "sha256", ref, "dataset")
        if row is None:
            rows = self._rows("datasets", "name = ?", [name], "created_at DESC", limit=1)
            row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(
                f"no dataset {name!r}; give its name, id (ds-...) or sha256 (see `edgeloop data list`)"
            )
        return row

    def list_datasets(self) -> list[dict]:
        return self._rows("datasets", order_by="created_at DESC")

    # -- runs ---------------------------------------------------------------------------
    def start_run(
        self, dataset: str, model_name: str, params: dict, *, code_version: str = "",
        library_versions: dict | None = None, actor: str = "hub",
    ) -> dict:
        """Open a training run (status ``running``) on ``dataset`` (id or sha256)."""
        check_model_name(model_name)
        with self._write() as db:
            dataset_id = self.get_dataset(dataset)["id"]
            run_id = f"run-{self._next_seq(db, 'runs', 'run-')}"
            db.table("runs").insert({
                "id": run_id, "dataset_id": dataset_id, "model_name": model_name,
                "params": dumps(dict(params)), "metrics": None, "history": None,
                "code_version": code_version, "library_versions": dumps(library_versions or {}),
                "started_at": now(), "finished_at": None, "status": "running",
            })
            self._audit(db, actor, "run.start", run_id, dataset_id=dataset_id, model_name=model_name)
        return self.get_run(run_id)

    def finish_run(
        self, run_id: str, status: str = "succeeded", *, metrics: dict | None = None,
        history: Any = None, actor: str = "hub",
    ) -> dict:
        """Close a running run with its final ``status``, metrics and training history."""
        check_choice(status, RUN_STATUSES[1:], "a finished run's status")
        with self._write() as db:
            run = self.get_run(run_id)
            if run["status"] != "running":
                raise RegistryError(f"{run_id} already finished ({run['status']}); start a new run")
            db.table("runs").update(run_id, {
                "status": status, "metrics": dumps(metrics or {}), "history": dumps(history),
                "finished_at": now(),
            })
            self._audit(db, actor, f"run.{status}", run_id, metrics=metrics or {})
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict:
        row = self._first("runs", "id = ?", [str(run_id).strip()])
        if row is None:
            raise NotFoundError(f"no training run {run_id!r}; run ids look like run-7, see list_runs()")
        return row

    def list_runs(self, model_name: str | None = None) -> list[dict]:
        """Newest first; optionally only the runs of one model."""
        if model_name is None:
            return self._rows("runs", order_by="started_at DESC")
        return self._rows("runs", "model_name = ?", [model_name], "started_at DESC")

    # -- models -------------------------------------------------------------------------
    def add_model(self, name: str, task: str, *, actor: str = "hub") -> dict:
        """Register a model name with its task; idempotent (a different task is refused)."""
        check_model_name(name)
        check_choice(task, TASKS, "task")
        with self._write() as db:
            self._ensure_model(db, name, task, actor)
        return self.get_model(name)

    def _ensure_model(self, db: Database, name: str, task: str | None, actor: str) -> None:
        existing = self._first("models", "name = ?", [name])
        if existing is None:
            if task is None:
                raise RegistryError(
                    f"model {name!r} is not registered yet; pass task='classification' or "
                    "'regression' for its first version"
                )
            check_choice(task, TASKS, "task")
            db.table("models").insert({"name": name, "task": task, "created_at": now()})
            self._audit(db, actor, "model.add", name, task=task)
        elif task is not None and existing["task"] != task:
            raise RegistryError(
                f"model {name!r} is a {existing['task']} model, not {task}; pick another model name"
            )

    def get_model(self, name: str) -> dict:
        row = self._first("models", "name = ?", [name])
        if row is None:
            raise NotFoundError(f"no model named {name!r}; known models: {self._model_names()}")
        return row

    def list_models(self) -> list[dict]:
        return self._rows("models", order_by="name")

    def _model_names(self) -> str:
        return ", ".join(m["name"] for m in self.list_models()) or "none yet (train one first)"

    # -- versions -----------------------------------------------------------------------
    def add_version(
        self, model_name: str, run_id: str, onnx_sha256: str, *, task: str | None = None,
        int8_sha256: str | None = None, chosen: str = "fp32", quantization: dict | None = None,
        metrics: dict | None = None, parent_version: str | None = None, actor: str = "hub",
        write_files: Callable[[dict], None] | None = None,
    ) -> dict:
        """Register the next version (``<model>:<n>``) of ``model_name`` built by ``run_id``.

        ``task`` is required when the model has no version yet. ``chosen`` says which
        export is served; ``int8`` needs ``int8_sha256``. ``parent_version`` is any
        :meth:`get_version` reference to the version this one was derived from.

        ``write_files``, when given, is called inside the registry's write transaction
        with ``{"id", "model_name", "version"}`` once the number is allocated and
        before the row exists: it puts the version's files in place (durably). If it
        raises, nothing is recorded -- so a version row never points at missing files.
        """
        check_model_name(model_name)
        onnx = check_sha256(onnx_sha256, "onnx_sha256")
        int8 = check_sha256(int8_sha256, "int8_sha256") if int8_sha256 is not None else None
        check_choice(chosen, QUANT_CHOICES, "chosen")
        if chosen == "int8" and int8 is None:
            raise RegistryError("chosen='int8' needs int8_sha256 (the quantized model's hash)")
        with self._write() as db:
            run = self.get_run(run_id)
            if run["status"] in ("failed", "cancelled"):
                raise RegistryError(f"{run_id} {run['status']}; only a successful run can make a version")
            self._ensure_model(db, model_name, task, actor)
            parent = self.get_version(parent_version)["id"] if parent_version else None
            number = self._next_version_number(db, model_name)
            version_id = f"{model_name}:{number}"
            if write_files is not None:
                write_files({"id": version_id, "model_name": model_name, "version": str(number)})
            db.table("versions").insert({
                "id": version_id, "model_name": model_name, "version": str(number),
                "run_id": run["id"], "onnx_sha256": onnx, "int8_sha256": int8, "chosen": chosen,
                "quantization": dumps(quantization or {}), "metrics": dumps(metrics or {}),
                "created_at": now(), "parent_version": parent,
            })
            self._audit(db, actor, "version.add", version_id, run_id=run["id"], chosen=chosen,
                        parent_version=parent)
        return self.get_version(version_id)

    def _next_version_number(self, db: Database, model_name: str) -> int:
        row = db.execute(
            "SELECT MAX(CAST(version AS INTEGER)) FROM versions WHERE model_name = ?", [model_name]
        ).fetchone()
        return int(row[0] or 0) + 1

    def get_version(self, ref: str) -> dict:
        """A version by reference (every method taking a version ref accepts these):

        * ``"<model>:<n>"`` -- that version (``iris:3``);
        * ``"<model>"`` or ``"<model>:latest"`` or ``"<model>@latest"`` -- the newest;
        * ``"<model>@<alias>"`` -- where the alias points now (``iris@production``).

        Besides its columns the row carries ``aliases`` (names pointing at it now)
        and ``split`` (the run's train/val/test split record, when the run has one).
        """
        text = str(ref).strip()
        if "@" in text:
            model, _, alias = text.partition("@")
            if alias != "latest":
                return self._version_extras([self._alias_target(model, alias)])[0]
            text = model
        model, _, number = text.rpartition(":")
        if not model:  # no colon: the whole ref is a model name
            model, number = number, ""
        if number in ("", "latest"):
            rows = self._rows("versions", "model_name = ?", [model],
                              "CAST(version AS INTEGER) DESC", 1)
            if not rows:
                self.get_model(model)  # raises "no model named ..." with the known names
                raise NotFoundError(f"model {model!r} has no versions yet; train and export one")
            return self._version_extras(rows)[0]
        row = self._first("versions", "id = ?", [f"{model}:{number}"])
        if row is None:
            self.get_model(model)
            known = ", ".join(v["version"] for v in self._rows(
                "versions", "model_name = ?", [model], "CAST(version AS INTEGER)")) or "none"
            raise NotFoundError(f"model {model!r} has no version {number!r}; its versions: {known}")
        return self._version_extras([row])[0]

    def resolve(self, ref: str) -> str:
        """The version id (``model:n``) a version reference names now (see :meth:`get_version`)."""
        return self.get_version(ref)["id"]

    def list_versions(self, model_name: str | None = None) -> list[dict]:
        """Every version (or one model's), by model name then version number."""
        order = "model_name, CAST(version AS INTEGER)"
        if model_name is None:
            return self._version_extras(self._rows("versions", order_by=order))
        return self._version_extras(self._rows("versions", "model_name = ?", [model_name], order))

    def _version_extras(self, rows: list[dict]) -> list[dict]:
        """Add ``aliases`` and ``split`` to version rows (two queries for any number of rows)."""
        if not rows:
            return rows
        db = self._db()
        ids = [r["id"] for r in rows]
        marks = ", ".join("?" * len(ids))
        aliases: dict[str, list[str]] = {}
        for version_id, alias in db.execute(
                f"SELECT version_id, alias FROM aliases WHERE version_id IN ({marks}) ORDER BY alias", ids):
            aliases.setdefault(version_id, []).append(alias)
        run_ids = sorted({r["run_id"] for r in rows})
        splits: dict[str, Any] = {}
        for run_id, params in db.execute(
                f"SELECT id, params FROM runs WHERE id IN ({', '.join('?' * len(run_ids))})", run_ids):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                splits[run_id] = json.loads(params).get("split")
        for r in rows:
            r["aliases"] = aliases.get(r["id"], [])
            r["split"] = splits.get(r["run_id"])
        return rows

    def _qualify(self, model: str, version_ref: str) -> str:
        """A version ref relative to ``model``: ``3`` -> ``model:3``, ``@staging`` -> ``model@staging``."""
        text = str(version_ref).strip()
        if text.isdigit():
            return f"{model}:{text}"
        if text.startswith("@"):
            return f"{model}{text}"
        return text

    # -- alias lookup (aliases are moved by Promotion) ---------------------------------
    def _aliases_of(self, model: str) -> list[dict]:
        """The current alias rows of ``model``, by alias name."""
        return self._rows("aliases", "model_name = ?", [model], "alias")

    def _alias_target(self, model: str, alias: str) -> dict:
        """The version row ``model@alias`` points at now."""
        row = self._first("aliases", "model_name = ? AND alias = ?", [model, alias])
        if row is None:
            raise self._no_alias(model, alias)
        return self._existing("versions", "id = ?", [row["version_id"]])

    def _no_alias(self, model: str, alias: str) -> NotFoundError:
        """The error for a missing ``model@alias`` (a missing model raises its own NotFoundError)."""
        self.get_model(model)
        known = ", ".join(a["alias"] for a in self._aliases_of(model)) or "none yet"
        return NotFoundError(
            f"model {model!r} has no alias {alias!r} (its aliases: {known}); point one at a "
            f"version with `edgeloop registry alias {model} {alias} VERSION`"
        )
