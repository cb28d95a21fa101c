"""Why an evaluation gate changed is kept in the change's own ``model.gate`` audit entry:
``Hub.set_gate(..., reason=)`` and ``edgeloop registry gate ... --reason``, on a real hub home."""

from __future__ import annotations

import hashlib

from edgeloop.hub.cli import parser as cli
from edgeloop.hub.services import Hub


def _version(hub: Hub, model: str = "pump") -> None:
    """dataset -> run -> version as the training pipeline records them (no training needed)."""
    reg = hub.registry
    sha = hashlib.sha256(model.encode()).hexdigest()
    ds = reg.add_dataset(sha, "pump.csv", "file:pump.csv", 90, ["a", "b"], ["x", "y"])
    run = reg.start_run(ds["id"], model, {"epochs": 1}, code_version="abc", library_versions={})
    reg.finish_run(run["id"], metrics={"test_accuracy": 0.9}, history=[{"epoch": 1, "train_loss": 0.5}])
    reg.add_version(model, run["id"], hashlib.sha256(b"onnx").hexdigest(), task="classification",
                    chosen="fp32", quantization={"reason": "test", "report": {}}, metrics={"test_accuracy": 0.9})


def _gate_entries(hub: Hub) -> list[dict]:
    return hub.list_audit(20, action="model.gate")


def test_the_reason_is_in_the_gate_changes_own_audit_entry(tmp_path):
    with Hub(tmp_path / "home", actor="operator") as hub:
        _version(hub)
        hub.set_gate("pump", {"test_accuracy": 0.8}, reason="a floor for the pilot")
        hub.set_gate("pump", None, reason="  the pilot is over  ")
        hub.set_gate("pump", {"test_accuracy": 0.7})
        entries = _gate_entries(hub)
        assert [(e["actor"], e["target"], e["detail"]["reason"]) for e in entries] == [
            ("operator", "pump", ""), ("operator", "pump", "the pilot is over"),
            ("operator", "pump", "a floor for the pilot")]
        assert entries[1]["detail"]["gate"] is None and entries[1]["detail"]["previous"] is not None
        assert entries[2]["detail"]["gate"]["min"] == {"test_accuracy": 0.8}
        assert not [e for e in hub.list_audit(20) if e["action"] == "gate.reason"]  # one entry per change


def test_registry_gate_reason_is_audited_and_needs_a_change(capsys, tmp_path):
    home = tmp_path / "home"
    with Hub(home) as hub:
        _version(hub)
    argv = ["registry", "gate", "pump", "--home", str(home)]
    assert cli.main(argv + ["--min", "test_accuracy=0.85", "--reason", "customer spec 4.2"]) == 0
    assert cli.main(argv + ["--reason", "nothing changes"]) == 2
    assert "--reason goes with a change" in capsys.readouterr().err
    with Hub(home) as hub:
        (entry,) = _gate_entries(hub)
        assert entry["detail"]["reason"] == "customer spec 4.2"
        assert entry["detail"]["gate"]["min"] == {"test_accuracy": 0.85}
