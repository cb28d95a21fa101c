"""onnxruntime serving of one model, under the ONNX contract fixed by the project.

The contract a bundle's model must meet (checked by :meth:`ModelRunner.load`):

* one input, named ``manifest.inputs[0].name`` (normally ``"features"``), FP32,
  shape ``[-1, F]`` with ``F == len(manifest.feature_names)``;
* classification: an output ``"probabilities"`` FP32 ``[-1, C]`` with
  ``C == len(manifest.labels)``; regression: an output ``"prediction"`` FP32 ``[-1, 1]``;
* standardization lives inside the graph, so rows are served as they arrive.

:func:`coerce_inputs` turns whatever a client sent (rows, one row, feature
dicts) into a float32 ``(n, F)`` array or raises an :class:`InputShapeError` /
:class:`InputValueError` that names the row and the feature at fault.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeloop.agent.deadline import Deadline
from edgeloop.agent.errors import (
    BundleError,
    InferenceError,
    InputShapeError,
    InputValueError,
    InstallTimeoutError,
    SmokeTestError,
)
from edgeloop.agent.wire.manifest import Manifest
from edgeloop.agent.wire.tensors import CLASSIFICATION_OUTPUT, REGRESSION_OUTPUT

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 4096
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_PLAIN_NUMBERS = frozenset({float, int})
_SMALL = 64  # inputs of up to this many values are range-checked in Python, larger ones with numpy


class ModelContractError(BundleError):
    """The ONNX model does not match its manifest or the project's ONNX contract."""

    code = "model_mismatch"


