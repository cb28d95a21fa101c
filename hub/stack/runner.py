"""``edgeloop up``'s processes: a broker on a fixed port, the hub runtime, N local agents.

:class:`LocalStack` starts them in order (broker, hub runtime, agents; then it deploys the demo
model to every agent that does not serve it yet), writes ``<home>/stack/stack.json``, watches
them while it runs (an agent that exits is started again, up to :data:`MAX_RESTARTS` times;
a broker that exits ends the stack) and stops them in the opposite order: the agents first
(each publishes its own offline state), then the hub runtime, then the broker.

No orphans: child processes run in their own session (a Ctrl-C in the terminal reaches
``edgeloop up`` only, which stops them in order) and, on Linux, get SIGTERM from the kernel
should ``edgeloop up`` itself die without stopping them (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.hub.errors import NotFoundError
from edgeloop.hub.fleet import EmbeddedBroker, MosquittoBroker
from edgeloop.hub.fleet.brokers import wait_for_port
from edgeloop.hub.runtime import HubRuntime, RuntimeLockedError
from edgeloop.hub.services import Hub
from edgeloop.hub.stack.plan import (
    HOST,
    MODEL,
    AgentInfo,
    AgentSpec,
    StackError,
    StackInfo,
    StackOptions,
    StackPlan,
    busy_message,
    plan,
)

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
ONLINE_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something listens on ``host:port`` (a port left in TIME_WAIT counts as free, as it
    does for the servers of the stack, which all set SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_running(state_file: Path) -> StackInfo | None:
    """The stack that ``state_file`` describes, if its ``edgeloop up`` still runs (a stale file is removed)."""
    try:
        info = StackInfo.from_json(state_file.read_text())
    except FileNotFoundError:
        return None
    except StackError:
        state_file.unlink(missing_ok=True)
        return None
    if info.pid != os.getpid() and pid_alive(info.pid):
        return info
    state_file.unlink(missing_ok=True)
    return None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the clean stop of `up` still stops the children
        pass


def spawn(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """A child in its own session that the kernel stops should this process die."""
    with open(log_path, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0, *, signalled: bool = False) -> int:
    """SIGTERM (unless ``signalled`` already: a second one cuts an agent's clean stop short), wait, then kill."""
    if not signalled and proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class StackMosquitto:
    """Mosquitto on the stack's fixed port, its config, log and persistence under ``<home>/stack/mosquitto``."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen | None = None
        self.version = ""

    def start(self) -> StackMosquitto:
        exe = MosquittoBroker.executable()
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"# written by edgeloop up\nlistener {self.port} {HOST}\nallow_anonymous true\n"
                        f"persistence true\npersistence_location {self.workdir}/\n"
                        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
                        "max_queued_messages 10000\nset_tcp_nodelay true\n"
                        # started as root, Mosquitto switches to the user "mosquitto", which cannot write
                        # the persistence file in root's home: keep the user that started it
                        + ("user root\n" if os.geteuid() == 0 else ""))
        log_path = self.workdir / "mosquitto.log"
        self.proc = spawn([exe, "-c", str(conf)], log_path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                wait_for_port(HOST, self.port, timeout=0.2)
                break
            except Exception:
                continue
        if self.proc.poll() is not None or time.monotonic() >= deadline:
            self.stop()
            tail = log_path.read_text(errors="replace")[-1500:]
            raise StackError(f"mosquitto did not start on {HOST}:{self.port}; its log ({log_path}):\n{tail}")
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5.0)
            self.proc = None


class LocalStack:
    """The local stack of one hub home (see the module docstring)."""

    def __init__(self, options: StackOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say
        self.hub = Hub(options.home, actor="up")
        self.plan: StackPlan = plan(options, self.hub.home.root, self.hub.home.agents_dir)
        self.broker: StackMosquitto | EmbeddedBroker | None = None
        self.broker_kind = ""
        self.runtime: HubRuntime | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.info: StackInfo | None = None
        self._stopping = False

    # --- start -----------------------------------------------------------------------------------
    def start(self) -> StackInfo:
        """Bring everything up (stopping what was started if a step fails) and write the state file."""
        p = self.plan
        p.dir.mkdir(parents=True, exist_ok=True)
        running = read_running(p.state_file)
        busy = [x for x in p.ports() if port_in_use(x[0])]
        if running is not None or busy:
            raise StackError(busy_message(busy, running))
        try:
            version, bundle_sha = self._model()
            self._start_broker()
            self._start_runtime()
            self._start_agents()
            self._deploy(version, bundle_sha)
            self.info = self._describe(version["id"], bundle_sha)
            atomic_write_bytes(p.state_file, self.info.to_json().encode())
            return self.info
        except BaseException:
            self.stop()
            raise

    def _model(self) -> tuple[dict, str]:
        """The version every agent serves and its signed bundle's sha256, the file checked against the
        registry (trained from the sample, and bundled, if there is none)."""
        ref = self.options.model or MODEL
        try:
            version = self.hub.version_of(ref)
        except NotFoundError:
            if self.options.model is not None:
                raise
            version = self._train()
        rec, _ = self.hub.resolve_bundle(version["id"])
        self.say(f"model    {version['id']} (bundle {rec['sha256'][:12]}, signed by {self.hub.key.keyid})")
        return version, rec["sha256"]

    def _train(self) -> dict:
        from edgeloop.hub.datasets import load_csv, sample_dataset_path
        from edgeloop.hub.progress import TerminalProgress
        from edgeloop.hub.training import TrainParams

        self.say(f"model    none yet: training {MODEL} on the shipped sample ({self.options.epochs} epochs)")
        ds = load_csv(sample_dataset_path())
        rec = self.hub.register_dataset(ds, name="sensors")
        bar = TerminalProgress()
        try:
            build = self.hub.build_version(ds, rec, MODEL, TrainParams(epochs=self.options.epochs, seed=0),
                                           progress=bar)
        finally:
            bar.close()
        return build.version

    def _start_broker(self) -> None:
        kind = self.options.broker
        if kind == "auto":
            kind = "mosquitto" if _mosquitto_installed() else "embedded"
        if kind == "mosquitto":
            self.broker = StackMosquitto(self.options.port, self.plan.dir / "mosquitto").start()
        else:
            self.broker = EmbeddedBroker(HOST, self.options.port).start()
            self.say("broker   embedded (amqtt): it also hands a new subscriber retained messages of topics it did "
                     "not subscribe to, so `mosquitto_sub -C 1` may print an agent's status instead of an answer; "
                     "install Mosquitto (apt-get install mosquitto) for the documented examples")
        self.broker_kind = kind

    def _start_runtime(self) -> None:
        self.runtime = HubRuntime(self.hub, self.plan.broker_url, metrics_port=self.options.metrics_port,
                                  metrics_host=HOST)
        try:
            self.runtime.start(timeout=10.0)
        except RuntimeLockedError as exc:
            self.runtime = None
            raise StackError(f"{exc} -- `edgeloop up` runs the hub runtime itself; stop `edgeloop hub serve` "
                             "(or the GUI) for this home first, or give `up` another --home") from exc
        except BaseException:
            self.runtime = None
            raise

    def _agent_command(self) -> list[str]:
        exe = shutil.which("edgeloop", path=str(Path(sys.executable).parent))
        return ([exe] if exe else [sys.executable, "-m", "edgeloop.hub.cli"]) + ["agent", "run", "--config"]

    def _start_agent(self, spec: AgentSpec) -> None:
        self.procs[spec.agent_id] = spawn(self._agent_command() + [str(spec.config)], spec.log)

    def _start_agents(self) -> None:
        pub = self.hub.public_key_path
        for spec in self.plan.agents:
            cfg = AgentConfig(agent_id=spec.agent_id, state_dir=spec.state_dir, trusted_keys=[pub], mqtt_host=HOST,
                              mqtt_port=self.options.port, http_port=spec.http_port, transfer_idle_seconds=2.0)
            spec.state_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(spec.config, cfg.to_toml().encode())
            self._start_agent(spec)
        ids = [s.agent_id for s in self.plan.agents]
        fleet = self._fleet()
        deadline = time.monotonic() + ONLINE_TIMEOUT_S
        while not fleet.wait_online(ids, timeout=0.5):
            dead = {aid: p.returncode for aid, p in self.procs.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                what = (", ".join(f"{aid} exited with code {rc}" for aid, rc in dead.items()) if dead
                        else f"not every agent came online within {ONLINE_TIMEOUT_S:.0f} s")
                raise StackError(f"{what}; see the logs in {self.plan.dir} (edge-N.log)")

    def _fleet(self):
        if self.runtime is None or self.runtime.fleet is None:
            raise StackError("the hub runtime is not connected")
        return self.runtime.fleet

    def _deploy(self, version: dict, bundle_sha: str) -> None:
        fleet = self._fleet()
        states = fleet.agents()
        need = [s.agent_id for s in self.plan.agents  # an agent may serve several models: any of them
                if bundle_sha not in {m.bundle_sha256 for m in states[s.agent_id].served()}]
        if not need:
            self.say(f"deploy   every agent already serves {version['id']}")
            return
        t = time.perf_counter()
        results = self.hub.deploy(fleet, need, bundle_sha, timeout=60.0)
        failed = [f"{r['agent']}: {r['code']}: {r['message']}" for r in results if not r["ok"]]
        if failed:
            raise StackError("deploy failed: " + "; ".join(failed))
        self.say(f"deploy   {version['id']} to {', '.join(need)} ({time.perf_counter() - t:.1f} s)")

    def _describe(self, version_id: str, bundle_sha: str) -> StackInfo:
        model = self.hub.version_of(version_id)["model_name"]
        agents = [AgentInfo(agent_id=s.agent_id, pid=self.procs[s.agent_id].pid, http_url=s.http_url,
                            metrics_url=f"{s.http_url}/metrics", infer_url=f"{s.http_url}/v2/models/{model}/infer",
                            log=str(s.log), config=str(s.config)) for s in self.plan.agents]
        broker_pid = self.broker.pid if isinstance(self.broker, StackMosquitto) else None
        return StackInfo(pid=os.getpid(), home=str(self.hub.home.root), broker=self.broker_kind,
                         broker_url=self.plan.broker_url, broker_pid=broker_pid, hub_metrics_url=self.plan.metrics_url,
                         hub_client_id=self.hub.registry.hub_client_id(), model=version_id,
                         bundle_sha256=bundle_sha, agents=agents, started_at=time.time())

    # --- while it runs ---------------------------------------------------------------------------
    def check(self) -> None:
        """Start again an agent that exited (at most :data:`MAX_RESTARTS` times each); raise
        :class:`StackError` when the broker exited."""
        if self._stopping:
            return
        if isinstance(self.broker, StackMosquitto) and (rc := self.broker.exited()) is not None:
            raise StackError(f"mosquitto exited with code {rc}; see {self.plan.dir / 'mosquitto' / 'mosquitto.log'}")
        for spec in self.plan.agents:
            proc = self.procs.get(spec.agent_id)
            if proc is None or proc.poll() is None:
                continue
            n = self.restarts.get(spec.agent_id, 0)
            if n >= MAX_RESTARTS:
                continue
            self.restarts[spec.agent_id] = n + 1
            self.say(f"{spec.agent_id} exited with code {proc.returncode} (log {spec.log}); starting it again "
                     f"({n + 1}/{MAX_RESTARTS})" if n + 1 < MAX_RESTARTS else
                     f"{spec.agent_id} exited with code {proc.returncode} (log {spec.log}); last restart")
            self._start_agent(spec)
            if self.info is not None:
                for a in self.info.agents:
                    if a.agent_id == spec.agent_id:
                        a.pid = self.procs[spec.agent_id].pid
                atomic_write_bytes(self.plan.state_file, self.info.to_json().encode())

    # --- stop ------------------------------------------------------------------------------------
    def stop(self) -> dict[str, Any]:
        """Stop everything that was started, in reverse order; returns the agents' exit codes."""
        if self._stopping:
            return {}
        self._stopping = True
        codes: dict[str, Any] = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for aid, p in self.procs.items():
            codes[aid] = stop_process(p, signalled=True)
        self.procs.clear()
        if self.runtime is not None:
            fleet = self.runtime.fleet
            if fleet is not None and codes:  # let the runtime store the agents' goodbyes
                fleet.wait_for(lambda: all(fleet.status(a) == "offline" for a in codes), 5.0)
            try:
                self.runtime.stop()
            except Exception:
                log.exception("stopping the hub runtime")
            self.runtime = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.info is not None:  # ours: never another `up`'s (a refused start wrote none)
            self.plan.state_file.unlink(missing_ok=True)
        self.hub.close()
        return codes


def _mosquitto_installed() -> bool:
    try:
        MosquittoBroker.executable()
    except Exception:
        return False
    return True
