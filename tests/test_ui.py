"""`tunekit ui`: the MLflow UI on tunekit's store, opened on the sweep's runs, stopped whole."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, free_port
from conftest import run_tunekit as tunekit

pytestmark = pytest.mark.ray
SMOKE = str(REPO / "experiments" / "smoke.yaml")
SMALL = ("--set", "data.subset=256")  # all of tiny_data's images, where smoke takes 6,000


def _left(servers: list[str]) -> list[str]:
    """Those of `servers` (command lines) still running."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    running = set(out.splitlines())
    return [args for args in servers if args in running]


def _mlflow_servers(ui: subprocess.Popen) -> list[str]:
    """The processes `tunekit ui` started (the MLflow UI, its web workers and job consumers),
    by their process group: the one of tunekit's child."""
    out = subprocess.run(
        ["ps", "-eo", "pid,ppid,pgid,args"], capture_output=True, text=True
    ).stdout.splitlines()[1:]
    rows = [line.split(None, 3) for line in out]
    groups = {pgid for pid, ppid, pgid, _ in rows if ppid == str(ui.pid)}
    return [args for pid, ppid, pgid, args in rows if pgid in groups and pid != str(ui.pid)]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ui_serves_the_store_tunekit_used_on_its_runs_and_stops_whole(
    tmp_path: Path, stop: int
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from tunekit.track import EXPERIMENT_KIND, connect

    client = connect(store)
    exp_id = client.create_experiment("study", tags=EXPERIMENT_KIND)
    port = free_port()
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunekit",
            "ui",
            "study",
            "--port",
            str(port),
            "--tracking-uri",
            store,
        ],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        line = ui.stdout.readline()  # printed once the UI answers
        assert f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200
        servers = _mlflow_servers(ui)
        assert any("mlflow" in args for args in servers), servers
    finally:
        ui.send_signal(stop)  # to tunekit alone, as `kill` or a process manager sends it
        assert ui.wait(30) in (0, 130), ui.stdout.read()
    deadline = time.monotonic() + 15
    while _left(servers) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not _left(servers)  # no server left behind, whatever stopped tunekit
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (apt-get install chromium; .ci/run installs it)"
)
def test_the_url_ui_prints_opens_on_the_trial_runs_in_a_browser(
    tmp_path: Path, tiny_data: Path
) -> None:
    """What a new user sees: headless Chromium opens the printed URL and the page lists the
    trials by name (MLflow 3 would show its GenAI overview, or fold them under the sweep)."""
    out = tunekit("sweep", SMOKE, *SMALL, "--set", "train.epochs=1", cwd=tmp_path, data=tiny_data)
    assert out.returncode == 0, out.stdout + out.stderr
    names = [f"trial {i}: model.args.norm={norm}" for i, norm in enumerate(("BN", "GN", "LN"))]
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "tunekit", "ui", SMOKE, "--port", str(port)],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = ui.stdout.readline().split(": ", 1)[1].split()[0]
        browse = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1600,1000",
            "--virtual-time-budget=20000",
            f"--user-data-dir={tmp_path / 'chromium'}",
        ]
        subprocess.run(
            [*browse, f"--screenshot={tmp_path / 'runs.png'}", url],
            capture_output=True,
            timeout=120,
            check=True,
        )
        page = subprocess.run(
            [*browse, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
        ).stdout
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(30)
    import html
    import re

    text = " ".join(
        html.unescape(
            re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page, flags=re.S))
        ).split()
    )
    assert "Training runs" in text and "smoke sweep" in text, text[:2000]
    assert all(name in text for name in names), text[:2000]
    assert (tmp_path / "runs.png").stat().st_size > 10_000  # a page was drawn


def test_ui_on_a_non_local_host_says_what_it_exposes(tmp_path: Path) -> None:
    from tunekit.track import connect
    from tunekit.ui import serve

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    connect(store)
    said: list[str] = []

    def announce(line: str) -> None:
        said.append(line)
        raise KeyboardInterrupt  # stop at the first line: the warning, before any server

    with pytest.raises(KeyboardInterrupt):
        serve(store, "0.0.0.0", free_port(), None, announce)
    assert (
        said[0].startswith("WARNING: --host 0.0.0.0 serves the MLflow UI") and "anyone" in said[0]
    )
