"""The CLI through typer's CliRunner: exit codes, messages, and nothing started on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO
from typer.testing import CliRunner

import tunekit.train
from tunekit.cli import app

runner = CliRunner()


def test_validate_prints_the_varying_parameters_and_count() -> None:
    result = runner.invoke(
        app,
        [
            "validate",
            str(REPO / "experiments" / "assignment6.yaml"),
            "--set",
            "sweep.max_trials=100",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "42 trial(s), valid." in result.output
    for column in ("model.args.norm", "train.l1", "train.l2", "train.batch_size", "train.seed"):
        assert column in result.output
    assert "0.006604" in result.output


def test_validate_with_set() -> None:
    result = runner.invoke(
        app, ["validate", str(REPO / "experiments" / "smoke.yaml"), "--set", "search.repeats=2"]
    )
    assert result.exit_code == 2  # search is not overridable from the command line
    result = runner.invoke(
        app, ["validate", str(REPO / "experiments" / "smoke.yaml"), "--set", "train.epochs=3"]
    )
    assert result.exit_code == 0 and "3 trial(s)" in result.output


def test_schema_is_json_schema_of_the_spec() -> None:
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.output)
    assert result.exit_code == 0 and schema["title"] == "ExperimentSpec"
    assert {"name", "data", "model", "train", "search", "resources"} <= set(schema["properties"])


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a, **k):
        raise AssertionError("training started on bad input")

    monkeypatch.setattr(tunekit.train, "fit", forbidden)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--set", "model.args.norm=XN"], "model.args.norm"),
        (["--set", "train.epoch=1"], "did you mean 'epochs'"),
        (["--set", "noequals"], "expected FIELD=VALUE"),
        (["--trial", "3"], "plans 3 trial(s), numbered 0..2"),
    ],
)
def test_train_rejects_bad_input_with_exit_2_and_starts_nothing(
    args: list[str], fragment: str, no_training: None
) -> None:
    result = runner.invoke(app, ["train", str(REPO / "experiments" / "smoke.yaml"), *args])
    assert result.exit_code == 2
    assert fragment in result.output


def test_train_bad_yaml_file(tmp_path: Path, no_training: None) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {norm: GN\n")  # the `{` on line 2 is never closed
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "line 2, <yaml>: while parsing a flow mapping" in result.output
    assert "(found on line 3)" in result.output


def test_train_runs_one_trial(smoke_data: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            str(REPO / "experiments" / "smoke.yaml"),
            "--trial",
            "2",
            "--set",
            "train.epochs=2",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trial 2: model.args.norm=LN" in result.output
    assert "epoch   1" in result.output and "epoch   2" in result.output
    assert "max val_acc" in result.output


def test_train_without_data_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEKIT_DATA_DIR", str(tmp_path / "nowhere"))
    result = runner.invoke(
        app, ["train", str(REPO / "experiments" / "smoke.yaml"), "--set", "data.download=false"]
    )
    assert result.exit_code == 2  # checked before training: nothing started
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in result.output
    assert result.output.startswith("error: invalid spec ") and "data.root: " in result.output


def test_train_refuses_a_set_that_its_trial_overrides(no_training: None) -> None:
    # smoke.yaml's grid sets model.args.norm: --set model.args.norm=LN would be silently ignored
    result = runner.invoke(
        app, ["train", str(REPO / "experiments" / "smoke.yaml"), "--set", "model.args.norm=LN"]
    )
    assert result.exit_code == 2
    assert "error: --set: trial 0 sets model.args.norm itself" in result.output


def test_train_uses_the_trials_cpus_as_threads(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = {}

    def fake_fit(config, report, threads=None):
        seen["threads"] = threads
        raise SystemExit(0)

    monkeypatch.setattr(tunekit.train, "fit", fake_fit)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nresources: {cpus_per_trial: 3}\n")
    runner.invoke(app, ["train", str(spec)])
    assert seen == {"threads": 3}


@pytest.mark.parametrize(
    "args,header",
    [
        (["train", "SMOKE", "--trial", "99"], "error: --trial: "),
        (["report", "smoke", "-f", "xml"], "error: --format: 'xml' is not one of"),
        (["validate", "SMOKE", "--set", "x"], "error: --set: expected FIELD=VALUE"),
        (["validate", "SMOKE", "-f", "xml"], "error: --format: 'xml' is not one of"),
        (["sweep", "SMOKE", "--resume", "--restart"], "error: --restart: not both --resume and"),
    ],
)
def test_errors_about_arguments_say_so(args: list[str], header: str, no_training: None) -> None:
    args = [str(REPO / "experiments" / "smoke.yaml") if a == "SMOKE" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(header), result.output
    assert "invalid spec" not in result.output


def test_plot_out_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_text("x")
    result = runner.invoke(app, ["plot", "smoke", "--out", str(tmp_path / "f.png")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: --out: ")


def test_validate_json_is_the_plan_at_full_precision(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: x\nsearch:\n  sample: {train.l2: {loguniform: [1.0e-6, 1.0e-2]}}\n  num_samples: 3\n"
    )
    result = runner.invoke(app, ["validate", str(spec), "--format", "json"])
    plan = json.loads(result.output)
    from tunekit.plan import load_plan

    assert plan["trials"] == [t.record() for t in load_plan(spec).trials]
    table = runner.invoke(app, ["validate", str(spec)]).output
    assert str(plan["trials"][0]["params"]["train.l2"]) not in table  # no float noise in tables
    assert f"{plan['trials'][0]['params']['train.l2']:.4g}" in table


def test_validate_summarises_a_large_plan(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: x\nsearch:\n  grid:\n    train.seed: ["
        + ", ".join(map(str, range(100)))
        + "]\n    model.args.norm: [BN, GN, LN]\n"
    )
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert "300 trial(s), valid." in result.output
    assert (
        "285 trial(s) not shown; the plan is train.seed: 100 value(s) × model.args.norm: 3 value(s)"
        in result.output
    )
    assert len(result.output.splitlines()) < 40


def test_help_and_validate_start_fast() -> None:
    import subprocess
    import sys

    for args in (["--help"], ["validate", str(REPO / "experiments" / "assignment6.yaml")]):
        out = subprocess.run([sys.executable, "-m", "tunekit", *args], capture_output=True)
        assert out.returncode == 0
        # no torch, Ray, MLflow or matplotlib on these paths (their import alone takes seconds)
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from tunekit import cli, plan, "
                "report; print(sorted(m for m in ('torch', 'ray', 'mlflow', "
                "'matplotlib') if m in sys.modules))",
            ],
            capture_output=True,
            text=True,
        )
        assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_every_misspelt_grid_key_is_named_and_set_names_the_spec(tmp_path: Path) -> None:
    spec = tmp_path / "grid.yaml"
    spec.write_text("name: x\nsearch:\n  grid: {model.nrom: [BN], train.batchsize: [16]}\n")
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "'model.nrom' names no field" in result.output
    assert "'train.batchsize' names no field; did you mean 'train.batch_size'" in result.output
    smoke = REPO / "experiments" / "smoke.yaml"
    result = runner.invoke(app, ["validate", str(smoke), "--set", "search.budget=4"])
    assert result.exit_code == 2 and f"invalid spec {smoke}: search.budget: " in result.output


@pytest.mark.parametrize("command", ["--help", "sweep", "train", "report", "ui", "plot"])
def test_help_has_no_type_placeholders(command: str) -> None:
    args = [command] if command == "--help" else [command, "--help"]
    text = runner.invoke(app, args, prog_name="tunekit").output
    assert "<bool>" not in text and "{" not in text and "<list" not in text, text
    if command != "--help":
        assert f"Usage: tunekit {command} [OPTIONS]" in " ".join(text.split())
