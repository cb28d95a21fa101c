"""A rollout in waves to N simulated agents (default 1,000) through the real hub runtime: the hub's memory
and time per agent, against a raw broker fan-out of the same bytes to the same N clients in the same run.

    python benchmarks/bench_scale_rollout.py [--agents 1000] [--bundle-kib 2] [--mode rollout deploy]

* agents:  N simulated agents in THIS process (tests/sim_agent.py over tests/sim_fleet.py: one real paho
           client and MQTT connection each, multiplexed by one thread), speaking the real protocol:
           signed states, command verification, chunked transfers with the sha256 and bundle signature
           checked, signed events and serving reports. All start on version 1.
* hub:     ``HubRuntime`` in its OWN process (its memory and CPU are its own): it ingests the N
           announcements (until the registry lists all N online), then takes version 2 to all of them,
           either ``rollout`` -- the rollout driver (hub/runtime/rollouts.py): canary 1 %, 10 %, the rest,
           gates on install, >= 20 requests, error rate and p99, bake 1 s -- or ``deploy`` -- ``Hub.deploy``
           of each wave in turn (the same waves; no bake, no gates). The registry is then checked: every
           agent listed online with version 2 and exactly one installed deployment of it.
* raw:     the same N agents' worth of plain paho clients (multiplexed the same way), the same bundle bytes
           in the same chunks (QoS 1, <= 16 unacknowledged) published once per wave by one plain client on a
           topic that wave subscribed to; each client checks every chunk's CRC and the whole sha256. Timed
           from the first publish of the first wave to the last client done in the last wave.

Memory: the hub process's RSS before its runtime starts (imports done, registry open), after the ingest
and at its peak (VmHWM); per agent = (peak - before) / N. Linux only (/proc). Figures, not tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt

from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.wire.envelope import TrustedKeys
from edgeloop.agent.wire.messages import Chunk, new_id
from edgeloop.hub.fleet import MosquittoBroker
from tests.scale_rig import make_scale_hub, scale_plan, split_waves, wave_sizes
from tests.sim_agent import Behaviour, Publish, Subscribe
from tests.sim_fleet import SimFleet, make_agents

IN_FLIGHT = 16  # the hub's flow control (edgeloop.hub.fleet.delivery.MAX_IN_FLIGHT)
CHUNK = 64 * 1024  # the hub's chunk size (edgeloop.hub.fleet.delivery.DEFAULT_CHUNK_SIZE)


def _kib(field: str) -> float:
    """A field of /proc/self/status in MiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the hub process -------------------------------------------------------------------------------
def hub_process(home: str, url: str, n: int, mode: str, version: str, v2_id: str) -> None:
    """Runs in its own process: the hub runtime, the ingest of N agents, then the rollout; one JSON line out."""
    import logging

    from edgeloop.hub.runtime import HubRuntime
    from edgeloop.hub.services import Hub
    from tests.scale_rig import start_rollout, wait_rollout

    logging.basicConfig(level=logging.WARNING)
    hub = Hub(Path(home), actor="bench")
    hub.registry.list_agents()
    out: dict = {"rss_before_mib": _kib("VmRSS")}
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with HubRuntime(hub, url) as rt:
        fleet = rt.fleet
        assert fleet is not None
        online = lambda: sum(a["status"] == "online" for a in hub.list_agents()) >= n
        if not fleet.wait_for(online, 120):
            raise SystemExit(f"only {len(hub.list_agents())} of {n} agents listed after 120 s")
        out.update(ingest_s=time.perf_counter() - t0, rss_ingested_mib=_kib("VmRSS"))
        t1 = time.perf_counter()
        ids = sorted(a["agent_id"] for a in hub.list_agents())
        if mode == "rollout":
            rid = start_rollout(hub, scale_plan(version, agent_timeout_seconds=300.0))
            row = wait_rollout(hub, rid, 600)
            out.update(status=row["status"], summary=row["summary"])
        else:
            waves = split_waves(ids, wave_sizes(n))
            failed = 0
            for wave in waves:
                res = hub.deploy(fleet, wave, v2_id, override_reason="bench", timeout=120)
                failed += sum(not r["ok"] for r in res)
            out.update(status="completed" if not failed else f"{failed} failed", summary=[len(w) for w in waves])
        out.update(rollout_s=time.perf_counter() - t1, refused=fleet.trust.refused)
    out.update(cpu_s=time.process_time() - cpu0, rss_peak_mib=_kib("VmHWM"))
    deps = [d for d in hub.registry.list_deployments() if d["kind"] == "deploy"]
    rows = hub.list_agents()
    out["registry_exact"] = (len(rows) == n and all(r["active_version"] == version and r["status"] == "online"
                                                    for r in rows)
                             and sorted(d["agent_id"] for d in deps) == sorted(r["agent_id"] for r in rows)
                             and all(d["status"] == "installed" for d in deps))
    print("RESULT " + json.dumps(out), flush=True)


