"""The driver: a plan of trials run as one Ray Tune experiment, and Ray's events relayed to the
listeners as `trials.TrialState` updates.

Ray Tune is handed the plan itself: a grid plan as one `grid_search` over its trial numbers, a TPE
plan as Optuna's sampler over the spec's distributions, each proposal numbered in turn. A trial's
number, parameters and labels therefore always come from the plan, never from what Ray reports.
What runs on the workers is `trainable.train`.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tunekit import cluster, storage
from tunekit.datasets.loading import data_root
from tunekit.metrics import METRICS
from tunekit.plan import OBJECTIVE, Plan
from tunekit.spec import Distribution
from tunekit.trainable import load_state, members, packs_are_seeds, train
from tunekit.trials import Listener, Status, TrialState

if TYPE_CHECKING:
    from tunekit.checks import Checked


def param_space(plan: Plan, packs: list[list[int]]) -> dict[str, Any]:
    """Grid: the trial numbers, or the packs' lists of them; TPE: the spec's distributions (the
    searcher adds the number)."""
    if plan.adaptive:
        return {path: _domain(d) for path, d in plan.spec.search.sample.items()}
    if any(len(p) > 1 for p in packs):
        return {"pack": tune.grid_search(packs)}
    return {"trial": tune.grid_search([p[0] for p in packs])}


def _domain(d: Distribution) -> Any:
    if d.choice is not None:
        return tune.choice(d.choice)
    low, high = getattr(d, d.kind)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[
        d.kind
    ](low, high)


class NumberedTPE(OptunaSearch):
    """Optuna's TPE whose proposals carry their plan number (0, 1, 2, ... in proposal order);
    the number is saved with the searcher, so a resumed sweep numbers on from where it was.
    With `repeats` R > 1, proposal p is the pack of trials pR .. pR + R − 1 (its seeds), one Ray
    trial, so a proposal is trained, stopped, resumed and scored as a whole."""

    def __init__(self, *args: Any, repeats: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.proposed, self.repeats = 0, repeats

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            p, r = self.proposed, getattr(self, "repeats", 1)
            number = {"trial": p} if r == 1 else {"pack": [p * r + i for i in range(r)]}
            config, self.proposed = {**config, **number}, p + 1
        return config


def _searcher(plan: Plan) -> Any:
    s = plan.spec
    if not plan.adaptive:
        return None  # Tune's default: the grid over trial numbers, in order
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = max(2, min(10, (s.search.budget or 0) // 3))  # random proposals before TPE models
    tpe = NumberedTPE(
        metric=OBJECTIVE[0],
        mode=OBJECTIVE[1],
        sampler=optuna.samplers.TPESampler(seed=s.train.seed, n_startup_trials=startup),
        repeats=s.search.repeats,
    )
    return ConcurrencyLimiter(tpe, max_concurrent=s.sweep.max_concurrent or 2)


def trial_dirname(trial: Any) -> str:
    """trial_0003: a trial's folder (and Ray's name for it) is its plan number; pack_0003: a
    pack's, its first trial's."""
    if "pack" in trial.config:
        return f"pack_{trial.config['pack'][0]:04d}"
    return f"trial_{trial.config['trial']:04d}"


def _index_of(path: str | None) -> tuple[str, int] | None:
    match = re.search(r"(trial|pack)_(\d+)$", (path or "").rstrip("/"))
    return (match.group(1), int(match.group(2))) if match else None


@dataclass
class _Active:
    """The sweep the driver is running now. Ray pickles callbacks with the experiment, so the
    relay keeps nothing itself and a resumed run's relay finds the new listeners here."""

    plan: Plan
    listeners: list[Listener]
    interrupted: threading.Event
    packs: list[list[int]] = field(default_factory=list)
    trials: dict[int, TrialState] = field(default_factory=dict)
    forwarded: bool = False


_active: _Active | None = None


def _member_metrics(result: dict[str, Any], index: int, packed: bool) -> dict[str, Any] | None:
    """Trial `index`'s part of a Ray result: its metrics, {'failed': why}, or None if absent.
    A pack's result holds each member under m<index> (flattened to m<index>/... in Ray's files)."""
    if not packed:
        return {k: result[k] for k in METRICS} if all(k in result for k in METRICS) else None
    if isinstance(result.get(f"m{index}"), dict):
        return result[f"m{index}"]
    prefix = f"m{index}/"
    found = {
        k[len(prefix) :]: v
        for k, v in result.items()
        if k.startswith(prefix) and v == v and v is not None
    }  # NaN: the column of a member that had failed
    if found.get("failed"):
        return {"failed": found["failed"]}
    return {k: found[k] for k in METRICS} if all(k in found for k in METRICS) else None


