"""What gets installed: one import name, every module, the sample data, and launchers that
explain a missing extra instead of failing with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

PARTS = ("agent", "hub", "app")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # build from a copy of the sources so the checkout gets no build/ or egg-info folders
    src = build / "src"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            dst = src / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((REPO / name).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("edgeloop-*.whl")
    return zipfile.ZipFile(whl)


def test_the_wheel_installs_one_import_name(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"edgeloop"}, tops
    assert not any(name.split("/")[0] in PARTS for name in wheel.namelist())


def test_every_module_and_the_sample_data_are_in_the_wheel(wheel):
    names = set(wheel.namelist())
    expected = set()
    for part in PARTS:
        for path in (REPO / part).rglob("*.py"):
            expected.add("edgeloop/" + path.relative_to(REPO).as_posix())
    for path in (REPO / "edgeloop").glob("*.py"):
        expected.add("edgeloop/" + path.name)
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing[:10]}"
    samples = sorted(n for n in names if n.startswith("edgeloop/hub/datasets/samples/"))
    assert "edgeloop/hub/datasets/samples/sensors.csv" in samples


def test_console_scripts_point_into_the_edgeloop_package(wheel):
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    scripts = dict(line.split(" = ") for line in wheel.read(entry).decode().splitlines() if " = " in line)
    assert scripts == {"edgeloop": "edgeloop._entry:hub_main", "edgeloop-agent": "edgeloop.agent.cli:main",
                       "edgeloop-app": "edgeloop._entry:app_main"}


# --- an agent-only install, simulated: the hub's and the GUI's dependencies cannot be imported ---
HUB_ONLY = ("torch", "onnx", "onnxscript", "sqlite_utils", "amqtt", "platformdirs", "sympy")
APP_ONLY = ("PySide6", "shiboken6")

BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(','))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
"""


def run_without(blocked: tuple[str, ...], code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGELOOP_HOME": str(Path(os.environ.get("TMPDIR", "/tmp")) / "edgeloop-no-extra")}
    return subprocess.run([sys.executable, "-c", BLOCKER + code, ",".join(blocked), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd="/")


@pytest.mark.parametrize("argv", [["registry", "list"], ["data", "list"], ["fleet"]])
def test_edgeloop_without_the_hub_extra_says_which_extra_to_install(argv):
    proc = run_without(HUB_ONLY + APP_ONLY, "from edgeloop._entry import hub_main; sys.exit(hub_main())", *argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'edgeloop[hub]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_edgeloop_app_without_qt_says_which_extra_to_install():
    proc = run_without(APP_ONLY, "from edgeloop._entry import app_main; sys.exit(app_main())")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'edgeloop[app]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_public_api_imports_agent_names_without_the_hub_extra():
    code = ("import edgeloop\n"
            "from edgeloop import Agent, AgentConfig, EdgeloopError, wire\n"
            "from edgeloop.agent.wire.messages import AgentState\n"
            "assert wire.__name__ == 'edgeloop.agent.wire' and Agent.__name__ == 'Agent'\n"
            "assert AgentConfig.__name__ == 'AgentConfig' and issubclass(EdgeloopError, Exception)\n"
            "assert not [m for m in sys.modules if m.startswith(('edgeloop.hub', 'edgeloop.app', 'torch'))]\n"
            "try:\n    edgeloop.Hub\nexcept ModuleNotFoundError as exc:\n    print('hub needs', exc.name)\n")
    proc = run_without(HUB_ONLY + APP_ONLY, code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("hub needs ")


def test_no_top_level_agent_hub_or_app_module_is_importable():
    for name in PARTS:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd="/",
                              timeout=60)
        assert proc.returncode != 0 and "No module named" in proc.stderr, (name, proc.stderr)


def test_a_checkout_imports_without_an_install():
    """Python run from the repository root finds edgeloop/ first: its parts resolve to agent/, hub/, app/."""
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]  # no install\n"
            "sys.path_hooks[:] = [h for h in sys.path_hooks if 'editable' not in repr(h).lower()]\n"
            "sys.path_importer_cache.clear(); sys.path.insert(0, sys.argv[1])\n"
            "import edgeloop.agent.wire.topics as t\n"
            "print(t.__file__); print(t.agent_topic('edge-1', t.STATE))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=60,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    path, topic = proc.stdout.split()
    assert Path(path) == REPO / "agent" / "wire" / "topics.py" and topic == "edgeloop/v1/agents/edge-1/state"
