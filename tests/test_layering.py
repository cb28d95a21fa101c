"""The dependency rule app -> hub -> agent, checked, not hoped for."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

import edgeloop.agent as agent
from tests.conftest import REPO

AGENT_MODULES = sorted(m.name for m in pkgutil.walk_packages(agent.__path__, "edgeloop.agent."))


def test_every_agent_module_imports_without_torch_qt_hub_or_app():
    code = (
        "import runpy, sys; sys.argv=['x']; "
        f"runpy.run_path({str(REPO / 'tests' / 'agent_isolated.py')!r}, run_name='blocker'); "
        "import importlib\n"
        f"for m in {AGENT_MODULES!r}: importlib.import_module(m)\n"
        "import sys\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6', 'onnx') "
        "or m.startswith(('edgeloop.hub', 'edgeloop.app'))]\n"
        "assert not bad, bad\n"
        "print('ok', len(" + repr(AGENT_MODULES) + "))"
    )
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
    assert "edgeloop.agent.service" in AGENT_MODULES and "edgeloop.agent.cli" in AGENT_MODULES


def test_the_blocker_really_blocks():
    """Guard against a blocker that cannot fail: importing torch through it must raise."""
    code = (f"import runpy; runpy.run_path({str(REPO / 'tests' / 'agent_isolated.py')!r}, run_name='blocker')\n"
            "import torch")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_agent_cli_help_runs_isolated():
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "agent_isolated.py"), "--help"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "edge agent" in proc.stdout


def test_import_linter_contracts():
    """scripts/check builds the edgeloop/ tree import-linter reads and checks every contract."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "check"), "imports"], capture_output=True, text=True,
                          cwd=REPO, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 kept, 0 broken" in proc.stdout and "rollout core is pure" in proc.stdout
