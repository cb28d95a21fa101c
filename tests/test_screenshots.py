"""scripts/screenshots.py in CI: it drives the real window offscreen and writes a picture of every view
that docs/operator-guide.md links to.

The script runs once (a subprocess, QT_QPA_PLATFORM=offscreen, on a throwaway home under the test's tmp
folder); the tests then check its exit code and progress lines, that the set of pictures equals the set
the guide links to (parsed from the guide, so the two cannot drift apart) plus the few listed below, and
that every picture is a PNG of a window's size with real content (decoded with QImage, not blank).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")

from PySide6.QtGui import QImage

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "screenshots.py"
GUIDE = REPO / "docs" / "operator-guide.md"
COMMITTED = REPO / "docs" / "screenshots"
# Pictures the script takes that the guide does not show (none now).
NOT_IN_GUIDE: set[str] = set()
# The script finishes in about 20 s on two idle cores; the limit leaves room for a loaded CI machine and
# stays under pytest-timeout's 300 s, so a hang is reported with the script's output.
TIMEOUT_S = 240
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def guide_pictures() -> set[str]:
    """The names of the pictures the guide links to: ``](screenshots/NAME.png)``."""
    names = set(re.findall(r"\]\(screenshots/([A-Za-z0-9_.-]+\.png)\)", GUIDE.read_text(encoding="utf-8")))
    assert names, f"{GUIDE} links to no screenshots/*.png; the pattern above no longer matches it"
    return names


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    out: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("screenshots")
    out, tmp = base / "out", base / "tmp"
    tmp.mkdir()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "TMPDIR": str(tmp)}
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/screenshots.py ran past {TIMEOUT_S} s; its output so far:\n{exc.stdout!s}\n"
                    f"{exc.stderr!s}")
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0, out)


def png_header(path: Path) -> tuple[int, int, int, int]:
    """Width, height, bit depth and colour type from the PNG's IHDR chunk (its CRC checked)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, f"{path.name}: the first chunk is {kind!r}, not IHDR"
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(kind + body) == crc, f"{path.name}: IHDR's CRC is wrong"
    width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    assert data[-12:] == b"\0\0\0\0IEND\xaeB`\x82", f"{path.name} is cut short (no IEND)"
    return width, height, depth, colour


def pixels(path: Path) -> np.ndarray:
    """The picture's pixels as 0xAARRGGBB integers, decoded by Qt."""
    img = QImage(str(path))
    assert not img.isNull(), f"Qt cannot decode {path.name}"
    img = img.convertToFormat(QImage.Format.Format_ARGB32)
    rows = np.frombuffer(img.constBits(), dtype=np.uint32, count=img.bytesPerLine() // 4 * img.height())
    # a copy: the buffer is the QImage's, freed with it
    return rows.reshape(img.height(), img.bytesPerLine() // 4)[:, :img.width()].copy()


def test_script_writes_every_picture_the_guide_links_to(run: Run) -> None:
    assert run.rc == 0, f"scripts/screenshots.py failed (rc {run.rc}):\n{run.stdout}\n{run.stderr}"
    written = {p.name for p in run.out.iterdir()}
    assert all(name.endswith(".png") for name in written), written
    linked = guide_pictures()
    assert linked - written == set(), f"the guide links to pictures the script did not write: {linked - written}"
    unexplained = written - linked - NOT_IN_GUIDE
    assert unexplained == set(), f"pictures neither in the guide nor in NOT_IN_GUIDE: {unexplained}"
    assert NOT_IN_GUIDE <= written, f"NOT_IN_GUIDE names pictures the script no longer takes: {NOT_IN_GUIDE - written}"
    assert not NOT_IN_GUIDE & linked, "the guide now shows these: take them out of NOT_IN_GUIDE"
    # a progress line per picture, numbered, then the summary
    progress = re.findall(r"^\[\s*(\d+)/(\d+)\] (\S+\.png)\s+[\d.]+ s$", run.stdout, re.M)
    assert [name for _, _, name in progress] and {name for _, _, name in progress} == written, run.stdout
    assert [int(i) for i, _, _ in progress] == list(range(1, len(written) + 1)), run.stdout
    assert {int(n) for _, n, _ in progress} == {len(written)}, run.stdout
    assert f"wrote {len(written)} screenshots to {run.out}" in run.stdout, run.stdout
    assert "propagateSizeHints" not in run.stderr, "the offscreen plugin's noise should be filtered"
    print(f"scripts/screenshots.py wrote {len(written)} pictures in {run.seconds:.1f} s")


def test_every_picture_is_a_window_with_content(run: Run) -> None:
    assert run.rc == 0, run.stderr
    for path in sorted(run.out.glob("*.png")):
        width, height, depth, colour = png_header(path)
        assert 600 <= width <= 2000 and 450 <= height <= 1400, f"{path.name}: {width}x{height} is no window"
        assert depth == 8 and colour in (2, 6), f"{path.name}: bit depth {depth}, colour type {colour}"
        px = pixels(path)
        assert px.shape == (height, width), f"{path.name}: Qt decoded {px.shape}, IHDR says {width}x{height}"
        values, counts = np.unique(px, return_counts=True)
        # text, widgets and plots: anti-aliased text alone gives dozens of shades
        assert len(values) > 32, f"{path.name} has only {len(values)} colours: is it blank?"
        assert counts.max() < 0.9 * px.size, f"{path.name} is {counts.max() / px.size:.0%} one colour"
        # the window is drawn to its edges: no large empty (black or transparent) band at the bottom
        assert len(np.unique(px[-height // 4:])) > 8, f"{path.name}: its bottom quarter is empty"


def test_the_training_pictures_differ(run: Run) -> None:
    """train-running is taken mid-run (8 epochs drawn), train-done after the run: not the same picture."""
    assert run.rc == 0, run.stderr
    running, done = pixels(run.out / "train-running.png"), pixels(run.out / "train-done.png")
    assert running.shape == done.shape
    assert (running != done).mean() > 0.02, "train-running shows the same window as train-done"


def test_committed_pictures_match_the_script(run: Run) -> None:
    """docs/screenshots holds the same pictures the script writes, each of the same size (rerun
    scripts/screenshots when a view is added or removed)."""
    assert run.rc == 0, run.stderr
    written = {p.name: png_header(p)[:2] for p in run.out.glob("*.png")}
    committed = {p.name: png_header(p)[:2] for p in COMMITTED.glob("*.png")}
    assert committed == written, (f"docs/screenshots differs from what scripts/screenshots writes: missing "
                                  f"{set(written) - set(committed)}, stale {set(committed) - set(written)}, "
                                  f"sizes {committed} vs {written}")


def test_help_lists_every_picture() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr
    assert "--out DIR" in proc.stdout and "offscreen" in proc.stdout
    for name in guide_pictures() | NOT_IN_GUIDE:
        assert name in proc.stdout, f"--help does not list {name}"
