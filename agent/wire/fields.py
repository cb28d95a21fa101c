"""Strict field readers and JSON helpers shared by every decoder of the wire format.

Each reader takes the decoded JSON object, the field name and ``where`` (a path
such as ``"manifest.files[2]"``) and returns a value of the promised type, or
raises :class:`~edgeloop.agent.errors.MessageFormatError` naming the field at
fault -- never a bare ``KeyError``/``TypeError``. Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from edgeloop.agent.errors import MessageFormatError, PayloadTooLargeError

MAX_JSON_MESSAGE = 4 * 1024 * 1024  # bytes; larger JSON messages are refused


def _type_name(typ: type | tuple) -> str:
    return typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)


def _coerce(val: Any, typ: type | tuple) -> tuple[bool, Any]:
    """(ok, value): JSON integers are accepted where floats are expected; booleans are never numbers."""
    if isinstance(val, bool):
        return typ is bool or (isinstance(typ, tuple) and bool in typ), val
    if typ is float and isinstance(val, int):
        return True, float(val)
    return isinstance(val, typ), val


def req(d: dict, key: str, typ: type | tuple, where: str) -> Any:
    """The value of required field ``key``, of type ``typ``."""
    if key not in d:
        raise MessageFormatError(f"{where}: missing field {key!r}")
    ok, val = _coerce(d[key], typ)
    if not ok:
        raise MessageFormatError(f"{where}: field {key!r} must be {_type_name(typ)}, got {type(d[key]).__name__}")
    return val


def opt(d: dict, key: str, typ: type | tuple, where: str, default: Any = None) -> Any:
    """Like :func:`req`, but an absent or null field gives ``default``."""
    if d.get(key) is None:
        return default
    return req(d, key, typ, where)


def list_of(d: dict, key: str, typ: type, where: str, default: list | None = None) -> list:
    """A list whose items are all ``typ`` (ints become floats where ``typ`` is float).

    With ``default`` given the field is optional (absent or null gives a copy of it).
    """
    if default is not None and d.get(key) is None:
        return list(default)
    items = req(d, key, list, where)
    if all(type(item) is typ for item in items):  # the common case, fast (bool is not int here)
        return list(items)
    out = []
    for i, item in enumerate(items):
        ok, val = _coerce(item, typ)
        if not ok:
            want = "a JSON object" if typ is dict else _type_name(typ)
            raise MessageFormatError(f"{where}: {key}[{i}] must be {want}, got {type(item).__name__}")
        out.append(val)
    return out


def objects(d: dict, key: str, where: str, default: list | None = None) -> list[tuple[dict, str]]:
    """A list of JSON objects, each paired with its own ``where`` (``"where.key[i]"``) for nested decoders."""
    items = list_of(d, key, dict, where, default)
    return [(item, f"{where}.{key}[{i}]") for i, item in enumerate(items)]


def obj(value: Any, where: str) -> dict:
    """``value`` itself must be a JSON object (for items handed to a nested decoder)."""
    if not isinstance(value, dict):
        raise MessageFormatError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def load_json(data: bytes | str, what: str = "message", limit: int = MAX_JSON_MESSAGE) -> dict:
    """Bytes of one JSON object -> dict, or MessageFormatError/PayloadTooLargeError saying why not."""
    if len(data) > limit:
        raise PayloadTooLargeError(f"{what} is {len(data)} bytes; the limit is {limit}")
    try:
        value = json.loads(data)
    except UnicodeDecodeError as exc:
        raise MessageFormatError(f"{what} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise MessageFormatError(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError:  # the C parser recurses per level: ~1,000 levels end the stack
        raise MessageFormatError(f"{what} nests arrays or objects too deeply; send flat rows of numbers",
                                 code="too_deep") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() (4,300) digits
        raise MessageFormatError(f"{what} holds a number too long to read ({str(exc)[:80]}); send numbers "
                                 "within the float32 range", code="number_too_large") from None
    return obj(value, what)


def is_version(value: Any, version: int) -> bool:
    """A schema field equals ``version`` exactly (``true`` or ``1.0`` are not ``1``)."""
    return type(value) is int and value == version


def dumps(value: dict) -> bytes:
    """Compact JSON bytes in field order (messages); NaN and Infinity are refused with ValueError."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


__all__ = ["MAX_JSON_MESSAGE", "dumps", "is_version", "list_of", "load_json", "obj", "objects", "opt", "req"]