def run_hub(home: Path, url: str, n: int, mode: str, version: str, v2_id: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--hub-process", str(home), url, str(n), mode, version, v2_id],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"the hub process failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


# --- the raw baseline --------------------------------------------------------------------------------
class RawReceiver:
    """A plain client of the raw fan-out: every chunk's CRC, then the whole bundle's sha256."""

    def __init__(self, i: int, size: int, sha: str) -> None:
        self.id = f"raw-{i:04d}"
        self.client_id = f"bench-raw-{i}-{os.getpid()}"
        self.size, self.sha = size, sha
        self.topic: str | None = None
        self.chunks = math.ceil(size / CHUNK)
        self.reset()

    def reset(self) -> None:
        self.buf, self.got, self.done_at = bytearray(self.size), set(), None

    def will(self) -> Publish:
        return Publish(f"bench/raw-status/{self.id}", b"offline", 1, True)

    def subscriptions(self) -> list[Subscribe]:
        return [Subscribe(self.topic)] if self.topic else []

    def on_connected(self) -> list:
        return []

    def goodbye(self, forget: bool = False) -> list:
        return []

    def tick(self) -> list:
        return []

    @property
    def version(self) -> str | None:
        return None

    def on_message(self, topic: str, payload: bytes) -> list:
        try:
            c = Chunk.decode(payload)
        except EdgeloopError:
            return []
        self.buf[c.index * CHUNK:c.index * CHUNK + len(c.data)] = c.data
        self.got.add(c.index)
        if len(self.got) == self.chunks and hashlib.sha256(self.buf).hexdigest() == self.sha:
            self.done_at = time.perf_counter()
        return []


def raw_fanout(address, n: int, data: bytes, waves: list[int]) -> float:
    """Seconds from the first chunk of the first wave to the last receiver of the last wave done."""
    sha = hashlib.sha256(data).hexdigest()
    receivers = [RawReceiver(i, len(data), sha) for i in range(n)]
    groups, start = [], 0
    for size in waves:
        topic = f"bench/raw/{new_id()}"
        for r in receivers[start:start + size]:
            r.topic = topic
        groups.append((topic, receivers[start:start + size]))
        start += size
    subscribed = threading.Event()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.on_subscribe = lambda *a: subscribed.set()
    pub.connect(address.host, address.port)
    pub.loop_start()
    with SimFleet(address, receivers) as sims:  # type: ignore[arg-type]  # duck-typed like SimAgent
        pub.subscribe(f"bench/raw-status/{new_id()}", 1)  # a round trip: the receivers' SUBSCRIBEs came before
        subscribed.wait(10)
        time.sleep(0.5)
        started = time.perf_counter()
        for topic, group in groups:
            tid, window = new_id(), []
            for i in range(math.ceil(len(data) / CHUNK)):
                window.append(pub.publish(topic, Chunk(tid, i, data[i * CHUNK:(i + 1) * CHUNK]).encode(), qos=1))
                if len(window) >= IN_FLIGHT:
                    window.pop(0).wait_for_publish(30)
            for info in window:
                info.wait_for_publish(30)
            if not sims.wait(lambda g=group: all(r.done_at is not None for r in g), 120):
                raise RuntimeError("raw fan-out: not every receiver got the bundle")
        took = max(r.done_at for r in receivers if r.done_at is not None) - started
    pub.loop_stop()
    pub.disconnect()
    return took


# --- one run -----------------------------------------------------------------------------------------
def run(n: int, mode: str, payload: int, workdir: Path) -> dict:
    with MosquittoBroker() as broker:
        hub, v1, v2 = make_scale_hub(workdir / f"hub-{mode}", payload_size=payload)
        hub.close()
        rss0 = _kib("VmRSS")
        agents = make_agents(n, TrustedKeys.of([hub.key.public]), prefix=f"sim{mode[0]}",
                             tags=lambda i: {"site": "plant-a"})
        for a in agents:
            a.behaviour = Behaviour(report_s=1.0)
            a.preinstall(v1.bundle)
        t0 = time.perf_counter()
        sims = SimFleet(broker.address, agents).start(timeout=120)
        connect_s = time.perf_counter() - t0
        sim_kib = (_kib("VmRSS") - rss0) * 1024 / n  # the agents and their connected clients
        try:
            res = run_hub(hub.home.root, broker.address.url, n, mode, v2.version, v2.id)
            res["agents_ok"] = sims.versions() == {a.id: v2.version for a in agents} and not sims.errors
        finally:
            sims.stop()
        res.update(connect_s=connect_s, sim_rss_per_agent_kib=sim_kib,
                   bundle_bytes=len(v2.bundle))
        res["raw_s"] = raw_fanout(broker.address, n, v2.bundle, wave_sizes(n))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--bundle-kib", type=float, default=2.0, help="model payload of the bundle (KiB)")
    ap.add_argument("--mode", nargs="+", choices=("rollout", "deploy"), default=["rollout", "deploy"])
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    results: dict = {}
    n = args.agents
    print(f"{n} simulated agents, waves {wave_sizes(n)}, Mosquitto (test config), {os.cpu_count()} CPUs\n")
    head = (f"{'mode':8} {'status':10} {'ingest s':>8} {'rollout s':>9} {'ms/agent':>8} {'raw s':>6} {'ratio':>6} "
            f"{'hub CPU s':>9} {'RSS MiB before/ingested/peak':>29} {'KiB/agent':>9} {'sim KiB/agent':>13} exact")
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for mode in args.mode:
            r = run(n, mode, int(args.bundle_kib * 1024), Path(tmp))
            results[mode] = r
            per_kib = (r["rss_peak_mib"] - r["rss_before_mib"]) * 1024 / n
            rss = f"{r['rss_before_mib']:.0f} / {r['rss_ingested_mib']:.0f} / {r['rss_peak_mib']:.0f}"
            print(f"{mode:8} {r['status']:10} {r['ingest_s']:8.2f} {r['rollout_s']:9.2f} "
                  f"{r['rollout_s'] / n * 1000:8.2f} {r['raw_s']:6.2f} {r['rollout_s'] / r['raw_s']:5.0f}x "
                  f"{r['cpu_s']:9.1f} {rss:>29} {per_kib:9.1f} {r['sim_rss_per_agent_kib']:13.1f} "
                  f"{'yes' if r['registry_exact'] and r['agents_ok'] and not r['refused'] else 'NO'}")
            print(f"         bundle {r['bundle_bytes']} bytes; agents connected in {r['connect_s']:.2f} s; "
                  f"waves {r['summary'] if mode == 'deploy' else [w['targeted'] for w in r['summary']['waves']]}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"agents": n, "modes": results}, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--hub-process":
        a = sys.argv[2:8]
        hub_process(a[0], a[1], int(a[2]), a[3], a[4], a[5])
    else:
        main()
