"""A Ray cluster whose nodes share nothing but the network, on this machine, as `ray up` gives.

A head with no CPUs for trials (it runs the driver and a real `mlflow server`), and two worker
nodes, each started in a mount namespace of its own (`unshare -m`) with private tmpfs over the
driver's folder, the MLflow server's folder and Ray's session folders: a worker cannot read the
head's files, nor the other worker's. Result storage is a real S3-compatible server (moto) on
127.0.0.1 that enforces credentials. Skipped where this machine cannot make mount namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import S3, free_port, make_mnist, progress, serve_mlflow

from tunekit.models.seed_cnn import Net

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

NAMESPACES = (
    shutil.which("unshare") is not None
    and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    ).returncode
    == 0
)


class Cluster:
    """The head (0 CPUs) and two workers in mount namespaces of their own."""

    def __init__(self, root: Path, s3: S3):
        self.root, self.s3 = root, s3
        self.data = make_mnist(root / "data", n_train=5000, n_test=200)  # each node's own copy
        self.driver, self.mlflow_dir = root / "driver", root / "mlflow"
        self.driver.mkdir()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray_tmp = tempfile.mkdtemp(prefix="tk", dir="/tmp")  # sockets need a short path
        self.env = {
            **os.environ,
            **s3.env,
            "TUNEKIT_DATA_DIR": str(self.data),
            "RAY_AUTH_MODE": "disabled",
        }
        for var in ("TUNEKIT_STORAGE", "RAY_ADDRESS", "TUNEKIT_GPUS_PER_TRIAL"):
            self.env.pop(var, None)
        self.procs: dict[str, subprocess.Popen] = {}
        self._start(
            "head",
            [
                "ray",
                "start",
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--include-dashboard=false",
                f"--temp-dir={self.ray_tmp}",
            ],
            1,
        )
        for i in (1, 2):
            self.start_worker(f"worker{i}")

    def start_worker(self, name: str) -> None:
        hidden = [self.driver, self.mlflow_dir, self.ray_tmp, "/tmp/ray"]
        mounts = " && ".join(f"mkdir -p {h} && mount -t tmpfs tmpfs {h}" for h in hidden)
        ray = f"ray start --address={self.address} --num-cpus=1"
        self._start(
            name,
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{mounts} && exec {ray} --block --disable-usage-stats "
                "--object-store-memory=100000000",
            ],
            len(self.nodes()) + 1,
        )

    def _start(self, name: str, command: list[str], nodes: int) -> None:
        if command[0] == "ray":
            command = [
                *command,
                "--block",
                "--disable-usage-stats",
                "--object-store-memory=100000000",
            ]
        env = {**self.env, "PATH": f"{Path(sys.executable).parent}:{self.env['PATH']}"}
        self.procs[name] = subprocess.Popen(
            command,
            env=env,
            start_new_session=True,
            stdout=open(self.root / f"{name}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while len(self.nodes()) < nodes:
            assert self.procs[name].poll() is None, (self.root / f"{name}.log").read_text()
            assert time.monotonic() < deadline, f"{name} did not join"
            time.sleep(1)

    def nodes(self) -> dict[str, float]:
        """Live node id -> its CPUs, as Ray's GCS lists them."""
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import json, ray; ray.init(address='{self.address}', logging_level=40); "
                "print(json.dumps({n['NodeID']: n['Resources'].get('CPU', 0) for n in ray.nodes() "
                "if n['Alive']}))",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}

    def kill_raylet(self, name: str) -> None:
        group = self.procs[name].pid
        pids = subprocess.run(
            ["pgrep", "-g", str(group), "raylet"], capture_output=True, text=True
        ).stdout.split()
        assert pids, f"no raylet in {name}'s process group"
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(20)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    server = S3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3: S3) -> Iterator[Cluster]:
    if not NAMESPACES:
        pytest.skip(
            "this machine cannot make mount namespaces (unshare -m needs root): no "
            "cluster of nodes that share nothing"
        )
    root = tmp_path_factory.mktemp("cluster")
    c = Cluster(root, s3)
    try:
        with serve_mlflow(c.mlflow_dir / "server") as url:
            c.env["MLFLOW_TRACKING_URI"] = url
            yield c
    finally:
        c.stop()


def write_spec(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(text))
    return path


