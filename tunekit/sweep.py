"""Sweeps: a plan of trials run as one Ray Tune experiment. The only module that touches Ray.

Ray Tune is handed the plan itself: a grid plan as one `grid_search` over its trial numbers, a TPE
plan as Optuna's sampler over the spec's distributions, each proposal numbered in turn. A trial's
number, parameters and labels therefore always come from the plan, never from what Ray reports.
Each trial calls `train.fit` with a report callback that hands Ray the epoch's metrics and a
checkpoint, so an interrupted sweep resumes from the last finished epoch.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tunekit import cluster, storage
from tunekit.data import data_root
from tunekit.errors import SpecError, TunekitError
from tunekit.metrics import METRICS
from tunekit.plan import OBJECTIVE, Plan, label
from tunekit.spec import Distribution
from tunekit.train import fit, pick_device

STATE_FILE = "state.pt"


class InvalidProposalError(TunekitError):
    """A TPE proposal that breaks a spec rule: reported, never trained."""


@dataclass
class TrialState:
    """What the driver knows of one trial of the plan."""
    index: int  # its number in the plan
    params: dict[str, Any]
    status: str = "pending"  # pending | running | done | failed | invalid | stopped (ASHA)
    #                          | unfinished
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics dict per epoch
    error: str | None = None
    node_ids: set[str] = field(default_factory=set)
    device: str | None = None  # what it trained on (cpu, cuda) and the GPUs Ray gave it
    gpu_ids: str = ""
    warning: str | None = None  # its resources and its device disagree (a GPU left unused)
    retries: int = 0  # times it failed and went on from its last checkpoint (sweep.max_failures)
    ray_id: str | None = None
    path: str | None = None  # the trial's folder in the sweep's storage
    best_state: dict[str, Any] | None = None  # from the last checkpoint: the best epoch's
    #                                           weights and misclassified images (train.fit)

    @property
    def best(self) -> dict[str, Any] | None:
        return max(self.history, key=lambda m: m["val_acc"], default=None)

    @property
    def label(self) -> str:
        return label(self.params)


class Listener(Protocol):
    """Follows a sweep from the driver: the live view, the tracker."""
    def sweep_started(self, joined: str, asks: cluster.Ask) -> None: ...
    def trial_started(self, trial: TrialState) -> None: ...
    def trial_retried(self, trial: TrialState) -> None: ...
    def epoch_done(self, trial: TrialState, metrics: dict[str, Any]) -> None: ...
    def trial_ended(self, trial: TrialState) -> None: ...


def param_space(plan: Plan) -> dict[str, Any]:
    """Grid: the trial numbers; TPE: the spec's distributions (the searcher adds the number)."""
    if not plan.adaptive:
        return {"trial": tune.grid_search(list(range(len(plan.trials))))}
    return {path: _domain(d) for path, d in plan.spec.search.sample.items()}


def _domain(d: Distribution) -> Any:
    if d.choice is not None:
        return tune.choice(d.choice)
    low, high = getattr(d, d.kind)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": tune.randint}[d.kind](low, high)


class NumberedTPE(OptunaSearch):
    """Optuna's TPE whose proposals carry their plan number (0, 1, 2, ... in proposal order);
    the number is saved with the searcher, so a resumed sweep numbers on from where it was."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.proposed = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config, self.proposed = {**config, "trial": self.proposed}, self.proposed + 1
        return config


def _searcher(plan: Plan) -> Any:
    s = plan.spec
    if not plan.adaptive:
        return None  # Tune's default: the grid over trial numbers, in order
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = max(2, min(10, (s.search.budget or 0) // 3))  # random proposals before TPE models
    tpe = NumberedTPE(metric=OBJECTIVE[0], mode=OBJECTIVE[1], sampler=optuna.samplers.TPESampler(
        seed=s.train.seed, n_startup_trials=startup))
    return ConcurrencyLimiter(tpe, max_concurrent=s.sweep.max_concurrent or 2)


def trial_dirname(trial: Any) -> str:
    """trial_0003: a trial's folder (and Ray's name for it) is its plan number."""
    return f"trial_{trial.config['trial']:04d}"


def _index_of(path: str | None) -> int | None:
    match = re.search(r"trial_(\d+)$", (path or "").rstrip("/"))
    return int(match.group(1)) if match else None


def _train(config: dict[str, Any], plan: Plan, root: str | None) -> None:
    """The Ray trainable: plan trial config['trial'], resumed from its last checkpoint if any."""
    params = {k: v for k, v in config.items() if k != "trial"}
    try:
        trial = plan.trial(config["trial"], params)
    except SpecError as e:  # only a TPE proposal can be invalid: grid plans are checked up front
        raise InvalidProposalError("; ".join(f"{p.field}: {p.message}" for p in e.problems)) from None
    cfg = trial.config
    if root and cfg.data.root is None:  # trials run in other working directories
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": Path(root)})})
    node = ray.get_runtime_context().get_node_id()
    device = pick_device(cfg.train.device).type
    gpu_ids, warning = cluster.given(device)
    where = {"node_id": node, "device": device, "gpu_ids": gpu_ids, "warning": warning or ""}
    resume = None
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, weights_only=True)

    def report(metrics: Any, state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report({**metrics.as_dict(), **where},
                        checkpoint=tune.Checkpoint.from_directory(d))

    fit(cfg, report, threads=plan.spec.resources.cpus_per_trial, resume=resume)


@dataclass
class _Active:
    """The sweep the driver is running now. Ray pickles callbacks with the experiment, so the
    relay keeps nothing itself and a resumed run's relay finds the new listeners here."""
    plan: Plan
    listeners: list[Listener]
    interrupted: threading.Event
    trials: dict[int, TrialState] = field(default_factory=dict)
    forwarded: bool = False


