"""Names a package exports but imports only when first used (PEP 562 ``__getattr__``): code that needs a
torch-free part of a package (packing a bundle, evaluating an exported graph) must not pay for torch's
import, which holds the GIL for hundreds of milliseconds in the desktop app's process."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: name -> the submodule it comes from, imported (and the
    name kept in the package) on first use."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
