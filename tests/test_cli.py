"""The ``edgeloop`` command line, run in-process (``hub.cli.main``) on a real hub home.

Training uses the shipped sample data with 3 epochs, so the whole file stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

import pytest

from edgeloop.hub.cli import parser as cli
from edgeloop.hub.cli.train import cancel_on_sigint
from edgeloop.hub.datasets import load_csv, sample_dataset_path
from edgeloop.hub.registry import Registry
from tests.conftest import REPO


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv: str):
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


# --- the factory flow ---------------------------------------------------------------------------
def test_import_train_compare_export_and_inspect(capsys, home, tmp_path):
    sample = sample_dataset_path()
    imported = run_json(capsys, "data", "import", sample, "--name", "sensors", "--home", home)
    assert imported["sha256"] == load_csv(sample).sha256 and imported["name"] == "sensors"
    assert imported["summary"]["class_counts"]["normal"] > 0
    ds_id = imported["id"]
    assert [d["id"] for d in run_json(capsys, "data", "list", "--home", home)] == [ds_id]

    rc, out, err = run(capsys, "train", "--data", ds_id, "--model", "sensor-mlp", "--epochs", "3", "--home", home)
    assert rc == 0, err
    assert "train [" in err and "3/3 100%" in err  # the progress bar, on stderr
    assert "trained sensor-mlp:1" in out and "test_accuracy" in out and "ships " in out
    second = run_json(capsys, "train", "--data", ds_id, "--model", "sensor-mlp", "--epochs", "3",
                      "--hidden", "16", "--seed", "1", "--no-quantize", "--quiet", "--home", home)
    assert second["version"]["id"] == "sensor-mlp:2" and second["run"]["params"]["hidden"] == [16]
    assert second["quantization"]["reason"] == "quantization skipped"

    versions = run_json(capsys, "registry", "list", "--home", home)
    assert [v["id"] for v in versions] == ["sensor-mlp:1", "sensor-mlp:2"]
    assert versions[0]["split"]["counts"]["test"] > 0 and versions[0]["metrics"]["test_accuracy"] > 0.5

    cmp = run_json(capsys, "registry", "compare", "sensor-mlp:1", "sensor-mlp:2", "--home", home)
    acc = cmp["metrics"]["test_accuracy"]
    assert acc["delta"] == pytest.approx(acc["b"] - acc["a"])
    assert cmp["params"]["changed"]["hidden"] == {"a": [64, 32], "b": [16]}
    assert cmp["params"]["changed"]["seed"] == {"a": 0, "b": 1} and cmp["same_dataset"] is True
    assert cmp["quantization"]["b"]["reason"] == "quantization skipped"
    rc, out, _ = run(capsys, "registry", "compare", "sensor-mlp:1", "sensor-mlp:2", "--home", home)
    assert rc == 0 and "test_accuracy" in out and "B - A" in out and "hidden [64, 32] -> [16]" in out

    export_dir = tmp_path / "export"
    exported = run_json(capsys, "export", "sensor-mlp:1", "--out", export_dir, "--home", home)
    kinds = {f["kind"]: f for f in exported["files"]}
    assert set(kinds) == {"fp32", "int8"}  # the first version was quantized
    assert (export_dir / "sensor-mlp-1.fp32.onnx").stat().st_size == kinds["fp32"]["size"] > 1000
    assert (export_dir / "sensor-mlp-1.int8.onnx").exists()
    report = json.loads((export_dir / "sensor-mlp-1.report.json").read_text())
    assert report["version"]["id"] == "sensor-mlp:1" and report["dataset"]["sha256"] == imported["sha256"]
    assert report["run"]["history"] and report["run"]["library_versions"]
    assert report["quantization"]["chosen"] in ("fp32", "int8")
    assert {f["name"] for f in report["files"]} == {"sensor-mlp-1.fp32.onnx", "sensor-mlp-1.int8.onnx"}

    built = run_json(capsys, "bundle", "build", "sensor-mlp:1", "--out", tmp_path / "bundles", "--home", home)
    inspected = run_json(capsys, "bundle", "inspect", built["path"])
    assert inspected["sha256"] == built["sha256"]
    assert inspected["manifest"]["model_name"] == "sensor-mlp" and inspected["manifest"]["version"] == "1"
    assert inspected["manifest"]["lineage"]["dataset_sha256"] == imported["sha256"]

    lin = run_json(capsys, "registry", "lineage", built["sha256"][:12], "--home", home)
    assert lin["kind"] == "bundle" and lin["dataset"]["id"] == ds_id
    rc, out, _ = run(capsys, "registry", "lineage", ds_id, "--home", home)
    assert rc == 0 and "version sensor-mlp:1" in out and "version sensor-mlp:2" in out
    shown = run_json(capsys, "data", "show", ds_id, "--home", home)
    assert [v["id"] for v in shown["versions"]] == ["sensor-mlp:1", "sensor-mlp:2"]


def test_gate_alias_and_continue_training_from_an_alias(capsys, home):
    ds_id = run_json(capsys, "data", "import", sample_dataset_path(), "--home", home)["id"]
    run_json(capsys, "train", "--data", ds_id, "--model", "m", "--epochs", "3", "-q", "--home", home)
    gate = run_json(capsys, "registry", "gate", "m", "--min", "test_accuracy=0.999", "test_macro_f1=0.5",
                    "--max", "test_loss=5", "--home", home)
    assert gate["gate"] == {"min": {"test_accuracy": 0.999, "test_macro_f1": 0.5}, "max": {"test_loss": 5.0}}
    assert gate["versions"][0]["passed"] is False

    rc, out, err = run(capsys, "registry", "alias", "m", "production", "m:1", "--home", home)
    assert rc == 2 and out == ""
    assert err.startswith("error: m:1 does not pass the evaluation gate") and "test_accuracy" in err
    assert "minimum 0.999" in err and "--override-gate" in err
    rc, _, err = run(capsys, "registry", "alias", "m", "production", "m:1", "--override-gate", "--home", home)
    assert rc == 2 and "--override-gate needs --reason" in err
    rc, out, _ = run(capsys, "registry", "alias", "m", "production", "1", "--override-gate",
                     "--reason", "pilot site only", "--home", home)
    assert rc == 0 and "m@production -> m:1" in out and "OVERRIDDEN" in out

    aliases = run_json(capsys, "registry", "aliases", "m", "--home", home)
    (prod,) = aliases
    assert prod["version_id"] == "m:1"
    assert [(h["version_id"], h["override_gate"], h["reason"]) for h in prod["history"]] == [
        ("m:1", True, "pilot site only")]
    audit = run_json(capsys, "registry", "audit", "--action", "gate.override", "--home", home)
    assert audit[0]["target"] == "m:1" and audit[0]["detail"]["reason"] == "pilot site only"

    child = run_json(capsys, "train", "--data", ds_id, "--model", "m", "--epochs", "2", "--from", "m@production",
                     "-q", "--home", home)
    assert child["version"]["id"] == "m:2" and child["parent_version"] == "m:1"
    lin = run_json(capsys, "registry", "lineage", "m@production", "--home", home)
    assert [d["id"] for d in lin["versions"][0]["descendants"]] == ["m:2"]
    shown = run_json(capsys, "registry", "show", "m@production", "--home", home)
    assert shown["version"]["aliases"] == ["production"] and shown["gate"]["passed"] is False

    cleared = run_json(capsys, "registry", "gate", "m", "--clear", "--home", home)
    assert cleared["has_gate"] is False and all(c["passed"] for c in cleared["versions"])


def test_ctrl_c_cancels_training_cleanly(capsys, home, monkeypatch):
    """The CLI's CancelToken is tripped mid-training (as its SIGINT handler does): exit 130, run kept."""
    import edgeloop.hub.progress as hub_progress

    class CancelsAtOnce(hub_progress.CancelToken):
        def __init__(self) -> None:
            super().__init__()
            self.cancel()

    ds_id = run_json(capsys, "data", "import", sample_dataset_path(), "--home", home)["id"]
    monkeypatch.setattr(hub_progress, "CancelToken", CancelsAtOnce)
    rc, out, err = run(capsys, "train", "--data", ds_id, "--model", "m", "--epochs", "3", "--home", home)
    assert rc == 130 and out == "" and "cancelled" in err
    monkeypatch.undo()
    runs = run_json(capsys, "data", "show", ds_id, "--home", home)["runs"]
    assert [r["status"] for r in runs] == ["cancelled"]
    assert run_json(capsys, "registry", "list", "--home", home) == []


