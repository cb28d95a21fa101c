"""``Hub.inspect_dataset``: what an import would make of a file, registering nothing -- the
Data view's Check and ``edgeloop data check`` both run it, on a real hub home (real SQLite)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeloop.hub.cli import parser as cli
from edgeloop.hub.datasets import generate_sensor_data, write_csv, write_npz
from edgeloop.hub.services import Hub

KEYS = {"path", "valid", "preview", "schema", "summary", "problems", "warnings", "message"}


@pytest.fixture
def files(tmp_path):
    """A good sensor CSV (90 rows), the same with line 5's vibration a word, and an npz of it."""
    good, bad = tmp_path / "pump.csv", tmp_path / "broken.csv"
    ds = generate_sensor_data(90, seed=3)
    write_csv(ds, good)
    lines = good.read_text().splitlines()
    lines[4] = lines[4].replace(lines[4].split(",")[1], "oops", 1)  # line 5: a non-number
    bad.write_text("\n".join(lines) + "\n")
    return {"good": good, "bad": bad, "npz": write_npz(ds, tmp_path / "pump.npz"), "sha256": ds.sha256}


@pytest.fixture
def hub(tmp_path):
    with Hub(tmp_path / "home", actor="tester") as h:
        yield h


def test_a_good_csv_gives_preview_schema_and_summary_and_registers_nothing(hub, files):
    ins = hub.inspect_dataset(files["good"])
    assert set(ins) == KEYS and ins["valid"] and ins["problems"] == []
    assert ins["path"] == str(files["good"])
    first = ins["preview"].splitlines()[0]
    assert first.split()[0] == "1" and "temperature_c" in first  # numbered as file lines
    assert ins["schema"]["label_column"] == "label" and ins["schema"]["task"] == "classification"
    assert ins["summary"]["rows"] == 90 and ins["summary"]["sha256"] == files["sha256"]
    assert ins["message"].startswith("valid: 90 rows")
    json.dumps(ins)  # JSON-ready, as `data check --json` prints it
    assert hub.list_datasets() == []
    # what import then registers is what the inspection said
    assert hub.import_dataset(files["good"])["sha256"] == ins["summary"]["sha256"]


def test_a_broken_csv_lists_line_column_rule_and_registers_nothing(hub, files):
    before = hub.list_datasets()
    ins = hub.inspect_dataset(files["bad"])
    assert not ins["valid"] and ins["summary"] is None
    assert {(p["row"], p["column"], p["rule"]) for p in ins["problems"]} == {(5, "vibration_rms", "non_numeric")}
    assert "oops" in ins["preview"] and ins["message"]
    assert hub.list_datasets() == before == []
    assert not hub.home.datasets_dir.exists() or not any(hub.home.datasets_dir.iterdir())  # no copy kept


def test_an_edited_schema_overrides_and_a_bad_one_is_a_problem(hub, files):
    ins = hub.inspect_dataset(files["good"], schema={"label_column": "label", "ignore_columns": ["humidity_pct"]})
    assert ins["valid"] and "humidity_pct" not in ins["summary"]["feature_names"]
    bad = hub.inspect_dataset(files["good"], schema={"label_colum": "label"})
    assert not bad["valid"] and [p["rule"] for p in bad["problems"]] == ["bad_schema"]
    assert bad["schema"] == {"label_colum": "label"}  # the given one, to correct


def test_an_npz_shows_its_arrays_and_an_unreadable_file_is_a_problem(hub, files, tmp_path):
    ins = hub.inspect_dataset(files["npz"])
    assert ins["valid"] and ins["summary"]["sha256"] == files["sha256"]
    assert any(line.startswith("X: float32 (90, ") for line in ins["preview"].splitlines())
    np.savez(tmp_path / "nan.npz", X=np.full((40, 2), np.nan, dtype=np.float32), y=np.arange(40) % 2)
    nan = hub.inspect_dataset(tmp_path / "nan.npz")
    assert not nan["valid"] and nan["problems"] and nan["problems"][0]["row"] == 2  # array row 0 = line 2
    missing = hub.inspect_dataset(tmp_path / "nowhere.csv")
    assert not missing["valid"] and [p["rule"] for p in missing["problems"]] == ["unreadable"]
    assert hub.list_datasets() == []


def test_data_check_exits_0_or_1_with_line_column_rule(capsys, files, tmp_path):
    home = tmp_path / "home"
    capsys.readouterr()
    assert cli.main(["data", "check", str(files["bad"]), "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert "refused, 1 problem(s)" in out
    row = next(line.split() for line in out.splitlines() if "non_numeric" in line)
    assert row[:3] == ["5", "vibration_rms", "non_numeric"]
    assert cli.main(["data", "check", str(files["good"]), "--home", str(home), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == KEYS and doc["valid"] and doc["summary"]["rows"] == 90
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"label_column": "label", "ignore_columns": ["rpm"]}))
    assert cli.main(["data", "check", str(files["good"]), "--schema", str(schema), "--home", str(home),
                     "--json"]) == 0
    assert "rpm" not in json.loads(capsys.readouterr().out)["summary"]["feature_names"]
    with Hub(home) as hub:
        assert hub.list_datasets() == []
