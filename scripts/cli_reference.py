"""Write docs/cli.md, the command line reference, from the argparse parsers themselves.

    scripts/cli-reference          # rewrite docs/cli.md (runs this file with .venv/bin/python)
    scripts/cli-reference --check  # exit 1 if docs/cli.md is not current

Every command's section is its own ``--help`` (formatted 100 columns wide), so the reference
says exactly what the commands say; tests/test_cli_reference.py fails when it is out of date.
Run it after adding or changing a command or an option.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
WIDTH = "100"

HEADER = """\
# Command line reference

Generated from the commands' own `--help` by `scripts/cli-reference`; do not edit by hand
(tests/test_cli_reference.py checks that it is current). Two programs: `edgeloop` (the hub, the
GUI launcher, and `edgeloop agent ...`) and `edgeloop-agent` (the same agent commands, on a device
with only the `agent` extra). Every hub command takes `--home` and most take `--json`; errors print
`error: ...` on stderr with exit status 2.
"""


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(command path, its parser, its one-line help), depth first in the order the parser lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                yield (*path, name), sub, helps.get(name, "")
                yield from commands(sub, (*path, name))


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    from edgeloop.agent.cli import build_parser as agent_parser
    from edgeloop.hub.cli.parser import build_parser as hub_parser

    return [("edgeloop", hub_parser()), ("edgeloop-agent", agent_parser())]


def anchor(words: tuple[str, ...]) -> str:
    """``edgeloop-data-import``; the agent program's ``edgeloop_agent-run`` (``edgeloop-agent-run`` is
    ``edgeloop agent run``)."""
    return "-".join((words[0].replace("-", "_"), *words[1:]))


def render() -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps at the terminal's width: fix it
    try:
        out = [HEADER]
        toc, body = [], []
        for prog, parser in parsers():
            toc.append(f"\n## `{prog}`\n")
            body.append(f"\n## `{prog}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
            for path, sub, help_text in commands(parser):
                words = (prog, *path)
                title = " ".join(words)
                toc.append(f"{'  ' * (len(path) - 1)}- [`{title}`](#{anchor(words)}) – {help_text}")
                body.append(f"\n<a id=\"{anchor(words)}\"></a>\n\n{'#' * min(len(path) + 2, 6)} `{title}`\n\n"
                            f"```text\n{sub.format_help().rstrip()}\n```\n")
        return "\n".join(out + toc) + "\n" + "".join(body)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC.relative_to(ROOT)} is not current: run scripts/cli-reference", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