def test_sigint_handler_cancels_first_and_aborts_second():
    from edgeloop.hub.progress import CancelToken

    token = CancelToken()
    with cancel_on_sigint(token):
        os.kill(os.getpid(), signal.SIGINT)
        assert token.cancelled
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_data_sample_and_run_file(capsys, home, tmp_path):
    out_csv = tmp_path / "shifted.csv"
    doc = run_json(capsys, "data", "sample", "--out", out_csv, "--rows", "300", "--seed", "4", "--shift", "2")
    assert doc["rows"] == 300 and load_csv(out_csv).sha256 == doc["sha256"]
    assert run_json(capsys, "data", "sample", "--out", out_csv, "--rows", "300", "--seed", "4",
                    "--shift", "2")["sha256"] == doc["sha256"]  # seeded: same bytes again

    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"epochs": 2, "hidden": [8], "lr": 0.01}))
    built = run_json(capsys, "train", "--data", out_csv, "--model", "tiny", "--run-file", run_file,
                     "--epochs", "1", "--no-quantize", "-q", "--home", home)  # a file path imports it first
    params = built["run"]["params"]
    assert (params["epochs"], params["hidden"], params["lr"]) == (1, [8], 0.01)  # CLI options win
    assert built["run"]["dataset_id"] == "ds-" + doc["sha256"][:12]


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["registry", "show", "nope:3"], "no model named 'nope'"),
    (["registry", "compare", "a:1", "b:1"], "no model named 'a'"),
    (["registry", "gate", "m", "--min", "test_accuracy:0.9"], "bad metric spec 'test_accuracy:0.9'"),
    (["registry", "gate", "m", "--max", "test_rmse=big"], "use METRIC=VALUE"),
    (["registry", "lineage", "what-is-this"], "names no dataset, run, version, bundle or deployment"),
    (["train", "--data", "ds-000000000000", "--model", "m"], "no dataset 'ds-000000000000'"),
    (["data", "import", "/no/such/file.csv"], "does not exist"),
    (["data", "show", "deadbeef00"], "no dataset"),
    (["export", "m@production", "--out", "x"], "no model named 'm'"),
])
def test_errors_exit_2_with_a_helpful_message(capsys, home, argv, message):
    rc, out, err = run(capsys, *argv, "--home", home)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and message in err


