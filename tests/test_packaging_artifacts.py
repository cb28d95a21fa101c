"""The artifacts packaging/ builds, built, installed and started for real: the wheelhouse installs the agent
in a fresh venv with no index (and no network) and that agent serves a model deployed to it over MQTT;
with only the agent extra, ``edgeloop`` and ``edgeloop-app`` say which extra to install; the aarch64
wheelhouse resolves with the same onnxruntime pin; the unit's ``systemd-analyze security`` exposure is
<= 2.0; the .deb installs with apt-get, its service refuses to start until enrolled, then runs under the
unit's full sandbox in a real (private) systemd -- binds its HTTP port, reaches the broker, writes its state
dir, serves a deployed model -- and purges clean. Real Mosquitto, onnxruntime, dpkg and systemd.

The third-party wheels are downloaded once per set of pins into ~/.cache/edgeloop-tests/packaging/deps-<hash>
(the project's wheel is rebuilt each run), the .deb once per source tree into .../deb-<hash>."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.hub.fleet import free_port
from tests.agent_rig import AgentRig
from tests.conftest import REPO, unavailable, wait_until

PACKAGING = REPO / "packaging"
ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine())
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
ORT_PIN = re.search(r'"onnxruntime==([^"]+)"', (REPO / "pyproject.toml").read_text())
IRIS = [5.1, 3.5, 1.4, 0.2]
pytestmark = pytest.mark.skipif(ARCH is None, reason=f"no agent wheels for {platform.machine()}")


def _hash(paths, extra: bytes = b"") -> str:
    h = hashlib.sha256(PYVER.encode() + extra)
    for f in paths:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _cache(kind: str, key: str) -> Path:
    """~/.cache/edgeloop-tests/packaging/KIND-KEY, the other KIND-* removed."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeloop-tests" / "packaging"
    here = root / f"{kind}-{key}"
    for old in root.glob(f"{kind}-*"):
        if old != here:
            shutil.rmtree(old, ignore_errors=True)
    here.mkdir(parents=True, exist_ok=True)
    return here


@pytest.fixture(scope="module")
def cache() -> Path:
    """The wheelhouses' third-party wheels depend on the pins alone (the project's wheel is rebuilt each time)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = json.dumps([project["dependencies"], project["optional-dependencies"]["agent"]]).encode()
    return _cache("deps", _hash([PACKAGING / "agent-constraints.txt", PACKAGING / "build-wheelhouse"], pins))


def run(*cmd, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One builder at a time per cache folder (pytest-xdist workers, parallel sessions)."""
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def wheelhouse_for(cache: Path, arch: str, refresh: bool = True) -> Path:
    """build-wheelhouse into the cache; ``refresh=False``: only when it is not there (the other arch's
    house is checked for its third-party wheels alone, which depend on the pins, not on the sources)."""
    out = cache / f"wheelhouse-{arch}"
    with locked(cache):
        if refresh or not (out / "SHA256SUMS").is_file():
            run(PACKAGING / "build-wheelhouse", "--arch", arch, "--python", PYVER, "--out", out,
                env={**os.environ, "PYTHON": sys.executable})
    return out


@pytest.fixture(scope="module")
def wheelhouse(cache) -> Path:
    return wheelhouse_for(cache, ARCH)


