"""Sweeps on a real Ray: local, on a two-node cluster, with failures, and resumed after SIGKILL.

Every sweep runs `python -m tunekit sweep` in a subprocess, as a user would, and is checked
against what Ray itself stored under runs/<name>/ (one progress.csv per trial).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import ray
from conftest import REPO, RayNodes, make_mnist, progress, write_flaky
from conftest import run_tunekit as tunekit
from typer.testing import CliRunner

from tunekit.cli import app

pytestmark = pytest.mark.ray


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_smoke_sweep_end_to_end(tmp_path: Path, smoke_data: Path) -> None:
    out = tunekit(
        "sweep",
        str(REPO / "experiments" / "smoke.yaml"),
        "--set",
        "train.epochs=2",
        cwd=tmp_path,
        data=smoke_data,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = progress(tmp_path / "runs" / "smoke")
    assert len(rows) == 3
    assert all([r["epoch"] for r in trial] == ["1", "2"] for trial in rows.values())
    table = out.stdout[out.stdout.index("max val_acc per configuration") :]
    for norm in ("BN", "GN", "LN"):
        line = next(line for line in table.splitlines() if f" {norm} " in line)
        assert "done" in line
    assert "Trial status" not in out.stdout and "INFO" not in out.stdout + out.stderr  # quiet Ray
    # not a terminal: a plain progress line per epoch, numbered as the plan numbers trials
    for i, norm in enumerate(("BN", "GN", "LN")):
        for epoch in (1, 2):
            assert f"trial {i} (model.args.norm={norm}) epoch {epoch}/2: val_acc" in out.stdout
    # the sweep's results are not overwritten by accident
    again = tunekit(
        "sweep", str(REPO / "experiments" / "smoke.yaml"), cwd=tmp_path, data=smoke_data
    )
    assert again.returncode == 2 and "--resume" in again.stderr


def test_the_sweep_runs_exactly_the_plan_that_validate_shows(
    tmp_path: Path, tiny_data: Path
) -> None:
    spec = spec_file(
        tmp_path,
        """
        name: planned
        train: {epochs: 1, batch_size: 32, scheduler: {name: none}}
        search:
          grid: {model.args.norm: [BN, GN]}
          cases: [{train.l1: 0.0}, {train.l1: 0.0001, train.l2: 0.0004}]
          sample: {train.optimizer.lr: {loguniform: [0.01, 0.1]}}
          num_samples: 2
          repeats: 2
    """,
    )
    shown = tunekit("validate", str(spec), "--format", "json", cwd=tmp_path, data=tiny_data)
    plan = json.loads(shown.stdout)["trials"]
    assert [t["trial"] for t in plan] == list(range(16))
    dry = tunekit("sweep", str(spec), "--dry-run", cwd=tmp_path, data=tiny_data)
    for t in plan:  # the dry run shows the same numbers and values, rounded for reading
        assert f"{t['params']['train.optimizer.lr']:.4g}" in dry.stdout
    out = tunekit("sweep", str(spec), cwd=tmp_path, data=tiny_data)
    assert out.returncode == 0, out.stdout + out.stderr

    run_dir = tmp_path / "runs" / "planned"
    ray_configs = {
        json.loads(p.read_text())["trial"]: p.parent.name
        for p in run_dir.glob("trial_*/params.json")
    }
    assert ray_configs == {t["trial"]: f"trial_{t['trial']:04d}" for t in plan}
    rows = progress(run_dir)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {
        int(r.data.tags["tunekit.trial"]): r
        for r in client.search_runs([client.get_experiment_by_name("planned").experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    }
    assert sorted(runs) == list(range(16))
    for t in plan:
        config, run = t["config"], runs[t["trial"]]
        # what training used: its lr (reported each epoch) is the plan's sampled value
        trained = rows[f"trial_{t['trial']:04d}"][0]
        assert float(trained["lr"]) == pytest.approx(config["train"]["optimizer"]["lr"], rel=1e-12)
        p = run.data.params
        assert float(p["train.optimizer.lr"]) == config["train"]["optimizer"]["lr"]  # exactly
        assert (
            p["model.args.norm"],
            int(p["train.seed"]),
            float(p["train.l1"]),
            float(p["train.l2"]),
        ) == (
            config["model"]["args"]["norm"],
            config["train"]["seed"],
            config["train"]["l1"],
            config["train"]["l2"],
        )
        assert run.info.run_name.startswith(f"trial {t['trial']}: ")

    # `tunekit train --trial N` reproduces the sweep's trial N
    n = 13
    alone = tunekit("train", str(spec), "--trial", str(n), cwd=tmp_path, data=tiny_data)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    first = rows[f"trial_{n:04d}"][0]
    line = next(x for x in alone.stdout.splitlines() if x.startswith("epoch   1"))
    assert f"train loss {float(first['train_loss']):.4f}" in line
    assert f"val loss {float(first['val_loss']):.4f} acc {float(first['val_acc']):6.2f}%" in line


def test_failed_trials_end_with_their_reason_and_the_rest_succeed(
    tmp_path: Path, tiny_data: Path
) -> None:
    write_flaky(tmp_path)  # a model whose training raises (its check by the driver passes)
    spec = spec_file(
        tmp_path,
        """
        name: faults
        train: {epochs: 2, batch_size: 32, scheduler: {name: none}}
        search:
          cases:
            - {model.args.norm: GN}
            - {model.import: "flaky:Net"}
            - {model.args.norm: BN, train.optimizer.lr: 1.0e+30}
            - {model.args.norm: BN}
    """,
    )
    out = tunekit("sweep", str(spec), cwd=tmp_path, data=tiny_data)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 of 4 trial(s) failed" in out.stdout
    assert "trial 1 (model.import=flaky:Net): OSError: the scratch disk is full" in out.stdout
    assert "DivergedError: training loss became nan in epoch 1" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    rows = progress(tmp_path / "runs" / "faults")
    finished = [t for t in rows.values() if [r["epoch"] for r in t] == ["1", "2"]]
    assert len(finished) == 2


def test_dry_run_starts_no_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ray(*a, **k):
        raise AssertionError("ray.init called by --dry-run")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["sweep", str(REPO / "experiments" / "norm_grid.yaml"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "48 trial(s)" in result.output and "asks for 1 CPU" in result.output
    assert "estimate: " in result.output  # about how long, or why there is none
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_bad_spec_starts_no_sweep(tmp_path: Path, tiny_data: Path) -> None:
    spec = spec_file(tmp_path, "name: x\nsearch:\n  grid: {model.args.norm: [BN, XN]}\n")
    out = tunekit("sweep", str(spec), cwd=tmp_path, data=tiny_data)
    assert out.returncode == 2 and "search.grid.model.args.norm" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_after_sigkill_reruns_nothing_finished(tmp_path: Path) -> None:
    data = make_mnist(tmp_path / "data", n_train=2500, n_test=500)
    spec = spec_file(
        tmp_path,
        """
        name: killed
        train: {epochs: 3, batch_size: 32, scheduler: {name: none}}
        search:
          grid: {model.args.norm: [BN, GN, LN], train.seed: [1, 2]}
    """,
    )
    run_dir, log = tmp_path / "runs" / "killed", tmp_path / "killed.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "tunekit", "sweep", str(spec)],
        cwd=tmp_path,
        env={**os.environ, "TUNEKIT_DATA_DIR": str(data)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    # Ray saves which trials finished every 2 s (TUNE_GLOBAL_CHECKPOINT_S): a trial that ended
    # in the last 2 s before a kill may redo its last epoch. Finished = ended 3 s before the kill.
    deadline, ended = time.monotonic() + 240, {}
    try:
        while time.monotonic() < deadline:
            rows = progress(run_dir)
            now = time.monotonic()
            ended.update({n: now for n, r in rows.items() if len(r) == 3 and n not in ended})
            finished = [name for name, t in ended.items() if now - t >= 3]
            if finished and sum(len(r) for r in rows.values()) < 6 * 3 - 3:
                break
            assert driver.poll() is None, "the sweep ended unkilled:\n" + log.read_text()
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished in time:\n" + log.read_text())
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        driver.kill()
    before = {name: (run_dir / name / "progress.csv").read_text() for name in progress(run_dir)}
    os.link(run_dir / "tuner.pkl", tmp_path / "tuner.pkl.killed")  # holds the file as it was
    time.sleep(3)  # let the dead driver's Ray workers go

    out = tunekit("sweep", str(spec), "--resume", cwd=tmp_path, data=data)
    assert out.returncode == 0, log.read_text() + out.stdout + out.stderr
    after = progress(run_dir)
    assert len(after) == 6
    # the summary counts every trial, those that finished before the kill too
    assert "killed: 6 done · 0 running · 0 failed · 6 in all" in out.stdout, out.stdout
    # Ray's progress.csv may repeat an epoch that it reran after the kill; none is missing, and
    # MLflow (below) holds each epoch exactly once
    assert all({int(r["epoch"]) for r in t} == {1, 2, 3} for t in after.values()), after
    for name in finished:
        assert (run_dir / name / "progress.csv").read_text() == before[name]
    # The resumed driver copied Ray's state (tuner.pkl with it) into the storage again: as new
    # files renamed into place, never rewritten in place, where a kill would leave one cut short
    assert not os.path.samefile(run_dir / "tuner.pkl", tmp_path / "tuner.pkl.killed")
    # MLflow: still exactly one run per trial, each with every epoch once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("killed")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 7 and len(trials) == 6
    assert len({r.data.tags["tunekit.trial"] for r in trials}) == 6
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2, 3], (r.info.run_name, steps)
        assert r.data.tags["tunekit.status"] == "done" and r.info.status == "FINISHED"


def test_two_node_cluster_runs_trials_on_both_nodes_and_leaves_other_rays_alone(
    tmp_path: Path,
) -> None:
    # Trials long enough (~10 s) that the second node's worker is up before the first node
    # could finish them all by itself: Tune reuses a finished trial's worker for the next one.
    data = make_mnist(tmp_path / "data", n_train=4000, n_test=200)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "TUNEKIT_DATA_DIR": str(data)}
    # A user's local sweep, running before this test's cluster starts and after it stops.
    (tmp_path / "mine").mkdir()
    mine = spec_file(
        tmp_path / "mine",
        """
        name: mine
        train: {epochs: 6, batch_size: 32}
        data: {subset: 2000}
        search:
          grid: {model.args.norm: [GN]}
    """,
    )
    user = subprocess.Popen(
        [sys.executable, "-m", "tunekit", "sweep", str(mine)],
        cwd=tmp_path / "mine",
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TUNEKIT_DATA_DIR": str(data)},
    )
    nodes = RayNodes(tmp_path, env)
    nodes.address = "127.0.0.1:6399"
    common = ["--num-cpus=1", "--object-store-memory=100000000"]
    try:
        nodes.start(
            "--head",
            "--port=6399",
            "--include-dashboard=false",
            f"--temp-dir={tempfile.mkdtemp(prefix='tk', dir='/tmp')}",  # sockets: short
            *common,
            wait_for=1,
        )
        nodes.start(f"--address={nodes.address}", *common, wait_for=2)
        spec = spec_file(
            tmp_path,
            """
            name: twonode
            train: {epochs: 4, batch_size: 32}
            search:
              grid: {model.args.norm: [BN, GN, LN, BN], train.seed: [1]}
        """,
        )
        out = tunekit(
            "sweep",
            str(spec),
            "--address",
            nodes.address,
            cwd=tmp_path,
            data=data,
            env={"RAY_AUTH_MODE": "token"},
        )
        assert out.returncode == 0, out.stdout + out.stderr
        rows = progress(tmp_path / "runs" / "twonode")
        assert len(rows) == 4
        nodes_used = {r["node_id"] for t in rows.values() for r in t}
        assert len(nodes_used) == 2, nodes_used
    finally:
        nodes.stop()
    stdout, _ = user.communicate(timeout=300)
    assert user.returncode == 0, stdout
    mine_rows = progress(tmp_path / "mine" / "runs" / "mine")
    assert [len(r) for r in mine_rows.values()] == [6]
    assert not {r["node_id"] for r in mine_rows["trial_0000"]} & nodes_used  # its own Ray


def kill_after_a_finished_ray_trial(
    spec: Path, cwd: Path, data: Path, run_dir: Path, at_least: int
) -> dict[str, str]:
    """Start a sweep, SIGKILL it once `at_least` Ray trials reported and one of them ended 3 s
    ago (Ray saves its state every 2 s); the progress of those finished, by folder."""
    log = cwd / "sweep.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "tunekit", "sweep", str(spec)],
        cwd=cwd,
        env={**os.environ, "TUNEKIT_DATA_DIR": str(data)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, ended = time.monotonic() + 300, {}
        while True:
            rows, now = progress(run_dir), time.monotonic()
            ended.update({n: now for n, r in rows.items() if r and n not in ended})
            finished = [name for name, t in ended.items() if now - t >= 3]
            if len(ended) >= at_least and finished:
                break
            assert driver.poll() is None and now < deadline, log.read_text()
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        driver.kill()
    return {name: (run_dir / name / "progress.csv").read_text() for name in finished}


def latest_searcher_state(run_dir: Path) -> Path:
    """The searcher's state as the last session saved it (a resumed sweep writes a new file)."""
    return max(run_dir.glob("searcher-state-*.pkl"), key=lambda p: p.stat().st_mtime)


