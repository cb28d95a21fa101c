"""docs/reliability.md lists every fault and attack the suite tries (scripts/reliability renders it)."""

from tests.reliability import BEGIN, DOC, END, marked_tests, render


def test_every_marked_test_is_in_the_ledger():
    marked = marked_tests()
    assert marked, "no test carries @pytest.mark.reliability"
    ledger = DOC.read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    missing = [t for t, _, _ in marked if f"`{t}`" not in ledger]
    assert not missing, f"run scripts/reliability to add these tests to docs/reliability.md: {missing}"


def test_the_ledger_adds_cases_and_reports_failures():
    recs = [{"test": "tests/a.py::t1", "area": "agent", "fault": "deep JSON", "outcome": "400", "cases": 50,
             "result": "passed"},
            {"test": "tests/a.py::t2", "area": "agent", "fault": "deep JSON", "outcome": "400", "cases": 1,
             "result": "failed"}]
    table = render(recs)
    row = next(line for line in table.splitlines() if "deep JSON" in line)
    assert "| 51 |" in row and "1 passed, 1 failed" in row and "`tests/a.py::t1`<br>`tests/a.py::t2`" in row
    assert table.endswith("1 faults and attacks, 51 cases, 2 tests.")
