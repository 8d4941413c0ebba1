"""Sweeps: a spec's search run as one Ray Tune experiment. The only module that touches Ray.

The search space is the spec's, in Ray Tune's own terms: one `grid_search` per grid key, one over
the case numbers, a Ray distribution per sampled key, a `grid_search` over seeds for repeats, and
`num_samples`. Each trial calls `train.fit` with a report callback that hands Ray the epoch's
metrics and a checkpoint, so an interrupted sweep resumes from the last finished epoch.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from tunekit.errors import TunekitError
from tunekit.spec import Distribution, ExperimentSpec, resolve
from tunekit.data import data_root
from tunekit.train import METRICS, fit

STATE_FILE = "state.pt"
AUTO_GPU_SHARE = 0.25  # with GPUs and no gpus_per_trial: four trials share each GPU


class SweepError(TunekitError):
    """The sweep could not start (no such run to resume, results in the way, no cluster)."""
    exit_code = 2


@dataclass
class TrialState:
    """What the driver knows of one trial, as Ray reports it."""
    trial_id: str
    params: dict[str, Any]
    status: str = "pending"  # pending | running | done | failed | stopped (ASHA) | unfinished
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics dict per epoch
    error: str | None = None
    node_ids: set[str] = field(default_factory=set)
    path: str | None = None  # the trial's folder in the sweep's storage
    best_state: dict[str, Any] | None = None  # from the last checkpoint: the best epoch's
    #                                           weights and misclassified images (train.fit)

    @property
    def best(self) -> dict[str, Any] | None:
        return max(self.history, key=lambda m: m["val_acc"], default=None)


class Listener(Protocol):
    """Follows a sweep from the driver: the live view, the tracker."""
    def trial_started(self, trial: TrialState) -> None: ...
    def epoch_done(self, trial: TrialState, metrics: dict[str, Any]) -> None: ...
    def trial_ended(self, trial: TrialState) -> None: ...


def param_space(spec: ExperimentSpec) -> dict[str, Any]:
    s = spec.search
    space: dict[str, Any] = {path: tune.grid_search(values) for path, values in s.grid.items()}
    if s.cases:
        space["case"] = tune.grid_search(list(range(len(s.cases))))
    space.update({path: _domain(d) for path, d in s.sample.items()})
    if s.repeats > 1:
        space["train.seed"] = tune.grid_search([spec.train.seed + r for r in range(s.repeats)])
    return space


def _domain(d: Distribution) -> Any:
    if d.choice is not None:
        return tune.choice(d.choice)
    low, high = getattr(d, d.kind)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": tune.randint}[d.kind](low, high)


def trial_params(spec: ExperimentSpec, config: dict[str, Any]) -> dict[str, Any]:
    """The field paths a Ray trial config sets, with its case number replaced by the case."""
    params = {k: v for k, v in config.items() if k != "case"}
    if "case" in config:
        params = {**spec.search.cases[config["case"]], **params}
    return params


def base_config(spec: ExperimentSpec, absolute_root: bool) -> dict[str, Any]:
    """The user's base trial config, with the data root made absolute when the driver shares the
    workers' file layout (trials run in other working directories)."""
    base = spec.base()
    if absolute_root:
        base.setdefault("data", {})["root"] = str(data_root(spec.data).resolve())
    return base


