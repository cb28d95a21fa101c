"""A hub home for scale tests: two registered versions of a model with tiny signed bundles (no training),
and the wave plan a scale rollout follows. Shared by tests/test_scale_rollout.py and
benchmarks/bench_scale_rollout.py."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloop.hub.rollout.state import TERMINAL
from edgeloop.hub.services import Hub
from tests.factories import make_bundle

MODEL = "scale-mlp"
FAST_HUB = "[runtime]\nheartbeat_s = 1.0\n"


@dataclass(frozen=True)
class ScaleVersion:
    id: str  # the registry's version id (scale-mlp:1)
    version: str  # what the bundle's manifest and the agents' states say ("1")
    sha256: str
    bundle: bytes


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_version(hub: Hub, tag: str, payload: bytes) -> ScaleVersion:
    """A version of :data:`MODEL` recorded as training records one, with a signed bundle of ``payload``."""
    reg = hub.registry
    ds = reg.add_dataset(_sha(f"scale-{tag}"), f"scale-{tag}.csv", f"file:scale-{tag}.csv", 10, ["f0", "f1", "f2"],
                         ["a", "b"])
    run = reg.start_run(ds["id"], MODEL, {"epochs": 1}, code_version="scale")
    reg.finish_run(run["id"], metrics={"test_accuracy": 0.9})
    v = reg.add_version(MODEL, run["id"], _sha(f"onnx-{tag}"), task="classification", metrics={"test_accuracy": 0.9})
    data = make_bundle(hub.key, {"model.onnx": payload}, model=MODEL, version=v["version"])
    sha = hashlib.sha256(data).hexdigest()
    path = hub.home.bundles_dir / f"{sha}.bundle"
    path.write_bytes(data)
    reg.add_bundle(sha, v["id"], path, len(data), hub.key.keyid)
    return ScaleVersion(v["id"], v["version"], sha, data)


def make_scale_hub(root: Path, payload_size: int = 2048) -> tuple[Hub, ScaleVersion, ScaleVersion]:
    """A fresh hub home with versions 1 and 2 of :data:`MODEL` (bundles of about ``payload_size`` bytes)."""
    hub = Hub(root, actor="scale")
    (root / "hub.toml").write_text(FAST_HUB)
    v1 = add_version(hub, "1", bytes(range(256)) * (payload_size // 256) + b"v1")
    v2 = add_version(hub, "2", bytes(range(255, -1, -1)) * (payload_size // 256) + b"v2")
    return hub, v1, v2


def wave_sizes(n: int, percents: tuple[float, ...] = (1.0, 10.0)) -> list[int]:
    """Canary ``percents[0]`` % (at least 1 agent), then each next cumulative percent, then the rest."""
    sizes, done = [], 0
    for p in percents:
        upto = min(n, max(done + 1, math.ceil(n * p / 100.0)))
        sizes.append(upto - done)
        done = upto
    if done < n:
        sizes.append(n - done)
    return [s for s in sizes if s > 0]


def split_waves(ids: list[str], sizes: list[int]) -> list[list[str]]:
    out, i = [], 0
    for s in sizes:
        out.append(ids[i:i + s])
        i += s
    return out


def scale_plan(version: str, *, target: str = "site=plant-a", canary_percent: float = 1.0,
               wave_percents: tuple[float, ...] = (10.0, 100.0), bake_seconds: float = 1.0, **over: Any) -> dict:
    """A rollout plan (as JSON) of :data:`MODEL` ``version``: canary 1 %, then 10 %, then the rest, short bakes,
    gated on install, at least 20 requests, error rate and p99 against the replaced version."""
    plan = {"schema": 1, "model": MODEL, "version": version, "target": target, "strategy": "canary",
            "canary_agents": None, "canary_percent": canary_percent, "ramp": "percents",
            "wave_percents": list(wave_percents), "bake_seconds": bake_seconds, "agent_timeout_seconds": 60.0,
            "gates": {"install_and_smoke": True, "min_requests": 20, "max_error_rate": 0.01, "max_p99_ratio": 1.5,
                      "no_drift": True},
            "failure_policy": "rollback_wave"}
    plan.update(over)
    return plan


def start_rollout(hub: Hub, plan: dict, *, override_reason: str | None = "scale test", wait: float = 60.0) -> str:
    """Start ``plan`` through the library face (``Hub.rollout_start``: a request the hub runtime's driver
    carries out); the rollout's id."""
    return str(hub.rollout_start(plan, override_reason=override_reason, wait=wait)["id"])


def wait_rollout(hub: Hub, rollout_id: str, timeout: float, poll: float = 0.25) -> dict:
    """``Hub.rollout_status`` once the rollout ended (completed, rolled back, aborted) or halted; raises on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        status = hub.rollout_status(rollout_id, audit=0)
        if status["status"] in (*TERMINAL, "halted"):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"rollout {rollout_id} still {status['status']} after {timeout:.0f} s: "
                                 f"{status['summary']}")
        time.sleep(poll)


__all__ = ["MODEL", "ScaleVersion", "add_version", "make_scale_hub", "wave_sizes", "split_waves", "scale_plan",
           "start_rollout", "wait_rollout"]