class _Relay(tune.Callback):
    """Turns Ray Tune's driver-side events into TrialState updates for the listeners, one state
    per plan trial (a pack's Ray trial updates each of its members)."""

    def _states(self, trial: Any) -> tuple[list[TrialState], list[Listener]]:
        assert _active is not None
        states = []
        for index in members(trial.config):
            if index not in _active.trials:
                plan = _active.plan
                _active.trials[index] = TrialState(
                    index,
                    plan.proposed_params(index, trial.config)
                    if plan.adaptive
                    else plan.trials[index].params,
                    proposal=plan.proposal(index) if plan.spec.search.repeats > 1 else None,
                )
            state = _active.trials[index]
            state.ray_id = trial.trial_id
            states.append(state)
        return states, _active.listeners

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # A Ctrl-C that came while Tune was still setting up reached tunekit's handler, not
        # Tune's: hand it on now that Tune's is in place, so Tune stops and saves its state.
        if _active and _active.interrupted.is_set() and not _active.forwarded:
            _active.forwarded = True
            os.kill(os.getpid(), signal.SIGINT)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in trials:  # know every trial Tune has, started or not (TPE: its params)
            if trial.config.get("trial") is not None or "pack" in trial.config:
                self._states(trial)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        states, listeners = self._states(trial)
        for t in states:
            if t.status in (Status.FAILED, Status.DONE):
                continue
            t.status = Status.RUNNING
            for listener in listeners:
                listener.trial_started(t)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        states, listeners = self._states(trial)
        for t in states:
            metrics = _member_metrics(result, t.index, "pack" in trial.config)
            if metrics is None or t.status == Status.FAILED:
                continue
            t.node_ids.add(result["node_id"])
            t.device, t.gpu_ids = result["device"], result["gpu_ids"]
            t.warning = result["warning"] or None
            if "failed" in metrics:  # a pack member that diverged: the others train on
                t.status, t.error = Status.FAILED, f"DivergedError: {metrics['failed']}"
                for listener in listeners:
                    listener.trial_ended(t)
                continue
            t.history = [m for m in t.history if m["epoch"] < metrics["epoch"]] + [metrics]
            for listener in listeners:
                listener.epoch_done(t, metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        states, _ = self._states(trial)
        epochs = _active.plan.spec.train.epochs if _active else 0
        for t in states:
            last = t.history[-1]["epoch"] if t.history else None  # None: an earlier session's
            if t.status != Status.FAILED:
                self._end(
                    t, Status.STOPPED if last is not None and last < epochs else Status.DONE, None
                )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        states, listeners = self._states(trial)  # it failed (its node lost, say) and goes on
        reason = _reason(trial)  # from its last checkpoint, on whichever node has room
        for t in states:
            t.retries += 1
            t.error = reason
            for listener in listeners:
                listener.trial_retried(t)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = _reason(trial)
        states, _ = self._states(trial)
        for t in states:
            if t.status != Status.FAILED:
                self._end(
                    t,
                    Status.INVALID if reason.startswith("InvalidProposal") else Status.FAILED,
                    reason,
                )

    def _end(self, t: TrialState, status: Status, error: str | None) -> None:
        assert _active is not None
        t.status, t.error = status, error
        for listener in _active.listeners:
            listener.trial_ended(t)


def _checkpointed(checkpoint: tune.Checkpoint | None) -> list[dict[str, Any]]:
    """Each member's state in a Ray trial's last checkpoint (one for a lone trial)."""
    state = load_state(checkpoint) or {}
    return state.get("members", [state] if state else [])


def _reason(trial: Any) -> str:
    """The exception a failed trial raised, from the error file Ray keeps for it on the driver."""
    path = getattr(trial, "error_file", None) or ""
    return _exception(Path(path).read_text() if path and os.path.exists(path) else "")


def _exception(text: str) -> str:
    """'DivergedError: training loss became nan ...' from a traceback: the last exception, its
    message whole (Ray's storage errors run over several lines)."""
    found = list(_EXCEPTION_LINE.finditer(text))
    if found:
        name, message = found[-1].group(1), text[found[-1].start(2) :].strip()
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\w*): (.*)$", re.M)


