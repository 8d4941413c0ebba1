"""MLflow tracking, end to end: the embedded store, a real `mlflow server`, an unreachable one."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, free_port, progress, serve_mlflow, write_flaky
from conftest import run_tunekit as tunekit
from mlflow.tracking import MlflowClient

from tunekit.models.seed_cnn import Net

pytestmark = pytest.mark.ray
SMOKE = str(REPO / "experiments" / "smoke.yaml")
SMALL = ("--set", "data.subset=256")  # all of tiny_data's images, where smoke takes 6,000


def ray_rows(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """What each trial reported to Ray, by plan number (its folder is trial_0003)."""
    return {str(int(name.removeprefix("trial_"))): rows for name, rows in progress(run_dir).items()}


def test_smoke_sweep_in_the_embedded_store(tmp_path: Path, tiny_data: Path) -> None:
    out = tunekit("sweep", SMOKE, *SMALL, "--set", "train.epochs=2", cwd=tmp_path, data=tiny_data)
    assert out.returncode == 0, out.stdout + out.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tunekit.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3 and len(runs) == 4

    reported = ray_rows(tmp_path / "runs" / "smoke")
    assert {r.data.tags["tunekit.trial"] for r in children} == set(reported) == {"0", "1", "2"}
    for run in children:
        rows = reported[run.data.tags["tunekit.trial"]]
        assert run.data.tags["tunekit.ray_trial_id"] == rows[0]["trial_id"]
        p = run.data.params
        # the plan's trial N: smoke's grid is BN, GN, LN in that order
        assert p["model.args.norm"] == "BN GN LN".split()[int(run.data.tags["tunekit.trial"])]
        assert (
            run.info.run_name == f"trial {run.data.tags['tunekit.trial']}: "
            f"model.args.norm={p['model.args.norm']}"
        )
        assert p["model.args.norm"] in ("BN", "GN", "LN") and p["train.epochs"] == "2"
        assert p["train.batch_size"] == "64" and p["train.optimizer.lr"] == "0.04104"
        assert p["model.args.norm"] in run.info.run_name
        for key in ("val_acc", "train_loss", "val_loss", "train_acc", "lr", "images_per_s"):
            history = sorted(
                (m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)
            )
            assert history == [(int(r["epoch"]), pytest.approx(float(r[key]))) for r in rows]
        best = max(rows, key=lambda r: float(r["val_acc"]))
        assert run.data.metrics["max_val_acc"] == pytest.approx(float(best["val_acc"]))
        assert run.data.metrics["best_epoch"] == int(best["epoch"])
        assert run.data.tags["tunekit.status"] == "done" and run.info.status == "FINISHED"
        assert run.data.tags["tunekit.sweep_id"] == parents[0].info.run_id
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert names == {
            "best_model.pt",
            "config.yaml",
            "curves.png",
            "misclassified.png",
            "misclassified.pt",
        }
        d = client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id))
        net = Net(p["model.args.norm"])
        net.load_state_dict(torch.load(Path(d) / "best_model.pt", weights_only=True))
        config = yaml.safe_load((Path(d) / "config.yaml").read_text())
        assert (
            config["model"]["args"]["norm"] == p["model.args.norm"]
            and config["train"]["epochs"] == 2
        )
        assert (Path(d) / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parent = parents[0].info.run_id
    assert {a.path for a in client.list_artifacts(parent, "spec")} == {
        "spec/smoke.yaml",
        "spec/resolved.yaml",
    }
    plan = json.loads(
        Path(client.download_artifacts(parent, "plan.json", str(tmp_path))).read_text()
    )
    assert [(t["trial"], t["params"]) for t in plan["trials"]] == [
        (i, {"model.args.norm": n}) for i, n in enumerate(("BN", "GN", "LN"))
    ]
    plots = {a.path for a in client.list_artifacts(parent, "plots")}
    assert {"plots/val_acc.png", "plots/train_loss.png", "plots/curves.json"} <= plots
    # the end-of-sweep table is the seed's, rebuilt from MLflow
    assert "norm" in out.stdout and "Max Val Acc" in out.stdout and "MLflow run id" in out.stdout


@pytest.fixture
def mlflow_server(tmp_path: Path):
    with serve_mlflow(tmp_path / "server") as url:
        yield url


def rest(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_smoke_sweep_against_a_real_mlflow_server(
    tmp_path: Path, tiny_data: Path, mlflow_server: str
) -> None:
    out = tunekit(
        "sweep", SMOKE, *SMALL, "--tracking-uri", mlflow_server, cwd=tmp_path, data=tiny_data
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the embedded store
    exp = rest(mlflow_server, "experiments/get-by-name?experiment_name=smoke")["experiment"]
    runs = rest(
        mlflow_server, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100}
    )["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parent = next(
        r["info"]["run_id"] for r, t in zip(runs, tags) if t.get("tunekit.role") == "sweep"
    )
    children = [r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parent]
    assert len(runs) == 4 and len(children) == 3
    reported = ray_rows(tmp_path / "runs" / "smoke")
    for run in children:
        run_id = run["info"]["run_id"]
        trial = {t["key"]: t["value"] for t in run["data"]["tags"]}["tunekit.trial"]
        history = rest(mlflow_server, f"metrics/get-history?run_id={run_id}&metric_key=val_acc")
        assert [(m["step"], m["value"]) for m in history["metrics"]] == [
            (int(r["epoch"]), pytest.approx(float(r["val_acc"]))) for r in reported[trial]
        ]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["model.args.norm"] in ("BN", "GN", "LN")
        files = rest(mlflow_server, f"artifacts/list?run_id={run_id}")["files"]
        assert {"best_model.pt", "misclassified.png", "curves.png"} <= {f["path"] for f in files}
    assert (Path(tmp_path / "server" / "artifacts")).exists()  # served, not written by the client


def test_unreachable_tracking_server_fails_fast_and_starts_nothing(
    tmp_path: Path, tiny_data: Path
) -> None:
    start = time.monotonic()
    out = tunekit(
        "sweep",
        SMOKE,
        *SMALL,
        "--tracking-uri",
        f"http://127.0.0.1:{free_port()}",
        cwd=tmp_path,
        data=tiny_data,
        timeout=60,
    )
    assert out.returncode == 2
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:" in out.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "runs").exists()  # no trial, not even Ray's folder


def test_read_only_commands_create_no_store_and_say_where_they_looked(tmp_path: Path) -> None:
    for command in (["report", "smoke"], ["plot", "smoke"], ["ui", "smoke"]):
        start = time.monotonic()
        out = tunekit(*command, cwd=tmp_path, data=tmp_path, timeout=60)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in out.stderr
        assert "Traceback" not in out.stderr and time.monotonic() - start < 10
        assert list(tmp_path.iterdir()) == []  # no mlflow.db, no plots/ folder


def test_a_trial_that_failed_then_finished_on_resume_shows_no_old_error(
    tmp_path: Path, tiny_data: Path
) -> None:
    """A trial's status and error are its last attempt's: its disk full where it ran, then
    not on --resume."""
    flag = write_flaky(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: again\ntrain: {epochs: 1, batch_size: 32}\nmodel: {import: 'flaky:Net'}\n"
        "search:\n  grid: {train.seed: [1]}\n"
    )
    first = tunekit("sweep", str(spec), cwd=tmp_path, data=tiny_data)
    assert first.returncode != 0, first.stdout + first.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("again")
    (run,) = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert (
        run.data.tags["tunekit.status"] == "failed"
        and "OSError: the scratch disk is full" in run.data.tags["tunekit.error"]
    )
    flag.unlink()
    again = tunekit("sweep", str(spec), "--resume", cwd=tmp_path, data=tiny_data)
    assert again.returncode == 0, again.stdout + again.stderr
    run = client.get_run(run.info.run_id)
    assert run.data.tags["tunekit.status"] == "done" and "tunekit.error" not in run.data.tags
    table = tunekit("report", "again", cwd=tmp_path, data=tiny_data).stdout
    assert "OSError" not in table and "done" in table
