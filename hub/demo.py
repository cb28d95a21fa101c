"""``edgeloop demo``: the whole loop, end to end, on real parts and embedded defaults.

data -> training -> ONNX + int8 -> signed bundle -> two agent processes over MQTT
-> inference over MQTT and HTTP -> drift -> second version -> signed rollback
(``Hub.rollback``), then a forged one and a replay of the rollback's bytes as an
eavesdropper on the broker recorded them, both refused -> summary.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.mqtt_link import MqttLink
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.commands import verify_command
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys
from edgeloop.agent.wire.messages import InferError
from edgeloop.hub.datasets import generate_sensor_data, load_csv, sample_dataset_path, split_dataset
from edgeloop.hub.errors import HubError
from edgeloop.hub.fleet import BrokerAddress, EmbeddedBroker, Fleet, MosquittoBroker
from edgeloop.hub.progress import TerminalProgress
from edgeloop.hub.services import Hub
from edgeloop.hub.training import TrainParams

MODEL = "sensor-mlp"
AGENT_IDS = ("edge-1", "edge-2")
LATENCY_REQUESTS = 100


class DemoError(HubError):
    code = "demo"


@dataclass
class DemoOptions:
    home: Path
    broker: str | None = None  # None: embedded amqtt; "mosquitto": private mosquitto; else mqtt://host:port
    epochs: int = 40
    drift_shift: float = 2.0
    json: bool = False


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    facts: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter, repr=False)


class Demo:
    def __init__(self, opts: DemoOptions, out: TextIO | None = None) -> None:
        self.opts = opts
        self.out = out or (sys.stderr if opts.json else sys.stdout)
        self.steps: list[Step] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.exit_codes: dict[str, int] = {}
        self.broker: EmbeddedBroker | MosquittoBroker | None = None
        self.broker_url = ""
        self._fleet: Fleet | None = None
        self.hub = Hub(opts.home, actor="demo")
        self.total_steps = 8

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            raise DemoError("the fleet is not connected yet (the agents step connects it)")
        return self._fleet

    # --- output ----------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, name: str, title: str) -> Step:
        st = Step(name)
        self.steps.append(st)
        self.say(f"\n[{len(self.steps)}/{self.total_steps}] {title}")
        return st

    def done(self, st: Step) -> None:
        st.seconds = time.perf_counter() - st.started
        self.say(f"    done in {st.seconds:.1f} s")

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_all = time.perf_counter()
        self.say(f"edgeloop demo -- hub home {self.hub.home.root}")
        try:
            ds, ds_rec, v1 = self._data_and_train()
            b1 = self._bundle(v1)
            self._agents()
            self._deploy(b1, v1)
            self._inference(ds)
            self._drift()
            self._second_version_and_rollback(ds, ds_rec, b1)
        finally:
            self._shutdown()
            self.hub.close()
        total = time.perf_counter() - t_all
        self._summary(total)
        return {"total_seconds": round(total, 2), "home": str(self.hub.home.root),
                "steps": [{"name": s.name, "seconds": round(s.seconds, 2), **s.facts} for s in self.steps],
                "agent_exit_codes": dict(self.exit_codes)}

    def _data_and_train(self):
        st = self.step("data", "Load and validate the sample dataset")
        path = sample_dataset_path()
        ds = load_csv(path)
        ds_rec = self.hub.register_dataset(ds, name="sensors")
        counts = ", ".join(f"{k} {v}" for k, v in ds.class_counts().items())
        self.say(f"    {path.name}: {ds.n_rows} rows, {ds.n_features} features, classes: {counts}")
        self.say(f"    valid; dataset sha256 {ds.sha256[:16]}… registered as {ds_rec['id']}")
        st.facts.update(rows=ds.n_rows, dataset_sha256=ds.sha256)
        self.done(st)

        st = self.step("train_export", "Train the MLP (seed 0), export ONNX, quantize int8")
        bar = TerminalProgress()  # progress goes to stderr, like every command's
        try:
            build = self.hub.build_version(ds, ds_rec, MODEL, TrainParams(epochs=self.opts.epochs, seed=0),
                                           progress=bar)
        finally:
            bar.close()
        self._report_version(build)
        st.facts.update(version=build.id, **{k: round(v, 2) for k, v in build.timings.items()},
                        test_accuracy=build.metrics.get("test_accuracy"),
                        quantization=build.quantization.get("chosen"))
        self.done(st)
        return ds, ds_rec, build

    def _report_version(self, build) -> None:
        m, q = build.metrics, build.quantization
        rep = q.get("report", {})
        self.say(f"    run {build.run['id']}: test accuracy {m.get('test_accuracy', float('nan')):.3f}, "
                 f"macro-F1 {m.get('test_macro_f1', float('nan')):.3f} "
                 f"({build.timings.get('train_s', 0):.1f} s training)")
        par = q.get("parity", {})
        self.say(f"    ONNX output matches torch: max |diff| {par.get('max_abs_diff_batch1', float('nan')):.1e} "
                 f"at batch 1, {par.get('max_abs_diff_batchN', float('nan')):.1e} at batch {par.get('batch_n', 'N')} "
                 f"(tolerance {par.get('atol', 0):.0e})")
        if "int8_accuracy" in rep:
            self.say(f"    held-out accuracy: fp32 {rep['fp32_accuracy']:.4f}, int8 {rep['int8_accuracy']:.4f} "
                     f"({rep['accuracy_delta_points']:+.2f} pt); size {rep['fp32_bytes']} -> {rep['int8_bytes']} B; "
                     f"latency {rep['fp32_latency_us_batch1']:.0f} -> {rep['int8_latency_us_batch1']:.0f} µs")
            self.say(f"    decision: {q.get('reason', q.get('chosen'))}")
        self.say(f"    registered version {build.id}")

    def _bundle(self, build):
        st = self.step("bundle", f"Pack and sign the bundle of {build.id}")
        b = self.hub.build_bundle(build.id)
        self.say(f"    {b.path.name}: {b.size} bytes, sha256 {b.sha256[:16]}…, signed by key {b.manifest.key_id}")
        self.say(f"    hub key {self.hub.home.keys_dir}/hub_ed25519.pem (mode "
                 f"{oct((self.hub.home.keys_dir / 'hub_ed25519.pem').stat().st_mode & 0o777)})")
        st.facts.update(bundle_sha256=b.sha256, bundle_bytes=b.size)
        self.done(st)
        return b

    def _agents(self) -> None:
        st = self.step("agents", "Start the broker and two agent processes")
        if self.opts.broker is None:
            embedded = self.broker = EmbeddedBroker().start()
            url, kind = embedded.address.url, "embedded amqtt broker"
        elif self.opts.broker == "mosquitto":
            mosquitto = self.broker = MosquittoBroker().start()
            url, kind = mosquitto.address.url, "private mosquitto"
        else:
            url, kind = BrokerAddress.parse(self.opts.broker).url, "external broker"
        self.say(f"    {kind} at {url}")
        self.broker_url = url
        addr = BrokerAddress.parse(url)
        agents_dir = self.hub.home.agents_dir
        pub = self.hub.public_key_path
        for aid in AGENT_IDS:
            cfg = AgentConfig(agent_id=aid, state_dir=agents_dir / aid, trusted_keys=[pub], mqtt_host=addr.host,
                              mqtt_port=addr.port, http_port=0, transfer_idle_seconds=2.0,
                              zeroconf=True, zeroconf_interfaces=["127.0.0.1"])
            cfg_path = agents_dir / f"{aid}.toml"
            cfg_path.write_text(cfg.to_toml())
            log = open(agents_dir / f"{aid}.log", "ab")
            exe = shutil.which("edgeloop", path=str(Path(sys.executable).parent))
            cmd = [exe] if exe else [sys.executable, "-m", "edgeloop.hub.cli"]
            self.procs[aid] = subprocess.Popen(cmd + ["agent", "run", "--config", str(cfg_path)],
                                               stdout=log, stderr=subprocess.STDOUT)
            self.say(f"    started `edgeloop agent run --config {cfg_path}` (pid {self.procs[aid].pid})")
        self._fleet = self.hub.fleet(url).start()
        if not self.fleet.wait_online(list(AGENT_IDS), timeout=60):
            raise DemoError("agents did not come online within 60 s; see their logs in " + str(agents_dir))
        for aid, state in sorted(self.fleet.agents().items()):
            if aid in AGENT_IDS:
                active = f"{state.active.model} {state.active.version}" if state.active else "no model yet"
                self.say(f"    {aid}: online (session {state.session}), HTTP {state.http_url}, {active}")
        found = self._discover()
        if found is not None:
            self.say(f"    zeroconf (_edgeloop._tcp on loopback) found: {', '.join(found) or 'nothing'}")
        st.facts.update(broker=kind, discovered=found)
        self.done(st)

    @staticmethod
    def _discover() -> list[str] | None:
        """Agents announcing themselves with zeroconf; None if mDNS is unavailable here."""
        try:
            from edgeloop.agent.discovery import browse

            return [a.agent_id for a in browse(timeout=1.5, interfaces=["127.0.0.1"]) if a.agent_id in AGENT_IDS]
        except Exception:  # discovery is a convenience: never fail the demo over it
            return None

    def _deploy(self, b, build) -> None:
        st = self.step("deploy", f"Push {build.id} to both agents over MQTT (the bundle is sent once for both)")
        results = self.fleet.deploy_many(AGENT_IDS, b.path.read_bytes(), model=MODEL,
                                         version=build.version["version"])
        for aid in AGENT_IDS:
            res = results[aid]
            if not res.ok:
                raise DemoError(f"deploy to {aid} failed: {res.code}: {res.message}")
            self.say(f"    {aid}: verified signature and hashes, smoke test passed, serving "
                     f"({res.seconds * 1000:.0f} ms round trip, install {res.details.get('install_ms', '?')} ms)")
        st.facts.update(deployed=build.id)
        self.done(st)

    def _inference(self, ds) -> None:
        st = self.step("inference", "Predict over MQTT and over HTTP (Open Inference Protocol)")
        splits = split_dataset(ds, 0)
        X, y = ds.X[splits.test], ds.y[splits.test]
        aid = AGENT_IDS[0]
        res = self.fleet.infer(aid, X[:5].tolist())
        if isinstance(res, InferError):
            raise DemoError(f"inference failed: {res.code}: {res.message}")
        for row, lab, probs, true in zip(X[:5], res.outputs["label"], res.outputs["probabilities"], y[:5],
                                         strict=True):
            self.say(f"    {[round(float(v), 1) for v in row]} -> {lab:<13} p={max(probs):.2f}  "
                     f"(true: {ds.labels[true]})")
        mqtt_ms = []
        for i in range(LATENCY_REQUESTS):
            t = time.perf_counter()
            r = self.fleet.infer(aid, [X[i % len(X)].tolist()])
            mqtt_ms.append((time.perf_counter() - t) * 1000)
            if isinstance(r, InferError):
                raise DemoError(f"inference failed: {r.message}")
        state = self.fleet.agents()[aid]
        url = f"{state.http_url}/v2/models/{MODEL}/infer"
        http_ms = []
        for i in range(LATENCY_REQUESTS):
            body = json.dumps({"inputs": [{"name": "features", "shape": [1, ds.n_features], "datatype": "FP32",
                                           "data": X[i % len(X)].tolist()}]}).encode()
            t = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}),
                                        timeout=10) as resp:
                doc = json.loads(resp.read())
            http_ms.append((time.perf_counter() - t) * 1000)
        labels = next(o for o in doc["outputs"] if o["name"] == "label")["data"]
        p50 = lambda v: statistics.median(v)
        p95 = lambda v: sorted(v)[int(0.95 * len(v)) - 1]
        self.say(f"    MQTT request/response: p50 {p50(mqtt_ms):.2f} ms, p95 {p95(mqtt_ms):.2f} ms "
                 f"over {LATENCY_REQUESTS} requests")
        self.say(f"    HTTP POST {url.split('//', 1)[1].split('/', 1)[1]}: p50 {p50(http_ms):.2f} ms, "
                 f"p95 {p95(http_ms):.2f} ms (last answer: {labels[0]})")
        st.facts.update(mqtt_p50_ms=round(p50(mqtt_ms), 3), http_p50_ms=round(p50(http_ms), 3))
        self.done(st)

    def _drift(self) -> None:
        st = self.step("drift", f"Feed normal data to {AGENT_IDS[0]} and drifted data to {AGENT_IDS[1]}")
        normal = generate_sensor_data(600, seed=101)
        drifted = generate_sensor_data(600, seed=202, shift=self.opts.drift_shift)
        self.say(f"    drifted stream: temperature and vibration shifted by {self.opts.drift_shift} std")
        before = {a: len(self.hub.drift_reports(a)) for a in AGENT_IDS}
        for aid, data in ((AGENT_IDS[0], normal), (AGENT_IDS[1], drifted)):
            for i in range(0, data.n_rows, 50):
                r = self.fleet.infer(aid, data.X[i:i + 50].tolist())
                if isinstance(r, InferError):
                    raise DemoError(f"inference failed: {r.message}")
        want = {a: before[a] + 3 for a in AGENT_IDS}  # 600 rows / 200-row windows
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
                len(self.hub.drift_reports(a)) < want[a] for a in AGENT_IDS):
            time.sleep(0.1)
        flagged = {}
        for aid in AGENT_IDS:
            reps = self.hub.drift_reports(aid, limit=3)
            if not reps:
                raise DemoError(f"no drift report from {aid} arrived")
            last = reps[0]["report"]
            feats = {f["name"]: f for f in last["features"]}
            worst = sorted(feats.values(), key=lambda f: -f["psi"])[:2]
            names = last.get("drifted_features", [])
            flagged[aid] = names
            self.say(f"    {aid}: {len(reps)} windows of {last['rows']} rows; drifted: "
                     f"{', '.join(names) if names else 'none'}; highest PSI "
                     + ", ".join(f"{f['name']} {f['psi']:.2f} (KS {f['ks']:.2f})" for f in worst))
        if not flagged[AGENT_IDS[1]]:
            raise DemoError("the drifted stream was not flagged; drift detection is not working")
        st.facts.update(flagged=flagged)
        self.done(st)

    def _second_version_and_rollback(self, ds, ds_rec, b1) -> None:
        st = self.step("rollback", "Deploy a second version, then a signed rollback (and a forged and a replayed one)")
        bar = TerminalProgress()  # progress goes to stderr, like every command's
        try:
            v2 = self.hub.build_version(ds, ds_rec, MODEL, TrainParams(epochs=max(5, self.opts.epochs // 2),
                                                                       hidden=(32,), seed=1), progress=bar,
                                        parent_version=None)
        finally:
            bar.close()
        b2 = self.hub.build_bundle(v2.id)
        aid = AGENT_IDS[0]
        res = self.fleet.deploy(aid, b2.path.read_bytes(), model=MODEL, version=v2.version["version"])
        if not res.ok:
            raise DemoError(f"deploy of {v2.id} failed: {res.message}")
        self.say(f"    {aid} now serves {v2.id} (test accuracy {v2.metrics.get('test_accuracy', 0):.3f})")

        spy = Eavesdropper(self.broker_url, aid).start()
        try:
            (out,) = self.hub.rollback(self.fleet, [aid], b1.sha256, reason="demo rollback", timeout=30)
            sent = spy.recorded(timeout=10) if out["ok"] else b""
        finally:
            spy.stop()
        if not out["ok"]:
            raise DemoError(f"rollback failed: {out['code']}: {out['message']}")
        cmd = verify_command(sent, TrustedKeys.of([self.hub.key.public]), aid, time.time(), {}).command

        def serving_b1() -> bool:
            active = self.fleet.agents()[aid].active
            return active is not None and active.bundle_sha256 == b1.sha256

        self.fleet.wait_for(serving_b1, 10)
        active = self.fleet.agents()[aid].active
        serving = f"{active.model} {active.version}" if active is not None else "?"
        self.say(f"    signed rollback (counter {cmd.counter}): accepted, {aid} serves {serving} again")

        forged_key = SigningKey.generate()
        forged = self.fleet.make_command(aid, "rollback", {"bundle_sha256": b2.sha256, "reason": "attacker"})
        self.fleet.send(forged, key=forged_key)
        fo = self.fleet.outcome(forged.command_id, ("rollback_result",), 15)
        self.say(f"    forged rollback (signed by unknown key {forged_key.keyid}): "
                 f"{'ACCEPTED (bug!)' if fo.ok else 'refused'} [{fo.code}]")
        self.fleet.send(cmd, raw=sent)
        ro = self.fleet.outcome(cmd.command_id, ("rollback_result",), 15)
        self.say(f"    replayed rollback (same bytes again): {'ACCEPTED (bug!)' if ro.ok else 'refused'} [{ro.code}]")
        self.hub.audit("security.check", aid, forged=fo.code, replayed=ro.code)
        if fo.ok or ro.ok or fo.code != "untrusted_key" or ro.code != "replayed":
            raise DemoError(f"forged/replayed commands were not refused as expected ({fo.code}, {ro.code})")
        st.facts.update(second_version=v2.id, rollback="accepted", forged=fo.code, replayed=ro.code)
        self.done(st)

    # --- teardown and summary ----------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop the agents with SIGTERM (each publishes its own offline state), wait for the
        hub to have seen every goodbye, then stop the fleet client and the broker."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for aid, p in self.procs.items():
            try:
                self.exit_codes[aid] = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                self.exit_codes[aid] = p.wait()
        if self._fleet is not None:
            fleet = self._fleet

            def all_offline() -> bool:
                states = fleet.agents()
                return all(aid in states and states[aid].status == "offline" and fleet.status(aid) == "offline"
                           for aid in self.procs)

            fleet.wait_for(all_offline, 5.0)
            fleet.stop()
        if self.broker is not None:
            self.broker.stop()

    def _summary(self, total: float) -> None:
        self.say("\nSummary")
        width = max(len(s.name) for s in self.steps)
        for s in self.steps:
            self.say(f"  {s.name:<{width}}  {s.seconds:6.1f} s")
        self.say(f"  {'total':<{width}}  {total:6.1f} s")
        from edgeloop.hub.home import default_home

        home = "" if Path(self.hub.home.root).resolve() == default_home().resolve() else f" --home {self.hub.home.root}"
        self.say("\nThe registry keeps everything. Next (from .venv/bin, or after `. .venv/bin/activate`):")
        self.say(f"  edgeloop registry list{home}     versions, metrics, quantization decisions")
        self.say(f"  edgeloop fleet{home}             agents and what they serve")
        self.say(f"  edgeloop drift{home}             drift windows and flagged features")
        self.say(f"  edgeloop app{home}               the operator GUI")
        self.say(f"  edgeloop up{home}                a local broker, hub and agents that keep running "
                 "(the README's examples)")


class Eavesdropper:
    """What anyone with access to the broker can do: record the signed commands sent to an agent.

    The demo replays what it recorded to show that the agent refuses a command's bytes
    the second time (their counter was used).
    """

    def __init__(self, broker_url: str, agent_id: str) -> None:
        addr = BrokerAddress.parse(broker_url)
        self._probe = f"edgeloop-demo/eavesdropper/{uuid.uuid4().hex}"
        self._cmd_topic = topics.agent_topic(agent_id, topics.CMD)
        self._probe_seen = queue.Queue[bytes]()
        self._commands = queue.Queue[bytes]()
        # subscribed in this order on connect; the broker handles one client's packets in order,
        # so once the probe comes back the command topic is subscribed as well
        self.link = MqttLink(f"edgeloop-demo-eavesdropper-{os.getpid()}", addr.host, addr.port,
                             on_message=self._on_message,
                             subscriptions=[(self._cmd_topic, 1), (self._probe, 1)])

    def _on_message(self, topic: str, payload: bytes, msg) -> None:
        # only these two topics: the embedded amqtt broker also hands a new subscriber
        # retained messages of topics it did not subscribe to
        if topic == self._probe:
            self._probe_seen.put(bytes(payload))
        elif topic == self._cmd_topic and not msg.retain:
            self._commands.put(bytes(payload))

    def start(self, timeout: float = 10.0) -> Eavesdropper:
        self.link.start()
        if not self.link.wait_connected(timeout):
            self.stop()
            raise DemoError(f"the eavesdropper could not connect to the broker within {timeout:.0f} s")
        self.link.publish(self._probe, b"probe", qos=1)
        try:
            self._probe_seen.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise DemoError(f"the eavesdropper's subscription was not confirmed within {timeout:.0f} s") from None
        return self

    def recorded(self, timeout: float) -> bytes:
        """The next command sent to the agent, as the exact bytes on the wire."""
        try:
            return self._commands.get(timeout=timeout)
        except queue.Empty:
            raise DemoError(f"the eavesdropper recorded no command within {timeout:.0f} s") from None

    def stop(self) -> None:
        self.link.stop()


def run_demo(opts: DemoOptions, out: TextIO | None = None) -> dict[str, Any]:
    return Demo(opts, out).run()
