"""The pre-flight's measuring process: ``python -m edgeloop.agent.preflight_child`` (started by
:func:`edgeloop.agent.preflight.measure`).

stdin: one JSON header line ``{"features": F, "runs": R, "seconds": S, "models": [{"name", "size", "smoke"}]}``
followed by the models' bytes, one after the other. stdout, one JSON object a line:

1. per model, in order, as it is loaded: ``{"phase": "load", ...}`` -- whether it loads (onnxruntime's message,
   the unsupported operators), load time, its smoke test, and its memory (the peak RSS growth, ``VmHWM``
   reset before each model through ``/proc/self/clear_refs``; where that is not possible the child stops
   after the first model and the parent starts another process for the rest);
2. per model that runs: ``{"phase": "time", "name", "runs", "p50_ms", "p99_ms"}`` -- batch-1 latency, the
   models' runs interleaved so that the machine's load hits all alike;
3. ``{"phase": "done"}``.

The parent (:func:`edgeloop.agent.preflight.measure`) merges them into
:class:`edgeloop.agent.wire.preflight.VariantFigures`; a child that dies while loading a model has that model
refused and the others measured again without it.

It imports only the standard library, numpy and onnxruntime (not the wire package and its cryptography), so
it starts fast; its session options are those the agent serves with
(:func:`edgeloop.agent.runtime.session_options`, checked by tests/test_preflight.py).
"""

from __future__ import annotations

import base64
import gc
import json
import re
import resource
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort

WARMUP_RUNS = 3
# y = Identity(x), float [1, 1], opset 13: loaded once before the baseline, so that onnxruntime's one-time
# set-up (kernel registry, thread pools) is not counted as the first model's memory
_WARM_MODEL = ("CAgSCGVkZ2Vsb29wOj8KEAoBeBIBeSIISWRlbnRpdHkSAXdaEwoBeBIOCgwIARIICgIIAQoCCAFiEwoBeRIOCgwIARIICgIIAQoC"
               "CAFCBAoAEA0=")
_UNSUPPORTED = re.compile(r"(?:implementation for |No Op registered for |Unrecognized op(?:erator)?:? )'?([\w.]+)")


def session_options() -> ort.SessionOptions:
    """The serving recipe of :func:`edgeloop.agent.runtime.session_options` with one thread."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def unsupported_ops(message: str) -> list[str]:
    """The operators onnxruntime's load error names as having no kernel (or no schema) here."""
    return sorted(set(_UNSUPPORTED.findall(message)))


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    hwm = _rss_kib("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def smoke_error(sess: Any, name: str, smoke: dict) -> str | None:
    """None when ``sess`` gives the smoke test's expected values for the outputs it produces, else why not
    (compared as :meth:`edgeloop.agent.runtime.ModelRunner.smoke_test` does: ``allclose`` within ``atol``)."""
    try:
        x = np.asarray(smoke["inputs"], dtype=np.float32)
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x}),
                        strict=True))
        atol = float(smoke.get("atol", 1e-4))
        for out, expected in smoke["expected"].items():
            if out not in outs:
                continue  # a post-processed output (label): checked when the agent loads the model
            act, exp = np.asarray(outs[out], dtype=np.float64), np.asarray(expected, dtype=np.float64)
            if exp.size != act.size:
                return f"smoke test of {name}: output {out!r} has shape {list(act.shape)}, expected {list(exp.shape)}"
            exp = exp.reshape(act.shape)
            if not np.allclose(act, exp, atol=atol):
                diff = float(np.nanmax(np.abs(act - exp))) if act.size else 0.0
                return (f"smoke test of {name}: output {out!r} differs from the expected values by up to {diff:.3g} "
                        f"(atol {atol:g})")
    except Exception as exc:
        return f"smoke test of {name} could not run: {_first_line(exc)}"
    return None


def load_one(name: str, data: bytes, n_features: int, base_kib: int, smoke: dict | None = None
             ) -> tuple[dict, Any, dict | None]:
    """Load one model, run its warm-up and its smoke test: ``(figures, session, feed)``, the session None
    when it does not load or run. ``base_kib``: the RSS before the model was read; ``model_mb`` is the peak
    RSS growth from loading and running it (the warm-up runs allocate what every later run needs)."""
    fig: dict[str, Any] = {"phase": "load", "name": name, "loaded": False}
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(data, sess_options=session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        fig.update(error=f"onnxruntime {ort.__version__} cannot load it: {_first_line(exc)}"[:500],
                   unsupported_ops=unsupported_ops(str(exc)))
        return fig, None, None
    fig["load_ms"] = (time.perf_counter() - t0) * 1000.0
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, n_features)).astype(np.float32)}
    try:
        for _ in range(WARMUP_RUNS):
            sess.run(None, feed)
    except Exception as exc:
        fig["error"] = f"onnxruntime fails running it on a batch of 1: {_first_line(exc)}"[:500]
        return fig, None, None
    if smoke is not None:
        why = smoke_error(sess, name, smoke)
        fig.update(smoke_ok=why is None, error=why[:500] if why else None)
    peak = _peak_kib()
    fig.update(loaded=True, peak_rss_mb=peak / 1024.0, model_mb=max(0.0, (peak - base_kib) / 1024.0))
    return fig, sess, feed


def time_runs(loaded: list[tuple[str, Any, dict]], runs: int, seconds: float) -> list[dict]:
    """Batch-1 latency of each session, runs interleaved (A, B, A, B, ...) so that the machine's load hits all
    alike: until each has ``runs`` runs or ``seconds`` per model have passed (one run each at least)."""
    times: list[list[float]] = [[] for _ in loaded]
    end = time.perf_counter() + seconds * max(1, len(loaded))
    while len(times[0]) < runs and (not times[0] or time.perf_counter() < end):
        for k, (_, sess, feed) in enumerate(loaded):
            t = time.perf_counter_ns()
            sess.run(None, feed)
            times[k].append((time.perf_counter_ns() - t) / 1e6)
    return [{"phase": "time", "name": name, "runs": len(ts), "p50_ms": float(np.percentile(ts, 50)),
             "p99_ms": float(np.percentile(ts, 99))} for (name, _, _), ts in zip(loaded, times, strict=True)]


def _emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Read the header and the models from stdin; print a ``load`` line per model as it is loaded, then a
    ``time`` line per model that runs, then ``{"phase": "done"}`` (see the module docstring)."""
    warm = ort.InferenceSession(base64.b64decode(_WARM_MODEL), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    warm.run(None, {"x": np.random.default_rng(0).standard_normal((1, 1)).astype(np.float32)})
    np.percentile(np.ones(4), [50, 99])
    del warm
    gc.collect()
    can_reset = _reset_peak()
    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline())
    features = int(header["features"])
    loaded: list[tuple[str, Any, dict]] = []
    for i, m in enumerate(header["models"]):
        if i > 0 and not (can_reset and _reset_peak()):
            break  # the parent measures the rest in a fresh process
        base = _rss_kib("VmRSS") or _peak_kib()  # the models loaded before are in it: only this one's growth counts
        data = stdin.read(int(m["size"]))
        fig, sess, feed = load_one(str(m["name"]), data, features, base, m.get("smoke"))
        del data
        gc.collect()
        _emit(fig)
        if sess is not None and feed is not None:
            loaded.append((fig["name"], sess, feed))
    if loaded:
        for doc in time_runs(loaded, int(header["runs"]), float(header["seconds"])):
            _emit(doc)
    _emit({"phase": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
