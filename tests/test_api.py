"""The Python API against the command: `tunekit.run` in a notebook's process of its own and
`tunekit sweep` leave the same MLflow runs and artifacts for the same spec (real Ray, MLflow's
embedded store in each one's own folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from conftest import run_tunekit as tunekit
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.ray
SMOKE = str(REPO / "experiments" / "smoke.yaml")
OVERRIDES = {"data.subset": 256, "train.epochs": 1}  # all of tiny_data's images
NOTEBOOK = """
import sys
import tunekit

outcome = tunekit.run(tunekit.load(sys.argv[1], {overrides!r}))
print(outcome.interrupted, [t.status.value for t in outcome.states])
"""
SAME_TEXT = ("spec/smoke.yaml", "spec/resolved.yaml", "plan.json", "config.yaml")


def artifacts(client: MlflowClient, run_id: str, folder: str | None = None) -> list[str]:
    """Every artifact file of a run, by path."""
    out = []
    for a in client.list_artifacts(run_id, folder):
        out += artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return sorted(out)


def recorded(cwd: Path) -> dict[str, dict[str, Any]]:
    """What a sweep left in cwd's MLflow store, by run name, without run ids or timings."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = {}
    for run in client.search_runs([exp.experiment_id]):
        paths = artifacts(client, run.info.run_id)
        runs[run.info.run_name] = {
            "status": run.info.status,
            "params": run.data.params,
            "metrics": sorted(run.data.metrics),
            "tags": sorted(run.data.tags),
            "tunekit": {
                k: v
                for k, v in run.data.tags.items()
                if k in ("tunekit.role", "tunekit.trial", "tunekit.status")
            },
            "artifacts": paths,
            "texts": {  # the spec, the plan and each trial's config, as logged
                p: Path(client.download_artifacts(run.info.run_id, p, str(cwd))).read_text()
                for p in paths
                if p in SAME_TEXT
            },
        }
    return runs


def test_the_api_and_the_command_leave_the_same_mlflow_runs_and_artifacts(
    tmp_path: Path, tiny_data: Path
) -> None:
    by_cli, by_api = tmp_path / "cli", tmp_path / "api"
    by_cli.mkdir()
    by_api.mkdir()
    sets = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={v}")]
    out = tunekit("sweep", SMOKE, *sets, cwd=by_cli, data=tiny_data)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [sys.executable, "-c", NOTEBOOK.format(overrides=OVERRIDES), SMOKE],
        cwd=by_api,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False ['done', 'done', 'done']", out.stdout

    cli, api = recorded(by_cli), recorded(by_api)
    assert sorted(cli) == [
        "smoke sweep",
        "trial 0: model.args.norm=BN",
        "trial 1: model.args.norm=GN",
        "trial 2: model.args.norm=LN",
    ]
    for name in cli:
        assert api[name] == cli[name], name
    sweep = cli["smoke sweep"]["artifacts"]  # what the command logs, figures included
    assert {"plots/curves.json", "plots/val_acc.png", "spec/smoke.yaml", "plan.json"} <= set(
        sweep
    ), sweep
    assert {"curves.png", "misclassified.png", "best_model.pt", "config.yaml"} <= set(
        cli["trial 0: model.args.norm=BN"]["artifacts"]
    )
