"""docs/cli.md, the command line reference, is current (scripts/cli-reference wrote it from the parsers
as they are now) and covers every command and option the parsers have."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re

from tests.docs_examples import ROOT

DOC = ROOT / "docs" / "cli.md"


@functools.cache
def load_generator():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sections(text: str) -> dict[str, str]:
    """anchor -> the text of its section (up to the next anchor)."""
    parts = re.split(r'<a id="([^"]+)"></a>', text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@functools.cache
def rendered() -> str:
    return load_generator().render()


def test_cli_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == rendered(), "docs/cli.md is stale: run scripts/cli-reference"


def test_cli_reference_covers_every_command_and_option():
    gen = load_generator()
    doc = sections(DOC.read_text(encoding="utf-8"))
    seen = 0
    for prog, parser in gen.parsers():
        for path, sub, _ in gen.commands(parser):
            words = (prog, *path)
            section = doc.get(gen.anchor(words))
            assert section is not None, f"`{' '.join(words)}` has no section in docs/cli.md"
            assert f"usage: {' '.join(words)}" in re.sub(r"\s+", " ", section)
            for action in sub._actions:
                for opt in action.option_strings:
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", section), \
                        f"{opt} of `{' '.join(words)}` is missing from its section"
                if isinstance(action, argparse._SubParsersAction):
                    for name in action.choices:
                        assert gen.anchor((*words, name)) in doc
            seen += 1
    assert seen >= 40  # the walk found the command tree, not an empty parser
    assert {"edgeloop-up", "edgeloop-agent-run", "edgeloop_agent-run"} <= set(doc)


def test_check_mode_flags_a_stale_reference(tmp_path, monkeypatch):
    gen = load_generator()
    stale = tmp_path / "cli.md"
    stale.write_text(rendered().replace("--metrics-port", "--old-option"))
    monkeypatch.setattr(gen, "DOC", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "render", rendered)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    assert stale.read_text() == rendered()