def unit_exposure(unit: Path) -> float:
    proc = run("systemd-analyze", "security", "--offline=yes", "--no-pager", unit, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    return float(match.group(1))


def http_infer(port: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v2/models/iris/infer", body=json.dumps({"inputs": [IRIS]}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def agent_config(aid: str, state: Path, trusted: Path, broker, port: int) -> str:
    return AgentConfig(agent_id=aid, state_dir=state, trusted_keys=[trusted], mqtt_host=broker.address.host,
                       mqtt_port=broker.address.port, http_port=port, transfer_idle_seconds=5.0).to_toml()


def deploy_and_serve(rig: AgentRig, aid: str, port: int, log) -> None:
    """Deploy iris 1 over MQTT; the agent installs it, answers over MQTT and HTTP."""
    assert rig.online([aid]), f"{aid} never came online\n{log()}"
    cid = rig.deploy(aid, "1")
    assert wait_until(lambda: rig.finals(cid), 60), f"no install result\n{log()}"
    assert [e["ok"] for e in rig.finals(cid)][0] is True, (rig.finals(cid), log())
    assert rig.serving_version(aid) == "1"
    status, doc = http_infer(port)
    assert status == 200, doc
    assert doc["model_name"] == "iris" and doc["model_version"] == "1" and doc["outputs"], doc


# --- the unit ----------------------------------------------------------------------------------------
def test_the_agent_unit_is_hardened_to_an_exposure_of_at_most_2():
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze is not installed (apt-get install systemd)")
    assert unit_exposure(PACKAGING / "edgeloop-agent.service") <= 2.0


# --- wheelhouses ---------------------------------------------------------------------------------------
def test_both_wheelhouses_resolve_binary_wheels_with_the_pinned_onnxruntime(cache, wheelhouse):
    assert ORT_PIN, "pyproject.toml pins no onnxruntime version (the agent extra must: packaging/README.md)"
    tag = "cp" + PYVER.replace(".", "")
    for arch in ("x86_64", "aarch64"):
        house = wheelhouse if arch == ARCH else wheelhouse_for(cache, arch, refresh=False)
        wheels = sorted(p.name for p in house.glob("*.whl"))
        assert f"onnxruntime-{ORT_PIN.group(1)}-{tag}-{tag}-manylinux_2_28_{arch}.whl" in wheels, wheels
        for name in wheels:  # every binary wheel is for this architecture, at most manylinux_2_28
            platforms = name[:-4].split("-")[-1].split(".")
            assert platforms == ["any"] or all(p.endswith(arch) for p in platforms), name
            for level in re.findall(r"manylinux_2_(\d+)", name):
                assert int(level) <= 28, name
        assert (house / "SHA256SUMS").read_text().count(".whl") == len(wheels)
    proc = subprocess.run([PACKAGING / "build-wheelhouse", "--arch", "armv7l"], capture_output=True, text=True)
    assert proc.returncode == 2 and "32-bit ARM" in proc.stderr and "64-bit" in proc.stderr


@pytest.fixture(scope="module")
def offline_venv(tmp_path_factory, wheelhouse) -> Path:
    """A fresh venv with the agent installed from the wheelhouse alone: no index, no pip config, and
    (as root, where `unshare -n` works) in a network namespace with no network at all."""
    venv = tmp_path_factory.mktemp("offline") / "venv"
    run(sys.executable, "-m", "venv", venv)
    cmd = [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wheelhouse),
           "edgeloop[agent]"]
    if os.geteuid() == 0 and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-n", *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    with locked(wheelhouse.parent):
        run(*cmd, env={**env, "PIP_CONFIG_FILE": os.devnull})
    return venv


def test_the_wheelhouse_installs_the_agent_offline_and_it_serves_a_deployed_model(tmp_path, offline_venv, mosquitto):
    listed = run(offline_venv / "bin" / "python", "-m", "pip", "list", "--format=json").stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"edgeloop", "onnxruntime", "paho-mqtt", "numpy"} <= names
    assert not names & {"torch", "pyside6", "onnx", "amqtt", "sqlite-utils"}, names
    with AgentRig(tmp_path, mosquitto) as rig:
        aid, port = f"offline-{os.getpid()}", free_port()
        (tmp_path / "hub.pub.pem").write_bytes(rig.key.public_pem())
        config = tmp_path / "agent.toml"
        config.write_text(agent_config(aid, tmp_path / "state", tmp_path / "hub.pub.pem", mosquitto, port))
        log = tmp_path / "agent.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([offline_venv / "bin" / "edgeloop-agent", "run", "--config", config],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deploy_and_serve(rig, aid, port, lambda: log.read_text(errors="replace"))
        finally:
            proc.terminate()
            assert proc.wait(20) == 0, log.read_text(errors="replace")


