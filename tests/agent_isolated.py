"""Run ``edgeloop-agent`` in a process where torch, Qt, onnx, hub and app CANNOT be imported.

Used by the integration tests to start agents: it proves on every run that the
agent needs nothing from the workstation side.
"""

import importlib.abc
import sys

BLOCKED = {"torch", "PySide6", "hub", "app", "onnx", "onnxscript", "sklearn", "sqlite_utils", "amqtt", "scipy"}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the agent must not need it")
        return None


sys.meta_path.insert(0, _Blocker())

if __name__ == "__main__":
    from agent.cli import main

    sys.exit(main(sys.argv[1:]))