def start(plan: Plan, address: str | None, probe: str, checked: Checked) -> str | None:
    """Start (or join) Ray and check that every other node that runs trials reads `probe`, the
    file the driver wrote to the storage (`storage.probe`). Returns a warning when nothing could
    be checked: a folder as storage, and no node that runs trials up yet (an autoscaling
    cluster before its first worker)."""
    spec = plan.spec
    cluster.start_ray(address, checked.ship)
    failing = cluster.failing_nodes(storage.readable, storage.root(spec), probe)
    if failing:
        cluster.stop_ray()
        nodes = "\n  ".join(f"{node}: {why}" for node, why in failing.items())
        raise storage.StorageError(
            f"{storage.source(spec)}: {len(failing)} node(s) that run trials cannot read "
            f"{storage.root(spec)}, where this driver keeps the sweep's results:\n  {nodes}\n"
            f"Trials on other nodes need storage every node reaches: set sweep.storage in the "
            f"spec, or {storage.STORAGE_ENV} for the whole cluster, to a cloud URI such as "
            f"{storage.EXAMPLE} or a folder every node mounts. Nothing was started."
        )
    if not storage.is_uri(storage.root(spec)) and not cluster.trial_nodes():
        return (
            f"no node that runs trials is up yet, so none was checked to read "
            f"{storage.root(spec)} ({storage.source(spec)}); trials on nodes that cannot will "
            f"fail. On a cluster, set sweep.storage or {storage.STORAGE_ENV} to a cloud URI "
            f"such as {storage.EXAMPLE}, or a folder every node mounts."
        )
    return None


def _packs(
    plan: Plan, one: cluster.Ask, checked: Checked | None
) -> tuple[list[list[int]], cluster.Ask]:
    """The plan's packs and what each asks Ray for. With `sweep.pack: auto`, trials that get a
    GPU and a driver that has one, the size and the GPU share are measured on it
    (`measure.gpu_pack`); else AUTO_PACK where trials get a GPU, 1 on CPUs. A model that cannot
    be packed (`checks`) trains in packs of 1, and the ask says why."""
    if plan.adaptive:  # a proposal's seeds are one pack; TPE plans know no trials up front
        return [], one.packed(plan.spec.search.repeats)
    if packs_are_seeds(plan):  # ASHA: a configuration's seeds stop together
        return plan.seed_packs(), one.packed(plan.spec.search.repeats)
    if checked and checked.unpackable and (plan.spec.sweep.pack != "auto" or one.gpus > 0):
        return plan.packs(1), cluster.Ask(
            one.cpus, one.gpus, f"{one.why}; packs of 1: {checked.unpackable}"
        )
    if plan.spec.sweep.pack == "auto" and one.gpus > 0 and torch.cuda.is_available():
        from tunekit.measure import gpu_pack

        choice = gpu_pack(plan.trials[0].config, len(plan.trials))
        torch.cuda.empty_cache()
        return plan.packs(choice.k), cluster.Ask(
            one.cpus, choice.gpu_share, f"{one.why}; packs of up to {choice.k}, {choice.why}"
        )
    packs = plan.packs(cluster.pack_size(plan.spec, one))
    return packs, one.packed(max((len(p) for p in packs), default=1))


