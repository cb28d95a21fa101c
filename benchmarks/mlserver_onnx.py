"""A minimal MLServer runtime wrapping onnxruntime, for benchmarks/bench_http.py only.

It runs inside benchmarks/.mlserver-venv (made by benchmarks/setup_mlserver.sh), which has
MLServer but not edgeloop. The session options come from the model settings' ``extra``
parameters, which bench_http.py fills from ``edgeloop.agent.runtime.session_options(1)``, so
both servers run the same engine the same way. Like the agent, it honours the outputs a
request asks for and otherwise returns every model output.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


def _session_options(spec: dict) -> ort.SessionOptions:
    so = ort.SessionOptions()
    for name in ("intra_op_num_threads", "inter_op_num_threads", "log_severity_level"):
        setattr(so, name, spec[name])
    so.execution_mode = ort.ExecutionMode(spec["execution_mode"])
    so.graph_optimization_level = ort.GraphOptimizationLevel(spec["graph_optimization_level"])
    for key, value in spec["config"].items():
        so.add_session_config_entry(key, value)
    return so


class OnnxRuntime(MLModel):
    """One onnxruntime session; the single input is decoded with MLServer's NumpyCodec."""

    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        spec = self.settings.parameters.extra["session_options"]
        self._session = ort.InferenceSession(uri, _session_options(spec), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        x = np.zeros((1, self._session.get_inputs()[0].shape[1]), dtype=np.float32)
        for _ in range(3):
            self._session.run(self._outputs, {self._input: x})
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._outputs
        values = self._session.run(wanted, {self._input: x})
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(wanted, values, strict=True)])
