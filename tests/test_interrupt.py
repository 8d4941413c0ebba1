"""Never silently wrong: a sweep stopped at any moment records exactly what ran, and resumes.

Real processes throughout: `python -m tunekit sweep` is sent SIGINT (Ctrl-C) or SIGKILL at seeded
moments across start-up, training and the writing of results, then resumed with --resume; after
every step each MLflow trial run must carry its plan's parameters.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_mnist, progress
from conftest import run_tunekit as tunekit
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NORMS = ("BN", "GN", "LN")  # the plan: trial i trains NORMS[i]
SPEC = """\
name: chaos
data: {subset: 3000}
train: {epochs: 8, batch_size: 32, scheduler: {name: none}}
search:
  grid: {model.args.norm: [BN, GN, LN]}
sweep: {max_concurrent: 1}  # one trial at a time, as in the report that found the bug
"""


def trial_runs(cwd: Path) -> list:
    if not (cwd / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("chaos")
    if exp is None:
        return []
    return [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]


def assert_runs_carry_the_plan(cwd: Path, when: str) -> None:
    runs = trial_runs(cwd)
    numbers = [r.data.tags["tunekit.trial"] for r in runs]
    assert len(numbers) == len(set(numbers)), f"{when}: two runs of one trial: {numbers}"
    for r in runs:
        i = int(r.data.tags["tunekit.trial"])
        assert r.data.params.get("model.args.norm") in (None, NORMS[i]), (when, i, r.data.params)
        assert r.info.run_name == f"trial {i}: model.args.norm={NORMS[i]}", when


def epochs_trained(cwd: Path) -> int:
    """Epochs reported so far (Ray's progress.csv rows; an epoch rerun after a kill counts)."""
    return sum(len(t) for t in progress(cwd / "runs" / "chaos").values())


def start(cwd: Path, data: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tunekit", "sweep", "spec.yaml", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TUNEKIT_DATA_DIR": str(data)},
    )