@pytest.mark.parametrize(("argv", "extra"), [(["edgeloop", "registry", "list"], "hub"),
                                             (["edgeloop", "demo"], "hub"),
                                             (["edgeloop", "agent", "run", "--config", "x.toml"], "hub"),
                                             (["edgeloop-app"], "app")])
def test_an_agent_only_install_names_the_extra_instead_of_a_traceback(tmp_path, offline_venv, argv, extra):
    proc = subprocess.run([offline_venv / "bin" / argv[0], *argv[1:]], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "EDGELOOP_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"pip install 'edgeloop[{extra}]'" in proc.stderr and "edgeloop-agent" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# --- the .deb ------------------------------------------------------------------------------------------
SANDBOX = PACKAGING / "test-systemd-sandbox"
APT = ("apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120")  # waits for another apt run instead of failing
UNIT = "edgeloop-agent.service"


@pytest.fixture(scope="module")
def deb(cache, wheelhouse) -> Path:
    if os.geteuid() != 0 or shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None:
        unavailable("building and installing the .deb needs root, dpkg-deb and apt-get")
    files = [REPO / "pyproject.toml", REPO / "setup.py", *sorted(PACKAGING.rglob("*"))]
    for part in ("edgeloop", "agent", "hub", "app"):
        files += sorted((REPO / part).rglob("*"))
    out = _cache("deb", _hash(files))  # rebuilt when anything in it changed
    with locked(out), locked(cache):  # the wheelhouse is read while it is built
        found = sorted(out.glob("edgeloop-agent_*.deb"))
        if found:
            return found[-1]
        env = {**os.environ, "PIP_PYTHON": sys.executable, "DEB_COMPRESS": "gzip", "DEB_LEVEL": "1"}
        debian_python = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                       capture_output=True, text=True).stdout.strip()
        args = ["--wheelhouse", str(wheelhouse)] if debian_python == PYVER else []  # else it builds its own
        return Path(run(PACKAGING / "build-deb", *args, "--out", out, env=env).stdout.strip().splitlines()[-1])


