"""A deploy's optional ``drift`` argument: drift window overrides for the version it installs.

``{"rows": 500, "seconds": 60, "min_rows": 100, "consecutive": 2}`` -- any of the four, each overriding
the bundle's reference default (and the agent config's ``[drift]``) for that version only, on this agent
(docs/protocol.md, "Drift windows with a deploy"). Checked before the deploy is accepted: a malformed
table refuses the whole deploy with code ``bad_drift_windows``, nothing is installed.
"""

from __future__ import annotations

import math

from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.wire.fields import obj, req

DRIFT_WINDOW_KEYS = ("rows", "seconds", "min_rows", "consecutive")
MAX_WINDOW_ROWS = 10_000_000
MAX_WINDOW_SECONDS = 7 * 24 * 3600.0


class DriftWindowArgsError(MessageFormatError):
    """A deploy's ``drift`` argument is malformed: the deploy is refused, nothing is installed."""

    code = "bad_drift_windows"


def drift_windows_arg(args: dict, where: str = "deploy.args.drift") -> dict | None:
    """The deploy's drift window overrides, checked; None when it gives none."""
    raw = args.get("drift")
    if raw is None:
        return None
    try:
        table = obj(raw, where)
    except MessageFormatError as exc:
        raise DriftWindowArgsError(str(exc)) from None
    unknown = sorted(set(table) - set(DRIFT_WINDOW_KEYS))
    if unknown or not table:
        raise DriftWindowArgsError(f"{where}: give some of {', '.join(DRIFT_WINDOW_KEYS)}"
                                   + (f"; unknown: {', '.join(unknown)} (upgrade the agent if the hub is newer)"
                                      if unknown else ""))
    out: dict = {}
    for key in table:
        try:
            val = req(table, key, float if key == "seconds" else int, where)
        except MessageFormatError as exc:
            raise DriftWindowArgsError(str(exc)) from None
        if key == "seconds":
            if not (math.isfinite(val) and 0 <= val <= MAX_WINDOW_SECONDS):
                raise DriftWindowArgsError(f"{where}: seconds must be 0 (by rows only) to {MAX_WINDOW_SECONDS:.0f}, "
                                           f"got {val!r}")
        elif not 1 <= val <= MAX_WINDOW_ROWS:
            raise DriftWindowArgsError(f"{where}: {key} must be 1 to {MAX_WINDOW_ROWS}, got {val!r}")
        out[key] = val
    return out


__all__ = ["DRIFT_WINDOW_KEYS", "DriftWindowArgsError", "drift_windows_arg"]