def _train(config: dict[str, Any], spec: ExperimentSpec, base: dict[str, Any]) -> None:
    """The Ray trainable: one trial, resumed from the trial's last checkpoint if it has one."""
    trial = resolve(base, trial_params(spec, config))
    node = ray.get_runtime_context().get_node_id()
    resume = None
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, weights_only=True)

    def report(metrics: Any, state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report({**metrics.as_dict(), "node_id": node},
                        checkpoint=tune.Checkpoint.from_directory(d))

    fit(trial, report, threads=spec.resources.cpus_per_trial, resume=resume)


# The sweep the driver is running now: Ray pickles callbacks with the experiment, so the relay
# keeps nothing itself and a resumed run's relay finds the new listeners here.
_active: tuple[ExperimentSpec, list[Listener], dict[str, TrialState]] | None = None


class _Relay(tune.Callback):
    """Turns Ray Tune's driver-side events into TrialState updates for the listeners."""

    def _state(self, trial: Any) -> tuple[TrialState, list[Listener]]:
        assert _active is not None
        spec, listeners, trials = _active
        if trial.trial_id not in trials:
            trials[trial.trial_id] = TrialState(trial.trial_id, trial_params(spec, trial.config))
        return trials[trial.trial_id], listeners

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t, listeners = self._state(trial)
        t.status = "running"
        for listener in listeners:
            listener.trial_started(t)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        t, listeners = self._state(trial)
        metrics = {k: result[k] for k in METRICS}
        t.history = [m for m in t.history if m["epoch"] < metrics["epoch"]] + [metrics]
        t.node_ids.add(result["node_id"])
        for listener in listeners:
            listener.epoch_done(t, metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "done", None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed", _reason(trial))

    def _end(self, trial: Any, status: str, error: str | None) -> None:
        t, listeners = self._state(trial)
        t.status, t.error = status, error
        for listener in listeners:
            listener.trial_ended(t)


def _best_of(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, weights_only=True)["best"]


def _reason(trial: Any) -> str:
    """The exception a failed trial raised, from the error file Ray keeps for it."""
    path = getattr(trial, "error_file", None) or ""
    return _last_line(Path(path).read_text() if path and os.path.exists(path) else "")


def _last_line(text: str) -> str:
    """'DivergedError: training loss became nan ...' from a traceback: the last exception line."""
    found = _EXCEPTION_LINE.findall(text)
    if found:
        name, message = found[-1]
        return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\w*): (.*)$", re.M)


def start_ray(address: str | None) -> None:
    """Connect to `address`, or start a quiet local Ray whose logs stay in its session folder."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune logs each failed trial's traceback; tunekit shows the reason and Ray keeps the
    # traceback in the trial's error.txt.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    env = {k: os.environ[k] for k in ("TUNEKIT_DATA_DIR", "TUNEKIT_CACHE_DIR") if k in os.environ}
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    kwargs: dict[str, Any] = dict(address=address, logging_level=logging.ERROR,
                                  log_to_driver=False, runtime_env={"env_vars": env})
    if address is None:
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise SweepError(f"cannot reach the Ray cluster at {address}: {e}") from None


def gpus_per_trial(spec: ExperimentSpec) -> float:
    if spec.resources.gpus_per_trial is not None:
        return spec.resources.gpus_per_trial
    return AUTO_GPU_SHARE if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def storage_root(spec: ExperimentSpec) -> str:
    return spec.sweep.storage or str(Path("runs").resolve())


def sweep_path(spec: ExperimentSpec) -> str:
    """Where Ray keeps this spec's sweep: <storage>/<name>."""
    return f"{storage_root(spec).rstrip('/')}/{spec.name}"


def prepare(spec: ExperimentSpec, *, address: str | None = None, resume: bool = False) -> str:
    """Check that the sweep can start (or resume) and connect to Ray; returns the sweep's path."""
    path = sweep_path(spec)
    if "://" not in path and Path(path).exists() and not resume:
        raise SweepError(f"{path} holds an earlier sweep of {spec.name!r}: add --resume to carry "
                         "it on, or set another name or sweep.storage")
    start_ray(address)
    if resume and not tune.Tuner.can_restore(path):
        raise SweepError(f"nothing to resume at {path}: run the sweep without --resume first")
    return path


def run(spec: ExperimentSpec, *, address: str | None = None, resume: bool = False,
        listeners: list[Listener] | None = None) -> list[TrialState]:
    """Run (or resume) the sweep of `spec`; returns the final state of every trial."""
    path = prepare(spec, address=address, resume=resume)
    if "://" not in path:  # save Ray's experiment state every 2 s (default 10 s): less to redo
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    global _active
    trials: dict[str, TrialState] = {}
    _active = (spec, list(listeners or []), trials)
    on_cluster_node = not (address or "").startswith("ray://")  # a Ray Client driver is remote
    trainable = tune.with_resources(
        tune.with_parameters(_train, spec=spec, base=base_config(spec, on_cluster_node)),
        {"cpu": spec.resources.cpus_per_trial, "gpu": gpus_per_trial(spec)})
    if resume:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        asha = spec.sweep.asha
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.train.epochs,
                                  grace_period=asha.grace_period,
                                  reduction_factor=asha.reduction_factor) if asha else None
        tuner = tune.Tuner(
            trainable, param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                num_samples=spec.search.num_samples, scheduler=scheduler,
                metric="val_acc" if asha else None, mode="max" if asha else None,
                max_concurrent_trials=spec.sweep.max_concurrent,
                reuse_actors=True,  # a worker keeps torch imported and the dataset loaded
                search_alg=BasicVariantGenerator(random_state=spec.train.seed)),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage_root(spec), verbose=0, callbacks=[_Relay()],
                failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    try:
        grid = tuner.fit()
    finally:
        _active = None
    return [_final_state(spec, r) for r in grid]


def _final_state(spec: ExperimentSpec, result: Any) -> TrialState:
    """A finished (or interrupted) trial as its stored results show it, earlier sessions included."""
    df = result.metrics_dataframe
    rows = [] if df is None or df.empty else df.to_dict("records")
    history = list({r["epoch"]: {k: r[k] for k in METRICS} for r in rows}.values())
    state = TrialState(result.metrics.get("trial_id") or Path(result.path).name,
                       trial_params(spec, result.config or {}), history=history,
                       node_ids={r["node_id"] for r in rows}, path=result.path,
                       best_state=_best_of(result.checkpoint))
    if result.error is not None:
        state.status, state.error = "failed", _last_line(str(result.error))
    elif len(history) == spec.train.epochs:
        state.status = "done"
    else:  # ASHA stopped it, or the sweep was interrupted before it finished
        state.status = "stopped" if spec.sweep.asha and history else "unfinished"
    return state
