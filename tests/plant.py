"""A plant for the GUI workflow test (tests/test_app_workflow.py): a separate process that sends
every agent sensor rows over HTTP, as the IoT systems around a real fleet do, and the ground truth of
each row to the drifting agent's feedback endpoint once asked to. It runs in its own process so that it
never competes with the window for the GIL (the event-loop probe measures the window, not the test)."""

from __future__ import annotations

import json
import multiprocessing
import urllib.request

import numpy as np

from edgeloop.hub.datasets import SENSOR_LABELS, generate_sensor_data

MODEL = "pump"
SHIFT = 1.5  # standard deviations: the thermometer and the mount moved on one line


def _post(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _plant(urls: dict[str, str], drifting: str, stop, shifted, labels, sent, labelled) -> None:
    """The plant, in its own process (as the IoT systems are: it must not share the window's GIL):
    sensor rows in random order to every agent over HTTP; once ``shifted`` is set, ``drifting`` gets
    the shifted process, and while ``labels`` is set the true class of each of its rows follows as
    feedback. ``sent`` and ``labelled`` count that agent's rows."""
    normal = generate_sensor_data(2000, seed=21)
    drifted = generate_sensor_data(2000, seed=22, shift=SHIFT)
    rng = np.random.default_rng(9)
    i = 0
    while not stop.wait(0.005):
        for aid, url in urls.items():
            data = drifted if aid == drifting and shifted.is_set() else normal
            k = int(rng.integers(len(data.X)))
            rid = f"{aid}-{i}"
            try:
                _post(f"{url}/v2/models/{MODEL}/infer", {"id": rid, "inputs": [data.X[k].tolist()]})
                if aid == drifting:
                    sent.value += 1
                if aid == drifting and labels.is_set():
                    _post(f"{url}/v2/models/{MODEL}/feedback", {"id": rid, "label": SENSOR_LABELS[int(data.y[k])]})
                    labelled.value += 1
            except (OSError, ValueError):
                pass  # no model yet, or an answer lost while the agent swaps versions
        i += 1


class Plant:
    """:func:`_plant` in a spawned process, with its switches and counters shared."""

    def __init__(self, urls: dict[str, str], drifting: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.shifted, self.labels = ctx.Event(), ctx.Event(), ctx.Event()
        self.sent, self.labelled = ctx.Value("i", 0), ctx.Value("i", 0)
        self.proc = ctx.Process(target=_plant, args=(urls, drifting, self.stop, self.shifted, self.labels,
                                                     self.sent, self.labelled), daemon=True, name="plant")

    def close(self) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
