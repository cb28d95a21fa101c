"""What ``edgeloop up`` brings up, as plain data: ports, agent configs, the state file.

Pure: nothing here opens a socket or starts a process (:mod:`edgeloop.hub.stack.runner` does).

The fixed ports are documented (README.md, docs/integrations/) so that every example there
works when copied: the broker on 127.0.0.1:1884 (1883 is left to a system Mosquitto), the
agents' HTTP on 8081, 8082, ... and the hub runtime's Prometheus metrics on 9184.
Everything lives under ``<home>/stack/``; the agents keep their state where the demo keeps
it (``<home>/agents/<id>``), so a second ``up`` (or an ``up`` after ``edgeloop demo``)
finds the same agents with the same keys and the model they already serve.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.hub.errors import HubError

BROKER_PORT = 1884
HTTP_PORT = 8081
METRICS_PORT = 9184
AGENTS = 2
MODEL = "sensor-mlp"
HOST = "127.0.0.1"
BROKER_KINDS = ("auto", "mosquitto", "embedded")
STATE_FILE = "stack.json"


class StackError(HubError):
    """The local stack cannot be brought up (a busy port, a stack already running, a bad option)."""

    code = "stack"


@dataclass(frozen=True)
class StackOptions:
    """The options of ``edgeloop up`` (see :func:`edgeloop.hub.cli.up.add_commands`)."""

    home: Path
    port: int = BROKER_PORT
    http_port: int = HTTP_PORT
    metrics_port: int = METRICS_PORT
    agents: int = AGENTS
    broker: str = "auto"  # auto: Mosquitto when installed, else the embedded amqtt broker
    model: str | None = None  # a version ref; None: the newest sensor-mlp, trained from the sample if none
    epochs: int = 40  # when the demo model has to be trained

    def check(self) -> None:
        if self.broker not in BROKER_KINDS:
            raise StackError(f"--broker must be one of {', '.join(BROKER_KINDS)}, not {self.broker!r}")
        if not 1 <= self.agents <= 20:
            raise StackError(f"--agents must be between 1 and 20, not {self.agents}")
        if self.epochs < 1:
            raise StackError(f"--epochs must be at least 1, not {self.epochs}")
        ports = {"--port": self.port, "--http-port": self.http_port, "--metrics-port": self.metrics_port}
        for opt, port in ports.items():
            if not 1 <= port <= 65535 - (self.agents if opt == "--http-port" else 0):
                raise StackError(f"{opt} {port} is not a usable TCP port")
        agent_ports = set(range(self.http_port, self.http_port + self.agents))
        clash = agent_ports & {self.port, self.metrics_port}
        if clash or self.port == self.metrics_port:
            raise StackError(f"the ports overlap (broker {self.port}, agents {self.http_port}-"
                             f"{self.http_port + self.agents - 1}, metrics {self.metrics_port}); pick "
                             "others with --port, --http-port, --metrics-port")


@dataclass(frozen=True)
class AgentSpec:
    """One local agent: its id, HTTP port and files."""

    agent_id: str
    http_port: int
    config: Path
    state_dir: Path
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"


@dataclass(frozen=True)
class StackPlan:
    options: StackOptions
    dir: Path
    agents: tuple[AgentSpec, ...]

    @property
    def broker_url(self) -> str:
        return f"mqtt://{HOST}:{self.options.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.options.metrics_port}/metrics"

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def hub_log(self) -> Path:
        return self.dir / "hub.log"

    def ports(self) -> list[tuple[int, str, str]]:
        """Every port the stack listens on: (port, what, the option that moves it)."""
        out = [(self.options.port, "the MQTT broker", "--port"),
               (self.options.metrics_port, "the hub's metrics", "--metrics-port")]
        out += [(a.http_port, f"{a.agent_id}'s HTTP", "--http-port") for a in self.agents]
        return out


def plan(options: StackOptions, home_root: Path, agents_dir: Path) -> StackPlan:
    """Where each part of the stack lives and listens (checks the options first)."""
    options.check()
    stack_dir = Path(home_root) / "stack"
    specs = tuple(AgentSpec(agent_id=f"edge-{i + 1}", http_port=options.http_port + i,
                            config=stack_dir / f"edge-{i + 1}.toml", state_dir=Path(agents_dir) / f"edge-{i + 1}",
                            log=stack_dir / f"edge-{i + 1}.log")
                  for i in range(options.agents))
    return StackPlan(options, stack_dir, specs)


def busy_message(busy: list[tuple[int, str, str]], running: StackInfo | None) -> str:
    """What to tell the user when ports of the stack are taken."""
    if running is not None:
        return (f"edgeloop up is already running for this home (pid {running.pid}, broker {running.broker_url}); "
                f"stop it with Ctrl-C in its terminal or `kill {running.pid}`, or use it as it is")
    lines = [f"port {port} ({what}) is in use; free it or pick another with {opt}" for port, what, opt in busy]
    return ("cannot start the local stack: " + "; ".join(lines)
            + ". (Another `edgeloop up` under another --home, or a broker of your own, may hold it: "
              "`ss -ltnp | grep PORT` says which process.)")


@dataclass
class AgentInfo:
    agent_id: str
    pid: int
    http_url: str
    metrics_url: str
    infer_url: str
    log: str
    config: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AgentInfo:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__})


@dataclass
class StackInfo:
    """What is running, written to ``<home>/stack/stack.json`` once everything is up and
    removed when it stops (other tools and the tests read it)."""

    pid: int
    home: str
    broker: str  # "mosquitto" or "embedded"
    broker_url: str
    broker_pid: int | None
    hub_metrics_url: str
    hub_client_id: str
    model: str  # the version every agent serves, e.g. sensor-mlp:1
    bundle_sha256: str
    agents: list[AgentInfo] = field(default_factory=list)
    started_at: float = 0.0
    schema: int = 1

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["agents"] = [a.to_dict() for a in self.agents]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StackInfo:
        if doc.get("schema") != 1:
            raise StackError(f"unknown stack state schema {doc.get('schema')!r}")
        fields = {k: doc[k] for k in cls.__dataclass_fields__ if k != "agents"}
        return cls(**fields, agents=[AgentInfo.from_dict(a) for a in doc.get("agents", [])])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackInfo:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise StackError(f"the stack state file cannot be read: {exc}") from exc

    def summary(self) -> list[str]:
        """The lines ``edgeloop up`` prints once everything runs."""
        pid = "" if self.broker_pid is None else f", pid {self.broker_pid}"
        lines = [f"  broker   {self.broker_url}  ({self.broker}{pid})",
                 f"  hub      runtime listening as {self.hub_client_id}; metrics {self.hub_metrics_url}"]
        for a in self.agents:
            lines.append(f"  {a.agent_id:<8} {a.http_url}  (pid {a.pid}) serving {self.model}")
            lines.append(f"  {'':<8} infer {a.infer_url}")
            lines.append(f"  {'':<8} metrics {a.metrics_url}; log {a.log}")
        return lines
