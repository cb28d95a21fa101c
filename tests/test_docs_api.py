"""docs/api.md runs as written: its hub and wire examples execute against a real hub home,
and the public names it lists are the ones `edgeloop` exports."""

from __future__ import annotations

import re

import edgeloop
from tests.conftest import REPO

API_DOC = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", API_DOC, flags=re.S)


def _block(marker: str) -> str:
    (code,) = [b for b in BLOCKS if marker in b]
    return code


def test_every_name_in_the_api_table_is_exported():
    table_names = set(re.findall(r"`edgeloop\.(\w+)`", API_DOC.split("## The hub")[0]))
    assert table_names == set(edgeloop.__all__) - {"__version__"}
    for name in table_names:
        assert getattr(edgeloop, name) is not None


def test_the_hub_and_wire_examples_run_as_written(tmp_path):
    ns: dict = {"home": tmp_path / "home"}
    exec(compile(_block("hub.import_dataset"), "docs/api.md (hub)", "exec"), ns)
    build, bundle = ns["build"], ns["bundle"]
    assert build.id == "press:1" and 0.0 <= build.metrics["test_accuracy"] <= 1.0
    assert bundle.path.exists()

    from edgeloop import Hub
    from edgeloop.agent.wire.messages import ActiveModel, AgentState

    with Hub(tmp_path / "home") as hub:
        pem = hub.key.public_pem()
    state = AgentState(agent_id="edge-1", status="online", session=3, agent_version=edgeloop.__version__,
                       host="h", http_url="http://127.0.0.1:1/", started_at=1.0,
                       active=ActiveModel(model="press", version="1", bundle_sha256=bundle.sha256))
    wire_ns = {"payload_bytes": state.encode(), "bundle_bytes": bundle.path.read_bytes(), "hub_public_pem": pem}
    exec(compile(_block("wire.bundle.verify_bundle"), "docs/api.md (wire)", "exec"), wire_ns)
    assert wire_ns["topic"] == "edgeloop/v1/agents/edge-1/state"
    assert wire_ns["state"] == state
    assert wire_ns["verified"].manifest.model_name == "press"