TPE_SPEC = """
name: tpe
data: {subset: 600}
train: {epochs: 1, batch_size: 32, scheduler: {name: none}}
search:
  method: tpe
  budget: 4
  repeats: 2                          # each proposal trained on seeds 1 and 2, one pack
  sample:
    train.optimizer.lr: {loguniform: [0.001, 0.2]}
    model.args.groups: {randint: [1, 9]}   # 3, 5, 6 and 7 do not divide 8 and 16: invalid proposals
sweep: {max_concurrent: 1}
"""


@pytest.mark.slow
def test_tpe_with_repeats_resumes_after_sigkill_and_learns_from_seed_means(tmp_path: Path) -> None:
    """Each proposal is one pack of its 2 seeds: killed mid-sweep and resumed, no proposal is
    split or trained twice, invalid ones are reported and never trained, and TPE's study holds
    one value per proposal: its seeds' mean max val_acc."""
    data = make_mnist(tmp_path / "data", n_train=600, n_test=200)
    spec = spec_file(tmp_path, TPE_SPEC)
    shown = tunekit("validate", str(spec), cwd=tmp_path, data=data)
    assert shown.returncode == 0 and "TPE search, budget 8 trial(s)" in shown.stdout
    assert "(4 proposals × 2 seeds" in " ".join(shown.stdout.split())
    assert "loguniform 0.001 0.2" in shown.stdout

    run_dir = tmp_path / "runs" / "tpe"
    before = kill_after_a_finished_ray_trial(spec, tmp_path, data, run_dir, at_least=1)
    time.sleep(3)
    out = tunekit("sweep", str(spec), "--resume", cwd=tmp_path, data=data)
    assert out.returncode == 0, out.stdout + out.stderr  # invalid: no failure
    packs = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("pack_*/params.json")}
    assert sorted(c["pack"] for c in packs.values()) == [[2 * p, 2 * p + 1] for p in range(4)]
    assert all(c["pack"][0] == int(name[-4:]) for name, c in packs.items())
    for name, text in before.items():  # finished before the kill: not trained again
        assert (run_dir / name / "progress.csv").read_text() == text

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name("tpe").experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    ]
    assert sorted(int(r.data.tags["tunekit.trial"]) for r in runs) == list(range(8))
    by_proposal: dict[int, list] = {}
    for r in runs:
        trial = int(r.data.tags["tunekit.trial"])
        assert int(r.data.tags["tunekit.proposal"]) == trial // 2
        assert r.data.params["train.seed"] == str(1 + trial % 2)
        proposed = packs[f"pack_{trial // 2 * 2:04d}"]
        assert float(r.data.params["train.optimizer.lr"]) == proposed["train.optimizer.lr"]
        assert int(r.data.params["model.args.groups"]) == proposed["model.args.groups"]
        if 8 % proposed["model.args.groups"]:  # reported, never trained
            assert r.data.tags["tunekit.status"] == "invalid"
            assert "does not divide" in r.data.tags["tunekit.error"]
            assert not client.get_metric_history(r.info.run_id, "val_acc")
        else:
            assert r.data.tags["tunekit.status"] == "done"
            assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == [1]
        by_proposal.setdefault(trial // 2, []).append(r)
    statuses = {
        p: {r.data.tags["tunekit.status"] for r in seeds} for p, seeds in by_proposal.items()
    }
    assert {"invalid"} in statuses.values() and {"done"} in statuses.values(), statuses
    assert "invalid" in out.stdout

    # TPE learnt from the results: one outcome per proposal, the mean over its seeds
    import pickle
    import statistics

    import optuna

    state = pickle.loads(latest_searcher_state(run_dir).read_bytes())
    study, sampler = state["_ot_study"], state["_sampler"]
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 2
    assert len(study.trials) == 4 and state["proposed"] == 4
    for p, seeds in by_proposal.items():
        assert len(seeds) == 2 and len({r.data.params["train.optimizer.lr"] for r in seeds}) == 1
        lr = float(seeds[0].data.params["train.optimizer.lr"])
        (t,) = [t for t in study.trials if t.params["train.optimizer.lr"] == pytest.approx(lr)]
        if statuses[p] == {"invalid"}:
            assert t.state == optuna.trial.TrialState.FAIL
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.value == pytest.approx(
                statistics.fmean(r.data.metrics["max_val_acc"] for r in seeds)
            )


def test_asha_stops_weak_configurations_early_with_all_their_seeds(
    tmp_path: Path, tiny_data: Path
) -> None:
    """ASHA over a grid with repeats decides on a configuration's seed mean: weak ones stop
    early, and a configuration's seeds stop together."""
    spec = spec_file(
        tmp_path,
        """
        name: asha3
        train: {epochs: 4, batch_size: 32, scheduler: {name: none}}
        search:
          grid: {train.optimizer.lr: [0.05, 1.0e-6, 0.04, 2.0e-6]}
          repeats: 2
        sweep: {asha: {grace_period: 1, reduction_factor: 2}}
    """,
    )
    out = tunekit("sweep", str(spec), cwd=tmp_path, data=tiny_data)
    assert out.returncode == 0, out.stdout + out.stderr  # stopped early is not failed
    assert "stopped" in out.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name("asha3").experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    ]
    epochs: dict[str, set[int]] = {}
    for r in runs:
        steps = len(client.get_metric_history(r.info.run_id, "val_acc"))
        epochs.setdefault(r.data.params["train.optimizer.lr"], set()).add(steps)
    assert len(runs) == 8 and all(len(e) == 1 for e in epochs.values()), epochs  # together
    lasted = sorted(e.pop() for e in epochs.values())
    assert lasted[0] < 4 and lasted[-1] == 4, lasted  # and ASHA did stop some
    packs = sorted(
        json.loads(p.read_text())["pack"]
        for p in (tmp_path / "runs" / "asha3").glob("pack_*/params.json")
    )
    assert packs == [[0, 1], [2, 3], [4, 5], [6, 7]]  # a Ray trial per configuration


