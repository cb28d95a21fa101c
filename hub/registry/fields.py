"""Column values of the registry: timestamps, JSON encoding and the checks on names,
hashes and choices that every table shares. Pure functions, no database."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from edgeloop.hub.errors import RegistryError

HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 8  # hex digits needed to name a bundle (or a dataset) by prefix

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def now() -> float:
    """Timestamps are unix seconds (floats)."""
    return time.time()


def iso(ts: float) -> str:
    """``ts`` as an ISO-8601 UTC string with milliseconds (audit rows carry both)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def dumps(value: Any) -> str | None:
    """The JSON text stored in a JSON column (None stays NULL)."""
    return None if value is None else json.dumps(value, default=str)


def is_number(value: Any) -> bool:
    """An int or float, but not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sha256(value: str, what: str) -> str:
    """``value`` as 64 lower-case hex digits, or RegistryError naming ``what``."""
    sha = str(value).strip().lower()
    if len(sha) != 64 or not HEX.match(sha):
        raise RegistryError(f"{what} must be 64 hex digits, got {value!r}")
    return sha


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name (1-64 of letters, digits, ``_.-``)."""
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise RegistryError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise RegistryError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value
