"""A site broker bridged to the central broker: the Mosquitto bridge section for one site, generated.

A fleet spread over sites runs one broker per site (agents connect to it over the local network) and
bridges it to the central broker the hub uses. The bridge carries exactly the fleet's topics, each in
one direction (see :data:`UPLINK` and :data:`DOWNLINK`), at QoS 1, with a persistent bridge session:
while the uplink is down the site broker queues what its agents report (drift, events, states,
captures) and delivers it when the uplink returns, and agents keep serving local requests meanwhile.

The text is pure (no I/O): :func:`bridge_config` returns it; ``edgeloop site bridge-config`` writes it
where the site's Mosquitto reads it (``/etc/mosquitto/conf.d/``). docs/multi-site.md has the walkthrough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edgeloop.agent.errors import ConfigError
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.capture import CAPTURE, FEEDBACK

_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")

# topic patterns under the fleet root, agent -> hub: they leave the site
UPLINK: tuple[str, ...] = (
    f"agents/+/{topics.STATUS}",  # retained online/offline (the agents' Last Will fires at the site)
    f"agents/+/{topics.STATE}",  # retained birth certificates
    f"agents/+/{topics.EVENTS}",  # install progress and results, rollbacks, reports
    f"agents/+/{topics.DRIFT}",  # drift reports
    f"agents/+/{topics.SERVING}",  # serving stats of a new version (rollout gates)
    f"agents/+/{topics.SHADOW}",  # shadow comparisons (rollout gates)
    f"agents/+/{CAPTURE}/#",  # captured batches: manifest and chunks
)
# hub -> agent: they come into the site
DOWNLINK: tuple[str, ...] = (
    f"agents/+/{topics.CMD}",  # signed commands
    f"agents/+/{topics.BUNDLE}",  # bundle chunks sent to one agent
    f"{topics.TRANSFERS}/#",  # bundle chunks of a fan-out deploy
    "hub/status",  # the hub's retained online/offline
    f"agents/+/{FEEDBACK}",  # ground-truth labels sent from central systems (local ones reach the agent anyway)
)
# inference across the bridge (off by default: requests are usually answered where they are made)
INFERENCE_IN = (f"agents/+/{topics.INFER}",)
INFERENCE_OUT = (f"agents/+/{topics.INFER_RESULT}",)


@dataclass(frozen=True)
class BridgeSpec:
    """One site's bridge to the central broker."""

    site: str  # the site's name: the bridge's connection name and client id (edgeloop-site-<site>)
    central: str  # the central broker: mqtt://host:1883 or mqtts://host:8883 (several, comma-separated, fail over)
    root: str = topics.ROOT  # the fleet's topic root at the site
    central_root: str | None = None  # the same topics under another root centrally (ACLs per site); None: same
    username: str | None = None  # the bridge's user on the central broker
    password: str | None = None
    cafile: Path | None = None  # TLS: the CA that signed the central broker's certificate (mqtts://)
    certfile: Path | None = None  # TLS client certificate of this site, with keyfile
    keyfile: Path | None = None
    inference: bool = False  # also bridge inference requests (in) and their results (out)
    queue_limit: int = 100_000  # messages queued per client while it is away (Mosquitto's default is 1000)
    keepalive_s: int = 30
    reconnect_max_s: int = 60  # the bridge retries from 2 s, backing off up to this while the uplink is down
    mosquitto_central: bool = True  # the central broker is Mosquitto (try_private: loop-free bridging)

    def problems(self) -> list[str]:
        p: list[str] = []
        if not isinstance(self.site, str) or not _SITE_RE.match(self.site):
            p.append(f"site name {self.site!r} is not allowed: use 1-48 letters, digits, '_', '-' or '.', "
                     "starting with a letter or digit (e.g. plant-a)")
        try:
            self.addresses()
        except ConfigError as exc:
            p.append(str(exc))
        for name in ("root", "central_root"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                topics.check_root(value)
            except ConfigError as exc:
                p.append(f"{name}: {exc}")
        if (self.username is None) != (self.password is None) and self.password is not None:
            p.append("a bridge password needs a username: give --username too")
        if (self.certfile is None) != (self.keyfile is None):
            p.append("a client certificate needs its key and the other way round: give both --certfile and --keyfile")
        tls = self.central.strip().lower().startswith("mqtts://")
        if (self.certfile or self.cafile) and not tls:
            p.append("TLS files are given but the central broker's URL is mqtt://: use mqtts://HOST:8883")
        if tls and self.cafile is None:
            p.append("mqtts:// needs --cafile, the CA that signed the central broker's certificate "
                     "(Mosquitto bridges do not read the system CA store unless bridge_capath is set)")
        if not isinstance(self.queue_limit, int) or self.queue_limit < 1000:
            p.append(f"queue_limit must be a whole number >= 1000, got {self.queue_limit!r}")
        if not isinstance(self.keepalive_s, int) or not 5 <= self.keepalive_s <= 3600:
            p.append(f"keepalive_s must be between 5 and 3600 seconds, got {self.keepalive_s!r}")
        if not isinstance(self.reconnect_max_s, int) or not 2 <= self.reconnect_max_s <= 3600:
            p.append(f"reconnect_max_s must be between 2 and 3600 seconds, got {self.reconnect_max_s!r}")
        return p

    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every central address, in fail-over order."""
        out: list[tuple[str, int]] = []
        for part in (self.central or "").split(","):
            part = part.strip()
            u = urlparse(part if "://" in part else f"mqtt://{part}")
            if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.path not in ("", "/"):
                raise ConfigError(f"central broker {part!r} is not a broker URL: write mqtt://HOST:1883 or "
                                  "mqtts://HOST:8883 (several, comma-separated, fail over in order)")
            try:
                port = u.port or (8883 if u.scheme == "mqtts" else 1883)
            except ValueError:
                raise ConfigError(f"central broker {part!r} has a bad port: write mqtt://HOST:1883") from None
            out.append((u.hostname, port))
        if not out:
            raise ConfigError("no central broker given: write mqtt://HOST:1883")
        return out

    def validate(self) -> BridgeSpec:
        p = self.problems()
        if p:
            raise ConfigError("the bridge settings are invalid:\n  - " + "\n  - ".join(p))
        return self

    @property
    def connection_name(self) -> str:
        return f"edgeloop-site-{self.site}"

    def topic_lines(self) -> list[str]:
        """The bridge's ``topic`` lines: pattern, direction, QoS 1, local prefix, remote prefix."""
        local = f"{self.root}/"
        remote = f"{self.central_root or self.root}/"
        lines = []
        up = UPLINK + (INFERENCE_OUT if self.inference else ())
        down = DOWNLINK + (INFERENCE_IN if self.inference else ())
        lines += [f"topic {t} out 1 {local} {remote}" for t in up]
        lines += [f"topic {t} in 1 {local} {remote}" for t in down]
        return lines


def bridge_config(spec: BridgeSpec) -> str:
    """The Mosquitto configuration (a ``conf.d`` file) that bridges the site broker to the central one."""
    spec.validate()
    addrs = " ".join(f"{h}:{p}" for h, p in spec.addresses())
    out = [
        f"# edgeloop: bridge of site {spec.site!r} to the central broker ({spec.central})",
        "# Generated by `edgeloop site bridge-config`; put it in /etc/mosquitto/conf.d/ on the site broker.",
        "# Keep persistence on in the main mosquitto.conf (Debian's default) so queued reports survive",
        "# a restart of the site broker too.",
        "",
        "# agents' reports are queued while the uplink is down (QoS 1, per client)",
        f"max_queued_messages {spec.queue_limit}",
        "",
        f"connection {spec.connection_name}",
        f"address {addrs}",
        f"remote_clientid {spec.connection_name}",
        f"local_clientid {spec.connection_name}-local",
        "cleansession false",  # the central broker keeps the bridge's subscriptions and queue while it is away
        "local_cleansession false",  # ... and the site broker queues the agents' reports for the bridge
        "start_type automatic",
        f"restart_timeout 2 {spec.reconnect_max_s}",  # back off from 2 s (with jitter) while the uplink is down
        f"keepalive_interval {spec.keepalive_s}",
        "bridge_protocol_version mqttv311",
        f"try_private {'true' if spec.mosquitto_central else 'false'}",
        "notifications true",
        f"notification_topic {spec.central_root or spec.root}/sites/{spec.site}/bridge",
        "round_robin false",
    ]
    if spec.username is not None:
        out.append(f"remote_username {spec.username}")
    if spec.password is not None:
        out.append(f"remote_password {spec.password}")
    if spec.cafile is not None:
        out.append(f"bridge_cafile {spec.cafile}")
    if spec.certfile is not None and spec.keyfile is not None:
        out += [f"bridge_certfile {spec.certfile}", f"bridge_keyfile {spec.keyfile}"]
    if spec.cafile is not None:
        out.append("bridge_insecure false")
    out += ["", "# fleet topics: agent -> hub go out, hub -> agent come in; nothing else crosses"]
    out += spec.topic_lines()
    return "\n".join(out) + "\n"


def notification_topic(site: str, root: str = topics.ROOT) -> str:
    """Where the bridge publishes its state on both brokers (retained ``1`` connected, ``0`` not)."""
    return f"{root}/sites/{site}/bridge"
