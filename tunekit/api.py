"""tunekit from Python (a notebook, a script): everything a `tunekit` command does, without the
terminal. The CLI parses its arguments, calls these and prints what they return, so a notebook
gets the same plan, MLflow runs, figures and reports as the command.

    import tunekit
    plan = tunekit.load("experiments/smoke.yaml", {"train.epochs": 2})
    outcome = tunekit.run(plan)              # a local Ray, MLflow in ./mlflow.db, as the CLI
    outcome.table()                          # one record per configuration, best first
    tunekit.table("experiments/smoke.yaml")  # the same later, from MLflow alone

Reading a recorded sweep back (`find`, `results`, `study_report`, `plot`) lives in `recorded`;
its names are handed on here.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import SpecError, UsageError
from tunekit.plan import Plan, Trial
from tunekit.recorded import (
    Results,
    Sweep,
    draw,
    find,
    named,
    plot,
    results,
    results_csv,
    study_report,
    table,
)

__all__ = [
    "Outcome",
    "Results",
    "Sweep",
    "ask",
    "check",
    "estimate",
    "find",
    "load",
    "plot",
    "results",
    "results_csv",
    "run",
    "serve_ui",
    "study_report",
    "table",
    "train",
    "trial",
]

if TYPE_CHECKING:
    from tunekit.checks import Checked
    from tunekit.measure import SweepEstimate
    from tunekit.records import RunRecord
    from tunekit.results import ResultRow
    from tunekit.train import FitResult, Report
    from tunekit.trials import Listener, TrialState


def load(spec: str | Path, overrides: Mapping[str, Any] | None = None) -> Plan:
    """The validated plan of a spec file, with `overrides` (field path -> value, as --set) set;
    import paths in it find modules beside the spec and in the current folder."""
    from tunekit.imports import search_here
    from tunekit.plan import load_plan

    spec = Path(spec)
    search_here(spec.parent, Path.cwd())
    return load_plan(spec, overrides)


def check(plan: Plan) -> Checked:
    """The data read and each model built once on a dummy batch (`checks`), problems named
    against the spec file."""
    from tunekit import checks

    try:
        return checks.check(plan)
    except SpecError as e:
        raise SpecError(e.problems, source=e.source or plan.source) from None


def ask(plan: Plan) -> str:
    """What each trial will ask Ray for, as far as it is known before joining a cluster; a bad
    TUNEKIT_GPUS_PER_TRIAL is refused here."""
    from tunekit import cluster

    return cluster.ask_before_start(plan.spec)


def estimate(plan: Plan, unpackable: str | None = None) -> SweepEstimate:
    """How long the sweep would take on this machine: a few steps of each shape of trial timed,
    in packs of the size the sweep would train (`unpackable`: why the model cannot be packed,
    from `check`)."""
    import os

    import torch

    from tunekit import measure

    return measure.estimate(plan, os.cpu_count() or 1, torch.cuda.device_count(), unpackable)


# -- one trial, here ----------------------------------------------------------------------------
def trial(plan: Plan, number: int, overrides: Mapping[str, Any] | None = None) -> Trial:
    """Trial `number` of a plan, to train alone (`train`), its data read and its model built.

    Refused: a TPE plan's trial (TPE has yet to propose it), a number the plan lacks, and a trial
    that itself sets a field that `overrides` (the plan's --set) sets, since the search would win
    over the override without a word.
    """
    if plan.adaptive:
        raise UsageError(
            "--trial",
            "a TPE plan's trials exist only once TPE proposes them; "
            "set their values with --set on a spec without search",
        )
    if not 0 <= number < len(plan.trials):
        raise UsageError(
            "--trial",
            f"{plan.source} plans {len(plan.trials)} trial(s), numbered "
            f"0..{len(plan.trials) - 1}; got {number}",
        )
    t = plan.trials[number]
    clash = sorted(
        k
        for k in overrides or {}
        if any(p == k or p.startswith(k + ".") or k.startswith(p + ".") for p in t.params)
    )
    if clash:
        raise UsageError(
            "--set",
            f"trial {number} sets {', '.join(clash)} itself (search wins over --set); pick the "
            f"trial that has the value you want (tunekit validate {plan.source})",
        )
    from tunekit.checks import check_config

    try:
        check_config(t.config)  # the data read and the model built, or a SpecError
    except SpecError as e:
        raise SpecError(e.problems, source=e.source or plan.source) from None
    return t


def train(
    plan: Plan, t: Trial | int, *, threads: int | None = None, progress: Report | None = None
) -> FitResult:
    """Train one trial of a plan here, in this process, exactly as the sweep runs it, on
    `threads` torch threads (default: the spec's resources.cpus_per_trial, as in a sweep)."""
    from tunekit.train import fit

    if isinstance(t, int):
        t = trial(plan, t)
    return fit(t.config, progress, threads=threads or plan.spec.resources.cpus_per_trial)


# -- a sweep --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """A finished (or interrupted) sweep: every trial's state, its MLflow records, the rows of
    the results table."""

    plan: Plan
    states: list[TrialState]  # by plan number
    records: list[RunRecord]  # as MLflow holds them
    rows: list[ResultRow]  # best first
    tracking_uri: str
    experiment: str  # the MLflow experiment
    sweep_run: str  # the MLflow run of the sweep
    path: str  # where Ray keeps its results
    interrupted: bool

    def table(self) -> list[dict[str, Any]]:
        """The results table as records: one dict per configuration, best first."""
        return [r.as_dict() for r in self.rows]


def run(
    plan: Plan | str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    address: str | None = None,
    resume: bool = False,
    restart: bool = False,
    tracking_uri: str | None = None,
    listeners: Sequence[Listener] = (),
    say: Callable[[str], None] = lambda line: None,
    interrupted: threading.Event | None = None,
    checked: Checked | None = None,
) -> Outcome:
    """Run (or resume) a plan's sweep as `tunekit sweep` does: the checks, storage and MLflow
    before any trial, then Ray Tune, every trial recorded in MLflow with its figures, and the
    comparison graphs logged to the sweep's run. `listeners` follow it (`trials.Listener`);
    `say` gets the lines the CLI prints before it starts."""
    from tunekit import cluster, figures, sweep, track
    from tunekit.results import result_rows

    if not isinstance(plan, Plan):
        plan = load(plan, overrides)
    if plan.source is None:
        raise ValueError("run a plan from tunekit.load (it records the spec file)")
    checked = checked or check(plan)
    uri = track.tracking_uri(plan.spec, tracking_uri)
    client = track.connect(uri)  # an unreachable server stops us before any trial starts
    path = _prepare(plan, address, resume, restart, checked, say)
    tracker = track.Tracker(
        client, plan, plan.source, path, resume=resume, draw=figures.trial_figures
    )
    interrupted = interrupted or threading.Event()
    states = sweep.run(
        plan,
        address=address,
        resume=resume,
        listeners=[*listeners, tracker],
        interrupted=interrupted,
        checked=checked,
    )
    cluster.stop_ray()
    tracker.finish(states)
    records = track.trial_runs(client, tracker.parent)
    with tempfile.TemporaryDirectory() as d:  # the comparison graphs, for the sweep's run
        draw(client, tracker.parent, records, Path(d), grids=False)
    return Outcome(
        plan,
        states,
        records,
        result_rows(records),
        uri,
        track.experiment_name(plan.spec),
        tracker.parent,
        path,
        interrupted.is_set(),
    )


def _prepare(
    plan: Plan,
    address: str | None,
    resume: bool,
    restart: bool,
    checked: Checked,
    say: Callable[[str], None],
) -> str:
    """All that can refuse the sweep, before its first trial: the storage takes this driver's
    writes (URI, bucket, credentials), holds no sweep in the way, and every other node that runs
    trials reads what the driver wrote there. Then the plan recorded; returns the sweep's path."""
    from tunekit import storage, sweep

    with storage.probe(plan.spec) as probe:
        storage.check(plan, resume=resume, restart=restart)
        unchecked = sweep.start(plan, address, probe, checked)
    if unchecked:
        say(f"WARNING: {unchecked}")
    path = storage.record(plan, resume=resume, restart=restart)
    if restart:
        say(
            f"starting {plan.spec.name} over: the earlier sweep's results were set aside, its "
            "MLflow runs are kept"
        )
    return path


def serve_ui(
    spec_or_name: str | Path | None,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    tracking_uri: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the MLflow UI on the store a spec's sweeps record to (Ctrl-C stops it), announcing
    the URL of its experiment's runs (`ui.serve`)."""
    from tunekit import track, ui

    spec, name = named(spec_or_name) if spec_or_name else (None, None)
    ui.serve(track.tracking_uri(spec, tracking_uri), host, port, name, announce)