_active: _Active | None = None


class _Relay(tune.Callback):
    """Turns Ray Tune's driver-side events into TrialState updates for the listeners."""

    def _state(self, trial: Any) -> tuple[TrialState, list[Listener]]:
        assert _active is not None
        index = trial.config["trial"]
        if index not in _active.trials:
            params = {k: v for k, v in trial.config.items() if k != "trial"}
            _active.trials[index] = TrialState(
                index, params if _active.plan.adaptive else _active.plan.trials[index].params)
        state = _active.trials[index]
        state.ray_id = trial.trial_id
        return state, _active.listeners

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # A Ctrl-C that came while Tune was still setting up reached tunekit's handler, not
        # Tune's: hand it on now that Tune's is in place, so Tune stops and saves its state.
        if _active and _active.interrupted.is_set() and not _active.forwarded:
            _active.forwarded = True
            os.kill(os.getpid(), signal.SIGINT)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in trials:  # know every trial Tune has, started or not (TPE: its params)
            if trial.config.get("trial") is not None:
                self._state(trial)

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
        t.device, t.gpu_ids, t.warning = result["device"], result["gpu_ids"], result["warning"] or None
        for listener in listeners:
            listener.epoch_done(t, metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t, _ = self._state(trial)
        last = t.history[-1]["epoch"] if t.history else None  # None: done in an earlier session
        epochs = _active.plan.spec.train.epochs if _active else None
        self._end(trial, "stopped" if last is not None and last < (epochs or 0) else "done", None)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t, listeners = self._state(trial)  # it failed (its node lost, say) and goes on from its
        t.retries += 1  # last checkpoint, on whichever node has room
        t.error = _reason(trial)
        for listener in listeners:
            listener.trial_retried(t)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = _reason(trial)
        self._end(trial, "invalid" if reason.startswith("InvalidProposal") else "failed", reason)

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
    """The exception a failed trial raised, from the error file Ray keeps for it on the driver."""
    path = getattr(trial, "error_file", None) or ""
    return _exception(Path(path).read_text() if path and os.path.exists(path) else "")


def _exception(text: str) -> str:
    """'DivergedError: training loss became nan ...' from a traceback: the last exception, its
    message whole (Ray's storage errors run over several lines)."""
    found = list(_EXCEPTION_LINE.finditer(text))
    if found:
        name, message = found[-1].group(1), text[found[-1].start(2):].strip()
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\w*): (.*)$", re.M)


def start(plan: Plan, address: str | None) -> str:
    """All that can refuse a sweep before its first trial, in order: the storage takes the
    driver's writes, Ray is up, and every other node that runs trials reads what the driver wrote
    there. Returns the Ray it joined, in words."""
    spec = plan.spec
    with storage.probe(spec) as probe:
        joined = cluster.start_ray(address)
        failing = cluster.failing_nodes(storage.readable, storage.root(spec), probe)
    if failing:
        cluster.stop_ray()
        nodes = "\n  ".join(f"{node}: {why}" for node, why in failing.items())
        raise storage.StorageError(
            f"{storage.source(spec)}: {len(failing)} node(s) that run trials cannot read "
            f"{storage.root(spec)}, where this driver keeps the sweep's results:\n  {nodes}\n"
            f"Trials on other nodes need storage every node reaches: set sweep.storage in the "
            f"spec, or {storage.STORAGE_ENV} for the whole cluster, to a cloud URI such as "
            f"{storage.EXAMPLE} or a folder every node mounts. Nothing was started.")
    return joined