def test_unknown_version_of_a_known_model_lists_its_versions(capsys, home):
    ds_id = run_json(capsys, "data", "import", sample_dataset_path(), "--home", home)["id"]
    run_json(capsys, "train", "--data", ds_id, "--model", "m", "--epochs", "1", "--no-quantize", "-q",
             "--home", home)
    rc, _, err = run(capsys, "registry", "alias", "m", "production", "m:9", "--home", home)
    assert rc == 2 and "has no version '9'; its versions: 1" in err
    rc, _, err = run(capsys, "train", "--data", ds_id, "--model", "m", "--from", "m@canary", "--home", home)
    assert rc == 2 and "has no alias 'canary'" in err


def test_bad_option_values_are_usage_errors(capsys, home):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--data", "x", "--model", "m", "--hidden", "64,x", "--home", str(home)])
    assert exc.value.code == 2
    assert "comma-separated list of integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--data", "x", "--model", "m", "--arch", "transformer"])
    assert exc.value.code == 2


# --- help ------------------------------------------------------------------------------------------
def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _command_paths(sub, prefix + (name,))


EXPECTED_HELP = {
    ("data", "import"): "Validate a CSV file",
    ("data", "list"): "List registered datasets",
    ("data", "show"): "class counts",
    ("data", "sample"): "synthetic machine-sensor dataset",
    ("train",): "Ctrl-C",
    ("registry", "alias"): "--override-gate",
    ("registry", "aliases"): "history",
    ("registry", "compare"): "params diff",
    ("registry", "gate"): "evaluation gate",
    ("registry", "lineage"): "back to the dataset",
    ("registry", "list"): "model versions",
    ("registry", "show"): "quantization",
    ("registry", "audit"): "audit log",
    ("export",): "report.json",
    ("deploy",): "--override-gate REASON",
    ("bundle", "build"): "signed with the hub key",
    ("bundle", "inspect"): "manifest",
}


