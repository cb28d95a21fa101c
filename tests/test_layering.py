"""The dependency rule app -> hub -> agent, checked, not hoped for."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys

import agent
from tests.conftest import REPO

AGENT_MODULES = sorted(f"agent.{m.name}" for m in pkgutil.iter_modules(agent.__path__))


def test_every_agent_module_imports_without_torch_qt_hub_or_app():
    code = (
        "import runpy, sys; sys.argv=['x']; "
        f"runpy.run_path({str(REPO / 'tests' / 'agent_isolated.py')!r}, run_name='blocker'); "
        "import importlib\n"
        f"for m in {AGENT_MODULES!r}: importlib.import_module(m)\n"
        "import sys\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6', 'hub', 'app', 'onnx')]\n"
        "assert not bad, bad\n"
        "print('ok', len(" + repr(AGENT_MODULES) + "))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
    assert "agent.service" in AGENT_MODULES and "agent.cli" in AGENT_MODULES


def test_the_blocker_really_blocks():
    """Guard against a blocker that cannot fail: importing torch through it must raise."""
    code = (f"import runpy; runpy.run_path({str(REPO / 'tests' / 'agent_isolated.py')!r}, run_name='blocker')\n"
            "import torch")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_agent_cli_help_runs_isolated():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "agent_isolated.py"), "--help"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "edge agent" in proc.stdout


def test_import_linter_contracts():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert exe, "import-linter is part of the dev extras"
    proc = subprocess.run([exe, "--config", str(REPO / "pyproject.toml")], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout
