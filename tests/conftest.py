"""Shared fixtures: tiny IDX datasets written on the fly, and an isolated tunekit cache."""

from __future__ import annotations

import csv
import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST ships in (gzip-compressed if path ends .gz)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28×28 images whose class is where a bright 6×6 square sits (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, k in enumerate(labels):
        r, c = 3 + 8 * (k // 4), 3 + 8 * (k % 4)
        images[i, r : r + 6, c : c + 6] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_mnist(
    root: Path, n_train: int = 256, n_test: int = 128, gz: bool = True, folder: str = "MNIST"
) -> Path:
    """A synthetic dataset in the IDX format, as `<root>/<folder>/raw/` (MNIST, FashionMNIST,
    KMNIST all ship so)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte{ext}", labels)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny synthetic MNIST (.gz files, as shipped) that $TUNEKIT_DATA_DIR points at."""
    root = make_mnist(tmp_path / "data")
    monkeypatch.setenv("TUNEKIT_DATA_DIR", str(root))
    return root


def write_flaky(folder: Path) -> Path:
    """A model module, flaky.py, whose training steps on a batch of more than two images raise
    while folder/flag exists (the driver's checks, a forward in eval mode and a step of two
    images, do not): a trial that fails at run time for a reason that can go away, which no
    check before it can see. Returns the flag's path, created."""
    flag = folder / "flag"
    flag.touch()
    (folder / "flaky.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path

        from torch import nn


        class Net(nn.Sequential):
            def __init__(self):
                super().__init__(nn.Flatten(), nn.Linear(28 * 28, 10))

            def forward(self, x):
                if self.training and len(x) > 2 and Path({str(flag)!r}).exists():
                    raise OSError("the scratch disk is full")
                return super().forward(x)
        """)
    )
    return flag


@pytest.fixture
def smoke_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A synthetic MNIST large enough for experiments/smoke.yaml (its first 6,000 training
    images: a larger `data.subset` than the dataset holds is refused)."""
    root = make_mnist(tmp_path / "data", n_train=6000)
    monkeypatch.setenv("TUNEKIT_DATA_DIR", str(root))
    return root


@pytest.fixture
def real_mnist() -> Path:
    """The real MNIST: $TUNEKIT_DATA_DIR (.ci/run points it at ../shared/data), else ./data,
    where the README's quickstart sweep downloaded it."""
    root = Path(os.environ.get("TUNEKIT_DATA_DIR") or REPO / "data")
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(
            f"no MNIST in {root / 'MNIST' / 'raw'}: run the quickstart sweep, or set "
            "TUNEKIT_DATA_DIR to the folder holding MNIST/raw"
        )
    return root


def run_tunekit(
    *args: str, cwd: Path, data: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m tunekit ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tunekit", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "TUNEKIT_DATA_DIR": str(data), **(env or {})},
    )


def progress(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """What each trial of a sweep reported to Ray (its progress.csv rows), by trial folder."""
    return {
        p.parent.name: list(csv.DictReader(p.open()))
        for p in sorted(run_dir.glob("*/progress.csv"))
    }


class RayNodes:
    """Ray nodes this test starts (`ray start --block`, each in its own process group) and stops
    itself, by process group: never `ray stop`, which would stop every Ray on the machine."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env, self.procs = tmp, env, []
        self.ray = str(Path(sys.executable).parent / "ray")

    def start(self, *args: str, wait_for: int) -> None:
        """Start a node; return once the cluster at self.address has `wait_for` nodes."""
        log = open(self.tmp / f"node{len(self.procs)}.log", "w")
        self.procs.append(
            subprocess.Popen(
                [self.ray, "start", "--block", "--disable-usage-stats", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), (self.tmp / log.name).read_text()
            status = subprocess.run(
                [self.ray, "status", f"--address={self.address}"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if status.returncode == 0 and status.stdout.count(" node_") >= wait_for:
                return
            time.sleep(1)
        raise AssertionError(f"Ray node did not come up: {status.stdout}{status.stderr}")

    address = ""

    def stop(self) -> None:
        import signal

        for proc in reversed(self.procs):
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
                time.sleep(1)  # let the group's other processes (raylet, workers) go too
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
            except ProcessLookupError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_mlflow(root: Path) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, artifacts served from `root`)."""
    port = free_port()
    root.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, (root / "server.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


BUCKET = "tunekit-runs"


class S3:
    """moto's server: an IAM user whose keys may do anything, a bucket, then credentials
    enforced."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "moto_server"),
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=open(root / "moto.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://{self.endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                assert self.proc.poll() is None, (root / "moto.log").read_text()
                time.sleep(0.5)
        import boto3

        anyone = dict(
            endpoint_url=f"http://{self.endpoint}",
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam = boto3.client("iam", **anyone)
        iam.create_user(UserName="tunekit")
        key = iam.create_access_key(UserName="tunekit")["AccessKey"]
        iam.put_user_policy(
            UserName="tunekit",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        boto3.client("s3", **anyone).create_bucket(Bucket=BUCKET)
        urllib.request.urlopen(
            urllib.request.Request(  # from now on, only these keys work
                f"http://{self.endpoint}/moto-api/reset-auth",
                data=b"0",
                method="POST",
                headers={"Content-Type": "text/plain"},
            )
        ).read()
        self.env = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def uri(self, prefix: str, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def read(self, path: str) -> str:
        """A file in the bucket, read with the good keys (as the driver would)."""
        import pyarrow.fs

        os.environ.update(self.env)
        fs, base = pyarrow.fs.FileSystem.from_uri(self.uri(""))
        with fs.open_input_stream(f"{BUCKET}/{path}") as f:
            return f.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
