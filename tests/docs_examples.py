"""The runnable examples of README.md and docs/: finding them, and a running ``edgeloop up`` to run them against.

An example is runnable when the line just before its ```` ```bash ```` (or ```` ```sh ````) fence
is ``<!-- runnable -->`` or ``<!-- runnable expect="TEXT" -->`` (docs/integrations/README.md):
the test runs the block verbatim with ``bash -e -o pipefail`` in the repository folder, with
``.venv/bin`` first on PATH and ``EDGELOOP_HOME`` set to the stack's home, and requires exit
status 0 and, with ``expect``, TEXT in its output (``\\"`` stands for ``"``).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!--\s*runnable\b(.*?)-->")
EXPECT = re.compile(r'^\s*(?:expect="((?:[^"\\]|\\.)*)")?\s*$')
FENCE = re.compile(r"^```(bash|sh)\s*$")
DEFAULT_PORTS = (1884, 8081, 8082, 9184)  # what README.md and docs/integrations/ name
LOCK = Path("/tmp/edgeloop-up-default-ports.lock")


@dataclass(frozen=True)
class Example:
    file: str  # relative to the repository root
    line: int  # of the marker
    code: str
    expect: str | None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs").glob("*/*.md"))]


def examples_in(path: Path) -> list[Example]:
    """The marked examples of one Markdown file; a marker not followed by a bash/sh fence is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = str(path.relative_to(ROOT))
    out = []
    fence = ""  # the backticks of the fence we are in (markers inside fences are examples of markers)
    for i, line in enumerate(lines):
        ticks = re.match(r"^\s*(`{3,})", line)
        if ticks and (not fence or ticks.group(1).startswith(fence)):
            fence = "" if fence else ticks.group(1)
            continue
        m = MARKER.fullmatch(line.strip())
        if m is None or fence:
            continue
        e = EXPECT.match(m.group(1))
        if e is None:
            raise ValueError(f"{rel}:{i + 1}: cannot read the runnable marker {line.strip()!r}")
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            raise ValueError(f"{rel}:{i + 1}: a runnable marker must be followed by a ```bash or ```sh fence")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{rel}:{i + 1}: the fence after the runnable marker is never closed")
        expect = e.group(1).replace('\\"', '"') if e.group(1) is not None else None
        out.append(Example(rel, i + 1, "\n".join(lines[i + 2:end]) + "\n", expect))
    return out


def all_examples() -> list[Example]:
    return [ex for p in doc_files() for ex in examples_in(p)]


def run_example(ex: Example, home: Path, timeout: float = 40.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGELOOP_HOME": str(home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", ex.code], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


def port_in_use(port: int) -> bool:
    from edgeloop.hub.stack.runner import port_in_use as in_use

    return in_use(port)


@dataclass
class RunningUp:
    proc: subprocess.Popen
    home: Path
    output: Path
    info: dict

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def edgeloop_exe() -> str:
    exe = Path(sys.executable).parent / "edgeloop"
    return str(exe) if exe.exists() else "edgeloop"


def start_up(home: Path, *args: str, timeout: float = 120.0, name: str = "up") -> RunningUp:
    """``edgeloop up ARGS`` in ``home``, returned once its stack.json says it runs."""
    import json

    home.mkdir(parents=True, exist_ok=True)
    out = home / f"{name}.out"
    state = home / "stack" / "stack.json"
    env = {**os.environ, "EDGELOOP_HOME": str(home)}
    with open(out, "ab") as fh:
        proc = subprocess.Popen([edgeloop_exe(), "up", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"edgeloop up exited with {proc.returncode}:\n{out.read_text(errors='replace')}")
        if state.exists():
            try:
                info = json.loads(state.read_text())
            except ValueError:
                info = None
            if info and info.get("pid") == proc.pid:
                return RunningUp(proc, home, out, info)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"edgeloop up did not come up within {timeout:.0f} s:\n{out.read_text(errors='replace')}")


def stop_up(up: RunningUp, sig: int = signal.SIGINT, timeout: float = 40.0) -> int:
    up.proc.send_signal(sig)
    try:
        return up.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        up.proc.kill()
        up.proc.wait()
        raise AssertionError(f"edgeloop up did not stop within {timeout:.0f} s:\n{up.text()}") from None


def stack_pids(info: dict) -> list[int]:
    return [a["pid"] for a in info["agents"]] + ([info["broker_pid"]] if info.get("broker_pid") else [])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of ours counts as gone too: reaped by nobody only if its parent died
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


@contextmanager
def default_ports() -> Iterator[None]:
    """The documented ports, one holder on this machine at a time (test runs of several checkouts wait)."""
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        busy = [p for p in DEFAULT_PORTS if port_in_use(p)]
        if busy:
            raise AssertionError(f"the documented ports {busy} are in use (a running `edgeloop up`?): "
                                 "the README's examples need them; stop what holds them")
        yield
