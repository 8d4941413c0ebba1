"""The CLI through typer's CliRunner: exit codes, messages, and nothing started on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tunekit.train
from tunekit.cli import app

from conftest import REPO

runner = CliRunner()


def test_validate_prints_the_varying_parameters_and_count() -> None:
    result = runner.invoke(app, ["validate", str(REPO / "experiments" / "assignment6.yaml")])
    assert result.exit_code == 0, result.output
    assert "14 trial(s), valid." in result.output
    for column in ("model.norm", "train.l1", "train.l2", "train.batch_size"):
        assert column in result.output
    assert "0.006604" in result.output


def test_validate_with_set() -> None:
    result = runner.invoke(app, ["validate", str(REPO / "experiments" / "smoke.yaml"),
                                 "--set", "search.repeats=2"])
    assert result.exit_code == 2  # search is not overridable from the command line
    result = runner.invoke(app, ["validate", str(REPO / "experiments" / "smoke.yaml"),
                                 "--set", "train.epochs=3"])
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


@pytest.mark.parametrize("args,fragment", [
    (["--set", "model.norm=XN"], "model.norm"),
    (["--set", "train.epoch=1"], "did you mean 'epochs'"),
    (["--set", "noequals"], "expected key=value"),
    (["--trial", "3"], "has 3 trial(s): 0..2"),
])
def test_train_rejects_bad_input_with_exit_2_and_starts_nothing(
        args: list[str], fragment: str, no_training: None) -> None:
    result = runner.invoke(app, ["train", str(REPO / "experiments" / "smoke.yaml"), *args])
    assert result.exit_code == 2
    assert fragment in result.output


def test_train_bad_yaml_file(tmp_path: Path, no_training: None) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {norm: GN\n")
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "line 3" in result.output and "<yaml>" in result.output


def test_train_runs_one_trial(tiny_data: Path) -> None:
    result = runner.invoke(app, ["train", str(REPO / "experiments" / "smoke.yaml"), "--trial",
                                 "2", "--set", "train.epochs=2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "trial 2: model.norm=LN" in result.output
    assert "epoch   1" in result.output and "epoch   2" in result.output
    assert "max val_acc" in result.output


def test_train_without_data_says_where_it_looked(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEKIT_DATA_DIR", str(tmp_path / "nowhere"))
    result = runner.invoke(app, ["train", str(REPO / "experiments" / "smoke.yaml"),
                                 "--set", "data.download=false"])
    assert result.exit_code == 1
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in result.output
