"""The Ray cluster a sweep runs on: joining it (or starting a Ray of our own), what each trial asks
of it, and what a trial was given once it runs.

On an autoscaling cluster (`ray up cluster.yaml`) the GPU workers start at zero, so the GPUs that
are up when a sweep starts say nothing: trials must ask for a GPU share, or the autoscaler never
starts a GPU node for them. The automatic share therefore also looks at the node types the
autoscaler may start, and a cluster can set it once with TUNEKIT_GPUS_PER_TRIAL.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml

from tunekit.errors import TunekitError, UsageError, first_line
from tunekit.spec import ExperimentSpec
from tunekit.text import fmt

AUTO_GPU_SHARE = 0.25  # a GPU shared by four trials: one small CNN cannot keep a GPU busy
GPUS_ENV = "TUNEKIT_GPUS_PER_TRIAL"  # the cluster's default for resources.gpus_per_trial
BOOTSTRAP = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the cluster config on the head


_joined = ""  # what start_ray joined, in words


class ClusterError(TunekitError):
    """The Ray cluster cannot be reached or cannot run the sweep: nothing was started."""

    exit_code = 2


def start_ray(address: str | None, ship: Sequence[str] = ()) -> str:
    """Connect to `address`, or start a quiet Ray of our own; returns what it joined, in words.
    `ship`: the user's module files or folders, sent to every worker (`runtime_env` py_modules)."""
    global _joined
    if ray.is_initialized():
        return _joined or "the Ray this process already started"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune logs each failed trial's traceback; tunekit shows the reason and Ray keeps the
    # traceback in the trial's error.txt.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    env = {k: os.environ[k] for k in ("TUNEKIT_DATA_DIR", "TUNEKIT_CACHE_DIR") if k in os.environ}
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    address = None if address == "local" else address
    joined = f"the Ray cluster at {address}"
    if address is None and os.environ.get("RAY_ADDRESS"):  # inside a Ray job: its cluster
        address = os.environ["RAY_ADDRESS"]
        joined = f"the Ray cluster at {address} (from RAY_ADDRESS)"
    # No address: a Ray of our own ("local"), never a cluster some `ray start` left running.
    kwargs: dict[str, Any] = dict(
        address=address or "local",
        logging_level=logging.ERROR,
        log_to_driver=False,
        runtime_env={"env_vars": env, **({"py_modules": list(ship)} if ship else {})},
    )
    if address is None:
        kwargs["include_dashboard"] = False
        joined = "a local Ray of its own"
    else:
        _answers(address)
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {e}") from None
    _joined = joined
    return joined


def _answers(address: str, timeout: float = 5.0) -> None:
    """Fail within seconds, in one line, where Ray would retry a dead address for minutes."""
    target = address.removeprefix("ray://")
    if not address.startswith("ray://"):
        try:  # "auto": the cluster `ray start` last started on this machine
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address) or ""
        except Exception as e:  # noqa: BLE001 (Ray's own words for what it could not find)
            raise ClusterError(f"--address {address}: {first_line(e)}") from None
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ClusterError(
            f"--address {address}: no Ray cluster answers at {target or address} "
            f"({first_line(e)}); start it (ray start --head / ray up) or leave "
            "out --address for a local Ray"
        ) from None


def stop_ray() -> None:
    """Shut down (or leave) Ray now, while the caller still handles Ctrl-C, instead of in
    Python's exit handlers, where a Ctrl-C would kill the process half-way."""
    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class Ask:
    """What each trial asks Ray for, and why that much GPU."""

    cpus: int
    gpus: float
    why: str
    warning: str | None = None  # what the ask could not know, for a WARNING line

    def packed(self, k: int) -> Ask:
        """What a pack of `k` such trials asks for: k GPU shares, up to one GPU."""
        if k <= 1:
            return self
        gpus = min(1.0, self.gpus * k) if self.gpus < 1 else self.gpus
        return Ask(self.cpus, gpus, f"{self.why}; per pack of up to {k} trials", self.warning)

    def __str__(self) -> str:
        gpu = f" + {fmt(self.gpus)} GPU" if self.gpus else ", no GPU"
        return f"{self.cpus} CPU{gpu} ({self.why})"


def configured_gpus(spec: ExperimentSpec) -> Ask | None:
    """The GPU share set without looking at any cluster: the spec's, else TUNEKIT_GPUS_PER_TRIAL."""
    cpus = spec.resources.cpus_per_trial
    if spec.resources.gpus_per_trial is not None:
        return Ask(cpus, spec.resources.gpus_per_trial, "resources.gpus_per_trial")
    value = os.environ.get(GPUS_ENV, "").strip()
    if not value:
        return None
    try:
        gpus = float(value)
    except ValueError:
        gpus = math.nan
    if not 0 <= gpus <= 8:
        raise UsageError(
            GPUS_ENV,
            f"expected a GPU share per trial from 0 to 8 (e.g. 0.25: four "
            f"trials per GPU), got {value!r}",
        )
    return Ask(cpus, gpus, GPUS_ENV)