class Sandbox:
    """A private systemd (packaging/test-systemd-sandbox) running the installed unit."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "sandbox.state"
        proc = subprocess.run([SANDBOX, "boot", self.state, UNIT], capture_output=True, text=True, timeout=60)
        if proc.returncode == 3:
            unavailable(f"no private systemd here: {proc.stderr.strip()}")
        assert proc.returncode == 0, proc.stderr
        self.root = Path(f"/proc/{proc.stdout.split()[-1]}/root")
        dropin = self.root / f"run/systemd/system/{UNIT}.d"
        dropin.mkdir(parents=True)
        # nothing else booted (no sysinit.target to order after); output into the sandbox's /run
        (dropin / "sandbox.conf").write_text("[Unit]\nDefaultDependencies=no\n[Service]\n"
                                             "StandardOutput=append:/run/agent.log\nStandardError=inherit\n")
        self.ctl("daemon-reload")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([SANDBOX, "ctl", self.state, *args], capture_output=True, text=True, timeout=60)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def show(self, *props: str) -> dict[str, str]:
        out = self.ctl("show", UNIT, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def log(self) -> str:
        path = self.root / "run/agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run([SANDBOX, "stop", self.state], capture_output=True, timeout=60)


def test_the_deb_installs_runs_under_the_hardened_unit_in_systemd_and_purges(tmp_path, deb, mosquitto):
    if subprocess.run(["dpkg", "-s", "edgeloop-agent"], capture_output=True).returncode == 0:
        unavailable("edgeloop-agent is installed on this machine already: not replacing it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sandbox = None
    try:
        run(*APT, "install", "--no-install-recommends", deb, env=env)
        # what the package made: the user, the state and config folders, the unit, the self-contained venv
        assert run("id", "-un", "edgeloop").stdout.strip() == "edgeloop"
        state, etc = Path("/var/lib/edgeloop"), Path("/etc/edgeloop")
        assert (state.stat().st_mode & 0o7777, state.owner()) == (0o750, "edgeloop")
        assert (etc.stat().st_mode & 0o7777, etc.group()) == (0o750, "edgeloop")
        assert unit_exposure(Path("/lib/systemd/system") / UNIT) <= 2.0
        assert "agent" in run("/usr/bin/edgeloop-agent", "--help").stdout
        assert not Path("/opt/edgeloop/venv/bin/pip").exists()  # nothing but the agent in the venv

        sandbox = Sandbox(tmp_path)
        # the shipped config is not enrolled: refused (exit 2), not restarted
        sandbox.ctl("start", UNIT, check=False)
        assert wait_until(lambda: sandbox.show("ActiveState")["ActiveState"] == "failed", 30), sandbox.log()
        assert sandbox.show("ExecMainStatus")["ExecMainStatus"] == "2"
        assert "config needs agent_id" in sandbox.log()
        sandbox.ctl("reset-failed", UNIT)

        with AgentRig(tmp_path, mosquitto) as rig:
            aid, port = f"deb-{os.getpid()}", free_port()
            (etc / "hub.pub.pem").write_bytes(rig.key.public_pem())
            (etc / "agent.toml").write_text(agent_config(aid, state, etc / "hub.pub.pem", mosquitto, port))
            for f in etc.iterdir():
                shutil.chown(f, "root", "edgeloop")
                f.chmod(0o640)
            sandbox.ctl("start", UNIT)
            deploy_and_serve(rig, aid, port, sandbox.log)
            props = sandbox.show("ActiveState", "NRestarts", "MainPID", "User")
            assert props["ActiveState"] == "active" and props["NRestarts"] == "0", (props, sandbox.log())
            # the sandbox is in force: no capabilities, seccomp filtering, no new privileges
            status = (sandbox.root / f"proc/{props['MainPID']}/status").read_text()
            assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^Seccomp:\s+2$", status, re.M)
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
            # its state: written by the agent's user, private (UMask=0077)
            written = [p for p in state.rglob("*") if p.is_file()]
            assert written and {p.owner() for p in written} == {"edgeloop"}
            assert all(p.stat().st_mode & 0o077 == 0 for p in written), [oct(p.stat().st_mode) for p in written]
            sandbox.ctl("stop", UNIT)
            assert sandbox.show("ActiveState")["ActiveState"] == "inactive", sandbox.log()
    finally:
        if sandbox is not None:
            sandbox.stop()
        purged = subprocess.run([*APT, "purge", "edgeloop-agent"], capture_output=True, text=True, env=env,
                                timeout=300)
        shutil.rmtree("/etc/edgeloop", ignore_errors=True)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert subprocess.run(["dpkg", "-s", "edgeloop-agent"], capture_output=True).returncode != 0
    assert not Path("/opt/edgeloop").exists() and not Path("/var/lib/edgeloop").exists()
    assert not Path("/lib/systemd/system", UNIT).exists()
    assert not Path("/etc/systemd/system/multi-user.target.wants", UNIT).exists()



# --- the workstation's desktop entry -------------------------------------------------------------------
def test_the_workstation_install_writes_a_desktop_entry_and_icon_for_the_gui(tmp_path, offline_venv):
    app = offline_venv / "bin" / "edgeloop-app"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share")}
    run(PACKAGING / "install-workstation", "--desktop-only", app, env=env)
    entry = (tmp_path / "share/applications/edgeloop.desktop").read_text()
    fields = dict(line.split("=", 1) for line in entry.splitlines() if "=" in line)
    assert fields["Exec"] == str(app) and fields["Icon"] == "edgeloop" and fields["Type"] == "Application"
    assert (tmp_path / "share/icons/hicolor/scalable/apps/edgeloop.svg").read_text().startswith("<svg")
    if shutil.which("desktop-file-validate"):
        run("desktop-file-validate", tmp_path / "share/applications/edgeloop.desktop")
    refused = subprocess.run([PACKAGING / "install-workstation", "--desktop-only", tmp_path / "missing"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "not an executable" in refused.stderr