def test_a_failed_trial_s_reason_is_its_exception_whole() -> None:
    from tunekit.relay import _exception

    ray_text = textwrap.dedent("""\
        Failure # 1 (occurred at 2026-11-25_17-08-32)
        ray::ImplicitFunc.train() (pid=1834, ip=192.0.2.2, actor_id=0c00, repr=_train)
          File "/venv/ray/tune/trainable/trainable.py", line 331, in train
            raise skipped from exception_cause(skipped)
        RuntimeError: Unable to set up cluster storage with the following settings:
        StorageContext<
          storage_filesystem='local',
          storage_fs_path='/home/ray/runs',
        >
        Check that all nodes in the cluster have read/write access to the configured storage path.
        """)
    assert _exception(ray_text) == (
        "RuntimeError: Unable to set up cluster storage with the "
        "following settings:\nStorageContext<\n  storage_filesystem="
        "'local',\n  storage_fs_path='/home/ray/runs',\n>\nCheck "
        "that all nodes in the cluster have read/write access to the "
        "configured storage path."
    )
    assert _exception("tunekit.errors.DivergedError: loss became nan in epoch 2\n") == (
        "DivergedError: loss became nan in epoch 2"
    )


def test_a_sweep_of_packs_records_every_trial_as_its_own_and_resumes(tmp_path: Path) -> None:
    """Six trials in two packs of three; one member diverges and fails alone; the driver is
    killed mid-sweep and resumed: MLflow holds one run per trial with every epoch once."""
    data = make_mnist(tmp_path / "data", n_train=3000, n_test=200)
    spec = spec_file(
        tmp_path,
        """
        name: packs
        train: {epochs: 3, batch_size: 32, scheduler: {name: none}}
        search:
          grid: {train.seed: [1, 2, 3], train.optimizer.lr: [0.03, 1.0e+30]}
        sweep: {pack: 3}
    """,
    )
    log = tmp_path / "packs.log"
    run = [sys.executable, "-m", "tunekit", "sweep", str(spec)]
    env = {**os.environ, "TUNEKIT_DATA_DIR": str(data)}
    proc = subprocess.Popen(
        run,
        cwd=tmp_path,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while "epoch 1/3" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    out = subprocess.run(
        [*run, "--resume"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300
    )
    assert out.returncode == 1, log.read_text() + out.stdout + out.stderr  # the diverged ones
    assert sorted(p.name for p in (tmp_path / "runs" / "packs").glob("pack_*")) == [
        "pack_0000",
        "pack_0003",
    ]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("packs")
    runs = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert sorted(int(r.data.tags["tunekit.trial"]) for r in runs) == list(range(6))
    for r in runs:
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_acc"))
        if float(r.data.params["train.optimizer.lr"]) > 1:
            assert r.data.tags["tunekit.status"] == "failed" and steps == []
            assert "training loss became" in r.data.tags["tunekit.error"]
        else:
            assert r.data.tags["tunekit.status"] == "done" and steps == [1, 2, 3], steps
    assert "Max Val Acc" in out.stdout and "3 of 6 trial(s) failed" in out.stdout
    shown = tunekit("report", str(spec), cwd=tmp_path, data=data)
    assert "trial 1 failed: DivergedError: training loss became nan in epoch 1" in shown.stdout


def forge_cuda(path: Path) -> None:
    """Rewrite a torch file as a GPU worker writes it: every tensor tagged for cuda:0."""
    import torch
    import torch.serialization

    state = torch.load(path, weights_only=True, map_location="cpu")
    tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(state, path)
    finally:
        torch.serialization.location_tag = tag


def test_checkpoints_written_on_a_gpu_are_read_where_there_is_none(
    tmp_path: Path, tiny_data: Path
) -> None:
    """The cluster's head has no GPU: it reads checkpoints and artifacts GPU workers wrote."""
    import torch

    from tunekit import trainable
    from tunekit.spec import TrialConfig
    from tunekit.train import fit

    spec = spec_file(
        tmp_path,
        """
        name: gpu_written
        train: {epochs: 2, batch_size: 32}
        search: {grid: {train.seed: [1, 2]}}
        sweep: {pack: 1}
    """,
    )
    assert tunekit("sweep", str(spec), cwd=tmp_path, data=tiny_data).returncode == 0
    states = sorted((tmp_path / "runs" / "gpu_written").glob("trial_*/checkpoint_*/state.pt"))
    artifacts = sorted((tmp_path / "mlruns").rglob("*.pt"))
    assert states and artifacts
    for path in states + artifacts:
        forge_cuda(path)
    with pytest.raises(RuntimeError, match="CUDA device"):
        torch.load(states[0], weights_only=True)  # the failure the head used to hit

    # a trial resumed on a CPU node from a GPU node's checkpoint (the trainable's loader)
    first = min(states, key=lambda p: p.parent.name)
    state = trainable.load_state(ray.tune.Checkpoint.from_directory(str(first.parent)))
    assert state["model"]["features.0.weight"].device.type == "cpu"
    cfg = TrialConfig.model_validate({"train": {"epochs": 2, "batch_size": 32, "seed": 1}})
    assert len(fit(cfg, resume=state, threads=1).history) == 2

    resumed = tunekit("sweep", str(spec), "--resume", cwd=tmp_path, data=tiny_data)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr  # the driver reads them
    assert "Max Val Acc" in resumed.stdout
    shown = tunekit("report", str(spec), cwd=tmp_path, data=tiny_data)
    assert shown.returncode == 0 and "Max Val Acc" in shown.stdout, shown.stdout + shown.stderr
    plotted = tunekit("plot", str(spec), "--out", "plots", cwd=tmp_path, data=tiny_data)
    assert plotted.returncode == 0, plotted.stdout + plotted.stderr  # misclassified.pt read
