"""What each trial asks of a Ray cluster and what it gets: GPU shares that hold when GPU workers
start at zero, and a trial that says so when its GPU and its device disagree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, RayNodes, make_mnist, progress
from typer.testing import CliRunner

from tunekit import cluster
from tunekit.cli import app
from tunekit.errors import UsageError
from tunekit.spec import ExperimentSpec


def spec(**resources: object) -> ExperimentSpec:
    return ExperimentSpec.model_validate({"name": "x", "resources": resources})


def test_gpu_share_comes_from_the_spec_then_the_cluster_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(cluster.GPUS_ENV, raising=False)
    assert cluster.configured_gpus(spec()) is None  # automatic: decided on the cluster
    monkeypatch.setenv(cluster.GPUS_ENV, "0.5")
    assert cluster.configured_gpus(spec()) == cluster.Ask(1, 0.5, cluster.GPUS_ENV)
    assert cluster.configured_gpus(spec(gpus_per_trial=0, cpus_per_trial=2)) == cluster.Ask(
        2, 0.0, "resources.gpus_per_trial"
    )  # the spec wins
    for bad in ("lots", "-1", "9", "nan"):
        monkeypatch.setenv(cluster.GPUS_ENV, bad)
        with pytest.raises(UsageError, match=cluster.GPUS_ENV):
            cluster.configured_gpus(spec())


def test_autoscaler_gpus_read_from_the_cluster_config(tmp_path: Path) -> None:
    assert cluster.autoscaler_gpus(REPO / "cluster.yaml") == ("gpu_worker", 1.0)
    assert cluster.autoscaler_gpus(tmp_path / "none.yaml") is None
    (tmp_path / "cpu.yaml").write_text("available_node_types:\n  w: {resources: {CPU: 4}}\n")
    assert cluster.autoscaler_gpus(tmp_path / "cpu.yaml") is None
    (tmp_path / "bad.yaml").write_text("available_node_types: [")
    assert cluster.autoscaler_gpus(tmp_path / "bad.yaml") is None


def test_dry_run_says_what_each_trial_asks_for_and_a_bad_default_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec_path = str(REPO / "experiments" / "norm_batch.yaml")
    monkeypatch.setenv(cluster.GPUS_ENV, "0.5")
    out = CliRunner().invoke(app, ["sweep", spec_path, "--dry-run"])
    assert out.exit_code == 0 and "asks for 1 CPU + 0.5 GPU (TUNEKIT_GPUS_PER_TRIAL)" in " ".join(
        out.output.split()
    ), out.output
    monkeypatch.setenv(cluster.GPUS_ENV, "half")
    out = CliRunner().invoke(app, ["sweep", spec_path])
    assert out.exit_code == 2 and "TUNEKIT_GPUS_PER_TRIAL" in out.output, out.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_cluster_yaml_passes_rays_own_validation_and_wires_storage_and_tracking() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    # what `ray up` does before it talks to the cloud: fill in defaults, check the JSON schema
    validate_config(prepare_config(config))
    broken = {**config, "head_node_typo": "head"}
    with pytest.raises(Exception, match="head_node_typo"):  # the check does reject bad configs
        validate_config(prepare_config(broken))
    workers = [
        n
        for n in config["available_node_types"].values()
        if n.get("min_workers", 0) == 0 and n.get("resources", {}).get("GPU")
    ]
    assert workers, "an autoscaling GPU worker group starting at 0"
    assert all(w["node_config"].get("IamInstanceProfile") for w in workers)  # S3 without keys
    head_setup = " ".join(config["head_setup_commands"])
    assert "TUNEKIT_STORAGE=s3://" in head_setup and "MLFLOW_TRACKING_URI=http" in head_setup
    assert "TUNEKIT_GPUS_PER_TRIAL=" in head_setup
    start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert start.index("tunekit.env") < start.index("ray start")  # Ray jobs get the settings too
    assert "mlflow server" in " ".join(config["head_start_ray_commands"])
    workers_see = " ".join(config["setup_commands"] + config["worker_start_ray_commands"])
    assert "MLFLOW" not in workers_see and "AWS_" not in workers_see
    assert "pip install -q -c ~/tunekit/constraints.txt" in " ".join(config["setup_commands"])


def test_cluster_yaml_binds_no_server_to_every_address() -> None:
    """MLflow and Ray's dashboard (its job API runs whatever it is sent) listen on the head only;
    users reach them through SSH port forwarding."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    commands = [c for key, value in config.items() if key.endswith("commands") for c in value]
    assert not [c for c in commands if "0.0.0.0" in c or "::" in c.replace("::1", "")], commands
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "mlflow server --host 127.0.0.1" in head


