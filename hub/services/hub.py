"""The hub's services: one object the CLI and the GUI both drive.

``Hub(home)`` opens the registry under the home folder, loads (or creates) the
hub signing key on first use, and offers the operations of the loop: import
data, train model versions, promote them with aliases behind evaluation gates,
export them, pack signed bundles, and connect to the fleet.

Every long operation takes a ``progress`` callback and (where it can be
stopped) a ``cancel`` token from :mod:`hub.progress`; mutating operations are
audited under :attr:`Hub.actor`.
"""

from __future__ import annotations

import csv
import dataclasses
import getpass
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.hub import __version__
from edgeloop.hub.datasets import Dataset, load_csv, load_dataset, write_csv
from edgeloop.hub.errors import DataValidationError, ExportError, HubError, NotFoundError
from edgeloop.hub.home import Home, default_home
from edgeloop.hub.keys import export_public_pem, load_or_create_hub_key, public_key_path
from edgeloop.hub.progress import CancelToken, ProgressCallback, ProgressEvent
from edgeloop.hub.registry import GateError, Registry


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers)
        return "operator"


class Hub:
    def __init__(self, home: Path | str | Home | None = None, *, actor: str | None = None) -> None:
        if isinstance(home, Home):
            self.home = home
        else:
            self.home = Home(Path(home) if home is not None else default_home())
        self.home.ensure()
        self.registry = Registry(self.home.registry_path)
        self.actor = actor or default_actor()
        self._key: SigningKey | None = None

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- keys -------------------------------------------------------------------
    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_or_create_hub_key(self.home)
        return self._key

    @property
    def public_key_path(self) -> Path:
        export_public_pem(self.home)
        return public_key_path(self.home)

    # --- data ---------------------------------------------------------------------
    def register_dataset(self, dataset: Dataset, name: str | None = None) -> dict:
        """Keep a canonical copy under the home and record it (idempotent by content hash)."""
        copy = self._stored_copy(dataset.sha256)
        if copy is None:
            copy = write_csv(dataset, self._dataset_copy(dataset.sha256))
        return self.registry.add_dataset(
            dataset.sha256, name or Path(dataset.source or "dataset").stem, dataset.source or str(copy),
            dataset.n_rows, dataset.feature_names, dataset.labels, actor=self.actor)

    # The hub's copy of a dataset: <datasets>/<sha16>.csv (written by write_csv, or the
    # imported file's bytes) or <sha16>.npz, plus <sha16>.schema.json (the resolved schema)
    # for files imported with hub.data.load_dataset.
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
                       name: str | None = None) -> dict:
        """Validate a data file and register it (idempotent by content hash).

        Uses :func:`hub.data.load_dataset` (CSV or NPZ, schema inference, optional
        schema file).
        The hub keeps a copy under its home -- for a file loaded with a schema the
        original bytes plus the resolved schema, so :meth:`load_dataset` rebuilds
        the identical dataset. Returns the registry record plus ``"summary"``
        (rows, features, task, classes...). Raises
        :class:`hub.errors.DataValidationError` listing every problem.
        """
        path = Path(path)
        ds = load_dataset(path, schema_file=Path(schema_file) if schema_file is not None else None)
        if self._stored_copy(ds.sha256) is None:
            self._keep_schema_copy(ds, path, schema_file)
        record = self.register_dataset(ds, name or path.stem)
        return {**record, "summary": _dataset_summary(ds)}

    def _keep_schema_copy(self, ds: Dataset, path: Path, schema_file: Path | str | None) -> None:
        """Original bytes + resolved schema, so a reload gives the same dataset (and sha256)."""
        schema = getattr(ds, "schema", None)
        if schema is not None and hasattr(schema, "to_dict"):
            schema_text = json.dumps(schema.to_dict(), indent=2, ensure_ascii=False) + "\n"
        elif schema_file is not None:
            schema_text = Path(schema_file).read_text(encoding="utf-8")
        else:
            return  # nothing beyond the CSV: register_dataset writes the canonical copy
        suffix = path.suffix.lower() if path.suffix.lower() in (".csv", ".npz") else ".csv"
        _atomic_write(self._schema_copy(ds.sha256), schema_text.encode("utf-8"))
        _atomic_write(self._dataset_copy(ds.sha256, suffix), path.read_bytes())

    def list_datasets(self) -> list[dict]:
        """Registered datasets, newest first (registry records)."""
        return self.registry.list_datasets()

    def get_dataset(self, ref: str) -> dict:
        """A dataset record by id (``ds-...``) or sha256 (prefix of >= 8 hex digits)."""
        return self.registry.get_dataset(ref)

    def load_dataset(self, ref: str) -> Dataset:
        """The registered dataset ``ref``, loaded from the hub's copy (its sha256 is checked)."""
        rec = self.registry.get_dataset(ref)
        copy = self._stored_copy(rec["sha256"])
        if copy is None:
            raise NotFoundError(f"the hub's copy of dataset {rec['id']} is missing from {self.home.datasets_dir}; import "
                                f"the file again (edgeloop data import {rec.get('source') or 'FILE'})")
        schema_copy = self._schema_copy(rec["sha256"])
        if schema_copy.exists():
            ds = load_dataset(copy, schema_file=schema_copy)
        else:
            ds = load_csv(copy, _label_column_of(copy), labels=rec.get("labels"))
        if ds.sha256 != rec["sha256"]:
            raise DataValidationError(
                f"the hub's copy of dataset {rec['id']} ({copy}) no longer matches its sha256 "
                f"{rec['sha256'][:16]}…; it was changed on disk. Import the original file again."
            )
        return ds

    # --- registry views (plain records; edgeloop.hub.views formats them) ------------------
    def list_versions(self, model: str | None = None) -> list[dict]:
        """Every version (or one model's) with its metrics, quantization, aliases and split."""
        return self.registry.list_versions(model)

    def list_bundles(self, version_ref: str | None = None) -> list[dict]:
        """Signed bundles, newest first (optionally one version's)."""
        return self.registry.list_bundles(version_ref)

    def list_agents(self) -> list[dict]:
        """The agents this hub has heard from, with their last known state."""
        return self.registry.list_agents()

    # --- models ---------------------------------------------------------------------
    def build_version(self, dataset: Dataset, dataset_record: dict, model_name: str, params, *,
                      progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                      quantize: bool = True, budget_points: float = 1.0, parent_version: str | None = None):
        from edgeloop.hub.pipeline import build_version

        return build_version(self.registry, self.home.models_dir, dataset, dataset_record, model_name, params,
                             quantize=quantize, budget_points=budget_points, parent_version=parent_version,
                             progress=progress, cancel=cancel, actor=self.actor)

    def train(self, dataset_ref: str, model_name: str, params: Any = None, *,
              progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
              quantize: bool | str = True, budget_points: float = 1.0, parent: str | None = None,
              fine_tune: bool = True, replay_size: int | None = None, ewc_lambda: float | None = None):
        """Train, export and register the next version of ``model_name`` on a registered dataset.

        ``params`` is a :class:`hub.train.TrainParams`, a mapping of its fields, or
        None for the defaults. ``parent`` is any version ref (``m:2``, ``m@production``)
        the new version continues from: with ``fine_tune`` the parent's saved model is
        fine-tuned on the new data with replay of ``replay_size`` rows of the
        parent's data and EWC weight ``ewc_lambda``; otherwise training starts from
        scratch and the parent is recorded as lineage only. Either way the new
        version's ``parent_version`` is the parent. Returns the pipeline's
        ``VersionBuild`` (``.version``, ``.run``, ``.metrics``, ``.quantization``,
        ``.folder``, ``.timings``, and ``.continual`` when fine-tuned). ``cancel``
        stops training at the next epoch with :class:`hub.errors.CancelledError`.
        """
        from edgeloop.hub import pipeline

        params = _train_params(params)
        record = self.registry.get_dataset(dataset_ref)
        dataset = self.load_dataset(record["id"])
        extra: dict[str, Any] = {}
        if parent:
            pv = self.registry.get_version(parent)
            extra["parent_version"] = pv["id"]
            if fine_tune:
                parent_run = self.registry.get_run(pv["run_id"])
                options = {k: v for k, v in (("replay_size", replay_size), ("ewc_lambda", ewc_lambda))
                           if v is not None}
                extra["parent"] = pipeline.ParentSpec(version=pv["id"],
                                                      dataset=self.load_dataset(parent_run["dataset_id"]),
                                            **options)
        return pipeline.build_version(self.registry, self.home.models_dir, dataset, record, model_name, params,
                                      quantize=quantize, budget_points=budget_points, progress=progress,
                                      cancel=cancel, actor=self.actor, **extra)

    def export(self, version_ref: str, out_dir: Path | str, *,
               progress: ProgressCallback | None = None) -> dict:
        """Copy a version's ONNX files (fp32, and int8 when it has one) and a JSON report to ``out_dir``.

        Files are named ``<model>-<n>.fp32.onnx``, ``<model>-<n>.int8.onnx`` and
        ``<model>-<n>.report.json``; each ONNX file is checked against the sha256
        the registry holds. The report has the version, its run (params, metrics,
        curves, code and library versions), dataset, quantization decision, gate
        check, aliases and lineage. Returns ``{"version", "out_dir", "files",
        "report"}`` (files: ``[{"kind", "path", "sha256", "size"}]``).
        """
        v = self.registry.get_version(version_ref)
        folder = self.home.models_dir / v["model_name"] / v["version"]
        out = Path(out_dir)
        stem = f"{v['model_name']}-{v['version']}"
        wanted = [("fp32", v["onnx_sha256"])] + ([("int8", v["int8_sha256"])] if v.get("int8_sha256") else [])
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(f"cannot create the export folder {out}: {exc}") from exc
        files = []
        for i, (kind, expected) in enumerate(wanted):
            if progress is not None:
                progress(ProgressEvent("export", i, len(wanted) + 1, f"{kind} model"))
            src = folder / f"model.{kind}.onnx"
            if not src.exists():
                raise ExportError(f"the {kind} model of {v['id']} is missing ({src}); train the version again")
            data = src.read_bytes()
            digest = sha256_hex(data)
            if digest != expected:
                raise ExportError(f"{src} does not match the sha256 registered for {v['id']} "
                                  f"({digest[:12]}… vs {expected[:12]}…); it was changed after training")
            dst = out / f"{stem}.{kind}.onnx"
            _atomic_write(dst, data)
            files.append({"kind": kind, "path": str(dst), "sha256": digest, "size": len(data)})
        report = self._export_report(v, folder, files)
        report_path = out / f"{stem}.report.json"
        _atomic_write(report_path, json.dumps(report, indent=2, default=str).encode("utf-8"))
        if progress is not None:
            progress(ProgressEvent("export", len(wanted) + 1, len(wanted) + 1, "report"))
        self.registry.audit(self.actor, "version.export", v["id"], out_dir=str(out),
                            files=[f["path"] for f in files] + [str(report_path)])
        return {"version": v["id"], "out_dir": str(out), "files": files, "report": str(report_path)}

    def _export_report(self, v: dict, folder: Path, files: list[dict]) -> dict:
        run = self.registry.get_run(v["run_id"])
        meta: dict = {}
        if (folder / "meta.json").exists():
            full = json.loads((folder / "meta.json").read_text())
            meta = {k: full[k] for k in ("feature_names", "labels", "task") if k in full}
        lin = self.registry.lineage(v["id"])
        node = lin["versions"][0]
        return {
            "format": "edgeloop-export-report/1", "exported_at": time.time(), "edgeloop": __version__,
            "exported_by": self.actor, "version": {k: val for k, val in v.items() if k != "quantization"},
            "model": meta, "files": [{k: f[k] for k in ("kind", "sha256", "size")} | {"name": Path(f["path"]).name}
                                     for f in files],
            "quantization": v.get("quantization"), "gate": self.registry.check_gate(v["id"]),
            "run": run, "dataset": lin["dataset"],
            "lineage": {"ancestors": node["ancestors"], "descendants": node["descendants"],
                        "bundles": [b["sha256"] for b in node["bundles"]]},
        }

    # --- aliases, gates, compare, lineage -----------------------------------------------
    def set_alias(self, model: str, alias: str, version_ref: str, *, reason: str = "",
                  override_gate: bool = False) -> dict:
        """Point ``model@alias`` at a version (see :meth:`Registry.set_alias`), as :attr:`actor`."""
        return self.registry.set_alias(model, alias, version_ref, actor=self.actor, reason=reason,
                                       override_gate=override_gate)

    def remove_alias(self, model: str, alias: str, *, reason: str = "") -> dict:
        return self.registry.remove_alias(model, alias, actor=self.actor, reason=reason)

    def aliases(self, model: str) -> list[dict]:
        """The model's aliases, each with its ``history`` (newest move first)."""
        self.registry.get_model(model)
        history = self.registry.alias_history(model)
        out = []
        for a in self.registry.list_aliases(model):
            out.append({**a, "history": [h for h in history if h["alias"] == a["alias"]]})
        current = {a["alias"] for a in out}
        for h in history:  # removed aliases keep their history visible
            if h["alias"] not in current:
                current.add(h["alias"])
                out.append({"model_name": model, "alias": h["alias"], "version_id": None,
                            "updated_at": h["at"], "updated_by": h["actor"], "reason": h["reason"],
                            "history": [x for x in history if x["alias"] == h["alias"]]})
        return out

    def set_gate(self, model: str, gate: dict | None) -> dict:
        return self.registry.set_gate(model, gate, actor=self.actor)

    def check_gate(self, version_ref: str) -> dict:
        return self.registry.check_gate(version_ref)

    def check_deployable(self, version_ref: str, override_reason: str | None = None) -> dict:
        """Gate check before a deployment: raises :class:`GateError` when the version fails
        its model's gate, unless ``override_reason`` is given -- then the override is
        recorded in the audit log (``gate.override``). Returns the check plus
        ``"overridden"`` (and ``"reason"`` when overridden)."""
        check = self.registry.check_gate(version_ref)
        if check["passed"]:
            return {**check, "overridden": False}
        reason = str(override_reason or "").strip()
        if not reason:
            raise GateError(check, action="be deployed")
        self.registry.audit(self.actor, "gate.override", check["version"], purpose="deploy",
                            reason=reason, failures=check["failures"])
        return {**check, "overridden": True, "reason": reason}

    def compare(self, a_ref: str, b_ref: str) -> dict:
        return self.registry.compare(a_ref, b_ref)

    def lineage(self, ref: str) -> dict:
        return self.registry.lineage(ref)

    # --- bundles --------------------------------------------------------------------------
    def build_bundle(self, version_ref: str):
        from edgeloop.hub.pipeline import build_bundle

        return build_bundle(self.registry, self.home.models_dir, self.home.bundles_dir, version_ref, self.key,
                            actor=self.actor)

    def bundle_bytes(self, ref: str) -> tuple[dict, bytes]:
        rec = self.registry.get_bundle(ref)
        return rec, Path(rec["path"]).read_bytes()

    def resolve_bundle(self, ref: str) -> tuple[dict, bytes]:
        """The bundle a ref names: a bundle sha256 (prefix), or a version ref -- its newest
        bundle, packed and signed now if it has none yet."""
        try:
            return self.bundle_bytes(ref)
        except NotFoundError:
            pass
        v = self.registry.get_version(ref)
        bundles = self.registry.list_bundles(v["id"])
        if not bundles:
            return self.bundle_bytes(self.build_bundle(v["id"]).sha256)
        return self.bundle_bytes(bundles[0]["sha256"])

    def version_of(self, ref: str) -> dict:
        """The version a ref names: a bundle sha256 (prefix) gives its bundle's version."""
        try:
            return self.registry.get_version(self.registry.get_bundle(ref)["version_id"])
        except NotFoundError:
            return self.registry.get_version(ref)

    def deploy(self, fleet, agent_ids: Sequence[str], ref: str, *, override_reason: str | None = None,
               timeout: float = 120.0) -> list[dict]:
        """Gate-check ``ref`` (:meth:`check_deployable`), then push its signed bundle to each agent.

        ``ref`` is a version ref or a bundle sha256 (prefix); a version without a
        bundle gets one packed and signed now. ``fleet`` is a started :meth:`fleet`
        or a broker URL (connected only after the gate check passed). Returns one
        result per agent: ``{"agent", "ok", "code", "message", "seconds", "version",
        "bundle_sha256", "gate"}``. Raises :class:`GateError` before anything is sent
        when the version fails its gate and no ``override_reason`` is given.
        """
        version = self.version_of(ref)
        gate = self.check_deployable(version["id"], override_reason)
        rec, data = self.resolve_bundle(ref)
        if isinstance(fleet, str):
            with self.fleet(fleet) as started:
                return self._deploy_to(started, agent_ids, version, rec, data, timeout, gate)
        return self._deploy_to(fleet, agent_ids, version, rec, data, timeout, gate)

    @staticmethod
    def _deploy_to(fleet, agent_ids, version: dict, rec: dict, data: bytes, timeout: float, gate: dict) -> list[dict]:
        results = []
        for aid in agent_ids:
            out = fleet.deploy(aid, data, model=version["model_name"], version=version["version"], timeout=timeout)
            results.append({"agent": aid, "ok": out.ok, "code": out.code, "message": out.message,
                            "seconds": round(out.seconds, 3), "version": version["id"],
                            "bundle_sha256": rec["sha256"], "gate": {"passed": gate["passed"],
                                                                     "overridden": gate["overridden"]}})
        return results

    # --- fleet -------------------------------------------------------------------------
    def fleet(self, broker_url: str, on_change=None):
        from edgeloop.hub.fleet import BrokerAddress, Fleet

        return Fleet(BrokerAddress.parse(broker_url), self.registry, self.key, actor=self.actor,
                     on_change=on_change)

    def reset(self) -> None:
        """Delete everything under the home (used by ``edgeloop demo --fresh``)."""
        self.close()
        shutil.rmtree(self.home.root, ignore_errors=True)


# --- helpers ----------------------------------------------------------------------------
def _dataset_summary(ds: Dataset) -> dict:
    summary = getattr(ds, "summary", None)
    if callable(summary):
        return summary()
    return {"rows": ds.n_rows, "feature_names": list(ds.feature_names), "labels": list(ds.labels)}


def _label_column_of(csv_path: Path) -> str:
    """The label column of a canonical copy (written by write_csv: features, then the label)."""
    with csv_path.open("r", encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), None)
    return header[-1].strip() if header else "label"


def _train_params(params: Any):
    from edgeloop.hub.training import TrainParams

    if params is None:
        return TrainParams()
    if isinstance(params, TrainParams):
        return params
    if isinstance(params, dict):
        from_dict = getattr(TrainParams, "from_dict", None)
        if from_dict is not None:
            return from_dict(params)
        known = {f.name for f in dataclasses.fields(TrainParams)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise HubError(f"unknown training parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return TrainParams(**params)
    raise HubError(f"training parameters must be TrainParams or a mapping, not {type(params).__name__}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
