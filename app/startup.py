"""Before the window: can Qt open a display here? Explained with the fix, not a Qt abort.

Creating a ``QApplication`` where the platform plugin cannot load (no display, or the
xcb plugin's system libraries missing) ends the process with a terse Qt message and
a core dump. :func:`platform_problem` finds that out first -- without a display it says
so at once; otherwise it tries Qt in a short child process -- and returns what to tell
the operator, or None when the window can open.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["platform_problem"]

_PROBE = "from PySide6.QtWidgets import QApplication; QApplication(['probe'])"
LINUX_QT_LIBS = ("libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libegl1 "
                 "libgl1 libfontconfig1 libdbus-1-3")


def platform_problem(env: dict[str, str] | None = None, platform: str | None = None,
                     timeout_s: float = 30.0) -> str | None:
    """Why Qt cannot open its window in ``env`` (default: this process's), with the fix; None if it can."""
    env = dict(os.environ if env is None else env)
    platform = platform or sys.platform
    if not platform.startswith("linux") or env.get("QT_QPA_PLATFORM") in ("offscreen", "minimal", "vnc"):
        return None
    if not env.get("QT_QPA_PLATFORM") and not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        return ("edgeloop app: there is no display (neither DISPLAY nor WAYLAND_DISPLAY is set).\n"
                "Fix: run it on the workstation's desktop, over `ssh -X`, or headless with "
                "QT_QPA_PLATFORM=offscreen (nothing is shown then; for scripts and tests).")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None  # slow, not broken: let the real start say more
    if proc.returncode == 0:
        return None
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    shown = "\n  ".join(detail[-4:]) or f"exit status {proc.returncode}"
    return ("edgeloop app: Qt cannot open a window here:\n  " + shown + "\n"
            f"Fix: install the Qt platform libraries (Debian/Ubuntu: sudo apt install {LINUX_QT_LIBS}), "
            "or choose another platform plugin with QT_QPA_PLATFORM (wayland, xcb, offscreen).")
