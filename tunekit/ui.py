"""The MLflow UI on the store tunekit records to: `mlflow ui` as a child process, watched until
Ctrl-C or SIGTERM, then ended with every process it started (its own process group).

It talks to MLflow only through `track` (the store checked, the experiment found) and by running
`python -m mlflow ui`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import IO, Any

from tunekit.track import TrackingError, connect

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# An experiment's runs table (its bare URL opens MLflow 3's GenAI "Overview"), best trial first:
# sorted, MLflow lists the trials themselves instead of folding them under their sweep's run.
RUNS_TABLE = "runs?orderByKey=metrics.%60max_val_acc%60&orderByAsc=false"
STOPS = (signal.SIGINT, signal.SIGTERM)  # SIGINT too: a shell's background job ignores it


def serve(
    uri: str, host: str, port: int, experiment: str | None, announce: Callable[[str], None]
) -> None:
    """Serve the MLflow UI on store `uri` until Ctrl-C or SIGTERM; `announce` the URL of its
    experiment's runs table. The server and every process it starts end with it, however it
    ends."""
    page = _page(uri, experiment)
    if uri.startswith(("http://", "https://")):  # a server already serves its own UI
        announce(f"MLflow UI: {uri.rstrip('/')}{page}")
        return
    if host not in LOCAL_HOSTS:
        announce(
            f"WARNING: --host {host} serves the MLflow UI, with every run, parameter and "
            "artifact of this store and the right to change and delete them, to anyone "
            f"who reaches this machine's port {port}; nothing asks who they are"
        )
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    previous = {sig: signal.getsignal(sig) for sig in STOPS}
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    with tempfile.TemporaryFile("w+") as log:  # the server's output, shown if it fails to start
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
            + ["--host", host, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, ended whole by `_end_group`
        )
        if main:
            for sig in STOPS:
                signal.signal(sig, _terminated)
        try:
            _wait_until_healthy(server, base, log)
            announce(f"MLflow UI on {uri}: {base}{page}  (Ctrl-C stops it)")
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            _end_group(server)
            if main:
                for sig in STOPS:
                    signal.signal(sig, previous[sig])


def _page(uri: str, experiment: str | None) -> str:
    """The UI's path to `experiment`'s runs table ('' for none); the store must exist."""
    client = connect(uri, create=False)  # no store: an error naming where tunekit looked
    exp = client.get_experiment_by_name(experiment) if experiment else None
    if experiment and exp is None:
        raise TrackingError(f"no experiment {experiment!r} in the MLflow store at {uri}")
    return f"/#/experiments/{exp.experiment_id}/{RUNS_TABLE}" if exp else ""


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the UI as Ctrl-C does: through `serve`'s finally


def _wait_until_healthy(server: subprocess.Popen, base: str, log: IO[str]) -> None:
    """Poll the server's /health for up to a minute; TrackingError with its output if it died."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    if server.poll() is not None:
        log.seek(0)
        raise TrackingError(f"the MLflow UI did not start on {base}: {log.read().strip()[-500:]}")


def _end_group(server: subprocess.Popen) -> None:
    """End the server and the workers it started (its own process group)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(server.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:  # the group is gone
        pass
    server.wait()
