"""Model versions in the hub: training parameters, training (from scratch or continuing
a parent version), version records and their detail, and export of a version's files."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.hub import __version__
from edgeloop.hub.datasets import Dataset
from edgeloop.hub.errors import ExportError, HubError
from edgeloop.hub.progress import CancelToken, ProgressCallback, ProgressEvent
from edgeloop.hub.services.datasets import HubDatasets

if TYPE_CHECKING:  # torch loads only when a model is trained
    from edgeloop.hub.pipeline import VersionBuild
    from edgeloop.hub.training import TrainParams


class HubModels(HubDatasets):
    # --- version records ------------------------------------------------------------------
    def list_versions(self, model: str | None = None) -> list[dict]:
        """Every version (or one model's) with its metrics, quantization, aliases and split."""
        return self.registry.list_versions(model)

    def version_detail(self, ref: str) -> dict:
        """``{"version", "run", "bundles", "gate"}``: a version record, the run that made it, its
        bundles (newest first) and its gate check."""
        v = self.registry.get_version(ref)
        return {"version": v, "run": self.registry.get_run(v["run_id"]),
                "bundles": self.registry.list_bundles(v["id"]), "gate": self.registry.check_gate(v["id"])}

    # --- training ---------------------------------------------------------------------------
    @staticmethod
    def train_params(params: TrainParams | Mapping[str, Any] | None = None, *,
                     run_file: Path | str | None = None) -> TrainParams:
        """The one conversion to :class:`edgeloop.hub.training.TrainParams`.

        ``params`` is a ``TrainParams``, a mapping of its fields (checked strictly by
        ``TrainParams.from_dict``: unknown keys and wrong types are errors naming each),
        or None for the defaults. With ``run_file`` (JSON or TOML) the file's values
        come first and ``params`` overrides them.
        """
        from edgeloop.hub.training import TrainParams

        if isinstance(params, TrainParams):
            if run_file is None:
                return params
            params = params.to_dict()
        if params is not None and not isinstance(params, Mapping):
            raise HubError(f"training parameters must be TrainParams or a mapping, not {type(params).__name__}")
        given = dict(params or {})
        if run_file is not None:
            given = {**TrainParams.from_file(run_file).to_dict(), **given}
        return TrainParams.from_dict(given)

    def build_version(self, dataset: Dataset, dataset_record: dict, model_name: str, params: TrainParams, *,
                      progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                      quantize: bool = True, budget_points: float = 1.0,
                      parent_version: str | None = None, split: Any = None,
                      test_data: Dataset | None = None) -> VersionBuild:
        """Train, export and register a version on an already loaded dataset (see :meth:`train`)."""
        from edgeloop.hub.pipeline import build_version
        from edgeloop.hub.pipeline.version import TestSet

        return build_version(self.registry, self.home.models_dir, dataset, dataset_record, model_name, params,
                             quantize=quantize, budget_points=budget_points, parent_version=parent_version,
                             progress=progress, cancel=cancel, actor=self.actor,
                             fractions=_fractions(split, explicit_test=test_data is not None),
                             test=TestSet(test_data) if test_data is not None else None)

    def train(self, dataset_ref: str, model_name: str, params: Any = None, *,
              progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
              quantize: bool | str = True, budget_points: float = 1.0, parent: str | None = None,
              fine_tune: bool = True, replay_size: int | None = None,
              ewc_lambda: float | None = None, split: Any = None,
              test_data: str | None = None) -> VersionBuild:
        """Train, export and register the next version of ``model_name`` on a registered dataset.

        ``params`` is anything :meth:`train_params` takes. ``parent`` is any version
        ref (``m:2``, ``m@production``) the new version continues from: with
        ``fine_tune`` the parent's saved model is fine-tuned on the new data with
        replay of ``replay_size`` rows of the parent's data and EWC weight
        ``ewc_lambda``; otherwise training starts from scratch and the parent is
        recorded as lineage only -- the child still inherits the parent's architecture
        (arch, layer widths, kernel size, standardization) and input contract (its
        window shape) unless ``params`` names them. Either way the new version's
        ``parent_version`` is the parent. A fine-tuned child keeps the parent's
        classes; data lacking some of them are fine (named in the run's warnings).

        ``split`` is the (train, val, test) ratios, as a sequence or ``"0.8,0.2,0"``
        (default 0.7/0.15/0.15; a test ratio of 0 trains on all rows but the
        validation rows). ``test_data`` is a registered dataset (id, name or sha256)
        to test on instead of a test split: the split defaults to 0.85/0.15/0 and
        the test metrics and the int8 decision are judged on it.

        Returns the pipeline's ``VersionBuild`` (``.version``, ``.run``,
        ``.metrics`` -- with ``n_train``/``n_val``/``n_test``, ``best_epoch``,
        ``stop_reason`` --, ``.quantization``, ``.folder``, ``.timings``, ``.warnings``,
        and ``.continual`` when fine-tuned). ``cancel`` stops training at the next
        epoch with :class:`edgeloop.hub.errors.CancelledError` (the run is kept as
        cancelled). Data that are refused raise before any run is recorded.
        """
        from edgeloop.hub import pipeline
        from edgeloop.hub.pipeline.version import TestSet

        given = _given_fields(params)
        params = self.train_params(params)
        record = self.registry.get_dataset(dataset_ref)
        dataset = self.load_dataset(record["id"])
        extra: dict[str, Any] = {"fractions": _fractions(split, explicit_test=test_data is not None)}
        if test_data is not None:
            test_record = self.registry.get_dataset(test_data)
            extra["test"] = TestSet(self.load_dataset(test_record["id"]), test_record)
        if parent:
            pv = self.registry.get_version(parent)
            extra["parent_version"] = pv["id"]
            if not fine_tune:
                params, dataset = self._inherit_from(pv, params, given, dataset)
            if fine_tune:
                parent_run = self.registry.get_run(pv["run_id"])
                options: dict[str, Any] = {k: v for k, v in (("replay_size", replay_size),
                                                             ("ewc_lambda", ewc_lambda)) if v is not None}
                extra["parent"] = pipeline.ParentSpec(version=pv["id"],
                                                      dataset=self.load_dataset(parent_run["dataset_id"]),
                                                      **options)
        return pipeline.build_version(self.registry, self.home.models_dir, dataset, record, model_name, params,
                                      quantize=quantize, budget_points=budget_points, progress=progress,
                                      cancel=cancel, actor=self.actor, **extra)

    def _inherit_from(self, pv: dict, params: TrainParams, given: set[str],
                      dataset: Dataset) -> tuple[TrainParams, Dataset]:
        """A from-scratch child of ``pv``: the parent's architecture fields (those not ``given``) and,
        for a window model, its window shape on data with the same columns."""
        import dataclasses

        from edgeloop.hub.errors import TrainingError

        meta_path = self.home.models_dir / pv["model_name"] / pv["version"] / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        config = meta.get("model_config") or {}
        run_params = self.registry.get_run(pv["run_id"]).get("params") or {}
        inherited: dict[str, Any] = {}
        arch = config.get("arch") or run_params.get("arch")
        if arch in ("mlp", "cnn1d") and "arch" not in given:
            inherited["arch"] = arch
        for name in ("hidden", "channels", "kernel_size", "standardize"):
            value = config.get(name, run_params.get(name))
            if value is not None and name not in given:
                inherited[name] = tuple(value) if isinstance(value, list) else value
        params = dataclasses.replace(params, **inherited)
        window = config.get("window_shape") or meta.get("window_shape")
        if params.arch == "cnn1d" and dataset.window_shape is None and window:
            if list(dataset.feature_names) != list(meta.get("feature_names") or []):
                raise TrainingError(f"{pv['id']} is a 1D-CNN over windows {tuple(window)}; the new data are a table "
                                    "with other columns. Import them as windows, or pass --arch mlp to train an MLP")
            dataset = dataclasses.replace(dataset, window_shape=tuple(window), schema=None)
        return params, dataset

    # --- export -----------------------------------------------------------------------------
    def export(self, version_ref: str, out_dir: Path | str, *,
               progress: ProgressCallback | None = None) -> dict:
        """Copy a version's ONNX files (fp32, and int8 when it has one) and a JSON report to ``out_dir``.

        Files are named ``<model>-<n>.fp32.onnx``, ``<model>-<n>.int8.onnx`` and
        ``<model>-<n>.report.json``; each ONNX file is checked against the sha256
        the registry holds. The report has the version, its run (params, metrics,
        curves, code and library versions), dataset, quantization decision, gate
        check, aliases and lineage. The files are written before the audit row.
        Returns ``{"version", "out_dir", "files", "report"}`` (files:
        ``[{"kind", "path", "sha256", "size"}]``).
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
            atomic_write_bytes(dst, data)
            files.append({"kind": kind, "path": str(dst), "sha256": digest, "size": len(data)})
        report = self._export_report(v, folder, files)
        report_path = out / f"{stem}.report.json"
        atomic_write_bytes(report_path, json.dumps(report, indent=2, default=str).encode("utf-8"))
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


def _given_fields(params: Any) -> set[str]:
    """The TrainParams fields the caller chose: a mapping's keys, or a TrainParams' non-default fields."""
    from edgeloop.hub.training import TrainParams

    if isinstance(params, Mapping):
        return set(params)
    if isinstance(params, TrainParams):
        default = TrainParams()
        return {k for k, v in params.to_dict().items() if v != getattr(default, k)
                and not (isinstance(v, list) and tuple(v) == getattr(default, k))}
    return set()


def _fractions(split: Any, *, explicit_test: bool = False) -> tuple[float, float, float] | None:
    """``split`` ("0.8,0.2,0" or three numbers) as checked (train, val, test) ratios; None = the default."""
    from edgeloop.hub.training import check_fractions, parse_split

    if split is None:
        return None
    if isinstance(split, str):
        return parse_split(split, explicit_test=explicit_test)
    return check_fractions(split, explicit_test=explicit_test)
