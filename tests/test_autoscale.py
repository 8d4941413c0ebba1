"""A cluster as `ray up cluster.yaml` runs it, autoscaler included, on this machine.

Ray's fake multi-node provider stands in for the cloud: the head is started by `ray start` with
the autoscaler config `ray up` would write (cluster.yaml's node types: a head with no CPUs and GPU
workers from zero, with fake GPUs), and the autoscaler starts and stops worker nodes as real Ray
nodes on this machine. Token authentication is on, the dashboard (and its job API) listens on
127.0.0.1 only, storage is a real S3-compatible server (moto) and tracking a real `mlflow server`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, S3, free_port, make_mnist, serve_mlflow

from tunekit import cluster

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

IDLE_MINUTES = 0.2  # idle workers go after 12 s (cluster.yaml: 10 minutes)
FAKE_HEAD = "ray.head.default"  # the node type Ray's fake provider gives the head


def fake_autoscaler_config(gcs_port: int) -> dict:
    """cluster.yaml's node types on Ray's fake provider, filled in as `ray up` leaves
    ~/ray_bootstrap_config.yaml on the head (the autoscaler reads only a filled-in config)."""
    real = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = real["available_node_types"]
    head = types[real["head_node_type"]]
    workers = {
        name: {
            "resources": node["resources"],
            "min_workers": node.get("min_workers", 0),
            "max_workers": node["max_workers"],
            "node_config": {},
        }
        for name, node in types.items()
        if name != real["head_node_type"]
    }
    config = {
        "cluster_name": "fake",
        "max_workers": real["max_workers"],
        "upscaling_speed": real["upscaling_speed"],
        "idle_timeout_minutes": IDLE_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            FAKE_HEAD: {"resources": head["resources"], "node_config": {}, "max_workers": 0},
            **workers,
        },
        "head_node_type": FAKE_HEAD,
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }
    for key in (
        "cluster_synced_files",
        "rsync_exclude",
        "rsync_filter",
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        config[key] = []
    from ray.autoscaler._private.util import validate_config

    validate_config(config)
    return config


class FakeCluster:
    """The head, started as cluster.yaml starts it (token auth, dashboard on 127.0.0.1, the
    cluster's settings in the environment), with the fake autoscaler in it."""

    def __init__(self, root: Path, s3: S3, mlflow_uri: str):
        self.root = root
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.home = root / "home"
        self.home.mkdir()
        config = fake_autoscaler_config(self.port)
        self.node_types = config["available_node_types"]
        bootstrap = self.home / "ray_bootstrap_config.yaml"  # where `ray up` leaves it
        bootstrap.write_text(yaml.safe_dump(config))
        self.ray_tmp = tempfile.mkdtemp(prefix="tk", dir="/tmp")  # sockets need a short path
        self.token = secrets.token_hex(32)
        self.storage = s3.uri("autoscale")
        # what ~/tunekit.env holds on cluster.yaml's head, plus token auth as it sets it
        self.env = {
            **os.environ,
            **s3.env,
            "HOME": str(self.home),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "TUNEKIT_DATA_DIR": str(make_mnist(root / "data", n_train=600, n_test=100)),
            "TUNEKIT_STORAGE": self.storage,
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
        }
        for var in ("RAY_ADDRESS", cluster.GPUS_ENV):  # the GPU ask is left to tunekit
            self.env.pop(var, None)
        self.head = subprocess.Popen(
            [
                "ray",
                "start",
                "--head",
                "--block",
                "--disable-usage-stats",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                "--num-cpus=0",
                f"--autoscaling-config={bootstrap}",
                f"--temp-dir={self.ray_tmp}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                "--object-store-memory=100000000",
            ],
            env={**self.env, "RAY_FAKE_CLUSTER": "1"},
            start_new_session=True,
            stdout=open(root / "head.log", "w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while not self.jobs_api_answers():
            assert self.head.poll() is None, (root / "head.log").read_text()
            assert time.monotonic() < deadline, (root / "head.log").read_text()
            time.sleep(1)

    def jobs_api_answers(self) -> bool:
        try:
            self.get("/api/jobs/")
            return True
        except OSError:
            return False

    def get(self, path: str, token: str | None = "") -> object:
        """GET from the dashboard, with the cluster's token (or `token`; None: no header)."""
        headers = {} if token is None else {"Authorization": f"Bearer {token or self.token}"}
        request = urllib.request.Request(f"{self.dashboard}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def state(self, what: str) -> list[dict]:
        """Ray's state API (through the dashboard): 'nodes' or 'placement_groups', dead and
        removed ones included."""
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
                import dataclasses, json
                from ray.util.state import list_{what}
                print(json.dumps([dataclasses.asdict(x) for x in list_{what}(
                    address="{self.dashboard}", detail=True)]))
             """),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def workers(self, alive: bool = True) -> list[dict]:
        return [
            n
            for n in self.state("nodes")
            if not n["is_head_node"] and (n["state"] == "ALIVE") == alive
        ]

    def head_node_id(self) -> str:
        return next(n["node_id"] for n in self.state("nodes") if n["is_head_node"])

    def stop(self) -> None:
        """The head's process group (the fake workers run in it), then anything left that
        lives in this cluster's folder: never `ray stop`, which stops every Ray here."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.head.pid, sig)
                self.head.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        time.sleep(1)
        subprocess.run(["pkill", "-9", "-f", self.ray_tmp], check=False)


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    s3 = S3(tmp_path)
    try:
        with serve_mlflow(tmp_path / "mlflow") as url:
            c = FakeCluster(tmp_path, s3, url)
            try:
                yield c
            finally:
                c.stop()
    finally:
        s3.stop()


SPEC = """
name: NAME
train: {epochs: 2, batch_size: 32}
search:
  grid: {model.args.norm: [BN, GN, LN], train.seed: [1, 2]}  # packs of 2: one shape each
"""


def complete_runs(c: FakeCluster, experiment: str, epochs: int) -> list:
    """MLflow's trial runs of `experiment`: each done, with every epoch logged once."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(c.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    runs = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    for run in runs:
        assert run.data.tags["tunekit.status"] == "done", run.data.tags
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == list(range(1, epochs + 1)), (run.info.run_name, steps)
    return runs


def wait_until(condition, what: str, timeout: float) -> float:
    """Seconds until `condition()` held."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(1)
    return time.monotonic() - start


def test_the_autoscaler_starts_gpu_workers_from_zero_for_a_sweep_and_a_job_then_removes_them(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    c = fake_cluster
    assert c.workers() == []  # nothing but the head
    with pytest.raises(urllib.error.HTTPError) as refused:  # token auth: no token, no job API
        c.get("/api/jobs/", token=None)
    assert refused.value.code in (401, 403)
    with pytest.raises(urllib.error.HTTPError):
        c.get("/api/jobs/", token="not-the-token")

    # 1. a sweep from a shell on the head, as `ray attach cluster.yaml` gives
    (tmp_path / "sweep.yaml").write_text(SPEC.replace("NAME", "autoscaled"))
    log = tmp_path / "sweep.log"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "tunekit", "sweep", "sweep.yaml", "--address", c.address],
        cwd=tmp_path,
        env=c.env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_until(lambda: "asks for" in log.read_text() or sweep.poll() is not None, "the ask", 180)
    asked = time.time()
    assert sweep.wait(600) == 0, log.read_text()
    ended = time.time()
    out = " ".join(log.read_text().split())
    assert (
        "each trial asks for 1 CPU + 0.5 GPU (auto: the autoscaler may start 'gpu_worker' "
        "nodes with 1 GPU(s); per pack of up to 2 trials)"
    ) in out, out  # 0.25 per trial
    assert "WARNING: no node that runs trials is up and no autoscaler" not in out

    started = c.workers(alive=False) + c.workers()
    assert started, "the autoscaler started no worker"
    first = min(w["start_time_ms"] for w in started) / 1000 - asked
    assert first < 60, f"the first worker came {first:.0f} s after the sweep asked"
    head = c.head_node_id()
    worker_ids = {w["node_id"] for w in started}
    # the fake provider numbers the nodes it starts from ...00001 (the head is ...00000), and
    # they have cluster.yaml's gpu_worker resources
    assert all(w["node_id"].startswith("fffff") and w["node_id"] != head for w in started)
    gpu = c.node_types["gpu_worker"]["resources"]
    assert all({k: w["resources_total"].get(k) for k in gpu} == gpu for w in started), started

    runs = complete_runs(c, "autoscaled", 2)
    assert len(runs) == 6
    ran_on = {n for r in runs for n in r.data.tags["tunekit.nodes"].split(",")}
    assert ran_on and ran_on <= worker_ids and head not in ran_on, (ran_on, worker_ids)

    bundles = [b["unit_resources"] for pg in c.state("placement_groups") for b in pg["bundles"]]
    gpu_bundles = [b for b in bundles if b.get("GPU", 0) > 0]
    assert gpu_bundles == [{"CPU": 1.0, "GPU": 0.5}] * 3, bundles  # three packs of two trials

    gone = wait_until(lambda: not c.workers(), "idle workers removed", 180)
    print(
        f"\nautoscaler: first worker up {first:.1f} s after the sweep asked; trial bundles "
        f"{gpu_bundles}; trials ran on {sorted(ran_on)} (workers it started: "
        f"{sorted(worker_ids)}, head {head}); no worker alive {time.time() - ended:.0f} s "
        f"after the sweep ended (idle timeout {IDLE_MINUTES * 60:.0f} s; {gone:.0f} s of "
        f"polling)"
    )

    # 2. the same as a Ray job, through the token-protected job API on 127.0.0.1
    (tmp_path / "job.yaml").write_text(
        SPEC.replace("NAME", "asjob").replace("epochs: 2", "epochs: 1").replace("[1, 2]", "[1]")
    )  # shorter: the path is what counts
    job = subprocess.run(
        [
            "ray",
            "job",
            "submit",
            "--address",
            c.dashboard,
            "--",
            sys.executable,
            "-m",
            "tunekit",
            "sweep",
            str(tmp_path / "job.yaml"),
        ],
        env=c.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert job.returncode == 0, job.stdout + job.stderr
    assert "succeeded" in job.stdout, job.stdout
    assert "(from RAY_ADDRESS)" in " ".join(job.stdout.split()), job.stdout
    runs = complete_runs(c, "asjob", 1)
    assert len(runs) == 3
    all_workers = {w["node_id"] for w in c.workers(alive=False) + c.workers()}
    assert {n for r in runs for n in r.data.tags["tunekit.nodes"].split(",")} <= all_workers
    wait_until(lambda: not c.workers(), "idle workers removed after the job", 180)