def autoscaler_gpus(config: str | Path = BOOTSTRAP) -> tuple[str, float] | None:
    """(node type, GPUs) of a node type with GPUs the autoscaler may start, from its config."""
    path = Path(config).expanduser()
    try:
        types = (yaml.safe_load(path.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    for name, node in types.items():
        gpus = float(((node or {}).get("resources") or {}).get("GPU", 0) or 0)
        if gpus > 0 and (node.get("max_workers") is None or node["max_workers"] > 0):
            return name, gpus
    return None


def published_gpus() -> float | None:
    """The most GPUs the autoscaler may bring up, from the cluster config it publishes to Ray's
    GCS (autoscaler v2, KubeRay); None where nothing with GPUs is published."""
    try:
        from ray._private.state import state  # Ray's own reader (Ray Data uses it)

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 (a private API: absent or changed means "not published")
        return None
    gpus = float(most.get("GPU", 0) or 0)
    return gpus if gpus > 0 else None


def ask(spec: ExperimentSpec) -> Ask:
    """What each trial asks for: the configured share, else (automatic) a GPU share when the
    cluster has GPUs up or its autoscaler may start GPU nodes, else no GPU. Needs Ray started."""
    configured = configured_gpus(spec)
    if configured is not None:
        return configured
    cpus = spec.resources.cpus_per_trial
    up = ray.cluster_resources().get("GPU", 0)
    if up > 0:
        return Ask(cpus, AUTO_GPU_SHARE, f"auto: {fmt(up)} GPU(s) up")
    if (published := published_gpus()) is not None:
        return Ask(
            cpus,
            AUTO_GPU_SHARE,
            f"auto: the autoscaler's published cluster config may bring up {fmt(published)} GPU(s)",
        )
    if (scalable := autoscaler_gpus()) is not None:
        return Ask(
            cpus,
            AUTO_GPU_SHARE,
            f"auto: the autoscaler may start {scalable[0]!r} nodes with {fmt(scalable[1])} GPU(s)",
        )
    if trial_nodes():
        return Ask(
            cpus, 0.0, "auto: no GPU on the nodes up, and no autoscaler config names GPU nodes"
        )
    return Ask(
        cpus,
        0.0,
        "auto: no GPU up, and nothing tells whether GPU nodes will come",
        warning=f"no node that runs trials is up and no autoscaler config says what will "
        f"come, so tunekit cannot tell whether GPU nodes will: trials ask for no "
        f"GPU. If GPU nodes will join, set {GPUS_ENV} (or resources.gpus_per_trial)"
        f", e.g. {GPUS_ENV}=0.25 for four trials per GPU",
    )


def ask_before_start(spec: ExperimentSpec) -> str:
    """What a dry run can say of each trial's request, without a cluster to look at."""
    configured = configured_gpus(spec)
    if configured is not None:
        return str(configured)
    return (
        f"{spec.resources.cpus_per_trial} CPU + {fmt(AUTO_GPU_SHARE)} GPU where the cluster "
        f"has GPUs or can start them, else no GPU (auto; set resources.gpus_per_trial or "
        f"{GPUS_ENV} to fix it)"
    )


def given(device: str) -> tuple[str, str | None]:
    """Inside a trial: (the GPUs Ray assigned it, a warning when they and `device` disagree).

    Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned; `device` is what training will use.
    """
    ids = [str(i) for i in ray.get_gpu_ids()]
    if ids and device == "cpu":
        return ",".join(ids), (
            f"Ray assigned GPU {','.join(ids)} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}) but torch finds "
            "no CUDA device here: training on the CPU"
        )
    node = ray.get_runtime_context().get_node_id()
    here = next((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["NodeID"] == node), 0)
    if not ids and here > 0:
        return "", (
            f"this node has {fmt(here)} GPU(s) but the trial asked Ray for none: training "
            f"on the CPU (set resources.gpus_per_trial or {GPUS_ENV})"
        )
    return ",".join(ids), None


def trial_nodes() -> list[dict[str, Any]]:
    """The live nodes that can take trials (they offer CPUs or GPUs)."""
    return [
        n
        for n in ray.nodes()
        if n["Alive"] and (n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)
    ]


def failing_nodes(
    check: Callable[..., str | None], *args: Any, timeout: float = 60.0
) -> dict[str, str]:
    """Run `check(*args)` on every node that can take trials except this one; {node: why} for
    each node where it returned a reason, failed, or did not answer within `timeout` s."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in trial_nodes() if n["NodeID"] != here]
    task = ray.remote(num_cpus=0, max_retries=0)(check)
    refs = {
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*args): n
        for n in nodes
    }
    done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    failing = {}
    for ref, node in refs.items():
        name = f"node {node['NodeID'][:8]} ({node['NodeManagerAddress']})"
        if ref not in done:
            failing[name] = f"did not answer within {timeout:.0f} s"
            continue
        try:
            why = ray.get(ref)
        except Exception as e:  # noqa: BLE001
            why = f"the check could not run there: {first_line(e)}"
        if why:
            failing[name] = why
    return failing
