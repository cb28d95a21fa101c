"""Output of the ``edgeloop`` commands: aligned text tables, or JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeloop.hub.cli.common import open_hub
from edgeloop.hub.views import Table

if TYPE_CHECKING:
    from edgeloop.hub.services import Hub


def emit(args: argparse.Namespace, data: Any, text_lines: list[str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the text lines (``(nothing yet)`` when none)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(text_lines) if text_lines else "(nothing yet)")


def text_table(rows: list[list[Any]], header: list[str]) -> list[str]:
    """Columns padded to their widest cell, under a header and a dashed rule; [] for no rows."""
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]


def table_lines(table: Table) -> list[str]:
    """A :class:`edgeloop.hub.views.Table` as aligned text lines."""
    return text_table(table.rows, table.header)


def show(args: argparse.Namespace, fetch: Callable[[Hub], Any], lines: Callable[[Any], list[str]]) -> int:
    """The shape of a query command: ``fetch`` records from the hub at ``--home``, print them
    (as ``lines`` of text, or JSON), exit 0."""
    with open_hub(args) as hub:
        data = fetch(hub)
    emit(args, data, lines(data))
    return 0
