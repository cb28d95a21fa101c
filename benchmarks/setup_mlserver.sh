#!/usr/bin/env bash
# Creates the virtualenv bench_http.py runs MLServer from: benchmarks/.mlserver-venv (gitignored).
#
#     bash benchmarks/setup_mlserver.sh [python]
#
# MLServer is a peer used for comparison only, never a dependency of edgeloop: it gets its own
# virtualenv because its pins (fastapi, pydantic, protobuf, numpy, ...) may fight the project's.
# The onnxruntime it gets is the same version as the project's, so both servers run the same
# engine with the same session options.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.mlserver-venv"
python="${1:-python3.11}"
ort_version="$("$here/../.venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# uvloop 0.22+ raises in asyncio.get_event_loop() without a running loop, which kills MLServer 1.7's
# inference worker processes at start: keep the uvloop of its day.
"$venv/bin/python" -m pip install --quiet "mlserver==1.7.*" "uvloop<0.22" "onnxruntime${ort_version:+==$ort_version}"
"$venv/bin/python" -c 'import mlserver, onnxruntime; print("mlserver", mlserver.__version__, "onnxruntime", onnxruntime.__version__)'
echo "MLServer ready in $venv"
