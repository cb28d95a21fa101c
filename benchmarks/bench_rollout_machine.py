"""Cost of the pure rollout state machine at fleet scale (no broker, no registry: the core alone).

    python benchmarks/bench_rollout_machine.py [--agents 1000] [--canary 10]

Drives one rollout (canary, then doubling waves) to completion: every agent reports transferring,
verifying, baking and one good observation; a Tick ends each bake. Reports the steps, time per step,
the audit size, and the size and load time of the state's JSON (what the registry would store).
About a second. Prints one line; no asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeloop.hub.rollout.events import AgentProgress, AgentReport, Start, Tick
from edgeloop.hub.rollout.machine import new_rollout, step
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.rollout.state import RolloutState
from tests.rollout_rig import GOOD, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--canary", type=int, default=10)
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    p = plan(ramp="double", canary_agents=args.canary)
    agents = tuple(AgentRecord(f"pi-{i:05d}", {"site": "plant-a"}, True, "v1") for i in range(args.agents))
    now, steps = 0.0, 1
    t0 = time.perf_counter()
    s, _ = step(new_rollout("bench", p, now), Start(agents=agents), now)
    while not s.terminal:
        for i in list(s.waves[-1].agents):
            for ev in (AgentProgress(i, "transferring"), AgentProgress(i, "verifying"), AgentProgress(i, "baking"),
                       AgentReport(i, GOOD)):
                now += 0.01
                s, _ = step(s, ev, now)
                steps += 1
        now += p.bake_seconds + 1
        s, _ = step(s, Tick(), now)
        steps += 1
    elapsed = time.perf_counter() - t0
    blob = json.dumps(s.to_dict())
    t1 = time.perf_counter()
    RolloutState.from_dict(json.loads(blob))
    load = time.perf_counter() - t1
    print(f"{args.agents} agents, {len(s.waves)} waves, {s.status}: {steps} steps in {elapsed:.2f} s "
          f"({elapsed / steps * 1e6:.0f} us/step); audit {len(s.audit)} records; "
          f"state JSON {len(blob) / 1e6:.2f} MB, loaded in {load * 1e3:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"agents": args.agents, "waves": len(s.waves), "status": s.status,
                                         "steps": steps, "seconds": elapsed, "audit_records": len(s.audit),
                                         "state_json_bytes": len(blob), "state_load_s": load}, indent=2))


if __name__ == "__main__":
    main()