def test_interrupted_at_many_moments_then_resumed_records_exactly_what_ran(tmp_path: Path) -> None:
    data = make_mnist(tmp_path / "data", n_train=3000, n_test=200)
    (tmp_path / "spec.yaml").write_text(SPEC)
    plan_file = tmp_path / "runs" / "chaos" / "tunekit_plan.json"

    # 1) Ctrl-C once the plan is stored, before Ray has started any trial.
    driver = start(tmp_path, data)
    deadline = time.monotonic() + 60
    while not plan_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out
    assert "--resume" in out and "Traceback" not in out
    assert not any(progress(tmp_path / "runs" / "chaos").values())  # no trial trained
    assert_runs_carry_the_plan(tmp_path, "before any trial")

    # 2) Ten more stops, each resumed: five at seeded moments of start-up (before the first
    #    epoch of this session), five once 1 or 2 more epochs have been trained (mid-training,
    #    and never the whole study: 24 epochs in all), SIGKILL at two of them.
    rng = random.Random(11)
    kinds = ["start-up", "training"] * 5
    finished, outcomes = False, []
    for k, kind in enumerate(kinds):
        sig = signal.SIGKILL if k in (3, 6) else signal.SIGINT
        trained = epochs_trained(tmp_path)
        driver = start(tmp_path, data, "--resume")
        began = time.monotonic()
        if kind == "start-up":
            time.sleep(rng.uniform(1.0, 6.0))
        else:
            more = rng.choice((1, 2))
            while epochs_trained(tmp_path) < trained + more and driver.poll() is None:
                assert time.monotonic() - began < 180, "no progress"
                time.sleep(0.05)
        if driver.poll() is None:
            driver.send_signal(sig)
        out, _ = driver.communicate(timeout=180)
        when = f"stop {k}: {sig.name} in {kind} after {time.monotonic() - began:.1f}s"
        assert driver.returncode in (0, 130, -signal.SIGKILL), f"{when}: {out}"
        assert "Traceback" not in out and "Segmentation" not in out, f"{when}: {out}"
        assert_runs_carry_the_plan(tmp_path, when)
        outcomes.append((kind, sig.name, driver.returncode, epochs_trained(tmp_path)))
        if sig == signal.SIGKILL:
            time.sleep(3)  # the killed driver's Ray winds down
        if driver.returncode == 0:
            finished = True
            break

    print("stops (when, signal, exit code, epochs trained so far):", outcomes)
    assert not finished and len(outcomes) == 10  # every stop stopped something
    # 3) A last --resume completes the study: every trial done, every epoch recorded once.
    if not finished:
        out = tunekit("sweep", "spec.yaml", "--resume", cwd=tmp_path, data=data, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    rows = progress(tmp_path / "runs" / "chaos")
    assert sorted(rows) == ["trial_0000", "trial_0001", "trial_0002"]
    # Ray's own progress.csv may hold an epoch twice (after a kill it reruns the epochs past the
    # last checkpoint it had saved); none is missing, and MLflow below has each exactly once
    assert all({int(r["epoch"]) for r in t} == set(range(1, 9)) for t in rows.values()), rows
    runs = trial_runs(tmp_path)
    assert sorted(int(r.data.tags["tunekit.trial"]) for r in runs) == [0, 1, 2]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for r in runs:
        i = int(r.data.tags["tunekit.trial"])
        assert r.data.params["model.args.norm"] == NORMS[i]
        assert r.data.tags["tunekit.status"] == "done"
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_acc"))
        assert steps == list(range(1, 9)), (i, steps)
    # the report groups nothing that differs: one row per norm, n = 1 each
    report = tunekit("report", "spec.yaml", "-f", "csv", cwd=tmp_path, data=data)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.strip().splitlines()[1:]
    assert sorted(line.split(",")[0] for line in lines) == sorted(NORMS)


def test_resume_with_another_plan_is_refused_and_restart_starts_over(
    tmp_path: Path, tiny_data: Path
) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC.replace("subset: 3000", "subset: 200"))
    first = tunekit("sweep", "spec.yaml", "--set", "train.epochs=1", cwd=tmp_path, data=tiny_data)
    assert first.returncode == 0, first.stdout + first.stderr
    stored = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    runs_before = {r.info.run_id for r in trial_runs(tmp_path)}

    changed = tunekit(
        "sweep", "spec.yaml", "--resume", "--set", "train.epochs=2", cwd=tmp_path, data=tiny_data
    )
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert "trials.0.config.train.epochs: 1 -> 2" in changed.stderr
    assert "--restart" in changed.stderr and "interrupted" not in changed.stdout
    assert {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()} == stored
    assert {r.info.run_id for r in trial_runs(tmp_path)} == runs_before  # nothing touched

    again = tunekit("sweep", "spec.yaml", cwd=tmp_path, data=tiny_data)
    assert again.returncode == 2 and "--restart starts over" in again.stderr

    # Ray's state cut short, as a kill while writing it left it before tunekit wrote whole files
    (tmp_path / "runs" / "chaos" / "tuner.pkl").write_bytes(b"")
    cut = tunekit(
        "sweep", "spec.yaml", "--resume", "--set", "train.epochs=1", cwd=tmp_path, data=tiny_data
    )
    assert cut.returncode == 2 and "Aborted" not in cut.stdout, cut.stdout + cut.stderr
    assert "tuner.pkl) cannot be read" in cut.stderr and "--restart" in cut.stderr

    restart = tunekit(
        "sweep", "spec.yaml", "--restart", "--set", "train.epochs=2", cwd=tmp_path, data=tiny_data
    )
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "MLflow runs are kept" in restart.stdout
    rows = progress(tmp_path / "runs" / "chaos")
    assert all(len(t) == 2 for t in rows.values()) and len(rows) == 3
    assert len(list((tmp_path / "runs").glob("chaos.replaced-*"))) == 1  # the old one, aside
    runs = trial_runs(tmp_path)
    assert runs_before < {r.info.run_id for r in runs} and len(runs) == 6