# --- input coercion ---------------------------------------------------------------------
def _names_hint(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _shape_error(manifest: Manifest, got: int, where: str = "") -> InputShapeError:
    names = list(manifest.feature_names)
    return InputShapeError(
        f"{where}expected {len(names)} features named {_names_hint(names)}, got {got}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _bad_value(v: Any, row: int, feature: str) -> InputValueError:
    where = f"row {row}, feature {feature!r}"
    if v is None:
        what = "is null"
    elif isinstance(v, (bool, np.bool_)):
        what = f"is a boolean ({v}); send 1 or 0"
    elif isinstance(v, str):
        what = f"is a string ({v[:40]!r}); send a JSON number"
    elif isinstance(v, (int, float, np.integer, np.floating)):
        fv = float(v) if not isinstance(v, int) or abs(v) < 2**1023 else math.inf
        if math.isnan(fv):
            what = "is NaN"
        elif math.isinf(fv) and not isinstance(v, int):
            what = f"is {'+' if fv > 0 else '-'}Infinity"
        else:
            text = repr(v) if not isinstance(v, int) or abs(v) < 10**40 else f"an integer of {len(str(abs(v)))} digits"
            what = f"is {text}, outside the float32 range (|x| <= {_FLOAT32_MAX:.3g})"
    else:
        what = f"is a {type(v).__name__}, not a number"
    return InputValueError(f"{where} {what}; every feature must be a finite number")


def _rows_from(inputs: Any, manifest: Manifest) -> list[Sequence[Any]]:
    """Normalise the accepted input forms into a list of rows (not yet type-checked)."""
    names = list(manifest.feature_names)
    if isinstance(inputs, Mapping):
        return [_row_from_dict(inputs, names, 0)]
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (list, tuple)):
        raise InputShapeError(
            f"inputs must be a list of rows, one row, or an object of feature values; got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise InputShapeError(
            f"inputs are empty; send at least one row of {len(names)} features ({_names_hint(names)})")
    first = inputs[0]
    if isinstance(first, Mapping):
        rows: list[Sequence[Any]] = []
        for i, r in enumerate(inputs):
            if not isinstance(r, Mapping):
                raise InputShapeError(f"row {i} is a {type(r).__name__} but row 0 is an object; do not mix row forms")
            rows.append(_row_from_dict(r, names, i))
        return rows
    if isinstance(first, (list, tuple)):
        for i, r in enumerate(inputs):
            if not isinstance(r, (list, tuple)):
                raise InputShapeError(f"ragged inputs: row {i} is a {type(r).__name__}, not a list like row 0")
            if len(r) != len(names):
                if i > 0 and len(r) != len(first):
                    raise InputShapeError(
                        f"ragged inputs: row {i} has {len(r)} values but row 0 has {len(first)}; "
                        f"every row needs {len(names)} features")
                raise _shape_error(manifest, len(r), f"row {i}: ")
        return list(inputs)
    # one flat row
    if any(isinstance(v, (list, tuple, Mapping)) for v in inputs):
        raise InputShapeError("ragged inputs: a flat row of values mixes numbers and lists")
    if len(inputs) != len(names):
        raise _shape_error(manifest, len(inputs))
    return [inputs]


def _row_from_dict(d: Mapping[str, Any], names: list[str], row: int) -> list[Any]:
    missing = [n for n in names if n not in d]
    extra = [str(k) for k in d if k not in set(names)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_names_hint(missing)}")
        if extra:
            parts.append(f"unknown {_names_hint(extra)}")
        raise InputShapeError(
            f"row {row}: expected {len(names)} features named {_names_hint(names)}; {'; '.join(parts)}")
    return [d[n] for n in names]


def _coerce_array(arr: np.ndarray, manifest: Manifest) -> np.ndarray:
    f = manifest.n_features
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputValueError(f"inputs array has dtype {arr.dtype}; send numbers")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InputShapeError(f"inputs array must be 2-D (rows, {f}), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputShapeError(f"inputs are empty; send at least one row of {f} features")
    if arr.shape[1] != f:
        raise _shape_error(manifest, arr.shape[1])
    return arr


def _plain_rows(inputs: Any, f: int) -> np.ndarray | None:
    """The common case, checked in few steps: JSON rows (or one row) of ``f`` plain numbers, all finite
    and within float32 range -> float32 ``(n, f)``. None for anything else: :func:`coerce_inputs`
    then takes the path that accepts every form and names the row and feature at fault."""
    if type(inputs) is not list or not inputs:
        return None
    rows = inputs if type(inputs[0]) is list else [inputs]
    for row in rows:
        if type(row) is not list or len(row) != f or not set(map(type, row)) <= _PLAIN_NUMBERS:
            return None
    if len(rows) * f <= _SMALL:  # checked value by value: fewer steps than numpy for a few values
        for row in rows:
            for v in row:
                if not -_FLOAT32_MAX <= v <= _FLOAT32_MAX:  # NaN compares false as well
                    return None
        return np.array(rows, dtype=np.float32)
    try:
        arr = np.array(rows, dtype=np.float64)
    except OverflowError:  # an int too large for a double
        return None
    if not np.abs(arr).max() <= _FLOAT32_MAX:
        return None
    return arr.astype(np.float32)


def coerce_inputs(inputs: Any, manifest: Manifest, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """Client inputs -> C-contiguous float32 array ``(n, F)``.

    Accepted forms: a list of rows, one flat row, an object ``{feature: value}``,
    a list of such objects, or a numeric numpy array. Values must be finite
    numbers within float32 range; booleans, strings, null, NaN and Infinity are
    refused (Python's json parses ``NaN``/``Infinity``, so values are checked,
    not the text).
    """
    fast = _plain_rows(inputs, manifest.n_features)
    if fast is not None:
        if fast.shape[0] > max_rows:
            raise InputShapeError(f"{fast.shape[0]} rows in one request; the limit is {max_rows}: split the batch")
        return fast
    names = list(manifest.feature_names)
    rows_list: list[Sequence[Any]] | None = None
    if isinstance(inputs, np.ndarray):
        arr = _coerce_array(inputs, manifest)
        n = int(arr.shape[0])
    else:
        rows_list = _rows_from(inputs, manifest)
        n = len(rows_list)
    if n > max_rows:
        raise InputShapeError(f"{n} rows in one request; the limit is {max_rows}: split the batch")
    if rows_list is not None:
        for i, row in enumerate(rows_list):
            if not set(map(type, row)) <= _PLAIN_NUMBERS:  # fast path: plain JSON numbers only
                for j, v in enumerate(row):
                    if not _is_number(v):
                        raise _bad_value(v, i, names[j])
        try:
            arr = np.array(rows_list, dtype=np.float64)
        except OverflowError:  # an int too large for a double
            for i, row in enumerate(rows_list):
                for j, v in enumerate(row):
                    if isinstance(v, int) and abs(v) >= 2**1023:
                        raise _bad_value(v, i, names[j]) from None
            raise
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        i, j = (int(k) for k in np.argwhere(~finite)[0])
        raw = rows_list[i][j] if rows_list is not None else arr[i, j]
        raise _bad_value(raw, i, names[j])
    return out


# --- the runner ---------------------------------------------------------------------------
def session_options(threads: int = 1) -> ort.SessionOptions:
    """The small-model recipe: few threads, no spinning, sequential, full graph optimization."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only; contract problems are reported by ModelRunner
    return so


def _static_dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


@dataclass(frozen=True)
class _Contract:
    input_name: str
    primary_output: str
    output_names: list[str]


class ModelRunner:
    """One onnxruntime session serving one manifest's model. ``predict`` is thread-safe."""

    def __init__(self, manifest: Manifest, session: ort.InferenceSession, *, bundle_sha256: str = "") -> None:
        self.manifest = manifest
        self.session = session
        self.bundle_sha256 = bundle_sha256
        self._contract = _check_contract(manifest, session)
        self._labels = [str(label) for label in manifest.labels]

    @classmethod
    def load(cls, manifest: Manifest, model_bytes: bytes, *, threads: int = 1, bundle_sha256: str = "",
             deadline: Deadline | None = None) -> ModelRunner:
        """Create the session from bytes, check it against the manifest, and warm it up.

        Raises a :class:`~edgeloop.agent.errors.BundleError` subclass when the bytes are not
        a loadable model or the model does not match its manifest, and
        :class:`~edgeloop.agent.errors.InstallTimeoutError` when ``deadline`` passes first.
        """
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        dl = deadline or Deadline(None)
        try:
            session = dl.call("loading", lambda: ort.InferenceSession(
                model_bytes, sess_options=session_options(threads), providers=["CPUExecutionProvider"]))
        except InstallTimeoutError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelContractError(
                f"{manifest.entrypoint} is not a model onnxruntime {ort.__version__} can load: "
                f"{_first_line(exc)}. Re-export it (check the opset) and rebuild the bundle") from exc
        runner = cls(manifest, session, bundle_sha256=bundle_sha256)
        runner._warm_up(dl)
        return runner

    # --- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.model_name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def input_name(self) -> str:
        return self._contract.input_name

    @property
    def is_classifier(self) -> bool:
        return self.manifest.task == "classification"

    # --- inference ----------------------------------------------------------------------------
    def predict(self, x: np.ndarray, run_options: ort.RunOptions | None = None) -> dict[str, np.ndarray]:
        """Raw outputs (every output the manifest lists) for float32 rows ``x`` (n, F)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.manifest.n_features:
            raise _shape_error(self.manifest, x.shape[-1] if x.ndim else 0)
        names = self._contract.output_names
        try:
            values = self.session.run(names, {self._contract.input_name: x}, run_options)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed on a batch of {x.shape[0]} rows: {_first_line(exc)}",
                                 code="runtime_error") from exc
        return dict(zip(names, values, strict=True))

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> dict[str, list]:
        """Raw outputs -> JSON-ready lists.

        Classification: ``probabilities`` (list of lists), ``class_index`` (ints)
        and ``label`` (names); regression: ``prediction`` (flat list). Other
        outputs the manifest lists are passed through as nested lists.
        """
        return self.answer(outputs)[0]

    def answer(self, outputs: Mapping[str, np.ndarray]) -> tuple[dict[str, list], np.ndarray | None]:
        """:meth:`postprocess`, plus the predicted class index per row (classification, else None)."""
        primary = self._contract.primary_output
        out: dict[str, list] = {}
        for name, value in outputs.items():
            arr = np.asarray(value)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InferenceError(
                    f"model produced non-finite values in output {name!r}; the inputs may be far outside "
                    "the training range", code="bad_output")
            if name != primary:
                out[name] = arr.tolist()
        raw = np.asarray(outputs[primary])
        if not self.is_classifier:
            out[REGRESSION_OUTPUT] = raw.reshape(-1).tolist()
            return out, None
        probs = raw.reshape(raw.shape[0], -1)
        idx = probs.argmax(axis=1)
        classes = idx.tolist()
        labels = self._labels
        out[CLASSIFICATION_OUTPUT] = probs.tolist()
        out["class_index"] = classes
        out["label"] = [labels[i] for i in classes]
        return out, idx

    def infer(self, inputs: Any, max_rows: int = DEFAULT_MAX_ROWS) -> dict[str, list]:
        """coerce -> predict -> postprocess, for callers that need nothing in between."""
        return self.postprocess(self.predict(coerce_inputs(inputs, self.manifest, max_rows)))

    # --- checks ---------------------------------------------------------------------------------
    def smoke_test(self, deadline: Deadline | None = None) -> None:
        """Run the manifest's smoke test; raise :class:`SmokeTestError` on any mismatch
        (:class:`InstallTimeoutError` when ``deadline`` passes first)."""
        smoke = self.manifest.smoke_test
        if smoke is None:
            return
        try:
            x = coerce_inputs(smoke.inputs, self.manifest, max_rows=max(1, len(smoke.inputs)))
            with (deadline or Deadline(None)).run_options("the smoke test") as ro:
                raw = self.predict(x, ro)
            processed = self.postprocess(raw)
        except InferenceError as exc:
            raise SmokeTestError(f"smoke test of {self.name} {self.version} could not run: {exc}") from exc
        for name, expected in smoke.expected.items():
            if name in raw:
                actual: Any = raw[name]
            elif name in processed:
                actual = processed[name]
            else:
                raise SmokeTestError(
                    f"smoke test expects output {name!r}, which {self.name} {self.version} does not produce "
                    f"(it produces {', '.join(sorted(set(raw) | set(processed)))})")
            _compare(name, expected, actual, smoke.atol, f"{self.name} {self.version}")

    def _warm_up(self, deadline: Deadline) -> None:
        n = self.manifest.n_features
        try:
            with deadline.run_options("the warm-up") as ro:
                raw = self.predict(np.zeros((2, n), dtype=np.float32), ro)
        except InferenceError as exc:
            raise ModelContractError(f"{self.manifest.entrypoint} failed its warm-up run: {exc}") from exc
        out = raw[self._contract.primary_output]
        if self.is_classifier:
            want = (2, len(self.manifest.labels))
            if out.shape != want:
                raise ModelContractError(
                    f"output {CLASSIFICATION_OUTPUT!r} has shape {list(out.shape)} for 2 rows; the manifest's "
                    f"{len(self.manifest.labels)} labels need {list(want)}")
        elif out.shape not in ((2, 1), (2,)):
            raise ModelContractError(
                f"output {REGRESSION_OUTPUT!r} has shape {list(out.shape)} for 2 rows; regression needs [2, 1]")
        for _ in range(2):
            with deadline.run_options("the warm-up") as ro:
                self.predict(np.zeros((1, n), dtype=np.float32), ro)


def _check_contract(manifest: Manifest, session: ort.InferenceSession) -> _Contract:
    """Compare the session's signature with the manifest and the ONNX contract."""
    model = f"{manifest.model_name} {manifest.version} ({manifest.entrypoint})"
    f = manifest.n_features
    fix = "; re-export the model or fix the manifest and rebuild the bundle"
    if not manifest.inputs:
        raise ModelContractError(f"manifest of {model} declares no input tensor{fix}")
    want_in = manifest.inputs[0]
    if want_in.shape and want_in.shape[-1] != f:
        raise ModelContractError(
            f"manifest input {want_in.name!r} has shape {want_in.shape} but lists {f} feature names{fix}")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelContractError(
            f"{model} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); the contract is one input{fix}")
    sin = inputs[0]
    if sin.name != want_in.name:
        raise ModelContractError(f"{model} input is named {sin.name!r}, the manifest says {want_in.name!r}{fix}")
    if sin.type != "tensor(float)":
        raise ModelContractError(f"{model} input {sin.name!r} is {sin.type}, the contract is FP32 tensor(float){fix}")
    if len(sin.shape) != 2:
        raise ModelContractError(
            f"{model} input {sin.name!r} has rank {len(sin.shape)} {sin.shape}; needs [-1, {f}]{fix}")
    n_in = _static_dim(sin.shape[1])
    if n_in is not None and n_in != f:
        raise ModelContractError(
            f"{model} takes {n_in} features but the manifest lists {f} "
            f"({_names_hint(list(manifest.feature_names))}){fix}")
    batch = _static_dim(sin.shape[0])
    if batch is not None:
        raise ModelContractError(
            f"{model} input {sin.name!r} has a fixed batch size {batch}; export it with a dynamic batch dimension{fix}")

    souts = {o.name: o for o in session.get_outputs()}
    primary = CLASSIFICATION_OUTPUT if manifest.task == "classification" else REGRESSION_OUTPUT
    declared = [o.name for o in manifest.outputs]
    if primary not in declared or primary not in souts:
        raise ModelContractError(
            f"a {manifest.task} model must output {primary!r}; {model} produces {', '.join(sorted(souts))} "
            f"and the manifest lists {', '.join(declared) or 'nothing'}{fix}")
    for name in declared:
        if name not in souts:
            raise ModelContractError(
                f"manifest lists output {name!r} but {model} produces {', '.join(sorted(souts))}{fix}")
    out = souts[primary]
    if out.type != "tensor(float)":
        raise ModelContractError(f"{model} output {primary!r} is {out.type}, the contract is FP32 tensor(float){fix}")
    if manifest.task == "classification":
        if not manifest.labels:
            raise ModelContractError(f"manifest of classifier {model} has no labels{fix}")
        c = _static_dim(out.shape[-1]) if out.shape else None
        if c is not None and c != len(manifest.labels):
            raise ModelContractError(
                f"{model} outputs {c} class probabilities but the manifest has {len(manifest.labels)} labels{fix}")
    return _Contract(input_name=sin.name, primary_output=primary, output_names=declared)


def _compare(name: str, expected: Any, actual: Any, atol: float, model: str) -> None:
    if name == "label":
        if list(expected) != list(actual):
            raise SmokeTestError(f"smoke test of {model}: output 'label' is {actual}, expected {expected}")
        return
    try:
        exp = np.asarray(expected, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SmokeTestError(f"smoke test of {model}: expected values of {name!r} are not numbers: {exc}") from exc
    act = np.asarray(actual, dtype=np.float64)
    if exp.shape != act.shape:
        if exp.size != act.size:
            raise SmokeTestError(
                f"smoke test of {model}: output {name!r} has shape {list(act.shape)}, expected {list(exp.shape)}")
        exp = exp.reshape(act.shape)
    if not np.allclose(act, exp, atol=atol):
        diff = float(np.nanmax(np.abs(act - exp))) if act.size else 0.0
        raise SmokeTestError(
            f"smoke test of {model}: output {name!r} differs from the expected values by up to {diff:.3g} "
            f"(atol {atol:g}); the model is not the one the bundle was built and tested with")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


__all__ = ["ModelRunner", "ModelContractError", "coerce_inputs", "session_options",
           "CLASSIFICATION_OUTPUT", "REGRESSION_OUTPUT", "DEFAULT_MAX_ROWS"]