def sweep(
    c: Cluster, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunekit", "sweep", *args],
        cwd=c.driver,
        env={**c.env, **(env or {})},
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def trial_runs(c: Cluster, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(c.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]


def epochs_logged(c: Cluster, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(c.env["MLFLOW_TRACKING_URI"])
    return sorted(m.step for m in client.get_metric_history(run_id, "val_acc"))


GRID = """
train: {epochs: EPOCHS, batch_size: 32}
search:
  grid: {model.args.norm: [BN, GN, LN, GN], train.seed: [1]}
sweep: {max_failures: 2}
"""


def test_storage_only_the_driver_sees_is_refused_before_any_trial(cluster: Cluster) -> None:
    spec = write_spec(cluster.driver, "localonly", GRID.replace("EPOCHS", "1"))
    start = time.monotonic()
    out = sweep(cluster, str(spec), "--address", cluster.address)
    assert out.returncode == 2, out.stdout + out.stderr
    message = " ".join(out.stderr.split())
    assert "2 node(s) that run trials cannot read" in message, message
    assert "TUNEKIT_STORAGE" in message and "s3://" in message and "Traceback" not in message
    assert time.monotonic() - start < 90
    assert not (cluster.driver / "runs").exists()  # nothing started, nothing left behind
    assert trial_runs(cluster, "localonly") == []


def test_s3_storage_runs_every_trial_on_the_workers_with_artifacts_in_mlflow(
    cluster: Cluster,
) -> None:
    spec = write_spec(cluster.driver, "ons3", GRID.replace("EPOCHS", "2"))
    out = sweep(
        cluster,
        str(spec),
        "--address",
        cluster.address,
        env={"TUNEKIT_STORAGE": cluster.s3.uri("cluster")},
    )  # the cluster's default
    assert out.returncode == 0, out.stdout + out.stderr
    workers = {n for n, cpus in cluster.nodes().items() if cpus > 0}
    runs = trial_runs(cluster, "ons3")
    assert len(runs) == 4
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    for run in runs:
        assert run.data.tags["tunekit.status"] == "done"
        assert set(run.data.tags["tunekit.nodes"].split(",")) <= workers, run.data.tags
        assert epochs_logged(cluster, run.info.run_id) == [1, 2]
        with tempfile.TemporaryDirectory() as d:
            weights = torch.load(
                client.download_artifacts(run.info.run_id, "best_model.pt", d), weights_only=True
            )
        Net(run.data.params["model.args.norm"]).load_state_dict(weights)
    json.loads(cluster.s3.read("cluster/ons3/tunekit_plan.json"))  # the plan is in the bucket


def test_driver_killed_mid_sweep_resumes_from_s3(cluster: Cluster) -> None:
    spec, storage, log, proc = start_sweep(cluster, "driverkill", 4, "kills")
    wait_for(lambda: "epoch 2/4" in log.read_text(), proc, log)
    proc.kill()
    proc.wait(30)
    out = sweep(cluster, str(spec), "--address", cluster.address, *storage, "--resume")
    assert out.returncode == 0, log.read_text() + out.stdout + out.stderr
    each_trial_once(cluster, "driverkill", 4)


def start_sweep(c: Cluster, name: str, epochs: int, prefix: str):
    """A 4-trial sweep on the cluster with S3 storage, running in the background."""
    spec = write_spec(c.driver, name, GRID.replace("EPOCHS", str(epochs)))
    storage = ["--set", f"sweep.storage={c.s3.uri(prefix)}"]
    log = c.driver / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunekit", "sweep", str(spec), "--address", c.address, *storage],
        cwd=c.driver,
        env=c.env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return spec, storage, log, proc


def each_trial_once(c: Cluster, name: str, epochs: int) -> list:
    """MLflow holds one finished run per trial, with every epoch once; returns the runs."""
    runs = trial_runs(c, name)
    assert len(runs) == 4 and len({r.data.tags["tunekit.trial"] for r in runs}) == 4
    for run in runs:
        assert run.data.tags["tunekit.status"] == "done"
        assert epochs_logged(c, run.info.run_id) == list(range(1, epochs + 1)), run.info.run_name
    return runs


def test_a_lost_worker_node_s_trials_resume_on_the_other_from_their_s3_checkpoints(
    cluster: Cluster,
) -> None:
    _, _, log, proc = start_sweep(cluster, "nodeloss", 6, "losses")
    wait_for(lambda: log.read_text().count("epoch 2/6") >= 2, proc, log)  # one on each worker
    cluster.kill_raylet("worker2")
    assert proc.wait(600) == 0, log.read_text()
    assert "retrying: trial" in log.read_text() and "View run" not in log.read_text()
    runs = each_trial_once(cluster, "nodeloss", 6)
    moved = [r for r in runs if len(r.data.tags["tunekit.nodes"].split(",")) == 2]
    assert moved, "no trial ran on both workers"
    for run in moved:  # it went on from its checkpoint, not from epoch 1
        trial = f"trial_{int(run.data.tags['tunekit.trial']):04d}"
        rows = progress_rows(cluster.s3.read(f"losses/nodeloss/{trial}/progress.csv"))
        first_node = rows[0]["node_id"]
        after = [int(r["epoch"]) for r in rows if r["node_id"] != first_node]
        assert after and after[0] > 1, rows
    cluster.start_worker("worker2b")  # later tests get two workers again


def progress_rows(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


@pytest.mark.parametrize("case", ["missing bucket", "bad credentials", "unparseable"])
def test_unusable_s3_storage_is_refused_in_one_line(tmp_path: Path, s3: S3, case: str) -> None:
    data = make_mnist(tmp_path / "data", n_train=64, n_test=32)
    uri = {
        "missing bucket": s3.uri("x", bucket="no-such-bucket"),
        "bad credentials": s3.uri("x"),
        "unparseable": s3.uri("x").replace("endpoint_override", "endpoint_overide"),
    }[case]
    keys = {**s3.env, "AWS_SECRET_ACCESS_KEY": "wrong"} if case == "bad credentials" else s3.env
    spec = write_spec(tmp_path, "bad", "search:\n  grid: {model.args.norm: [GN]}\n")
    out = subprocess.run(
        [sys.executable, "-m", "tunekit", "sweep", str(spec), "--set", f"sweep.storage={uri}"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, **keys, "TUNEKIT_DATA_DIR": str(data)},
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "sweep.storage" in lines[0] and "Traceback" not in out.stderr
    expected = {
        "missing bucket": "bucket does not exist",
        "bad credentials": "credentials",
        "unparseable": "cannot use",
    }[case]
    assert expected in lines[0], lines
    assert (
        not (tmp_path / "mlflow.db").exists()
        or "bad"
        not in subprocess.run(
            [
                sys.executable,
                "-c",
                "import mlflow; print([e.name for e in "
                "mlflow.MlflowClient('sqlite:///mlflow.db').search_experiments()])",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        ).stdout
    )


def test_local_means_local_beside_a_cluster_and_a_stale_address(
    cluster: Cluster, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path,
        "mine",
        "train: {epochs: 1, batch_size: 32}\nsearch:\n  grid: {model.args.norm: [GN]}\n",
    )
    env = {k: v for k, v in cluster.env.items() if k != "MLFLOW_TRACKING_URI"}
    run = [sys.executable, "-m", "tunekit", "sweep", str(spec)]
    out = subprocess.run(run, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "on a local Ray of its own" in " ".join(out.stdout.split())
    used = {r["node_id"] for rows in progress(tmp_path / "runs" / "mine").values() for r in rows}
    assert used and not used & set(cluster.nodes())  # not the cluster's nodes

    # A stale address left behind by a cluster that is gone: a local sweep still starts.
    current = Path("/tmp/ray/ray_current_cluster")
    before = current.read_text() if current.exists() else None
    current.parent.mkdir(parents=True, exist_ok=True)
    current.write_text(f"127.0.0.1:{free_port()}")
    try:
        out = subprocess.run(
            [*run, "--restart"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300
        )
    finally:
        if before is None:
            current.unlink()
        else:
            current.write_text(before)
    assert out.returncode == 0, out.stdout + out.stderr

    start = time.monotonic()  # a dead --address fails within seconds, in one line
    out = subprocess.run(
        [*run, "--restart", "--address", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 2 and time.monotonic() - start < 30, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "no Ray cluster answers" in out.stderr


def test_your_model_is_shipped_to_workers_that_only_have_tunekit(cluster: Cluster) -> None:
    """The module lives only on the driver's disk (the workers' view of that folder is an empty
    tmpfs): the sweep sends it through Ray's runtime_env, and the trials train on the workers."""
    (cluster.driver / "driver_only_models.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def mlp(hidden=16):
            return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))
        """)
    )
    spec = write_spec(
        cluster.driver,
        "shipped",
        """
        model: {import: "driver_only_models:mlp"}
        train: {epochs: 1, batch_size: 64}
        search:
          grid: {model.args.hidden: [8, 16]}
        """,
    )
    out = sweep(
        cluster,
        str(spec),
        "--address",
        cluster.address,
        env={"TUNEKIT_STORAGE": cluster.s3.uri("shipped")},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    workers = {n for n, cpus in cluster.nodes().items() if cpus > 0}
    runs = trial_runs(cluster, "shipped")
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["tunekit.status"] == "done"
        assert run.data.params["model.import"] == "driver_only_models:mlp"
        assert set(run.data.tags["tunekit.nodes"].split(",")) <= workers, run.data.tags
