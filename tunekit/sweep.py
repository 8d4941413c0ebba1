"""The driver: a plan of trials run as one Ray Tune experiment (new, or resumed), its Ray events
relayed to the listeners (`relay`).

Ray Tune is handed the plan itself: a fixed plan (grid) as one `grid_search` over its trial
numbers or packs (`packing`), an adaptive one (tpe) as its method's searcher and space
(`tunekit.search`), each proposal numbered in turn (`wire`). What runs on the workers is
`trainable.train`.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from typing import TYPE_CHECKING, Any

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from tunekit import cluster, packing, relay, storage, wire
from tunekit.datasets.loading import data_root
from tunekit.plan import OBJECTIVE, Plan
from tunekit.trainable import train
from tunekit.trials import Listener, TrialState

if TYPE_CHECKING:
    from tunekit.checks import Checked
    from tunekit.measure import PackChoice


def param_space(plan: Plan, packs: list[list[int]]) -> dict[str, Any]:
    """A fixed plan: its trial numbers, or its packs, as one grid search; an adaptive one: its
    method's space (the searcher adds the numbers)."""
    if plan.adaptive:
        return plan.method.space(plan)
    key, values = wire.grid(packs)
    return {key: tune.grid_search(values)}


PROPOSED = "proposed"  # the searcher's attribute that counts its proposals


class Numbered(ConcurrencyLimiter):
    """An adaptive method's searcher, at most `max_concurrent` trials at once, whose proposals
    carry their plan numbers (0, 1, 2, ... in proposal order). The count is kept on the searcher
    it wraps, which Ray saves with its state, so a resumed sweep numbers on from where it was.
    With `repeats` R > 1, proposal p is the pack of trials pR .. pR + R − 1 (its seeds), one Ray
    trial, so a proposal is trained, stopped, resumed and scored as a whole."""

    def __init__(self, searcher: Any, max_concurrent: int, repeats: int = 1):
        super().__init__(searcher, max_concurrent)
        self.repeats = repeats
        setattr(searcher, PROPOSED, 0)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            p, r = getattr(self.searcher, PROPOSED), self.repeats
            config = {**config, **wire.numbered([p * r + i for i in range(r)], packed=r > 1)}
            setattr(self.searcher, PROPOSED, p + 1)
        return config


def _searcher(plan: Plan) -> Any:
    s = plan.spec
    if not plan.adaptive:
        return None  # Tune's default: the grid over trial numbers, in order
    limit = s.sweep.max_concurrent or 2
    return Numbered(plan.method.searcher(plan), limit, repeats=s.search.repeats)


def trial_dirname(trial: Any) -> str:
    """A Ray trial's folder, and Ray's name for it (`wire.name`)."""
    return wire.name(trial.config)


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
    """The plan's packs (`packing.decide`) and what each asks Ray for."""

    def measured() -> PackChoice:  # the pack size and GPU share, measured on this GPU
        from tunekit.measure import gpu_pack

        choice = gpu_pack(plan.trials[0].config, len(plan.trials))
        torch.cuda.empty_cache()
        return choice

    how = packing.decide(
        plan,
        one.gpus,
        checked.unpackable if checked else None,
        measured if torch.cuda.is_available() else None,
    )
    packs = plan.seed_packs() if how.seeds else plan.packs(how.size)
    return packs, how.ask(one, packs)


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
    active = relay.begin(plan, list(listeners or []), interrupted, packs)
    for listener in active.listeners:
        listener.sweep_started(joined, asks)
    on_cluster_node = not (address or "").startswith("ray://")  # a Ray Client driver is remote
    root = str(data_root(spec.data).resolve()) if on_cluster_node else None
    trainable = tune.with_resources(
        tune.with_parameters(train, plan=plan, root=root), {"cpu": asks.cpus, "gpu": asks.gpus}
    )
    storage_path, fs = storage.for_ray(spec)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        tuner = _restored(path, trainable, fs)
    else:  # new, or resumed before Tune had saved anything
        tuner = _tuner(plan, trainable, packs, storage_path, fs)
    try:
        grid = _fit(tuner, interrupted)
        states = [s for i in range(len(grid)) for s in relay.final_states(active, grid[i])]
    finally:
        relay.end()
    return sorted(states, key=lambda t: t.index)


def _restored(path: str, trainable: Any, fs: Any) -> tune.Tuner:
    """The sweep Tune saved at `path`, to go on with."""
    try:
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    except (EOFError, pickle.UnpicklingError) as e:  # cut short by a kill, before wholefiles
        raise storage.StorageError(
            f"Ray's saved state of the sweep at {path} (tuner.pkl) cannot be read "
            f"({type(e).__name__}: {e}), as when a driver is killed while writing it. "
            "Start over with --restart (the earlier sweep's MLflow runs are kept)."
        ) from None


def _tuner(
    plan: Plan, trainable: Any, packs: list[list[int]], storage_path: str, fs: Any
) -> tune.Tuner:
    """A new Tune experiment of the plan: its trials (or its method's searcher), ASHA if asked,
    and the relay."""
    spec, asha = plan.spec, plan.spec.sweep.asha
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
    return tune.Tuner(
        trainable,
        param_space=param_space(plan, packs),
        tune_config=tune.TuneConfig(
            num_samples=plan.size // spec.search.repeats if plan.adaptive else 1,
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
            callbacks=[relay.Relay()],
            failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def _fit(tuner: tune.Tuner, interrupted: threading.Event) -> Any:
    """Tune's run of the sweep; `interrupted` set if a Ctrl-C stopped it."""
    ours = signal.getsignal(signal.SIGINT)
    tune_catches = (
        threading.current_thread() is threading.main_thread()
        and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0"
    )
    try:
        return tuner.fit()
    finally:
        # Tune puts its Ctrl-C handler in place for the run and hands the previous one back
        # only when it fires: ours back means a Ctrl-C stopped the run; else restore ours.
        if tune_catches and signal.getsignal(signal.SIGINT) is ours:
            interrupted.set()
        elif tune_catches:
            signal.signal(signal.SIGINT, ours)