def test_cluster_yaml_turns_on_token_auth_on_every_node_and_ships_the_token() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    env = " ".join(config["head_setup_commands"])
    assert "RAY_AUTH_MODE=token" in env  # in ~/tunekit.env: the driver, jobs, the head's Ray
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert head.index(". ~/tunekit.env") < head.index("ray start")
    (worker,) = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert worker.index("export RAY_AUTH_MODE=token") < worker.index("ray start")


def late_gpu_worker(tmp_path: Path, bootstrap: bool, **env_vars: str) -> tuple[str, dict]:
    """A head with no CPUs for trials (with `ray up`'s autoscaler config in ~, or nothing), a
    sweep that starts on it, and a GPU worker that joins once the sweep's trials wait: the sweep's
    output (whitespace folded) and what its trials reported."""
    data = make_mnist(tmp_path / "data", n_train=300, n_test=100)
    home = tmp_path / "home"
    home.mkdir()
    if bootstrap:
        shutil.copy(REPO / "cluster.yaml", home / "ray_bootstrap_config.yaml")
    env = {**os.environ, "HOME": str(home), "TUNEKIT_DATA_DIR": str(data)}
    env.pop(cluster.GPUS_ENV, None)
    env.update(env_vars)
    (tmp_path / "spec.yaml").write_text(
        textwrap.dedent("""
        name: gpus
        train: {epochs: 1, batch_size: 32}
        search:
          grid: {model.args.norm: [BN, GN]}
    """)
    )
    nodes = RayNodes(tmp_path, env)
    nodes.address = "127.0.0.1:6397"
    log = tmp_path / "sweep.log"
    try:
        nodes.start(
            "--head",
            "--port=6397",
            "--num-cpus=0",
            "--include-dashboard=false",
            f"--temp-dir={tempfile.mkdtemp(prefix='tk', dir='/tmp')}",
            "--object-store-memory=100000000",
            wait_for=1,
        )
        sweep = subprocess.Popen(
            [sys.executable, "-m", "tunekit", "sweep", "spec.yaml", "--address", nodes.address],
            cwd=tmp_path,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while "asks for" not in log.read_text() and sweep.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        time.sleep(3)  # the trials wait: no node can run them yet
        assert sweep.poll() is None and not progress(tmp_path / "runs" / "gpus"), log.read_text()
        nodes.start(
            f"--address={nodes.address}",
            "--num-cpus=2",
            "--num-gpus=1",
            "--object-store-memory=100000000",
            wait_for=2,
        )
        assert sweep.wait(300) == 0, log.read_text()
    finally:
        nodes.stop()
    return " ".join(log.read_text().split()), progress(tmp_path / "runs" / "gpus")


@pytest.mark.ray
def test_trials_ask_for_a_gpu_share_when_gpu_workers_join_after_the_sweep_starts(
    tmp_path: Path,
) -> None:
    """A `ray up`-style head (no CPUs for trials, the autoscaler's config in ~) and a GPU worker
    that joins once the sweep is waiting: every trial asks for a GPU share and gets the GPU."""
    out, rows = late_gpu_worker(tmp_path, bootstrap=True)
    assert (
        "each trial asks for 1 CPU + 0.25 GPU (auto: the autoscaler may start 'gpu_worker' "
        "nodes with 1 GPU(s))"
    ) in out, out
    # the storage is a folder, and no node that runs trials was up to check that it reads it
    assert (
        f"WARNING: no node that runs trials is up yet, so none was checked to read "
        f"{tmp_path / 'runs'}"
    ) in out, out
    assert len(rows) == 2
    for trial in rows.values():
        (row,) = trial
        assert row["gpu_ids"] == "0" and row["device"] == "cpu", row  # no CUDA on this machine
        assert (
            "CUDA_VISIBLE_DEVICES=0" in row["warning"] and "training on the CPU" in row["warning"]
        ), row
    assert out.count("WARNING: trial") == 2 and "2 trial(s) did not train where" in out, out


@pytest.mark.ray
@pytest.mark.cluster
def test_a_head_that_cannot_tell_whether_gpus_will_come_says_so_before_any_trial(
    tmp_path: Path,
) -> None:
    """`ray start` with no autoscaler and no node for trials yet: the sweep does not claim that
    no GPU can come; it warns before any trial and says what to set."""
    out, rows = late_gpu_worker(tmp_path, bootstrap=False)
    assert "cannot start any" not in out
    warning = out.index("WARNING: no node that runs trials is up and no autoscaler config")
    assert warning < out.index("epoch 1/1"), out  # before any trial trained
    assert f"set {cluster.GPUS_ENV} (or resources.gpus_per_trial)" in out[warning:], out
    for trial in rows.values():
        (row,) = trial
        assert row["gpu_ids"] == "" and "asked Ray for none" in row["warning"], row


@pytest.mark.ray
@pytest.mark.cluster
def test_the_cluster_default_share_holds_where_nothing_tells_of_gpus(tmp_path: Path) -> None:
    out, rows = late_gpu_worker(tmp_path, bootstrap=False, **{cluster.GPUS_ENV: "0.5"})
    assert "each trial asks for 1 CPU + 0.5 GPU (TUNEKIT_GPUS_PER_TRIAL)" in out, out
    assert "WARNING: no node that runs trials is up and no autoscaler" not in out
    assert sorted(trial[0]["gpu_ids"] for trial in rows.values()) == ["0", "0"]


@pytest.mark.ray
def test_gpu_node_groups_an_autoscaler_publishes_to_the_gcs_make_trials_ask_for_a_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray 2.60's own autoscalers (v1, v2, KubeRay's) publish no cluster config (checked on the
    fake provider; nothing in Ray's Python writes it); a platform that does is read from the
    GCS key Ray's reader uses. Written here by hand into a real GCS, as such an autoscaler
    would."""
    import ray
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_put

    monkeypatch.delenv(cluster.GPUS_ENV, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/ray_bootstrap_config.yaml
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level=40)
    try:
        assert cluster.published_gpus() is None
        assert cluster.ask(spec()).gpus == 0  # a CPU node is up: no GPU ask, no warning
        published = autoscaler_pb2.ClusterConfig(
            node_group_configs=[
                autoscaler_pb2.NodeGroupConfig(name="cpu", resources={"CPU": 8}, max_count=2),
                autoscaler_pb2.NodeGroupConfig(
                    name="gpu", resources={"CPU": 4, "GPU": 1}, max_count=3
                ),
            ]
        )
        _internal_kv_put(
            GCS_AUTOSCALER_CLUSTER_CONFIG_KEY,
            published.SerializeToString(),
            namespace=GCS_AUTOSCALER_STATE_NAMESPACE,
        )
        assert cluster.published_gpus() == 3
        asks = cluster.ask(spec())
        assert asks.gpus == cluster.AUTO_GPU_SHARE and "published" in asks.why, asks
    finally:
        ray.shutdown()
