"""Air-gapped delivery: `edgeloop bundle export` writes signed commands (and the signed bundle) to one file,
`edgeloop-agent install FILE` applies it with the checks a deploy over MQTT gets, and the result reaches the
hub when the agent next sees the broker. Real keys, real agent processes, real Mosquitto."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeloop.agent.store import AgentStore
from edgeloop.agent.wire.airgap import MAGIC, AirgapFile
from edgeloop.agent.wire.commands import Probation
from edgeloop.hub.cli.parser import main as hub_main
from edgeloop.hub.fleet import MosquittoBroker
from tests.conftest import REPO, wait_until, write_agent_config
from tests.test_agent_outbox import Gate


def install(file: Path, cfg: Path, *extra: str, as_json: bool = True) -> subprocess.CompletedProcess:
    """`edgeloop-agent install FILE --config CFG --json` in a process that cannot import the hub, torch or Qt."""
    return subprocess.run([sys.executable, str(REPO / "tests" / "agent_isolated.py"), "install", str(file),
                           "--config", str(cfg), *(["--json"] if as_json else []), *extra], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def deployment(trained, command_id: str) -> dict:
    return trained.hub.registry.get_deployment(command_id)


def stopped_agent(tmp_path, trained, mosquitto) -> tuple[str, Path]:
    """An agent config whose agent is not running (install applies the file in-process)."""
    aid = f"ag-{uuid.uuid4().hex[:8]}"
    return aid, write_agent_config(tmp_path, aid, mosquitto, trained.public_pem)


def export(trained, tmp_path, ref: str, agents: list[str], **kw) -> tuple[Path, dict]:
    out = tmp_path / f"{uuid.uuid4().hex[:6]}.airgap"
    return out, trained.hub.export_airgap(ref, out, agents, override_reason="tests", **kw)


@pytest.mark.broker
@pytest.mark.reliability("agent", "the same air-gapped file installed twice", "second install refused as replayed "
                         "(exit 2); the first one installed and reported to the hub")
def test_export_then_install_on_a_running_agent_reaches_the_hub(tmp_path, trained, online_agent, fleet, capsys):
    aid, proc = online_agent()
    out = tmp_path / "v1.airgap"
    rc = hub_main(["bundle", "export", trained.v1.id, "--out", str(out), "--agent", aid, "--json",
                   "--override-gate", "tests", "--home", str(trained.hub.home.root)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.read_bytes().startswith(MAGIC) and doc["bundle_included"]
    (cmd,) = doc["commands"]
    assert deployment(trained, cmd["command_id"])["status"] == "pending"

    first = install(out, tmp_path / f"{aid}.toml")
    assert first.returncode == 0, first.stderr + proc.log()
    got = result(first)
    assert got["ok"] and got["code"] == "ok" and got["mode"] == "running agent", got
    assert wait_until(lambda: deployment(trained, cmd["command_id"])["status"] == "installed", 30), proc.log()
    assert wait_until(lambda: fleet.agents()[aid].active is not None
                      and fleet.agents()[aid].active.bundle_sha256 == trained.b1.sha256, 10)

    again = install(out, tmp_path / f"{aid}.toml")
    assert again.returncode == 2, again.stdout
    assert result(again)["code"] == "replayed"
    assert deployment(trained, cmd["command_id"])["status"] == "installed"  # the refusal settles nothing


@pytest.mark.broker
def test_install_while_the_broker_is_down_reports_to_the_hub_when_it_returns(tmp_path, trained, agent_process):
    port_dir = tmp_path / "mosquitto"
    broker = MosquittoBroker(workdir=port_dir).start()
    gate = Gate(broker.address)
    aid = f"gap-{uuid.uuid4().hex[:8]}"
    cfg = write_agent_config(tmp_path, aid, SimpleNamespace(address=gate.address), trained.public_pem)
    proc = agent_process(cfg)
    try:
        with trained.hub.fleet(broker.address.url) as fleet:
            assert fleet.wait_online([aid], timeout=30), proc.log()
        broker.stop()
        assert wait_until(lambda: "disconnect" in proc.log().lower(), 10), proc.log()

        out, doc = export(trained, tmp_path, trained.v1.id, [aid])
        done = install(out, cfg)
        assert done.returncode == 0, done.stderr + proc.log()
        assert result(done)["ok"] and result(done)["mode"] == "running agent"
        cid = doc["commands"][0]["command_id"]
        assert deployment(trained, cid)["status"] == "pending"  # nothing reached the hub yet
        assert AgentStore(tmp_path / f"{aid}-state").active().sha256 == trained.b1.sha256

        gate.open.clear()  # the hub listens before the agent may come back
        broker = MosquittoBroker(port=broker.address.port, workdir=port_dir).start()
        with trained.hub.fleet(broker.address.url) as fleet:
            gate.open.set()
            assert fleet.wait_online([aid], timeout=60), proc.log()
            # settled by the install_result from the outbox (the command expires in 7 days: not by state)
            assert wait_until(lambda: deployment(trained, cid)["status"] == "installed", 30), proc.log()
    finally:
        gate.close()
        broker.stop()


@pytest.mark.reliability("agent", "air-gapped file altered in transit (a byte of the bundle, of the signed command)",
                         "refused (hash_mismatch, bad_signature), exit 2, nothing installed")
def test_a_tampered_file_is_refused(tmp_path, trained, mosquitto):
    aid, cfg = stopped_agent(tmp_path, trained, mosquitto)
    out, _ = export(trained, tmp_path, trained.v1.id, [aid])
    data = bytearray(out.read_bytes())
    data[-100] ^= 0x01  # inside the bundle
    bad_bundle = tmp_path / "bad-bundle.airgap"
    bad_bundle.write_bytes(bytes(data))
    f = AirgapFile.decode(out.read_bytes())
    env = json.loads(f.commands[0].envelope)
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    f.commands[0] = type(f.commands[0])(aid, f.commands[0].command_id, json.dumps(env).encode())
    bad_sig = tmp_path / "bad-sig.airgap"
    bad_sig.write_bytes(f.encode())

    refused = install(bad_bundle, cfg)
    assert refused.returncode == 2 and result(refused)["code"] == "hash_mismatch", refused.stdout + refused.stderr
    assert result(refused)["next_step"]
    refused = install(bad_sig, cfg)
    assert refused.returncode == 2 and result(refused)["code"] == "bad_signature", refused.stdout + refused.stderr
    assert AgentStore(tmp_path / f"{aid}-state").active() is None
    # the bundle-tampered file's command was valid: its counter is spent, as over MQTT; a fresh export installs
    assert result(install(out, cfg))["code"] == "replayed"
    fresh, _ = export(trained, tmp_path, trained.v1.id, [aid])
    assert install(fresh, cfg).returncode == 0


@pytest.mark.reliability("agent", "air-gapped file exported for another agent", "refused as wrong_target, exit 2")
def test_a_file_for_another_agent_is_refused(tmp_path, trained, mosquitto):
    aid, cfg = stopped_agent(tmp_path, trained, mosquitto)
    out, _ = export(trained, tmp_path, trained.v1.id, ["someone-else"])
    refused = install(out, cfg, as_json=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "REFUSED [wrong_target]" in refused.stderr and "next: " in refused.stderr and "--agent" in refused.stderr
    assert AgentStore(tmp_path / f"{aid}-state").active() is None


@pytest.mark.reliability("agent", "air-gapped file installed after its command expired", "refused as expired, exit 2")
def test_an_expired_file_is_refused(tmp_path, trained, mosquitto):
    aid, cfg = stopped_agent(tmp_path, trained, mosquitto)
    out, doc = export(trained, tmp_path, trained.v1.id, [aid], expires_days=1 / 86400)  # one second
    time.sleep(max(0.0, doc["expires_at"] - time.time()) + 0.2)
    refused = install(out, cfg)
    assert refused.returncode == 2 and result(refused)["code"] == "expired", refused.stdout + refused.stderr


def test_a_rollback_file_returns_to_the_earlier_version(tmp_path, trained, mosquitto):
    aid, cfg = stopped_agent(tmp_path, trained, mosquitto)
    for ref in (trained.v1.id, trained.v2.id):
        out, _ = export(trained, tmp_path, ref, [aid])
        assert install(out, cfg).returncode == 0
    store = tmp_path / f"{aid}-state"
    assert AgentStore(store).active().sha256 == trained.b2.sha256
    out, doc = export(trained, tmp_path, trained.v1.id, [aid], rollback=True)
    assert not doc["bundle_included"] and doc["kind"] == "rollback"
    done = install(out, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    got = result(done)
    assert got["ok"] and got["mode"] == "in-process" and [e["event"] for e in got["events"]] == ["rollback_result"]
    assert AgentStore(store).active().sha256 == trained.b1.sha256
    # the result waits in the outbox, for the next time the agent reaches the broker
    assert any(doc["commands"][0]["command_id"] in p.read_text() for p in (store / "outbox" / "events").glob("*.msg"))


def test_a_file_deploy_goes_on_the_dead_man_switch_like_an_mqtt_one(tmp_path, trained, mosquitto):
    aid, cfg = stopped_agent(tmp_path, trained, mosquitto)
    out, _ = export(trained, tmp_path, trained.v1.id, [aid])
    assert install(out, cfg).returncode == 0
    out, _ = export(trained, tmp_path, trained.v2.id, [aid], probation=Probation(3600.0, 5))
    done = install(out, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    store = AgentStore(tmp_path / f"{aid}-state")
    assert store.active().sha256 == trained.b2.sha256
    on_probation = store.probation()  # saved before the activation: the next agent start resumes it
    assert on_probation is not None and on_probation["min_requests"] == 5, on_probation