def run(
    plan: Plan,
    *,
    address: str | None = None,
    resume: bool = False,
    listeners: list[Listener] | None = None,
    interrupted: threading.Event | None = None,
    checked: Checked | None = None,
) -> list[TrialState]:
    """Run (or resume) the sweep of a prepared plan; returns the state of every trial Ray knew.

    `interrupted` (set by the caller's Ctrl-C handler) stops the sweep at the next safe point:
    before Ray starts, or through Tune's own handler once Tune is running.
    """
    spec, path = plan.spec, storage.sweep_path(plan.spec)
    interrupted = interrupted or threading.Event()
    # A folder: Ray saves its experiment state every 2 s (default 10 s), less to redo after a kill
    if not storage.is_uri(path):
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    joined = cluster.start_ray(address, checked.ship if checked else ())
    if interrupted.is_set():
        return []
    one = cluster.ask(spec)
    packs, asks = _packs(plan, one, checked)
    global _active
    _active = _Active(plan, list(listeners or []), interrupted, packs)
    for listener in _active.listeners:
        listener.sweep_started(joined, asks)
    on_cluster_node = not (address or "").startswith("ray://")  # a Ray Client driver is remote
    root = str(data_root(spec.data).resolve()) if on_cluster_node else None
    trainable = tune.with_resources(
        tune.with_parameters(train, plan=plan, root=root), {"cpu": asks.cpus, "gpu": asks.gpus}
    )
    storage_path, fs = storage.for_ray(spec)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        try:
            tuner = tune.Tuner.restore(
                path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
            )
        except (EOFError, pickle.UnpicklingError) as e:  # cut short by a kill, before wholefiles
            raise storage.StorageError(
                f"Ray's saved state of the sweep at {path} (tuner.pkl) cannot be read "
                f"({type(e).__name__}: {e}), as when a driver is killed while writing it. "
                "Start over with --restart (the earlier sweep's MLflow runs are kept)."
            )
    else:  # new, or resumed before Tune had saved anything
        asha = spec.sweep.asha
        scheduler = (
            ASHAScheduler(
                time_attr="epoch",
                max_t=spec.train.epochs,
                grace_period=asha.grace_period,
                reduction_factor=asha.reduction_factor,
            )
            if asha
            else None
        )
        metric = plan.adaptive or asha
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(plan, _active.packs),
            tune_config=tune.TuneConfig(
                num_samples=(spec.search.budget or 1) if plan.adaptive else 1,
                scheduler=scheduler,
                metric=OBJECTIVE[0] if metric else None,
                mode=OBJECTIVE[1] if metric else None,
                max_concurrent_trials=None if plan.adaptive else spec.sweep.max_concurrent,
                reuse_actors=True,  # a worker keeps torch imported and the dataset loaded
                search_alg=_searcher(plan),
                trial_dirname_creator=trial_dirname,
                trial_name_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=storage_path,
                storage_filesystem=fs,
                verbose=0,
                callbacks=[_Relay()],
                failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
    ours = signal.getsignal(signal.SIGINT)
    tune_catches = (
        threading.current_thread() is threading.main_thread()
        and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0"
    )
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
        states = [s for i in range(len(grid)) for s in _final_states(_active, grid[i])]
    finally:
        _active = None
    return sorted(states, key=lambda t: t.index)


def _final_states(active: _Active, result: Any) -> list[TrialState]:
    """A Ray trial's plan trials as its stored results show them (earlier sessions included);
    identity from the plan.

    None for a TPE trial Tune created but never started in a session of this driver: its
    parameters are known only to Tune, which will run it on --resume.
    """
    config = result.config or {}  # empty (or None) for a trial that never reported
    if "pack" in config or "trial" in config:
        indices = members(config)
    elif (found := _index_of(result.path)) is None:
        return []
    elif found[0] == "pack":
        indices = next((p for p in active.packs if p[0] == found[1]), [found[1]])
    else:
        indices = [found[1]]
    if active.plan.adaptive and not config and indices[0] not in active.trials:
        return []
    df = result.metrics_dataframe
    rows = [] if df is None or df.empty else df.to_dict("records")
    saved = _checkpointed(result.checkpoint)
    packed = len(indices) > 1 or "pack" in config
    return [
        _final_state(active, result, index, rows, saved[i] if i < len(saved) else None, packed)
        for i, index in enumerate(indices)
    ]


def _final_state(
    active: _Active,
    result: Any,
    index: int,
    rows: list[dict[str, Any]],
    saved: dict[str, Any] | None,
    packed: bool,
) -> TrialState:
    known = active.trials.get(index)
    config = result.config or {}
    params = (
        known.params
        if known
        else {k: v for k, v in config.items() if k != "trial"}
        if active.plan.adaptive
        else active.plan.trials[index].params
    )
    mine = [(r, m) for r in rows if (m := _member_metrics(r, index, packed)) is not None]
    history = list({m["epoch"]: m for r, m in mine if "failed" not in m}.values())
    last = rows[-1] if rows else {}
    state = TrialState(
        index,
        params,
        history=history,
        node_ids={r["node_id"] for r, _ in mine},
        device=last.get("device"),
        gpu_ids=str(last.get("gpu_ids") or ""),
        warning=last.get("warning") or None,
        ray_id=known.ray_id if known else result.metrics.get("trial_id"),
        path=result.path,
        best_state=saved["best"] if saved else None,
    )
    if state.best_state is not None and "model" not in state.best_state:
        state.best_state = None  # failed before its first epoch ended
    diverged = next((m["failed"] for _, m in mine if "failed" in m), None) or (saved or {}).get(
        "failed"
    )
    epochs = active.plan.spec.train.epochs
    if diverged:
        state.status, state.error = Status.FAILED, f"DivergedError: {diverged}"
    elif result.error is not None:
        state.error = _exception(str(result.error))
        state.status = (
            Status.INVALID if state.error.startswith("InvalidProposal") else Status.FAILED
        )
    elif len(history) == epochs:
        state.status = Status.DONE
    else:  # ASHA stopped it, or the sweep was interrupted before it finished
        stopped = active.plan.spec.sweep.asha and history and not active.interrupted.is_set()
        state.status = Status.STOPPED if stopped else Status.UNFINISHED
    return state