def run(plan: Plan, *, address: str | None = None, resume: bool = False,
        listeners: list[Listener] | None = None,
        interrupted: threading.Event | None = None) -> list[TrialState]:
    """Run (or resume) the sweep of a prepared plan; returns the state of every trial Ray knew.

    `interrupted` (set by the caller's Ctrl-C handler) stops the sweep at the next safe point:
    before Ray starts, or through Tune's own handler once Tune is running.
    """
    spec, path = plan.spec, storage.sweep_path(plan.spec)
    interrupted = interrupted or threading.Event()
    if "://" not in path:  # save Ray's experiment state every 2 s (default 10 s): less to redo
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    joined = cluster.start_ray(address)
    if interrupted.is_set():
        return []
    asks = cluster.ask(spec)
    global _active
    _active = _Active(plan, list(listeners or []), interrupted)
    for listener in _active.listeners:
        listener.sweep_started(joined, asks)
    on_cluster_node = not (address or "").startswith("ray://")  # a Ray Client driver is remote
    root = str(data_root(spec.data).resolve()) if on_cluster_node else None
    trainable = tune.with_resources(tune.with_parameters(_train, plan=plan, root=root),
                                    {"cpu": asks.cpus, "gpu": asks.gpus})
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:  # new, or resumed before Tune had saved anything
        asha = spec.sweep.asha
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.train.epochs,
                                  grace_period=asha.grace_period,
                                  reduction_factor=asha.reduction_factor) if asha else None
        metric = plan.adaptive or asha
        tuner = tune.Tuner(
            trainable, param_space=param_space(plan),
            tune_config=tune.TuneConfig(
                num_samples=spec.search.budget if plan.adaptive else 1, scheduler=scheduler,
                metric=OBJECTIVE[0] if metric else None, mode=OBJECTIVE[1] if metric else None,
                max_concurrent_trials=None if plan.adaptive else spec.sweep.max_concurrent,
                reuse_actors=True,  # a worker keeps torch imported and the dataset loaded
                search_alg=_searcher(plan), trial_dirname_creator=trial_dirname,
                trial_name_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage.root(spec), verbose=0, callbacks=[_Relay()],
                failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    ours = signal.getsignal(signal.SIGINT)
    tune_catches = (threading.current_thread() is threading.main_thread()
                    and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0")
    try:
        try:
            grid = tuner.fit()
        finally:
            # Tune puts its Ctrl-C handler in place for the run and hands the previous one back
            # only when it fires: ours back means a Ctrl-C stopped the run; else restore ours.
            if tune_catches and signal.getsignal(signal.SIGINT) is ours:
                interrupted.set()
            elif tune_catches:
                signal.signal(signal.SIGINT, ours)
        states = [s for s in (_final_state(_active, r) for r in grid) if s is not None]
    finally:
        _active = None
    return sorted(states, key=lambda t: t.index)


def _final_state(active: _Active, result: Any) -> TrialState | None:
    """A trial as its stored results show it (earlier sessions included); identity from the plan.

    None for a TPE trial Tune created but never started in a session of this driver: its
    parameters are known only to Tune, which will run it on --resume.
    """
    config = result.config or {}  # empty (or None) for a trial that never reported
    index = config.get("trial", _index_of(result.path))
    known = active.trials.get(index)
    if index is None or (known is None and active.plan.adaptive and not config):
        return None
    params = (known.params if known else
              {k: v for k, v in config.items() if k != "trial"} if active.plan.adaptive
              else active.plan.trials[index].params)
    df = result.metrics_dataframe
    rows = [] if df is None or df.empty else df.to_dict("records")
    history = list({r["epoch"]: {k: r[k] for k in METRICS} for r in rows}.values())
    last = rows[-1] if rows else {}
    state = TrialState(index, params, history=history, node_ids={r["node_id"] for r in rows},
                       device=last.get("device"), gpu_ids=str(last.get("gpu_ids") or ""),
                       warning=last.get("warning") or None,
                       ray_id=known.ray_id if known else result.metrics.get("trial_id"),
                       path=result.path, best_state=_best_of(result.checkpoint))
    epochs = active.plan.spec.train.epochs
    if result.error is not None:
        state.error = _exception(str(result.error))
        state.status = "invalid" if state.error.startswith("InvalidProposal") else "failed"
    elif len(history) == epochs:
        state.status = "done"
    else:  # ASHA stopped it, or the sweep was interrupted before it finished
        stopped = active.plan.spec.sweep.asha and history and not active.interrupted.is_set()
        state.status = "stopped" if stopped else "unfinished"
    return state
