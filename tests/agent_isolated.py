"""Run ``edgeloop-agent`` in a process where torch, Qt, onnx, hub and app CANNOT be imported.

Used by the integration tests to start agents: it proves on every run that the
agent needs nothing from the workstation side.
"""

import importlib.abc
import sys

BLOCKED = {"torch", "PySide6", "onnx", "onnxscript", "sklearn", "sqlite_utils", "amqtt", "scipy",
           "edgeloop.hub", "edgeloop.app"}


def blocked(name: str) -> bool:
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ImportError(f"{name} is blocked: the agent must not need it")
        return None


sys.meta_path.insert(0, _Blocker())

if __name__ == "__main__":
    from edgeloop.agent.cli import main

    sys.exit(main(sys.argv[1:]))