def test_every_subcommand_has_help_that_says_what_it_does(capsys):
    paths = dict(_command_paths(cli.build_parser()))
    assert set(EXPECTED_HELP) <= set(paths)
    for path, sub in paths.items():
        with pytest.raises(SystemExit) as exc:
            cli.main([*path, "--help"])
        assert exc.value.code == 0, path
        text = capsys.readouterr().out
        assert f"usage: edgeloop {' '.join(path)}" in text
        if path[0] == "agent":  # agent/cli.py's own parsers (shared with edgeloop-agent)
            continue
        assert sub.description and sub.description.split()[0] in text, path  # a description, not just usage
        if path in EXPECTED_HELP:
            assert EXPECTED_HELP[path] in " ".join(text.split()), path


def test_json_flag_is_on_every_hub_command():
    # the GUI opens a window; `hub serve` runs until stopped, logging; the demo takes --json already (checked below)
    without = {("app",), ("demo",), ("hub", "serve")}
    for path, sub in _command_paths(cli.build_parser()):
        if path[0] in ("agent",) or any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            continue
        options = {o for a in sub._actions for o in a.option_strings}
        assert "--json" in options or path in without, path
    demo = dict(_command_paths(cli.build_parser()))[("demo",)]
    assert "--json" in {o for a in demo._actions for o in a.option_strings}


# --- as a user runs it --------------------------------------------------------------------------------
def test_cli_as_a_subprocess(tmp_path):
    env = {**os.environ, "EDGELOOP_HOME": str(tmp_path / "home")}
    csv_path = tmp_path / "s.csv"
    cli_cmd = [sys.executable, "-m", "edgeloop.hub.cli"]
    made = subprocess.run([*cli_cmd, "data", "sample", "--out", str(csv_path), "--rows", "200"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert made.returncode == 0, made.stderr
    assert "wrote 200 rows" in made.stdout
    imported = subprocess.run([*cli_cmd, "data", "import", str(csv_path), "--json"],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["rows"] == 200
    bad = subprocess.run([*cli_cmd, "registry", "show", "ghost:1"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no model named 'ghost'")


@pytest.mark.broker
def test_deploy_checks_the_gate_first_and_audits_an_override(capsys, home, mosquitto):
    ds_id = run_json(capsys, "data", "import", sample_dataset_path(), "--home", home)["id"]
    run_json(capsys, "train", "--data", ds_id, "--model", "m", "--epochs", "1", "--no-quantize", "-q", "--home", home)
    run_json(capsys, "registry", "gate", "m", "--min", "test_accuracy=0.999", "--home", home)
    deploy = ["deploy", "m:1", "--agent", "nobody-home", "--broker", mosquitto.address.url, "--timeout", "1",
              "--home", home]

    rc, out, err = run(capsys, *deploy)
    assert rc == 2 and "m:1 does not pass the evaluation gate" in err and "cannot be deployed" in err
    lin = run_json(capsys, "registry", "lineage", "m:1", "--home", home)
    assert lin["deployments"] == [] and lin["versions"][0]["bundles"] == []  # refused before packing or sending

    # an agent this hub knew, but that is not running now: the deploy is sent and times out
    with Registry(home / "registry.sqlite") as reg:
        reg.record_agent_status("nobody-home", "offline", member=True)
    rc, out, err = run(capsys, *deploy, "--override-gate", "field test on one unit", "--json")
    assert rc == 1, err  # sent, but no agent answered
    results = json.loads(out)
    assert results[0]["agent"] == "nobody-home" and results[0]["ok"] is False  # no such agent: timed out
    assert results[0]["gate"] == {"passed": False, "overridden": True}
    (override,) = run_json(capsys, "registry", "audit", "--action", "gate.override", "--home", home)
    assert (override["target"], override["detail"]["purpose"], override["detail"]["reason"]) == (
        "m:1", "deploy", "field test on one unit")
    lin = run_json(capsys, "registry", "lineage", "m:1", "--home", home)
    assert [d["agent_id"] for d in lin["deployments"]] == ["nobody-home"]
