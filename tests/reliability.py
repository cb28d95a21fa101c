"""The fault-and-attack ledger: tests that inject a fault or try an attack say so, and docs/reliability.md
is rendered from what they did.

A test carries ``@pytest.mark.reliability(area, fault, outcome)`` -- what part of the system is attacked,
what is tried, and what the test asserts happens -- and may say how many cases it tried with the
``faults_tried`` fixture (``faults_tried(200)`` for 200 fuzz inputs; one case per test otherwise).
``scripts/reliability`` runs the marked tests with ``EDGELOOP_RELIABILITY_OUT`` set, which makes the hooks
below write one JSON record per test, then renders the table with ``python -m tests.reliability``.
tests/test_reliability_doc.py keeps the table honest: every marked test must appear in it.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- ledger:begin -->", "<!-- ledger:end -->"
_records: list[dict] = []


@pytest.fixture
def faults_tried(request):
    """``faults_tried(n)``: this test tried ``n`` more cases (fuzz inputs, kill points, forged messages)."""

    def add(n: int = 1) -> None:
        props = dict(request.node.user_properties)
        request.node.user_properties[:] = [(k, v) for k, v in request.node.user_properties if k != "cases"]
        request.node.user_properties.append(("cases", int(props.get("cases", 0)) + n))

    return add


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    mark = item.get_closest_marker("reliability")
    if mark is None or not os.environ.get("EDGELOOP_RELIABILITY_OUT"):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        area, fault, expected = _mark_args(mark.args, mark.kwargs)
        _records.append({"test": item.nodeid.split("[")[0], "area": area, "fault": fault, "outcome": expected,
                         "cases": int(dict(item.user_properties).get("cases", 1)),
                         "result": "skipped" if report.skipped else ("passed" if report.passed else "failed")})


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("EDGELOOP_RELIABILITY_OUT")
    if out and _records:  # under pytest-xdist each worker writes its own part (OUT.gw0, OUT.gw1 ...)
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        Path(f"{out}.{worker}" if worker else out).write_text(json.dumps(_records, indent=1))


def _mark_args(args, kwargs) -> tuple[str, str, str]:
    a = list(args) + [kwargs.get(k) for k in ("area", "fault", "outcome")[len(args):]]
    return str(a[0]), str(a[1]), str(a[2])


def marked_tests(tests_dir: Path = ROOT / "tests") -> list[tuple[str, str, str]]:
    """(file::test, area, fault) for every test function that carries the marker, read from the source."""
    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)
                        and dec.func.attr == "reliability"):
                    args = [ast.literal_eval(a) for a in dec.args]
                    kw = {k.arg: ast.literal_eval(k.value) for k in dec.keywords}
                    area, fault, _ = _mark_args(args, kw)
                    found.append((f"tests/{path.name}::{node.name}", area, fault))
    return found


def render(records: list[dict]) -> str:
    """The ledger table: one row per (area, fault), with cases, tests and results."""
    rows: dict[tuple[str, str, str], dict] = defaultdict(lambda: {"cases": 0, "tests": set(), "results": []})
    for r in records:
        row = rows[(r["area"], r["fault"], r["outcome"])]
        row["cases"] += r["cases"]
        row["tests"].add(r["test"])
        row["results"].append(r["result"])
    lines = ["| area | fault or attack tried | cases | what must happen | result | tests |",
             "|---|---|---:|---|---|---|"]
    for (area, fault, outcome), row in sorted(rows.items(), key=lambda kv: [s.casefold() for s in kv[0]]):
        res = row["results"]
        result = "all passed" if all(x == "passed" for x in res) else ", ".join(
            f"{res.count(k)} {k}" for k in ("passed", "failed", "skipped") if res.count(k))
        tests = "<br>".join(f"`{t}`" for t in sorted(row["tests"]))
        lines.append(f"| {area} | {fault} | {row['cases']} | {outcome} | {result} | {tests} |")
    total = sum(r["cases"] for r in records)
    lines.append("")
    lines.append(f"{len(rows)} faults and attacks, {total} cases, {len(records)} tests.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    parts = [p for p in [out, *sorted(out.parent.glob(out.name + ".gw*"))] if p.exists() and p.stat().st_size]
    records = [r for p in parts for r in json.loads(p.read_text())]
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render(records)}\n{END}{tail}")
    print(f"{DOC.relative_to(ROOT)}: {len(records)} tests")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
