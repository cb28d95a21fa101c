"""MQTT topic names: the one place they are spelled.

Layout (root ``edgeloop/v1``; at most 5 levels so it fits AWS IoT's limit of 7)::

    edgeloop/v1/agents/{agent_id}/status        agent -> hub retained "online" / "offline" (Last Will)
    edgeloop/v1/agents/{agent_id}/state         agent -> hub retained JSON birth certificate (AgentState)
    edgeloop/v1/agents/{agent_id}/cmd           hub -> agent signed commands (QoS 1)
    edgeloop/v1/agents/{agent_id}/bundle        hub -> agent binary bundle chunks (QoS 1)
    edgeloop/v1/agents/{agent_id}/events        agent -> hub results and progress (QoS 1)
    edgeloop/v1/agents/{agent_id}/drift         agent -> hub drift reports (QoS 1)
    edgeloop/v1/agents/{agent_id}/shadow        agent -> hub shadow reports (QoS 1; agent/wire/shadow.py)
    edgeloop/v1/agents/{agent_id}/serving       agent -> hub serving reports (QoS 0; rollouts' gates)
    edgeloop/v1/agents/{agent_id}/infer         anyone -> agent inference requests (QoS 0/1)
    edgeloop/v1/agents/{agent_id}/infer/result  agent -> requester, unless reply_to is given
    edgeloop/v1/hub/status                      retained "online" / "offline" of the hub
    edgeloop/v1/transfers/{transfer_id}         hub -> agents bundle chunks shared by a fan-out deploy

The root is per fleet (``edgeloop/v1`` by default): give each fleet on a shared broker
its own root (e.g. ``plant-a/edgeloop/v1``) and the broker's ACLs can keep them apart.
Every function takes it as ``root=``.
"""

from __future__ import annotations

import re

from edgeloop.agent.errors import ConfigError

ROOT = "edgeloop/v1"
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ROOT_LEVEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_ROOT_LEVELS = 3  # root + agents/{id}/infer/result stays within AWS IoT's 7 slashes

STATUS = "status"
STATE = "state"
CMD = "cmd"
BUNDLE = "bundle"
EVENTS = "events"
DRIFT = "drift"
SHADOW = "shadow"
SERVING = "serving"  # agent -> hub serving reports (agent/wire/serving.py), QoS 0
INFER = "infer"
INFER_RESULT = "infer/result"

TRANSFERS = "transfers"

ONLINE = "online"
OFFLINE = "offline"

HUB_STATUS = f"{ROOT}/hub/status"


def check_root(root: str) -> str:
    """A topic root: 1-3 levels of letters, digits, '_', '-' or '.'; no wildcards, no leading '/'."""
    levels = root.split("/") if isinstance(root, str) else []
    if not levels or len(levels) > MAX_ROOT_LEVELS or not all(_ROOT_LEVEL_RE.match(lv) for lv in levels):
        raise ConfigError(
            f"topic root {root!r} is not allowed: use 1-{MAX_ROOT_LEVELS} levels of letters, digits, '_', '-' "
            f"or '.', separated by '/' (e.g. {ROOT!r} or 'plant-a/edgeloop/v1')"
        )
    return root


def hub_status_topic(root: str = ROOT) -> str:
    """Retained ``online``/``offline`` of the hub of the fleet under ``root``."""
    return f"{root}/hub/status"


def check_agent_id(agent_id: str) -> str:
    """Agent ids become topic levels: no '/', '+', '#', spaces or control characters."""
    if not isinstance(agent_id, str) or not AGENT_ID_RE.match(agent_id):
        raise ConfigError(
            f"agent id {agent_id!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return agent_id


def agent_topic(agent_id: str, leaf: str, root: str = ROOT) -> str:
    return f"{root}/agents/{check_agent_id(agent_id)}/{leaf}"


def all_agents(leaf: str, root: str = ROOT) -> str:
    """Subscription filter for one leaf of every agent (used by the hub)."""
    return f"{root}/agents/+/{leaf}"


def transfer_topic(transfer_id: str, root: str = ROOT) -> str:
    """The topic every target of a fan-out deploy receives the bundle's chunks on."""
    return f"{root}/{TRANSFERS}/{transfer_id}"


def parse_transfer_topic(topic: str, root: str = ROOT) -> str | None:
    """``edgeloop/v1/transfers/<id>`` -> ``<id>``; None for any other topic."""
    prefix = f"{root}/{TRANSFERS}/"
    if not topic.startswith(prefix):
        return None
    transfer_id = topic[len(prefix):]
    return transfer_id if transfer_id and "/" not in transfer_id else None


def parse_agent_topic(topic: str, root: str = ROOT) -> tuple[str, str] | None:
    """``edgeloop/v1/agents/a1/infer/result`` -> ``("a1", "infer/result")``; None if foreign."""
    prefix = f"{root}/agents/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix):]
    agent_id, sep, leaf = rest.partition("/")
    if not sep or not leaf or not AGENT_ID_RE.match(agent_id):
        return None
    return agent_id, leaf
