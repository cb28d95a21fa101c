"""The ``edgeloop`` command: a thin face over :class:`edgeloop.hub.services.Hub`."""

from edgeloop.hub.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
