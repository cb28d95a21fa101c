"""build_version + build_bundle for CNN window data and regression, checked by the agent's own code.

Each version is packed into a signed bundle, verified, loaded by
:class:`agent.runtime.ModelRunner` (the ONNX contract) and smoke-tested,
exactly as an edge agent does on install.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.agent.drift import DriftMonitor
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.wire.bundle import sha256, verify_bundle
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys
from edgeloop.hub.datasets import generate_sensor_data
from edgeloop.hub.errors import CancelledError, ExportError, NotFoundError
from edgeloop.hub.pipeline import build_bundle, build_version
from edgeloop.hub.progress import CancelToken
from edgeloop.hub.registry import Registry
from edgeloop.hub.training import TrainParams, load_model
from tests.test_train_factory import regression_dataset, window_dataset


def _register(reg: Registry, ds) -> dict:
    return reg.add_dataset(ds.sha256, "data", ds.source or "memory", ds.n_rows, ds.feature_names, ds.labels)


def _install(reg, tmp_path, version_id):
    key = SigningKey.generate()
    b = build_bundle(reg, tmp_path / "models", tmp_path / "bundles", version_id, key)
    verified = verify_bundle(b.path.read_bytes(), TrustedKeys.of([key.public]))
    runner = ModelRunner.load(verified.manifest, verified.files[verified.manifest.entrypoint])
    runner.smoke_test()
    return b, runner


def test_cnn_window_version_and_bundle(tmp_path):
    ds = window_dataset(700, seed=0)
    params = TrainParams(arch="cnn1d", channels=(16, 32), epochs=15, patience=5, seed=0)
    with Registry(tmp_path / "registry.sqlite") as reg:
        build = build_version(reg, tmp_path / "models", ds, _register(reg, ds), "window-cnn", params)
        q = build.quantization
        assert q["method"] == "static_qdq" and q["per_channel"] is True
        assert q["chosen"] in ("int8", "fp32") and q["reason"].endswith(f"ship {q['chosen']}")
        rep = q["report"]
        assert {"int8_latency_us_batch32", "fp32_latency_us_batch32", "size_ratio", "metric_drop_points"} <= set(rep)
        rec = reg.get_version(build.id)
        assert rec["quantization"]["report"]["n_test"] == rep["n_test"]
        assert reg.get_model("window-cnn")["task"] == "classification"
        meta = json.loads((build.folder / "meta.json").read_text())
        assert meta["arch"] == "cnn1d" and meta["window_shape"] == [3, 48] and "prediction_reference" not in meta
        assert build.metrics["test_accuracy"] > 0.8
        b, runner = _install(reg, tmp_path, build.id)
        m = b.manifest
        assert [(o.name, o.shape) for o in m.outputs] == [("probabilities", [-1, 3])] and m.labels == ds.labels
        assert m.inputs[0].shape == [-1, 144] and m.quantization["chosen"] == q["chosen"]
        assert m.quantization["report"]["int8_latency_us_batch32"] == rep["int8_latency_us_batch32"]
        assert len(m.drift.features) == 3 * 6 and len(m.drift.output_shares) == 3  # per-channel summaries
        assert (m.drift.layout.channels, m.drift.layout.steps, m.drift.rows) == (3, 48, ds.n_rows)
        out = runner.infer(ds.X[:5].tolist())
        assert len(out["label"]) == 5


def test_regression_version_and_bundle(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5)) * [1, 10, 100, 0.1, 5] + [0, 50, 1000, 1, 20]
    y = 3 * (X[:, 0]) + 0.2 * (X[:, 1] - 50) + 0.01 * (X[:, 2] - 1000) + rng.normal(0, 0.2, 500) + 40
    ds = regression_dataset([f"s{i}" for i in range(5)], X, y, source="synthetic-linear")
    with Registry(tmp_path / "registry.sqlite") as reg:
        build = build_version(reg, tmp_path / "models", ds, _register(reg, ds), "load-reg",
                              TrainParams(epochs=40, patience=8, seed=0), quantize="dynamic")
        assert build.metrics["test_r2"] > 0.95
        q = build.quantization
        assert q["method"] == "dynamic" and q["report"]["metric"] == "rmse" and "RMSE change" in q["reason"]
        rec = reg.get_version(build.id)
        assert reg.get_model("load-reg")["task"] == "regression"
        pref = rec["metrics"]["prediction_reference"]
        meta = json.loads((build.folder / "meta.json").read_text())
        assert meta["prediction_reference"] == pref and meta["labels"] == [] and meta["task"] == "regression"
        assert sum(pref["counts"]) == pref["rows"] and len(pref["counts"]) == len(pref["edges"]) + 1
        assert list(meta["smoke_expected"]) == ["prediction"]
        assert np.shape(meta["smoke_expected"]["prediction"]) == (4, 1)
        b, runner = _install(reg, tmp_path, build.id)
        m = b.manifest
        assert m.task == "regression" and m.labels == []
        assert [(o.name, o.datatype, o.shape) for o in m.outputs] == [("prediction", "FP32", [-1, 1])]
        assert m.drift.output_shares == [] and m.drift.output_labels == []
        assert "prediction_reference" not in m.quantization  # not smuggled into the manifest
        out = runner.infer(ds.X[:3].tolist())
        assert len(out["prediction"]) == 3 and np.allclose(out["prediction"], y[:3], atol=2.0)
        monitor = DriftMonitor(m.drift, agent_id="a", model=m.model_name, version=m.version, bundle_sha256=b.sha256)
        assert monitor.observe(ds.X[:250]) and monitor.observe(ds.X[:10], None) == []


def test_pipeline_refuses_dynamic_cnn_and_records_cancelled_runs(tmp_path):
    ds = window_dataset(300, seed=2)
    with Registry(tmp_path / "registry.sqlite") as reg:
        rec = _register(reg, ds)
        with pytest.raises(ExportError, match="dynamic quantization is for MLPs"):
            build_version(reg, tmp_path / "models", ds, rec, "w", TrainParams(arch="cnn1d"), quantize="dynamic")
        token = CancelToken()
        token.cancel()
        with pytest.raises(CancelledError):
            build_version(reg, tmp_path / "models", ds, rec, "w", TrainParams(arch="cnn1d", epochs=2), cancel=token)
        assert [r["status"] for r in reg.list_runs("w")] == ["cancelled"]


# --------------------------------------------------------------------------
# files on disk before the registry rows that point to them
# --------------------------------------------------------------------------

VERSION_FILES = {"model.fp32.onnx", "model.int8.onnx", "model.pt", "reference.json", "meta.json"}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p.read_bytes()) for p in folder.iterdir()} if folder.is_dir() else {}


class _WatchingRegistry(Registry):
    """A real registry that notes what is on disk at the moment a version or bundle row has just been added."""

    def __init__(self, path: Path, models_dir: Path) -> None:
        super().__init__(path)
        self.models_dir = models_dir
        self.versions_seen: list[tuple[dict, dict[str, str]]] = []
        self.bundles_seen: list[tuple[dict, str | None]] = []

    def add_version(self, *args, **kwargs) -> dict:
        row = super().add_version(*args, **kwargs)
        self.versions_seen.append((row, _digests(self.models_dir / row["model_name"] / row["version"])))
        return row

    def add_bundle(self, *args, **kwargs) -> dict:
        row = super().add_bundle(*args, **kwargs)
        path = Path(row["path"])
        self.bundles_seen.append((row, sha256(path.read_bytes()) if path.is_file() else None))
        return row


def test_version_and_bundle_files_are_complete_when_their_rows_appear(tmp_path):
    ds = generate_sensor_data(400, seed=0)
    models, bundles = tmp_path / "models", tmp_path / "bundles"
    with _WatchingRegistry(tmp_path / "registry.sqlite", models) as reg:
        build = build_version(reg, models, ds, _register(reg, ds), "sensors", TrainParams(epochs=3, seed=0))
        ((row, on_disk),) = reg.versions_seen
        assert row["id"] == build.id == "sensors:1" and build.folder == models / "sensors" / "1"
        assert set(on_disk) == VERSION_FILES
        assert on_disk["model.fp32.onnx"] == row["onnx_sha256"]
        assert on_disk["model.int8.onnx"] == row["int8_sha256"]
        assert on_disk == _digests(build.folder)  # nothing was written after the row
        meta = json.loads((build.folder / "meta.json").read_text())
        assert meta["version_id"] == build.id and meta["run_id"] == row["run_id"]
        assert load_model(build.folder / "model.pt").config() == meta["model_config"]
        assert [p.name for p in (models / "sensors").iterdir()] == ["1"]  # no staging folder left

        b = build_bundle(reg, models, bundles, build.id, SigningKey.generate())
        ((brow, bundle_digest),) = reg.bundles_seen
        assert bundle_digest == brow["sha256"] == b.sha256 and Path(brow["path"]) == b.path
        assert [p.name for p in bundles.iterdir()] == [b.path.name]  # no temporary file left


@pytest.mark.parametrize("fails", ["before the rename", "after the rename"])
def test_a_version_whose_files_cannot_be_put_in_place_is_not_recorded(tmp_path, monkeypatch, fails):
    import edgeloop.hub.pipeline.version as pipeline_version

    real_install = pipeline_version.install_folder

    def install_then_fail(staging: Path, final: Path) -> None:
        if fails == "after the rename":
            real_install(staging, final)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline_version, "install_folder", install_then_fail)
    ds = generate_sensor_data(300, seed=1)
    models = tmp_path / "models"
    params = TrainParams(epochs=2, seed=0)
    with Registry(tmp_path / "registry.sqlite") as reg:
        rec = _register(reg, ds)
        with pytest.raises(OSError, match="No space left"):
            build_version(reg, models, ds, rec, "sensors", params, quantize=False)
        assert reg.list_versions() == []
        with pytest.raises(NotFoundError):
            reg.get_version("sensors:1")
        assert list((models / "sensors").iterdir()) == []  # neither a final folder nor the staging folder

        # A folder left at the next version's place (a crash between rename and insert) is moved aside.
        monkeypatch.undo()
        (models / "sensors" / "1").mkdir()
        (models / "sensors" / "1" / "model.fp32.onnx").write_bytes(b"left over")
        build = build_version(reg, models, ds, rec, "sensors", params, quantize=False)
        assert build.id == "sensors:1"
        assert set(_digests(build.folder)) == VERSION_FILES - {"model.int8.onnx"}
        assert _digests(build.folder)["model.fp32.onnx"] == reg.get_version(build.id)["onnx_sha256"]
        (aside,) = [p for p in (models / "sensors").iterdir() if p.name != "1"]
        assert aside.name.startswith(".replaced-1-") and (aside / "model.fp32.onnx").read_bytes() == b"left over"
